"""Fixtures for the trigger Lambda's tests: moto for S3/EMR/SQS and the handler module loaded fresh inside the mock.

The function's folder is its code root at runtime, so it goes on sys.path here and its modules import as top-level names.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from moto import mock_aws
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

TRIGGER_FUNCTION_DIR = Path(__file__).resolve().parents[2] / "infra" / "trigger_function"
sys.path.insert(0, str(TRIGGER_FUNCTION_DIR))

from trigger_helpers import (  # noqa: E402  (needs the path above)
    REGION,
    TOPIC_ARN,
    aws_clients,
    base_environment,
    create_cluster,
    create_function_resources,
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


def reset_moto(url: str) -> None:
    """Empty every moto backend: servers in this process share moto's state with each other (and earlier tests)."""
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()


@pytest.fixture
def moto_server_url(monkeypatch):
    """A moto server on loopback, reached through AWS_ENDPOINT_URL as any boto3 client (and the job's workers) would."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    reset_moto(url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    yield url
    server.stop()


@pytest.fixture
def serialized_moto_server_url(monkeypatch):
    """A moto server on loopback that handles one request at a time, reached through AWS_ENDPOINT_URL.

    moto's threaded server runs requests concurrently without a lock, and its conditional writes read, compare and write
    in separate Python steps, so two concurrent conditional writes can both succeed there. DynamoDB and S3 make each
    conditional request atomic. Serializing whole requests gives exactly that (and nothing more): concurrent clients'
    requests interleave in any order, each one atomic. What this cannot show: DynamoDB's own behaviour under load.
    """
    app = DomainDispatcherApplication(create_backend_app)
    one_request_at_a_time = threading.Lock()

    def serialized(environ, start_response):
        with one_request_at_a_time:
            return list(app(environ, start_response))  # the whole response is produced inside the lock

    server = make_server("127.0.0.1", 0, serialized, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    reset_moto(url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    yield url
    server.shutdown()
    thread.join()


@pytest.fixture
def aws():
    """moto's S3, EMR, SQS, DynamoDB and SNS with the data bucket, the claims table and the topic created."""
    with mock_aws():
        clients = aws_clients()
        create_function_resources(clients)
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
            "CLUSTER_DEFINITION_TAG_KEY",
            "CLUSTER_DEFINITION_TAG_VALUE",
            "CLUSTER_NAME_PREFIX",
            "STAGED_PREFIX",
            "INPUT_LOCATIONS",
        ]:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        handler = import_trigger_handler()
        # The function's own back-off between step submissions is not waited in tests (botocore's is patched where a
        # test counts it, see test_trigger_handler_faults.backoff_sleeps).
        monkeypatch.setattr(handler.submitter, "pause", lambda seconds: None)
        return handler

    yield load
    forget_trigger_modules()


@pytest.fixture
def persistent_handler(load_handler, persistent_cluster):
    return load_handler(base_environment(CLUSTER_ID=persistent_cluster))


@pytest.fixture
def reports(aws):
    """A queue subscribed to the notification topic; returns a function reading what was published since its last
    call."""
    queue_url = aws.sqs.create_queue(QueueName="reports")["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.sns.subscribe(TopicArn=TOPIC_ARN, Protocol="sqs", Endpoint=queue_arn)

    def read() -> list[dict]:
        messages = aws.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            aws.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        return [json.loads(message["Body"]) for message in messages]

    return read
