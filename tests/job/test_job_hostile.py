"""Model packages and inputs built to do harm, through the real job: refused before any Spark work, or one error row
per input, and no file outside the job's scratch space changes (issue 17, reliability review #6-8, #11, #12, #14-17,
#22).

S3 is a moto server on loopback (the Python workers are other processes). What the mock cannot prove: S3's own
If-Match and Content-Length behaviour (documented; moto answers the same way), IAM, and S3 key rules beyond moto's.
Each Spark run here serves many rows of the tables, to keep the Spark share small.
"""

from __future__ import annotations

import io
import json
import os

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from hostile_packages import onnx_model, position_model, tree_state, upload_package, write_package
from job import pipeline
from job.config import parse_args
from job.model_package import ModelPackageError
from job.pipeline import run

pytestmark = pytest.mark.spark
BUCKET = "hostile-test-bucket"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def victim(tmp_path_factory):
    """A directory the hostile packages aim at, standing for a node user's home (shell rc files, sitecustomize)."""
    directory = tmp_path_factory.mktemp("victim")
    (directory / ".bashrc").write_text("# the node's own file\n")
    (directory / "secret.bin").write_bytes(np.arange(36, dtype=np.uint8).tobytes())
    return directory


def _no_spark(*args, **kwargs):
    raise AssertionError("a hostile package reached Spark")


def _hostile_packages(tmp_path, victim) -> dict:
    """name -> (local package directory, the message that must refuse it)."""
    root = tmp_path / "packages"
    up = "../" * 12
    return {
        "files traversal": (write_package(str(root / "a"), files={"onnx": f"{up}{victim}/.bashrc"}),
                            "'files' names must be plain relative names"),
        "files absolute": (write_package(str(root / "b"), files={"onnx": f"{victim}/.bashrc"}),
                           "'files' names must be plain relative names"),
        "external data absolute": (write_package(str(root / "c"), onnx_model(external=f"{victim}/secret.bin")),
                                   "reads external data from"),
        "external data ../": (write_package(str(root / "d"), onnx_model(external=f"{up}{victim}/secret.bin")),
                              "reads external data from"),
        "external data in a subgraph": (write_package(str(root / "e"), onnx_model(external="/etc/hostname",
                                                                                   where="subgraph")),
                                        "reads external data from"),
        "absurd input shape": (write_package(str(root / "f"), input_shape=(3, 40000, 40000)),
                               "'input_shape' must be .* from 1 to 4096"),
        "too many labels": (write_package(str(root / "g"), labels=[str(n) for n in range(200_000)]),
                            "'labels' may hold at most 100000"),
        "millions of labels": (write_package(str(root / "h"), labels=[f"label {n}" for n in range(2_000_000)]),
                               "model.json is larger than 16777216 bytes"),
    }


@pytest.mark.parametrize("where", ["local", "s3"])
def test_hostile_packages_are_refused_before_any_spark_work(tmp_path, victim, s3, s3_endpoint, monkeypatch, where):
    monkeypatch.setattr(pipeline, "spark_session", _no_spark)
    before = tree_state(str(victim))
    for name, (directory, message) in _hostile_packages(tmp_path, victim).items():
        model = directory if where == "local" else upload_package(
            s3, BUCKET, f"models/hostile-{os.path.basename(directory)}/", directory)
        config = parse_args(["--input", str(tmp_path), "--model", model, "--output", str(tmp_path / "out" / name),
                             "--s3-endpoint-url", s3_endpoint])
        with pytest.raises(ModelPackageError, match=message):
            run(config)
        assert not (tmp_path / "out" / name).exists(), name
    assert tree_state(str(victim)) == before


# --- one Spark run over hostile inputs, with a package prefix full of hostile keys -----------------------------------

def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _oriented_jpeg() -> bytes:
    pixels = np.zeros((24, 48, 3), np.uint8)
    pixels[:, :24, 0] = 255
    pixels[:4, :, 1] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF Orientation: turn 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


_PSD = (b"8BPS" + bytes([0, 1]) + bytes(6) + bytes([0, 3]) + (8).to_bytes(4, "big") * 2 + bytes([0, 8, 0, 3])
        + bytes(12) + bytes(2) + bytes(range(64)) * 3)
_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
_HTML = b"<!doctype html><script>alert(1)</script>"


@pytest.fixture(scope="module")
def hostile_run(spark, s3, s3_endpoint, victim, tmp_path_factory):
    """Uploads the inputs and a position-sensitive package whose prefix also holds keys that climb out of any
    directory, overwrites one upload after its ETag was taken, and runs the job once."""
    root = tmp_path_factory.mktemp("hostile-run")
    package = upload_package(s3, BUCKET, "models/position/", write_package(str(root / "pkg"), position_model()))
    up = "../" * 12
    for key in (f"models/position//{victim}/planted.txt", f"models/position/{up}{str(victim)[1:]}/planted.txt",
                "models/position/../../.bashrc"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"echo owned\n")
    rng = np.random.default_rng(1)
    oriented = _oriented_jpeg()
    inputs = {
        "incoming/ok.png": _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "incoming/dog#1.png": _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "incoming/dog": b"the wrong object",
        "incoming/cat.png?v=2.png": _png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)),
        "incoming/postscript.png": _EPS,
        "incoming/page.png": _HTML,
        "incoming/photoshop.jpg": _PSD,
        "incoming/black.png": _png(np.zeros((8, 8, 3), np.uint8)),
        "incoming/turned.jpg": oriented,
        "incoming/turned-with-trailer.jpg": oriented + b"\0\0\0\x18ftypmp42 motion photo",
        "incoming/huge.png": _png(np.zeros((8, 8, 3), np.uint8)) + b"\0" * 300_000,
        "incoming/overwritten.png": _png(np.full((8, 8, 3), 200, np.uint8)),
    }
    for key, data in inputs.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=data)
    old_etag = s3.head_object(Bucket=BUCKET, Key="incoming/overwritten.png")["ETag"]
    s3.put_object(Bucket=BUCKET, Key="incoming/overwritten.png", Body=_png(np.full((8, 8, 3), 10, np.uint8)))
    entries = [f"s3://{BUCKET}/{key}" for key in inputs if key not in ("incoming/dog", "incoming/overwritten.png")]
    entries.append({"uri": f"s3://{BUCKET}/incoming/overwritten.png", "etag": old_etag})
    s3.put_object(Bucket=BUCKET, Key="manifests/hostile.json", Body=json.dumps({"objects": entries}))
    scratch = root / "scratch"
    before = {path: state for path, state in tree_state(str(root.parent)).items() if not path.startswith(str(root))}
    output = root / "out"
    summary = run(parse_args([
        "--manifest", f"s3://{BUCKET}/manifests/hostile.json", "--model", package, "--output", str(output),
        "--s3-endpoint-url", s3_endpoint, "--max-failure-ratio", "1", "--batch-size", "4",
        "--max-object-bytes", "200000", "--max-bytes-in-flight", "400000",
        "--max-batch-bytes", "2000"]), master="local[2,4]")  # 960 decoded bytes an 8x8 image: batches of 2
    after = {path: state for path, state in tree_state(str(root.parent)).items() if not path.startswith(str(root))}
    rows = {row["source"].rsplit("/", 1)[1]: row for row in pq.read_table(output / "predictions").to_pylist()}
    return rows, summary, before, after, scratch


@pytest.mark.parametrize("name, status, error", [
    ("ok.png", "ok", None),
    ("dog#1.png", "ok", None),  # its own object, not incoming/dog
    ("cat.png?v=2.png", "ok", None),
    ("postscript.png", "error", "not_an_image"),
    ("page.png", "error", "not_an_image"),
    ("photoshop.jpg", "error", "not_an_image"),
    ("black.png", "error", "bad_scores"),
    ("turned.jpg", "ok", None),
    ("turned-with-trailer.jpg", "ok", None),
    ("huge.png", "error", "too_large"),
    ("overwritten.png", "error", "changed_since_upload"),
])
def test_each_hostile_input_is_one_row_with_its_reason(hostile_run, name, status, error):
    rows = hostile_run[0]
    assert rows[name]["status"] == status
    assert (rows[name]["error"] or "").split(":")[0] == (error or "")


def test_every_input_has_exactly_one_row_and_the_summary_counts_the_reasons(hostile_run):
    rows, summary = hostile_run[:2]
    assert len(rows) == summary["counts"]["total"] == 11
    assert summary["failures_by_reason"] == {"not_an_image": 3, "bad_scores": 1, "too_large": 1,
                                             "changed_since_upload": 1}
    assert summary["model"]["file_etags"].keys() == {"model.onnx"}
    assert summary["worker_peak_fetch_bytes_in_flight"] <= 400_000


def test_the_batch_size_is_cut_to_the_batch_byte_limit_and_the_summary_says_so(hostile_run):
    summary = hostile_run[1]
    assert summary["batch_size"] == 2
    assert any("batches of 2 images, not --batch-size 4" in note for note in summary["planning_notes"])


def test_a_turned_photo_gets_the_same_scores_on_both_decoder_paths(hostile_run):
    """The model sees where pixels are, so a photo turned on one path only would get other scores."""
    rows = hostile_run[0]
    plain, trailer = rows["turned.jpg"], rows["turned-with-trailer.jpg"]
    assert plain["label"] == trailer["label"]
    assert plain["probability"] == pytest.approx(trailer["probability"], abs=0.05)


def test_no_file_outside_the_scratch_space_changed(hostile_run, victim):
    _, _, before, after, _ = hostile_run
    assert after == before
    assert sorted(os.listdir(victim)) == [".bashrc", "secret.bin"]


def test_a_model_replaced_mid_run_fails_its_rows_clearly(spark, s3, s3_endpoint, tmp_path, monkeypatch):
    """The package is overwritten after the driver read it and before any worker loads it (reliability review #17):
    every row is model_changed and the summary says so, instead of two models mixed in one run."""
    package = upload_package(s3, BUCKET, "models/replaced/", write_package(str(tmp_path / "pkg")))
    s3.put_object(Bucket=BUCKET, Key="incoming/replaced/a.png", Body=_png(np.zeros((8, 8, 3), np.uint8)))
    s3.put_object(Bucket=BUCKET, Key="incoming/replaced/b.png", Body=_png(np.ones((8, 8, 3), np.uint8)))
    real_plan = pipeline.plan_tasks

    def plan_then_replace(*args, **kwargs):
        s3.put_object(Bucket=BUCKET, Key="models/replaced/model.onnx",
                      Body=onnx_model(weights=np.ones((3, 3), np.float32)).SerializeToString())
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(pipeline, "plan_tasks", plan_then_replace)
    summary = run(parse_args([
        "--input", f"s3://{BUCKET}/incoming/replaced/", "--model", package, "--output", str(tmp_path / "out"),
        "--s3-endpoint-url", s3_endpoint, "--max-failure-ratio", "1"]), master="local[2,4]")
    assert summary["failures_by_reason"] == {"model_changed": 2}
    assert len(summary["model_errors"]) == 1 and "changed after the run started" in summary["model_errors"][0]
