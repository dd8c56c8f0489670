"""Fixtures for the job's tests: real model packages, real images, one local SparkSession for the whole run."""

from __future__ import annotations

import glob
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Workers inherit the driver's environment when the JVM starts: fake credentials for the loopback S3 server only, set
# here (not per test) for that reason, and set over any real ones so that none can reach a test's server.
for _name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_name, None)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")


@pytest.fixture(scope="session")
def foolbox_wheel() -> str:
    found = glob.glob(os.path.join(REPO, "build", "data", "foolbox-3.3.4-*.whl"))
    if not found:
        pytest.fail("the foolbox wheel with the CIFAR-10 sample images is missing: run `make data` (make test does)")
    return found[0]


@pytest.fixture(scope="session")
def cifar_samples(foolbox_wheel):
    """The 20 real CIFAR-10 test images: ``[(name, png_bytes, label)]``."""
    from job.sample_data import foolbox_cifar10

    return foolbox_cifar10(foolbox_wheel)


@pytest.fixture(scope="session")
def untrained_package(tmp_path_factory) -> str:
    """Model-zoo ResNet-18 with random weights: fine for checking plumbing, never for reading labels."""
    from job.model_package import export_gluon, zoo_resnet18

    directory = str(tmp_path_factory.mktemp("untrained"))
    export_gluon(zoo_resnet18(10, seed=1), directory, name="untrained", input_shape=(3, 32, 32),
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), labels=[f"c{i}" for i in range(10)],
                 trained=False)
    return directory


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory):
    """ResNet-18 trained briefly on the digits: confident, distinct predictions to compare backends on."""
    from job.train_digits import train

    return train(str(tmp_path_factory.mktemp("digits")), epochs=2, seed=0)


@pytest.fixture(scope="session")
def digits_onnx_package(digits_model, tmp_path_factory) -> str:
    from job.model_package import export_onnx, read_package
    from job.storage import Storage

    directory = str(tmp_path_factory.mktemp("digits-onnx"))
    export_onnx(read_package(digits_model.package_dir, Storage()), directory)
    return directory


@pytest.fixture(scope="session")
def spark():
    from job.pipeline import spark_session

    session = spark_session("local[2,4]")
    yield session
    session.stop()
