"""An mxnet package's ONNX twin: ``python -m job.model_package add-onnx``, the package format's check of it, and
``--runtime`` choosing what runs the model.

Real parts throughout: the model-zoo ResNet-18 (random weights, 32x32) exported by the package tools, real MXNet and
ONNX Runtime, the real scikit-learn digits as held-out images (one CIFAR-10 batch file of 120 records) and the 20 real
CIFAR-10 test images for the job's runs on local Spark. What these cannot show: that the two runtimes agree on other
models or CPUs (add-onnx measures that for each package, on its user's images), and a disagreement from a real
conversion (none of ours disagrees): the refusal itself is tested on a measured :class:`Agreement` of 99 in 100.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from job.cli import main as job_main
from job.config import ConfigError, parse_args
from job.model_package import main as package_main
from job.onnx_twin import refusal
from job.package_format import (MAX_TWIN_PROBABILITY_DIFFERENCE, MIN_HELD_OUT_IMAGES, ModelPackageError,
                                parse_manifest, runtime_package, twin_package)
from job.package_store import read_package
from job.pipeline import resolve_runtime, run
from job.quantize import Agreement
from job.sample_data import cifar_batch_bytes, digits_32x32
from job.storage import Storage

HELD_OUT_RECORDS = 120


def _held_out(directory, records: int) -> str:
    """A CIFAR-10 batch file of ``records`` real digits (32x32 RGB) under ``directory``; its path."""
    images, labels = digits_32x32()
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "held_out.bin")
    with open(path, "wb") as file:
        file.write(cifar_batch_bytes(images[:records], labels[:records]))
    return path


@pytest.fixture(scope="module")
def twin(tmp_path_factory, untrained_package) -> dict:
    """add-onnx run once, as a user runs it: the mxnet package copied with its twin to a new directory."""
    root = tmp_path_factory.mktemp("twin")
    manifest = root / "held-out.json"
    manifest.write_text(json.dumps({"objects": [_held_out(str(root / "images"), HELD_OUT_RECORDS)]}))
    out = str(root / "package")
    code = package_main(["add-onnx", "--package", untrained_package, "--held-out-manifest", str(manifest),
                         "--out", out])
    return {"code": code, "package": out, "manifest": str(manifest), "root": root}


@pytest.fixture(scope="module")
def onnx_package(tmp_path_factory, untrained_package) -> str:
    """The same model as an onnx package (to-onnx)."""
    out = str(tmp_path_factory.mktemp("onnx"))
    assert package_main(["to-onnx", "--package", untrained_package, "--out", out]) == 0
    return out


def _copy(package_dir: str, destination) -> str:
    return shutil.copytree(package_dir, str(destination))


def _edit_manifest(package_dir: str, change) -> None:
    path = os.path.join(package_dir, "model.json")
    with open(path) as file:
        document = json.load(file)
    change(document)
    with open(path, "w") as file:
        json.dump(document, file)


def test_add_onnx_embeds_the_twin_and_records_the_check(twin, untrained_package):
    assert twin["code"] == 0
    with open(os.path.join(twin["package"], "model.json")) as file:
        document = json.load(file)
    assert document["format"] == "mxnet"
    assert document["files"] == {"symbol": "model-symbol.json", "params": "model-0000.params", "onnx": "model.onnx"}
    check = document["onnx_twin"]
    assert check["held_out_images"] == HELD_OUT_RECORDS
    assert check["top1_agreement"] == 1.0
    assert 0 <= check["max_probability_difference"] <= MAX_TWIN_PROBABILITY_DIFFERENCE
    assert sorted(check["sha256"]) == ["model-0000.params", "model-symbol.json", "model.onnx"]
    assert check["held_out"] == {"manifest": twin["manifest"]}
    package = read_package(twin["package"], Storage())
    assert package.onnx_twin == check
    assert twin_package(package).files == {"onnx": "model.onnx"} and twin_package(package).format == "onnx"
    # The source package is left as it was.
    assert read_package(untrained_package, Storage()).onnx_twin is None
    assert not os.path.exists(os.path.join(untrained_package, "model.onnx"))


def test_add_onnx_in_place_and_again_over_an_old_twin(tmp_path, twin):
    """Without --out the twin goes into the package itself; a second run checks it again and replaces it."""
    package = _copy(twin["package"], tmp_path / "package")
    with open(os.path.join(package, "model-symbol.json"), "a") as symbol:
        symbol.write("\n")  # the same network, but no longer the bytes the twin was checked against
    with pytest.raises(ModelPackageError, match=r"\['model-symbol.json'\] differ from the files its ONNX twin"):
        read_package(package, Storage())
    assert package_main(["add-onnx", "--package", package, "--held-out-manifest", twin["manifest"]]) == 0
    checked = read_package(package, Storage()).onnx_twin
    assert checked["held_out_images"] == HELD_OUT_RECORDS and checked["held_out"] == {"manifest": twin["manifest"]}


def test_add_onnx_refuses_too_few_held_out_images_naming_the_numbers(tmp_path, capsys, untrained_package):
    images = _held_out(str(tmp_path / "few"), 40)
    out = tmp_path / "out"
    assert package_main(["add-onnx", "--package", untrained_package, "--held-out", images, "--out", str(out)]) == 2
    assert (f"only 40 held-out images could be decoded; at least {MIN_HELD_OUT_IMAGES} must compare the two runtimes"
            in capsys.readouterr().err)
    assert package_main(["add-onnx", "--package", untrained_package, "--held-out", images, "--out", str(out),
                         "--held-out-images", "50"]) == 2
    assert f"--held-out-images must be at least {MIN_HELD_OUT_IMAGES}; got 50" in capsys.readouterr().err
    assert not out.exists() or not os.listdir(out)


def test_add_onnx_refuses_an_onnx_package(tmp_path, capsys, onnx_package, twin):
    assert package_main(["add-onnx", "--package", onnx_package, "--held-out-manifest", twin["manifest"],
                         "--out", str(tmp_path / "out")]) == 2
    assert "is format 'onnx'; add-onnx gives an mxnet package an ONNX twin" in capsys.readouterr().err


def test_a_disagreement_is_refused_naming_the_numbers():
    """The gate on what add-onnx measured: one label in 100 differing, or a probability off by more than allowed."""
    exact = Agreement(images=100, agreeing=100, max_probability_difference=2e-7, mean_probability_difference=1e-8,
                      disagreement_max_fp32_margin=None)
    assert refusal(exact) is None
    one_off = Agreement(images=100, agreeing=99, max_probability_difference=0.2, mean_probability_difference=0.01,
                        disagreement_max_fp32_margin=0.001)
    assert refusal(one_off).startswith("the ONNX twin was not added: top-1 agreement of ONNX Runtime with MXNet "
                                       "99.00% (99/100 held-out images); probabilities differ by at most 2.00e-01")
    drifted = Agreement(images=100, agreeing=100, max_probability_difference=0.01, mean_probability_difference=0.01,
                        disagreement_max_fp32_margin=None)
    assert "differ by at most 1.00e-02 (allowed 1e-03)" in refusal(drifted)


@pytest.mark.parametrize("change, expected", [
    (lambda doc: doc["onnx_twin"].update(top1_agreement=0.99), "'onnx_twin.top1_agreement' must be 1"),
    (lambda doc: doc["onnx_twin"].update(held_out_images=20), "'onnx_twin.held_out_images' must be an integer of "
                                                              f"at least {MIN_HELD_OUT_IMAGES}; got 20"),
    (lambda doc: doc["onnx_twin"].update(max_probability_difference=0.5),
     "'onnx_twin.max_probability_difference' must be a number from 0 to 0.001; got 0.5"),
    (lambda doc: doc["onnx_twin"]["sha256"].pop("model.onnx"), "'onnx_twin.sha256' must map each package file"),
    (lambda doc: doc.pop("onnx_twin"), "'files.onnx' of an mxnet package is its ONNX twin and needs 'onnx_twin'"),
])
def test_a_tampered_check_is_refused_at_job_start(tmp_path, capsys, twin, change, expected):
    package = _copy(twin["package"], tmp_path / "package")
    _edit_manifest(package, change)
    with pytest.raises(ModelPackageError, match="malformed") as refused:
        read_package(package, Storage())
    assert expected in str(refused.value)
    (tmp_path / "in").mkdir()
    assert job_main(["--model", package, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, twin) -> str:
    """Another model with its own checked twin: the zoo ResNet-18 of another seed, add-onnx in place."""
    other = str(tmp_path_factory.mktemp("other") / "package")
    assert package_main(["export-zoo", "--out", other, "--seed", "7"]) == 0
    assert package_main(["add-onnx", "--package", other, "--held-out-manifest", twin["manifest"]]) == 0
    return other


def test_a_twin_of_another_model_is_refused(tmp_path, twin, other_model, capsys):
    """Another model's ONNX file (a zoo ResNet-18 of another seed, checked with its own mxnet files) put in place of
    the twin, and the mxnet weights changed after the check: both refused at job start, naming the file."""
    other = other_model
    swapped = _copy(twin["package"], tmp_path / "swapped")
    shutil.copyfile(os.path.join(other, "model.onnx"), os.path.join(swapped, "model.onnx"))
    with pytest.raises(ModelPackageError, match=r"\['model.onnx'\] differ from the files its ONNX twin was checked"):
        read_package(swapped, Storage())
    retrained = _copy(twin["package"], tmp_path / "retrained")
    shutil.copyfile(os.path.join(other, "model-0000.params"), os.path.join(retrained, "model-0000.params"))
    (tmp_path / "in").mkdir()
    assert job_main(["--model", retrained, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                     "--runtime", "mxnet"]) == 2
    assert "['model-0000.params'] differ from the files its ONNX twin was checked against" in capsys.readouterr().err


def test_onnx_twin_belongs_only_to_an_mxnet_package(twin):
    with open(os.path.join(twin["package"], "model.json")) as file:
        document = json.load(file)
    as_onnx = {**document, "format": "onnx", "files": {"onnx": "model.onnx"}}
    with pytest.raises(ModelPackageError, match="'onnx_twin' belongs to an mxnet package"):
        parse_manifest(as_onnx, "pkg")


def test_runtime_auto_mxnet_and_onnxruntime_resolve_per_package(twin, untrained_package, onnx_package):
    with_twin = read_package(twin["package"], Storage())
    plain = read_package(untrained_package, Storage())
    onnx = read_package(onnx_package, Storage())
    assert [resolve_runtime(with_twin, runtime) for runtime in ("auto", "mxnet", "onnxruntime")] == [
        "onnxruntime", "mxnet", "onnxruntime"]
    assert runtime_package(with_twin, "onnxruntime") == twin_package(with_twin)
    as_mxnet = runtime_package(with_twin, "mxnet")
    assert as_mxnet.files == {"symbol": "model-symbol.json", "params": "model-0000.params"}
    assert as_mxnet.format == "mxnet" and as_mxnet.onnx_twin is None
    assert runtime_package(plain, "mxnet") is plain
    assert [resolve_runtime(plain, runtime) for runtime in ("auto", "mxnet")] == ["mxnet", "mxnet"]
    assert [resolve_runtime(onnx, runtime) for runtime in ("auto", "onnxruntime")] == ["onnxruntime", "onnxruntime"]
    with pytest.raises(ConfigError, match="--runtime mxnet: --model .* is an onnx package, which only ONNX Runtime"):
        resolve_runtime(onnx, "mxnet")


def test_runtime_onnxruntime_without_a_twin_fails_at_start_with_exit_2(tmp_path, capsys, untrained_package):
    (tmp_path / "in").mkdir()
    assert job_main(["--model", untrained_package, "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out"), "--runtime", "onnxruntime"]) == 2
    error = capsys.readouterr().err
    assert f"--runtime onnxruntime: --model {untrained_package} is an mxnet package without an ONNX twin" in error
    assert "allowed values are auto, mxnet, onnxruntime" in error
    assert f"python -m job.model_package add-onnx --package {untrained_package} --held-out-manifest URI" in error
    assert not (tmp_path / "out").exists()


def test_an_unknown_runtime_is_refused_naming_the_values():
    with pytest.raises(ConfigError, match="--runtime must be one of auto, mxnet, onnxruntime; got 'tvm'"):
        parse_args(["--input", "x", "--model", "m", "--output", "o", "--runtime", "tvm"])


def test_validate_reports_the_twin(twin, cifar_samples, tmp_path, capsys):
    image = tmp_path / cifar_samples[0][0]
    image.write_bytes(cifar_samples[0][1])
    assert package_main(["validate", "--package", twin["package"], "--images", str(image)]) == 0
    printed = capsys.readouterr().out
    assert (f"runtime onnxruntime (the job's --runtime auto): the ONNX twin model.onnx, checked on "
            f"{HELD_OUT_RECORDS} held-out images: top-1 agreement with MXNet 100%") in printed


def test_inspect_inspects_the_twin(twin, capsys):
    """Before, inspect refused every mxnet package; a Graviton node can now check the twin the job will run."""
    assert package_main(["inspect", "--package", twin["package"], "--seconds", "0.2", "--batch-size", "4"]) == 0
    assert "convolutions run as integer QLinearConv: 0 of 20" in capsys.readouterr().out


@pytest.mark.spark
def test_the_job_runs_the_twin_with_onnx_runtime_and_the_same_top1_as_mxnet(spark, tmp_path, twin, cifar_samples):
    """The same package and images, run with --runtime auto (the default) and --runtime mxnet: the summary names the
    runtime the workers ran, and every image gets the same top-1 label."""
    inputs = tmp_path / "images"
    inputs.mkdir()
    for name, data, _ in cifar_samples:
        (inputs / name).write_bytes(data)
    summaries, labels = {}, {}
    for runtime in ("auto", "mxnet"):
        output = str(tmp_path / runtime)
        summaries[runtime] = run(parse_args(["--input", str(inputs), "--model", twin["package"], "--output", output,
                                             "--runtime", runtime, "--batch-size", "8"]), master="local[2,4]")
        rows = pq.read_table(os.path.join(output, "predictions")).to_pylist()
        labels[runtime] = {row["source"]: row["label"] for row in rows if row["status"] == "ok"}
    images = len(cifar_samples)
    assert summaries["auto"]["runtime"] == summaries["auto"]["model"]["runtime"] == "onnxruntime"
    assert summaries["auto"]["images_by_runtime"] == {"onnxruntime": images}
    assert summaries["mxnet"]["runtime"] == summaries["mxnet"]["model"]["runtime"] == "mxnet"
    assert summaries["mxnet"]["images_by_runtime"] == {"mxnet": images}
    assert summaries["auto"]["runtime_requested"] == "auto" and summaries["auto"]["model"]["format"] == "mxnet"
    assert len(labels["auto"]) == images and labels["auto"] == labels["mxnet"]
    with open(os.path.join(str(tmp_path / "auto"), "report.html")) as page:
        assert "(mxnet, run with onnxruntime, input" in " ".join(page.read().split())


def test_on_s3_the_driver_checks_every_file_and_a_worker_copies_only_the_twin(twin, other_model):
    """The package with its twin under an S3 prefix of a loopback moto server: the driver pins and hashes all three
    files; a worker's copy of the twin is the ONNX file alone, at its pinned ETag, and classifies; an ONNX file of
    another model uploaded over the twin is refused. The mock cannot show real S3's latency or IAM."""
    import boto3
    from moto.server import ThreadedMotoServer

    from job.predictor import cached_predictor

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        storage = Storage(f"http://{host}:{port}")
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        s3.create_bucket(Bucket="twin-test")
        for name in os.listdir(twin["package"]):
            s3.upload_file(os.path.join(twin["package"], name), "twin-test", f"models/zoo/{name}")
        package = read_package("s3://twin-test/models/zoo/", storage)
        assert sorted(package.file_etags) == ["model-0000.params", "model-symbol.json", "model.onnx"]
        runtime_package = twin_package(package)
        assert runtime_package.files == {"onnx": "model.onnx"}
        assert runtime_package.file_etags == {"model.onnx": package.file_etags["model.onnx"]}
        predict, _, loaded_now = cached_predictor(runtime_package, "cpu", storage)
        assert loaded_now and predict(np.zeros((2, 3, 32, 32), dtype=np.float32)).shape == (2, 10)
        with open(os.path.join(other_model, "model.onnx"), "rb") as other_onnx:
            s3.put_object(Bucket="twin-test", Key="models/zoo/model.onnx", Body=other_onnx.read())
        with pytest.raises(ModelPackageError, match=r"\['model.onnx'\] differ from the files its ONNX twin"):
            read_package("s3://twin-test/models/zoo/", storage)
    finally:
        server.stop()

