"""Fixtures for the trigger Lambda's tests: moto for S3/EMR/SQS and the handler module loaded fresh inside the mock.

The function's folder is its code root at runtime, so it goes on sys.path here and its modules import as top-level names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

TRIGGER_FUNCTION_DIR = Path(__file__).resolve().parents[2] / "infra" / "trigger_function"
sys.path.insert(0, str(TRIGGER_FUNCTION_DIR))

from trigger_helpers import (  # noqa: E402  (needs the path above)
    BUCKET,
    REGION,
    AwsClients,
    base_environment,
    create_cluster,
    forget_trigger_modules,
    import_trigger_handler,
)


@pytest.fixture(autouse=True)
def fake_aws_environment(monkeypatch):
    """No real credentials or profile can leak into a test; every client talks to moto in one region."""
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "trigger")


@pytest.fixture
def moto_server_url(monkeypatch):
    """A moto server on loopback, reached through AWS_ENDPOINT_URL as any boto3 client (and the job's workers) would."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    yield url
    server.stop()


@pytest.fixture
def aws():
    """moto's S3, EMR and SQS with the data bucket created."""
    with mock_aws():
        clients = AwsClients(s3=boto3.client("s3"), emr=boto3.client("emr"), sqs=boto3.client("sqs"))
        clients.s3.create_bucket(Bucket=BUCKET)
        yield clients


@pytest.fixture
def persistent_cluster(aws) -> str:
    """The stack's long-lived cluster (moto: WAITING, no steps)."""
    return create_cluster(aws.emr, keep_alive=True)


@pytest.fixture
def load_handler(monkeypatch):
    """Import the handler afresh with the given environment, so its module-level settings and clients are rebuilt
    (clients must be created while moto is active)."""

    def load(environment: dict[str, str]):
        for name in list(base_environment()) + [
            "CLUSTER_ID",
            "JOB_FLOW_DEFINITION_KEY",
            "CLUSTER_TAG_KEY",
            "CLUSTER_TAG_VALUE",
        ]:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        return import_trigger_handler()

    yield load
    forget_trigger_modules()


@pytest.fixture
def persistent_handler(load_handler, persistent_cluster):
    return load_handler(base_environment(CLUSTER_ID=persistent_cluster))
