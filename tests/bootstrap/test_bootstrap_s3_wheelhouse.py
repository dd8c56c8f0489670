"""install-mxnet.sh with an s3:// wheelhouse: the real AWS CLI against a moto S3 server on loopback.

What the mock cannot prove: IAM permissions of the EMR instance profile, S3's real redirects and throttling, and the
AWS CLI v2 that EMR nodes carry (the flags used exist in v1 and v2; this machine has v1). The AWS CLI is not a
project dependency, so these tests are skipped where no `aws` runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from bootstrap_helpers import (
    LEFT_OUT_DISTRIBUTION,
    ThrowAwayRuntime,
    make_throw_away_runtime,
    run_install_script,
    wheel_from_installed,
)
from moto.server import ThreadedMotoServer

BUCKET = "example-wheelhouse"
PREFIX = "artifacts/wheels/"
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def aws_cli_runs() -> bool:
    found = shutil.which("aws")
    return found is not None and subprocess.run([found, "--version"], capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(not aws_cli_runs(), reason="no runnable AWS CLI (`aws`) on this machine")


@dataclass(frozen=True)
class S3Run:
    runtime: ThrowAwayRuntime
    download_parent: Path
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    wheelhouse = tmp_path_factory.mktemp("wheels")
    wheel = wheel_from_installed(LEFT_OUT_DISTRIBUTION, wheelhouse)
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=FAKE_CREDENTIALS["AWS_DEFAULT_REGION"],
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.upload_file(str(wheel), BUCKET, PREFIX + wheel.name)
    yield endpoint
    server.stop()


def run_against(
    endpoint: str, uri: str, runtime: ThrowAwayRuntime, download_parent: Path
) -> subprocess.CompletedProcess[str]:
    return run_install_script(
        "cpu",
        uri,
        python=runtime.python,
        AWS_ENDPOINT_URL=endpoint,
        TMPDIR=str(download_parent),
        MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS="0",
        **FAKE_CREDENTIALS,
    )


@pytest.fixture(scope="module")
def s3_run(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> S3Run:
    root = tmp_path_factory.mktemp("s3-run")
    runtime = make_throw_away_runtime(root)
    download_parent = root / "tmp"
    download_parent.mkdir()
    result = run_against(s3_endpoint, f"s3://{BUCKET}/{PREFIX}", runtime, download_parent)
    return S3Run(runtime, download_parent, result)


def test_s3_wheelhouse_run_exits_zero(s3_run: S3Run) -> None:
    assert s3_run.result.returncode == 0, s3_run.result.stderr


def test_s3_wheelhouse_supplies_the_missing_pin(s3_run: S3Run) -> None:
    installed = [path.name for path in s3_run.runtime.own_site_packages.glob(f"{LEFT_OUT_DISTRIBUTION}-*.dist-info")]
    assert len(installed) == 1


def test_downloaded_wheelhouse_is_removed_on_exit(s3_run: S3Run) -> None:
    assert list(s3_run.download_parent.iterdir()) == []


def test_failing_s3_copy_is_retried_then_fails(s3_endpoint: str, tmp_path: Path) -> None:
    runtime = make_throw_away_runtime(tmp_path)
    download_parent = tmp_path / "tmp"
    download_parent.mkdir()
    result = run_against(s3_endpoint, "s3://no-such-wheelhouse/wheels/", runtime, download_parent)
    assert result.returncode != 0
    assert len(re.findall(r"attempt \d of 3 failed; retrying", result.stderr)) == 2
    assert "giving up after 3 attempts" in result.stderr
