"""The job reading inputs and the model package from S3, against a moto S3 server on loopback.

What the mock cannot prove: real S3 latency and throttling, IAM, and Spark writing to s3:// (pyspark from PyPI has no
S3 filesystem; on EMR, EMRFS provides it), so the output here is a local path.
"""

import json
import os

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from job.config import parse_args
from job.model_package import read_package
from job.pipeline import run
from job.report import write_report
from job.sample_data import cifar_batch_bytes
from job.storage import Storage

pytestmark = pytest.mark.spark
BUCKET = "test-inference-data"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3_data(s3_endpoint, cifar_samples, untrained_package):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=BUCKET)
    for name in os.listdir(untrained_package):
        s3.upload_file(os.path.join(untrained_package, name), BUCKET, f"models/resnet/{name}")
    keys = []
    for position, (name, data, _) in enumerate(cifar_samples[:6]):
        key = f"incoming/batch one/{'é' if position % 2 else ''}{name}"  # spaces and non-ASCII in keys
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        keys.append(key)
    images = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    s3.put_object(Bucket=BUCKET, Key="incoming/records.bin", Body=cifar_batch_bytes(images, np.arange(5)))
    keys.append("incoming/records.bin")
    uris = [f"s3://{BUCKET}/{key}" for key in keys] + [f"s3://{BUCKET}/incoming/deleted.png"]
    s3.put_object(Bucket=BUCKET, Key="manifests/b1.json", Body=json.dumps({"batch_id": "b1", "objects": uris}))
    return uris


def _rows(output):
    return pq.read_table(os.path.join(output, "predictions")).to_pylist()


@pytest.fixture(scope="module")
def manifest_run(spark, tmp_path_factory, s3_endpoint, s3_data):
    """The manifest's objects and the model from S3: (output directory, config, summary)."""
    output = tmp_path_factory.mktemp("s3-manifest") / "out"
    config = parse_args([
        "--manifest", f"s3://{BUCKET}/manifests/b1.json", "--model", f"s3://{BUCKET}/models/resnet/",
        "--output", str(output), "--s3-endpoint-url", s3_endpoint, "--max-failure-ratio", "0.2", "--batch-size", "4"])
    return output, config, run(config, master="local[2,4]")


def test_manifest_and_model_from_s3(manifest_run, s3_data):
    output, _, summary = manifest_run
    rows = _rows(output)
    assert sorted((row["source"], row["index"]) for row in rows) == sorted(
        [(uri, 0) for uri in s3_data if not uri.endswith(".bin")] + [(s3_data[-2], index) for index in range(5)])
    failed = {row["source"]: row["error"] for row in rows if row["status"] == "error"}
    assert list(failed) == [f"s3://{BUCKET}/incoming/deleted.png"]
    assert failed[f"s3://{BUCKET}/incoming/deleted.png"].startswith("not_found:")
    assert summary["counts"]["ok"] == 11
    # The report's thumbnails are read from S3 again: the images whole, the CIFAR-10 records by ranged reads.
    assert summary["report"]["thumbnails"] == 11
    assert (output / "report.html").read_text().count('<img class="thumbnail" src="data:image/png') == 11


def test_report_written_to_s3(spark, manifest_run, s3_endpoint):
    """The report goes through the job's storage, so an s3:// output gets it (Spark's own s3:// write is EMR's)."""
    _, config, summary = manifest_run
    storage = Storage(s3_endpoint)
    report_uri = f"s3://{BUCKET}/results/b1/report.html"
    recorded = write_report(spark, summary, predictions_uri=summary["output"], package=read_package(config.model, storage),
                            storage=storage, report_uri=report_uri, thumbnails=4)
    assert recorded == {"uri": report_uri, "thumbnails": 4, "error": None}
    page = boto3.client("s3", endpoint_url=s3_endpoint).get_object(Bucket=BUCKET, Key="results/b1/report.html")
    assert page["Body"].read().decode().count('<img class="thumbnail"') == 4
    assert page["ContentType"] == "text/html; charset=utf-8"  # opens in a browser from the console, not downloads


def test_input_prefix_listing_on_s3(spark, tmp_path, s3_endpoint, s3_data):
    output = str(tmp_path / "out")
    run(parse_args(["--input", f"s3://{BUCKET}/incoming/batch one/", "--model", f"s3://{BUCKET}/models/resnet",
                    "--output", output, "--s3-endpoint-url", s3_endpoint]), master="local[2,4]")
    assert sorted(row["source"] for row in _rows(output)) == sorted(s3_data[:6])


def test_committed_rows_on_s3_come_from_ranged_reads_of_the_footers(s3_endpoint, s3_data, monkeypatch):
    """The summary's check of the tasks' counts on an s3:// output (as on EMR, where EMRFS commits the files): only
    the visible part files count, each read by its last bytes. moto cannot prove how EMRFS lays out a commit; the
    layout here is what the S3-optimized committer leaves (part files, _SUCCESS) plus a _temporary leftover."""
    import io

    import pyarrow as pa

    import job.pipeline
    from job.pipeline import committed_rows

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    table = pa.table({"status": ["ok"] * 300, "index": list(range(300))})
    for key, rows in (("part-00000.snappy.parquet", 300), ("part-00001.snappy.parquet", 7),
                      ("_temporary/0/part-00002.snappy.parquet", 300)):
        buffer = io.BytesIO()
        pq.write_table(table.slice(0, rows), buffer, row_group_size=50)
        s3.put_object(Bucket=BUCKET, Key=f"results/run 1/predictions/{key}", Body=buffer.getvalue())
    s3.put_object(Bucket=BUCKET, Key="results/run 1/predictions/_SUCCESS", Body=b"")
    s3.put_object(Bucket=BUCKET, Key="results/run 1/predictions-other/part-00000.snappy.parquet", Body=b"PAR1")
    uri = f"s3://{BUCKET}/results/run 1/predictions"
    assert committed_rows(Storage(s3_endpoint), uri) == 307
    monkeypatch.setattr(job.pipeline, "FOOTER_READ_BYTES", 16)  # every footer takes a second ranged read
    assert committed_rows(Storage(s3_endpoint), uri + "/") == 307
