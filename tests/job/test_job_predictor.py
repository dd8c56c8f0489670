"""Devices and backends, without Spark: real MXNet and ONNX Runtime on real images."""

import os

import numpy as np
import pytest

from job.decode import Normalizer
from job.model_package import read_package
from job.predictor import Device, DeviceError, load_predictor, resolve_device, task_gpu_addresses
from job.sample_data import digits_32x32
from job.storage import Storage


def test_cpu_is_cpu_whatever_spark_assigned():
    assert resolve_device("cpu", ["0"], 1) == Device("cpu")


def test_gpu_uses_the_gpu_spark_assigned_to_the_task():
    assert resolve_device("gpu", ["1"], 2) == Device("gpu", 1)
    assert resolve_device("auto", ["0"], 1) == Device("gpu", 0)


@pytest.mark.parametrize("assigned, visible, message", [
    ([], 1, "Spark assigned no GPU"),
    (["0"], 0, "framework sees no GPU"),
    (["3"], 2, "assigned GPU 3 but the framework sees only 2"),
])
def test_gpu_without_a_usable_gpu_fails_clearly_and_auto_falls_back(assigned, visible, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device("gpu", assigned, visible)
    fallback = resolve_device("auto", assigned, visible)
    assert fallback.kind == "cpu" and "fell back to CPU" in fallback.note and message.split()[0] in fallback.note


def test_task_gpu_addresses_reads_spark_task_resources(monkeypatch):
    """Fake task resources: the shape TaskContext.resources() has on a GPU executor (not provable without one)."""
    from pyspark import TaskContext
    from pyspark.resource import ResourceInformation

    class FakeTaskContext:
        def resources(self):
            return {"gpu": ResourceInformation("gpu", ["2"])}

    monkeypatch.setattr(TaskContext, "get", classmethod(lambda cls: FakeTaskContext()))
    assert task_gpu_addresses() == ["2"]
    assert resolve_device("auto", task_gpu_addresses(), 4) == Device("gpu", 2)


def test_no_task_context_means_no_gpu():
    assert task_gpu_addresses() == []


def test_onnx_and_mxnet_backends_agree_on_real_images(digits_model, digits_onnx_package):
    images, labels = digits_32x32()
    held_out = images[digits_model.held_out_indices[:200]]
    mxnet_package = read_package(digits_model.package_dir, Storage())
    onnx_package = read_package(digits_onnx_package, Storage())
    batch = Normalizer(mxnet_package.mean, mxnet_package.std)(held_out)
    mxnet_probabilities = load_predictor(mxnet_package, mxnet_package.uri, Device("cpu"))(batch)
    onnx_probabilities = load_predictor(onnx_package, onnx_package.uri, Device("cpu"))(batch)
    assert np.array_equal(mxnet_probabilities.argmax(1), onnx_probabilities.argmax(1))
    np.testing.assert_allclose(mxnet_probabilities, onnx_probabilities, atol=1e-4)
    np.testing.assert_allclose(mxnet_probabilities.sum(1), 1.0, rtol=1e-5)
    # A model that learned something: far above the 10% of chance on digits it never saw.
    assert (mxnet_probabilities.argmax(1) == labels[digits_model.held_out_indices[:200]]).mean() > 0.5


def test_onnx_on_gpu_fails_when_the_session_does_not_run_on_cuda(digits_onnx_package):
    """The real CPU build of ONNX Runtime, asked for its CUDA provider, creates a session on the CPU only: what
    onnxruntime-gpu does when it cannot load the CUDA 12 or cuDNN 9 libraries (microsoft/onnxruntime#11323)."""
    package = read_package(digits_onnx_package, Storage())
    expected = r"could not run on GPU 0: the session's providers are \['CPUExecutionProvider'\]"
    with pytest.raises(DeviceError, match=expected):
        load_predictor(package, package.uri, Device("gpu", 0))


@pytest.fixture
def onnx_gpu_build_without_cuda_libraries(monkeypatch):
    """A task on a GPU executor (fake Spark task resources) with an ONNX Runtime that lists its CUDA provider as
    available (as onnxruntime-gpu does whether or not it can load it) while sessions get only the CPU (the real CPU
    build here). Not provable here: that onnxruntime-gpu on a node without the libraries behaves exactly so."""
    import onnxruntime
    from pyspark import TaskContext
    from pyspark.resource import ResourceInformation

    from job import predictor

    class FakeTaskContext:
        def resources(self):
            return {"gpu": ResourceInformation("gpu", ["0"])}

    monkeypatch.setattr(TaskContext, "get", classmethod(lambda cls: FakeTaskContext()))
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(predictor, "_cache", {})


def test_onnx_device_gpu_fails_clearly_when_cuda_cannot_load(
    digits_onnx_package, onnx_gpu_build_without_cuda_libraries
):
    from job.predictor import cached_predictor

    package = read_package(digits_onnx_package, Storage())
    with pytest.raises(DeviceError, match=r"^--device gpu: ONNX Runtime could not run on GPU 0"):
        cached_predictor(package, "gpu", Storage())


def test_onnx_device_auto_falls_back_to_cpu_and_says_why(digits_onnx_package, onnx_gpu_build_without_cuda_libraries):
    from job.predictor import cached_predictor

    package = read_package(digits_onnx_package, Storage())
    predict, device, loaded_now = cached_predictor(package, "auto", Storage())
    assert (device.kind, loaded_now) == ("cpu", True)
    assert device.note.startswith("--device auto fell back to CPU: ONNX Runtime could not run on GPU 0")
    images, _ = digits_32x32()
    batch = Normalizer(package.mean, package.std)(images[:8])
    assert predict(batch).shape == (8, len(package.labels))
    # The next task of the same worker reuses the CPU session and still reports why.
    _, again, loaded_again = cached_predictor(package, "auto", Storage())
    assert (again, loaded_again) == (device, False)


# --- S3 packages: copies, pinning and cleanup (reliability review #7, #13, #17) -------------------------------------

@pytest.fixture
def s3_package(tmp_path, monkeypatch):
    """A tiny ONNX package on moto (in-process) and a private temporary directory for the worker's copies.

    What the mock cannot prove: S3's own If-Match evaluation (documented; moto answers 412 the same way)."""
    import tempfile

    import boto3
    from moto import mock_aws

    from hostile_packages import upload_package, write_package
    from job import predictor

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(predictor, "_cache", {})  # a worker's first load, whatever earlier tests loaded
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="package-bucket")
        uri = upload_package(s3, "package-bucket", "models/tiny/", write_package(str(tmp_path / "pkg")))
        s3.put_object(Bucket="package-bucket", Key="models/tiny/../../escape.txt", Body=b"not named in model.json")
        yield s3, uri, scratch


def test_a_worker_copies_only_named_files_and_keeps_no_copy(s3_package, monkeypatch):
    from job import predictor

    s3, uri, scratch = s3_package
    package = read_package(uri, Storage())
    assert set(package.file_etags) == {"model.onnx"} and package.file_etags["model.onnx"].startswith('"')
    copied = []
    real_load = predictor.load_predictor

    def recording_load(package, directory, device):
        copied.extend(sorted(os.listdir(directory)))
        return real_load(package, directory, device)

    monkeypatch.setattr(predictor, "load_predictor", recording_load)
    predict, device, loaded_now = predictor.cached_predictor(package, "cpu", Storage())
    assert loaded_now and copied == ["model.onnx"]  # not model.json's neighbours, not the ../ key
    assert os.listdir(scratch) == []  # the copy is gone once the model is loaded
    assert predict(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 3)


def test_a_package_replaced_after_the_driver_read_it_fails_as_model_changed(s3_package):
    from hostile_packages import onnx_model

    from job.model_package import ModelChanged
    from job.predictor import cached_predictor

    s3, uri, scratch = s3_package
    package = read_package(uri, Storage())
    s3.put_object(Bucket="package-bucket", Key="models/tiny/model.onnx",
                  Body=onnx_model(weights=np.ones((3, 3), np.float32)).SerializeToString())
    with pytest.raises(ModelChanged, match="changed after the run started"):
        cached_predictor(package, "cpu", Storage())
    assert os.listdir(scratch) == []


def test_a_model_whose_output_does_not_match_its_labels_fails_on_load(tmp_path):
    from hostile_packages import write_package

    from job.model_package import ModelOutputError

    package_dir = write_package(str(tmp_path / "pkg"), labels=["a", "b"])  # the model gives 3 scores
    with pytest.raises(ModelOutputError, match=r"shape \(1, 3\) for a batch of 1 images .* expected \(1, 2\)"):
        load_predictor(read_package(package_dir, Storage()), package_dir, Device("cpu"))
