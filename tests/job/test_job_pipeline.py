"""The job end to end on real local Spark (local[2], task retries on) with real MXNet and real images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from job.config import ConfigError, parse_args
from job.decode import Normalizer, decode_cifar_records, decode_image
from job.model_package import read_package
from job.pipeline import JobFailed, committed_rows, counts_from_tasks, run, summarize
from job.predictor import Device, load_predictor
from job.sample_data import cifar_batch_bytes
from job.sources import MIN_IMAGES_PER_TASK
from job.storage import Storage

pytestmark = pytest.mark.spark
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(spark, *args: str) -> dict:
    return run(parse_args(list(args)), master="local[2,4]")


def _rows(output: str) -> list[dict]:
    return pq.read_table(os.path.join(output, "predictions")).to_pylist()


def _summary(output: str) -> dict:
    with open(os.path.join(output, "summary.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, cifar_samples):
    """20 real CIFAR-10 PNGs, the same images as JPEGs, and one CIFAR-10 batch of them with their labels."""
    directory = tmp_path_factory.mktemp("mixed")
    pixels = []
    for name, data, _ in cifar_samples:
        (directory / name).write_bytes(data)
        image = Image.open(io.BytesIO(data)).convert("RGB")
        pixels.append(np.asarray(image))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=92)
        (directory / name.replace(".png", ".jpg")).write_bytes(buffer.getvalue())
    labels = np.array([label for _, _, label in cifar_samples])
    (directory / "test_batch.bin").write_bytes(cifar_batch_bytes(np.stack(pixels), labels))
    return directory


def _reference(package_dir: str, directory) -> dict:
    """The same package on the same files in this one process, one batch: what the job must reproduce."""
    package = read_package(package_dir, Storage())
    keys, images, true_labels = [], [], {}
    for name in sorted(os.listdir(directory)):
        data = (directory / name).read_bytes()
        if name.endswith(".bin"):
            decoded, labels = decode_cifar_records(data, package.height, package.width)
            for index, (image, label) in enumerate(zip(decoded, labels)):
                keys.append((str(directory / name), index))
                images.append(image)
                true_labels[keys[-1]] = int(label)
        else:
            keys.append((str(directory / name), 0))
            images.append(decode_image(data, package.height, package.width))
    probabilities = load_predictor(package, package_dir, Device("cpu"))(
        Normalizer(package.mean, package.std)(np.stack(images)))
    return {key: (row, true_labels.get(key)) for key, row in zip(keys, probabilities)}


def test_every_input_once_and_predictions_equal_a_single_process_run(spark, tmp_path, mixed_inputs, untrained_package):
    output = str(tmp_path / "out")
    # A batch size of 7 splits the CIFAR batch across batches and mixes files with records in one batch.
    summary = _run(spark, "--input", str(mixed_inputs), "--model", untrained_package, "--output", output,
                   "--batch-size", "7", "--top-k", "3")
    rows = _rows(output)
    reference = _reference(untrained_package, mixed_inputs)
    keys = [(row["source"], row["index"]) for row in rows]
    assert len(keys) == len(set(keys)) == len(reference) == 60
    assert set(keys) == set(reference)
    for row in rows:
        expected, true_label = reference[(row["source"], row["index"])]
        assert row["status"] == "ok" and row["error"] is None
        assert row["label"] == int(expected.argmax())
        assert row["label_name"] == f"c{row['label']}"
        assert row["probability"] == pytest.approx(float(expected.max()), abs=1e-4)
        assert [entry["label"] for entry in row["top_k"]] == list(np.argsort(-expected)[:3])
        assert row["top_k"][0] == {"label": row["label"], "probability": row["probability"]}
        assert row["true_label"] == true_label
    assert summary["counts"] == {"total": 60, "ok": 60, "error": 0, "skipped_objects": 0}
    assert summary["accuracy"]["images_with_ground_truth"] == 20
    _assert_counted_by_the_tasks_as_the_parquet_says(spark, summary, output, untrained_package)
    loads = summary["model_load_per_worker_s"]
    assert loads["workers"] >= 1 and loads["max"] >= loads["median"] > 0
    assert "untrained" in summary["accuracy"]["note"]
    assert _summary(output)["status"] == "succeeded"


def _assert_counted_by_the_tasks_as_the_parquet_says(spark, summary: dict, output: str, package_dir: str) -> None:
    """The summary's counts came from the tasks, and equal what a second pass over the committed Parquet finds."""
    assert summary["summary_counted_from"] == "tasks"
    read_back = summarize(spark, os.path.join(output, "predictions"), read_package(package_dir, Storage()))
    assert {key: summary["counts"][key] for key in ("total", "ok", "error")} == {
        key: read_back[key] for key in ("total", "ok", "error")}
    for key in ("failures_by_reason", "per_class_counts", "accuracy"):
        assert summary[key] == read_back[key], key
    assert list(summary["failures_by_reason"]) == list(read_back["failures_by_reason"])  # the same order too


def _png_claiming(width: int, height: int) -> bytes:
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + header
            + struct.pack(">I", zlib.crc32(b"IHDR" + header)))


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, cifar_samples):
    """Four good images and one of each kind of bad input, named in a manifest with one missing object."""
    directory = tmp_path_factory.mktemp("bad")
    good = []
    for name, data, _ in cifar_samples[:4]:
        (directory / name).write_bytes(data)
        good.append(str(directory / name))
    damaged = bytearray(cifar_samples[5][1])
    damaged[200:260] = bytes(byte ^ 0x5A for byte in damaged[200:260])  # inside the compressed pixel data
    bad = {
        "corrupt.png": bytes(damaged),
        "truncated.png": cifar_samples[4][1][: len(cifar_samples[4][1]) // 2],
        "empty.jpg": b"",
        "text.png": b"this is a text file with an image suffix",
        "bomb.png": _png_claiming(200_000, 200_000),
        "partial.bin": b"\0" * 3000,
    }
    for name, data in bad.items():
        (directory / name).write_bytes(data)
    uris = good + [str(directory / name) for name in bad] + [str(directory / "missing.png")]
    manifest = directory / "manifest.json"
    manifest.write_text(json.dumps({"batch_id": "test", "objects": uris, "source": BAD_INPUTS_SOURCE}))
    return manifest


# What the trigger records in a batch manifest; the job copies it into summary.json as it is (issue 18, part 3).
BAD_INPUTS_SOURCE = {"kind": "upload", "prefix": "s3://amzn-s3-demo-bucket/incoming/bad/", "uploads": 11}


EXPECTED_REASONS = {"corrupt.png": "corrupt_image", "truncated.png": "corrupt_image", "empty.jpg": "empty_file",
                    "text.png": "not_an_image", "bomb.png": "image_too_large", "partial.bin": "bad_cifar_size",
                    "missing.png": "not_found"}


def test_bad_inputs_are_recorded_failures_and_the_rest_is_classified(spark, tmp_path, bad_inputs, untrained_package):
    output = str(tmp_path / "out")
    summary = _run(spark, "--manifest", str(bad_inputs), "--model", untrained_package, "--output", output,
                   "--max-failure-ratio", "0.7")
    by_name = {os.path.basename(row["source"]): row for row in _rows(output)}
    assert len(by_name) == 11
    assert {name: row["error"].split(":")[0] for name, row in by_name.items() if row["status"] == "error"} == (
        EXPECTED_REASONS)
    assert all(row["label"] is None and row["top_k"] is None for row in by_name.values() if row["status"] == "error")
    assert sum(row["status"] == "ok" for row in by_name.values()) == 4
    assert summary["failures_by_reason"] == {"corrupt_image": 2, "empty_file": 1, "not_an_image": 1,
                                             "image_too_large": 1, "bad_cifar_size": 1, "not_found": 1}
    _assert_counted_by_the_tasks_as_the_parquet_says(spark, summary, output, untrained_package)
    assert summary["source"] == BAD_INPUTS_SOURCE


def test_too_many_failures_fail_the_job_after_writing_everything(spark, tmp_path, bad_inputs, untrained_package):
    output = str(tmp_path / "results" / "20261201093000a1b2c3")
    record_path = tmp_path / "runs" / "20261201093000a1b2c3.json"
    with pytest.raises(JobFailed, match="7 of 11 inputs failed"):
        _run(spark, "--manifest", str(bad_inputs), "--model", untrained_package, "--output", output,
             "--max-failure-ratio", "0.5", "--run-record", str(record_path))
    assert len(_rows(output)) == 11
    summary = _summary(output)
    assert summary["status"] == "failed"
    # The runs table's record: one line, written before the job fails, pointing at what the run wrote.
    lines = record_path.read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["run_id"] == "20261201093000a1b2c3" and record["status"] == "failed"
    assert (record["total"], record["ok"], record["error"]) == (11, 4, 7)
    assert {name: value for name, value in record["source"].items() if value is not None} == BAD_INPUTS_SOURCE
    assert record["summary"] == os.path.join(output, "summary.json") and os.path.exists(record["summary"])
    assert record["report"] == summary["report"]["uri"] and record["model_name"] == summary["model"]["name"]
    assert record["started_at"] <= record["finished_at"] == summary["finished_at"]


def test_a_killed_python_worker_still_yields_every_input_once(spark, tmp_path, mixed_inputs, untrained_package):
    output = str(tmp_path / "out")
    marker = tmp_path / "killed-once"
    summary = _run(spark, "--input", str(mixed_inputs), "--model", untrained_package, "--output", output,
                   "--batch-size", "4", "--test-kill-worker-once", str(marker), "--test-kill-worker-after-images", "8")
    assert marker.exists()  # a worker really died mid-task
    keys = [(row["source"], row["index"]) for row in _rows(output)]
    assert len(keys) == len(set(keys)) == 60
    # The killed attempt had counted 8 or more rows: they are not counted again beside its retry's.
    assert summary["counts"]["total"] == 60
    _assert_counted_by_the_tasks_as_the_parquet_says(spark, summary, output, untrained_package)


def _task_counts(partition: int, total: int, ok: int, reasons=None, per_class=None) -> dict:
    return {"partition": partition, "attempt": 0, "total": total, "ok": ok, "graded": 0, "correct": 0,
            "reasons": reasons or {}, "per_class": per_class or {}}


def test_task_counts_are_refused_unless_each_partition_counts_once_and_they_add_up_to_the_committed_rows(
        untrained_package):
    package = read_package(untrained_package, Storage())
    one, two = _task_counts(0, 5, 4, {"not_found": 1}, {"c1": 4}), _task_counts(1, 3, 3, per_class={"c1": 1, "c2": 2})
    counts = counts_from_tasks([one, two], 8, package)
    assert counts["total"] == 8 and counts["ok"] == 7 and counts["error"] == 1
    assert counts["failures_by_reason"] == {"not_found": 1} and counts["per_class_counts"] == {"c1": 5, "c2": 2}
    assert counts_from_tasks([one, two, {**one, "attempt": 1}], 13, package) is None  # partition 0 twice
    assert counts_from_tasks([one, two], 9, package) is None  # a row the tasks did not count
    assert counts_from_tasks([one], 8, package) is None  # a partition that did not report


@pytest.mark.parametrize("footers, warning", [
    ("wrong", "the tasks' counts do not match the committed files' rows"),
    ("unreadable", "the committed files' footers could not be read: OSError: footer gone"),
])
def test_when_the_task_counts_cannot_be_trusted_the_summary_counts_from_the_parquet(
        spark, tmp_path, bad_inputs, untrained_package, monkeypatch, capsys, footers, warning):
    import job.pipeline

    def committed(storage, predictions_uri):
        if footers == "unreadable":
            raise OSError("footer gone")
        return 12  # one row more than the tasks wrote

    monkeypatch.setattr(job.pipeline, "committed_rows", committed)
    output = str(tmp_path / "out")
    summary = _run(spark, "--manifest", str(bad_inputs), "--model", untrained_package, "--output", output,
                   "--max-failure-ratio", "0.7")
    assert f"warning: {warning}; counting from the Parquet instead" in capsys.readouterr().err
    assert summary["summary_counted_from"] == _summary(output)["summary_counted_from"] == "parquet"
    assert summary["counts"]["total"] == 11 and summary["failures_by_reason"]["corrupt_image"] == 2


def test_committed_rows_come_from_the_footers_of_the_visible_parquet_files(tmp_path, monkeypatch):
    import pyarrow as pa

    import job.pipeline

    predictions = tmp_path / "predictions"
    (predictions / "_temporary" / "0").mkdir(parents=True)
    table = pa.table({"status": ["ok"] * 1000, "index": list(range(1000))})
    pq.write_table(table, predictions / "part-00000.snappy.parquet", row_group_size=64)
    pq.write_table(table.slice(0, 10), predictions / "part-00001.snappy.parquet")
    pq.write_table(table, predictions / "_temporary" / "0" / "part-00002.snappy.parquet")  # not committed
    (predictions / "_SUCCESS").write_bytes(b"")
    (predictions / ".part-00000.snappy.parquet.crc").write_bytes(b"crc")
    assert committed_rows(Storage(), str(predictions)) == 1010
    assert committed_rows(Storage(), f"file://{predictions}/") == 1010
    monkeypatch.setattr(job.pipeline, "FOOTER_READ_BYTES", 16)  # every footer takes a second read
    assert committed_rows(Storage(), str(predictions)) == 1010
    (predictions / "part-00003.snappy.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="part-00003.snappy.parquet is not a Parquet file"):
        committed_rows(Storage(), str(predictions))


def test_existing_output_is_refused_unless_overwrite(spark, tmp_path, cifar_samples, untrained_package):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, data, _ in cifar_samples[:3]:
        (inputs / name).write_bytes(data)
    output = str(tmp_path / "out")
    arguments = ["--input", str(inputs), "--model", untrained_package, "--output", output]
    _run(spark, *arguments)
    (inputs / cifar_samples[0][0]).unlink()
    with pytest.raises(ConfigError, match="already holds results; pass --overwrite"):
        _run(spark, *arguments)
    _run(spark, *arguments, "--overwrite")
    assert len(_rows(output)) == 2  # replaced, not mixed with the first run's three rows


def test_gpu_requested_without_gpu_scheduling_fails_at_start(spark, tmp_path, mixed_inputs, untrained_package):
    with pytest.raises(ConfigError, match="spark.task.resource.gpu.amount is not set"):
        _run(spark, "--input", str(mixed_inputs), "--model", untrained_package, "--output", str(tmp_path / "o"),
             "--device", "gpu")
    assert not (tmp_path / "o").exists()


def _job(*args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "job", *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": REPO})


@pytest.mark.parametrize("case, message", [
    ("missing_model", "no model.json there"),
    ("malformed_model", "'format' must be one of"),
    ("empty_input", "no images"),
    ("unknown_device", "--device must be one of cpu, gpu, auto; got 'tpu'"),
    ("bad_uri", "only s3:// URIs and local paths"),
    ("bad_manifest", "is not valid JSON"),
])
def test_bad_start_up_input_fails_before_spark_with_a_message(tmp_path, untrained_package, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken-model").mkdir()
    (tmp_path / "broken-model" / "model.json").write_text('{"format": "caffe"}')
    (tmp_path / "manifest.json").write_text("[not json")
    arguments = {
        "missing_model": ["--input", str(tmp_path), "--model", str(tmp_path / "nowhere")],
        "malformed_model": ["--input", str(tmp_path), "--model", str(tmp_path / "broken-model")],
        "empty_input": ["--input", str(tmp_path / "empty"), "--model", untrained_package],
        "unknown_device": ["--input", str(tmp_path), "--model", untrained_package, "--device", "tpu"],
        "bad_uri": ["--input", "hdfs://cluster/images", "--model", untrained_package],
        "bad_manifest": ["--manifest", str(tmp_path / "manifest.json"), "--model", untrained_package],
    }[case]
    completed = _job(*arguments, "--output", str(tmp_path / "out"))
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert "SparkContext" not in completed.stderr and "log level" not in completed.stderr  # Spark never started
    assert not (tmp_path / "out").exists()


def test_spark_submit_with_the_packaged_zip_from_another_directory(tmp_path, mixed_inputs, untrained_package):
    """How EMR runs the job: spark-submit, the `job` package only from --py-files, entry script outside the repo; the
    report's template is read from inside the zip."""
    archive = tmp_path / "job.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for directory, _, names in os.walk(os.path.join(REPO, "job")):
            for name in names:
                if "__pycache__" not in directory:  # what infra/packaging.py ships: every file but bytecode
                    path = os.path.join(directory, name)
                    bundle.write(path, os.path.relpath(path, REPO))
    entry = tmp_path / "spark_entry.py"
    entry.write_text(open(os.path.join(REPO, "job", "spark_entry.py")).read())
    output = tmp_path / "out"
    spark_submit = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["PYSPARK_PYTHON"] = sys.executable
    completed = subprocess.run(
        [spark_submit, "--master", "local[2]", "--py-files", str(archive), str(entry), "--input", str(mixed_inputs),
         "--model", untrained_package, "--output", str(output)],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert len(_rows(str(output))) == 60
    assert _summary(str(output))["report"]["error"] is None and (output / "report.html").stat().st_size > 0


class _ContextAtStart:
    """What the driver sees of a SparkContext right after it started: its conf and defaultParallelism. Under dynamic
    allocation with no executors yet, Spark reports max(cores of registered executors, 2) = 2 unless
    spark.default.parallelism is set (then that). A real YARN start is not run here; tests/cluster runs a standalone
    cluster with dynamic allocation."""

    def __init__(self, conf, default_parallelism):
        self._conf, self.defaultParallelism = conf, default_parallelism

    def getConf(self):  # noqa: N802 - SparkContext's naming
        return self._conf


def test_planning_under_dynamic_allocation_without_the_slot_count_is_flagged():
    from pyspark import SparkConf

    from job.pipeline import task_slots

    conf = SparkConf(loadDefaults=False).set("spark.dynamicAllocation.enabled", "true")
    slots, note = task_slots(_ContextAtStart(conf, 2))
    assert slots == 2
    assert "spark.default.parallelism is not set" in note


def test_planning_uses_the_configured_slot_count_silently():
    from pyspark import SparkConf

    from job.pipeline import task_slots

    conf = (SparkConf(loadDefaults=False).set("spark.dynamicAllocation.enabled", "true")
            .set("spark.default.parallelism", "16"))
    assert task_slots(_ContextAtStart(conf, 16)) == (16, None)


def test_summary_records_the_slots_tasks_were_planned_for(spark, tmp_path, cifar_samples, untrained_package):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    for name, data, _ in cifar_samples:
        (image_dir / name).write_bytes(data)
    summary = run(parse_args(["--input", str(image_dir), "--model", untrained_package,
                              "--output", str(tmp_path / "out")]), master=None)
    assert summary["task_slots"] == spark.sparkContext.defaultParallelism
    assert summary["planning_notes"] == []
    # 20 images: fewer than MIN_IMAGES_PER_TASK per slot, so one task rather than one per slot.
    assert summary["tasks"] == max(1, min(summary["task_slots"], len(cifar_samples) // MIN_IMAGES_PER_TASK))
