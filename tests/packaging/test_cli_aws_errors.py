"""AWS errors on any s3:// argument of any command give one line naming the URI and the fix, and exit 2.

Each failure is made by botocore itself: no credentials in the environment (signing fails before any request), or a
``before-send`` hook on the command's S3 client that answers every request with the error S3 sends (403
AccessDenied, 404 NoSuchBucket, 301 PermanentRedirect with the bucket's region). No request leaves the process. What
this cannot prove: the exact bodies real S3 sends today (they follow S3's documented error responses), and errors
met inside Spark tasks, which become rows with an error, not a command's exit code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse

from job import cli, model_package
from job.storage import s3_client

BUCKET = "example-bucket"


class RawBody:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_):
        yield self.body


ERRORS = {
    "AccessDenied": (403, {}, "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"),
    "NoSuchBucket": (404, {}, f"<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist"
                              f"</Message><BucketName>{BUCKET}</BucketName></Error>"),
    "PermanentRedirect": (301, {"x-amz-bucket-region": "eu-west-1"},
                          f"<Error><Code>PermanentRedirect</Code><Message>use the endpoint</Message><Bucket>{BUCKET}"
                          f"</Bucket><Endpoint>{BUCKET}.s3.eu-west-1.amazonaws.com</Endpoint></Error>"),
}
FIXES = {
    "credentials": "no AWS credentials were found",
    "AccessDenied": "access denied",
    "NoSuchBucket": f"there is no bucket named '{BUCKET}'",
    "PermanentRedirect": "the bucket is in region eu-west-1, not us-east-1; set AWS_REGION=eu-west-1",
}


@pytest.fixture(autouse=True)
def fresh_client(monkeypatch, tmp_path):
    """A client made for each test from this test's environment (credentials are read when a client is made)."""
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    s3_client.cache_clear()
    yield
    s3_client.cache_clear()


def failing(kind: str, monkeypatch) -> None:
    """Make every S3 request of the command's client fail as ``kind`` (or carry no credentials)."""
    if kind == "credentials":
        return
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    status, headers, body = ERRORS[kind]

    def answer(request, **_):
        return AWSResponse(request.url, status, {"Content-Type": "application/xml", **headers},
                           RawBody(body.encode()))

    s3_client(None).meta.events.register("before-send.s3", answer)


@pytest.fixture(scope="module")
def local_package(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("package")
    # An empty ONNX file (a valid, empty protobuf): the package check before any S3 call walks it for external data
    # and finds none; the model is never run, since the S3 argument's error comes first.
    (directory / "model.onnx").write_bytes(b"")
    (directory / "model.json").write_text(json.dumps({
        "format": "onnx", "files": {"onnx": "model.onnx"}, "input_shape": [3, 8, 8], "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25], "labels": ["a", "b"]}))
    return directory


def job_arguments(flag: str, uri: str, package: Path, tmp_path: Path) -> list[str]:
    arguments = {"--input": str(tmp_path), "--model": str(package), "--output": str(tmp_path / "output")}
    if flag == "--manifest":
        del arguments["--input"]
    arguments[flag] = uri
    return [word for pair in arguments.items() for word in pair]


def assert_one_line(captured, uri: str, flag: str, kind: str) -> None:
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"error: {flag} {uri}: "), line
    assert FIXES[kind] in line, line


KINDS = ["credentials", "AccessDenied", "NoSuchBucket", "PermanentRedirect"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("flag", ["--input", "--manifest", "--model", "--output"])
def test_the_job_names_the_uri_and_the_fix(flag, kind, local_package, tmp_path, monkeypatch, capsys):
    uri = f"s3://{BUCKET}/{'models/default/' if flag == '--model' else 'incoming/run-1/'}"
    if flag == "--manifest":
        uri = f"s3://{BUCKET}/manifests/run-1.json"
    failing(kind, monkeypatch)
    assert cli.main(job_arguments(flag, uri, local_package, tmp_path)) == 2
    assert_one_line(capsys.readouterr(), uri, flag, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command, flag", [
    ("inspect", "--package"), ("to-onnx", "--package"), ("quantize", "--package"), ("quantize", "--calibration"),
    ("quantize", "--calibration-manifest")])
def test_the_package_tools_name_the_uri_and_the_fix(command, flag, kind, local_package, tmp_path, monkeypatch,
                                                    capsys):
    uri = f"s3://{BUCKET}/calibration/" if flag.startswith("--calibration") else f"s3://{BUCKET}/models/default/"
    arguments = {"--package": str(local_package), flag: uri}
    if command == "quantize":
        arguments.setdefault("--calibration", str(tmp_path))
        arguments["--out"] = str(tmp_path / "int8")
        if flag == "--calibration-manifest":
            del arguments["--calibration"]
    if command == "to-onnx":
        arguments["--out"] = str(tmp_path / "onnx")
    failing(kind, monkeypatch)
    assert model_package.main([command, *[word for pair in arguments.items() for word in pair]]) == 2
    assert_one_line(capsys.readouterr(), uri, flag, kind)


def test_to_onnx_on_a_missing_package_exits_2_like_inspect(tmp_path, capsys):
    for command in ("to-onnx", "inspect"):
        arguments = [command, "--package", str(tmp_path / "missing")]
        if command == "to-onnx":
            arguments += ["--out", str(tmp_path / "out")]
        assert model_package.main(arguments) == 2
        assert "no model.json there" in capsys.readouterr().err


def test_an_error_it_does_not_explain_is_not_hidden(monkeypatch, tmp_path, local_package):
    """Only the errors above become exit 2; any other S3 error still fails loudly (a traceback, exit 1)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    def answer(request, **_):
        return AWSResponse(request.url, 500, {"Content-Type": "application/xml"},
                           RawBody(b"<Error><Code>InternalError</Code><Message>boom</Message></Error>"))

    client = s3_client(None)
    client.meta.events.register("before-send.s3", answer)
    monkeypatch.setattr(client.meta.config, "retries", {"max_attempts": 0})
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        cli.main(job_arguments("--input", f"s3://{BUCKET}/incoming/", local_package, tmp_path))
