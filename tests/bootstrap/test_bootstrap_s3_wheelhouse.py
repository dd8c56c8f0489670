"""install-mxnet.sh with an s3:// wheelhouse: the real AWS CLI against a moto S3 server on loopback, and a loopback
stand-in for the instance metadata service (IMDSv2: token, then the region) that the script reads its region from.

What the mocks cannot prove: IAM permissions of the EMR instance profile, S3's real redirects and throttling, that the
VPC's S3 gateway endpoint routes the regional endpoint (AWS documents it), the real metadata service, and the AWS CLI
v2 that EMR nodes carry (the flags used exist in v1 and v2; this machine has v1). The AWS CLI is not a project
dependency, so these tests are skipped where no `aws` runs.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from bootstrap_helpers import (
    LEFT_OUT_DISTRIBUTION,
    MACHINE,
    ThrowAwayRuntime,
    make_throw_away_runtime,
    run_install_script,
    stand_in_wheel,
    wheel_from_installed,
)
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

BUCKET = "example-wheelhouse"
PREFIX = "artifacts/wheels/"
# A gpu wheelhouse as --build-wheelhouse gpu lays it out (the gpu build, the shared pins and the cpu build), and one
# built before it held the cpu build. Besides the real wheel of the pin a first run installs, stand-ins named as the
# gpu and cpu builds' wheels: the script chooses files by name and must never fetch those a node does not need.
GPU_PREFIX = "artifacts/wheelhouse/gpu/"
GPU_ONLY_PREFIX = "artifacts/old-wheelhouse/gpu/"
GPU_BUILD_WHEELS = (
    "mxnet_cu117-1.9.1-py3-none-manylinux2014_x86_64.whl",
    "onnxruntime_gpu-1.20.2-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "nvidia_cudnn_cu12-9.1.0.70-py3-none-manylinux2014_x86_64.whl",
)
CPU_BUILD_WHEELS = (
    "mxnet-1.9.1-py3-none-manylinux2014_x86_64.whl",
    "onnxruntime-1.20.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
)
# The environment's region differs from the node's on purpose: the script must use the node's, from IMDS.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
NODE_REGION = "eu-west-3"
IMDS_TOKEN = "imds-session-token"
SIGNATURE_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/(?P<region>[a-z0-9-]+)/s3/aws4_request")


def aws_cli_runs() -> bool:
    found = shutil.which("aws")
    return found is not None and subprocess.run([found, "--version"], capture_output=True, check=False).returncode == 0


pytestmark = pytest.mark.skipif(not aws_cli_runs(), reason="no runnable AWS CLI (`aws`) on this machine")


@dataclass(frozen=True)
class S3Run:
    runtime: ThrowAwayRuntime
    download_parent: Path
    result: subprocess.CompletedProcess[str]
    signing_regions: list[str]  # of this run's requests only


class SigningRegions:
    """WSGI middleware in front of moto that records the region of each request's SigV4 signature, and the path of
    each GET of a wheel (what the node downloaded)."""

    def __init__(self, app) -> None:
        self.app = app
        self.regions: list[str] = []
        self.wheel_gets: list[str] = []

    def __call__(self, environ, start_response):
        match = SIGNATURE_SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
        if match:
            self.regions.append(match["region"])
        if environ["REQUEST_METHOD"] == "GET" and environ.get("PATH_INFO", "").endswith(".whl"):
            self.wheel_gets.append(environ["PATH_INFO"])
        return self.app(environ, start_response)


class InstanceMetadata(BaseHTTPRequestHandler):
    """IMDSv2 on loopback: a PUT gives a session token; metadata is served only with that token (else 401)."""

    def do_PUT(self) -> None:
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._reply(200, IMDS_TOKEN)
        else:
            self._reply(400, "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != IMDS_TOKEN:
            self._reply(401, "")
        elif self.path == "/latest/meta-data/placement/region":
            self._reply(200, NODE_REGION)
        else:
            self._reply(404, "")

    def _reply(self, status: int, body: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def imds_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), InstanceMetadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def signing_regions() -> SigningRegions:
    return SigningRegions(DomainDispatcherApplication(create_backend_app))


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory, signing_regions: SigningRegions) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, signing_regions, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
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
    # The wheelhouse's folder for this machine's architecture, as --build-wheelhouse lays it out.
    s3.upload_file(str(wheel), BUCKET, f"{PREFIX}{MACHINE}/{wheel.name}")
    for prefix, stand_ins in ((GPU_PREFIX, GPU_BUILD_WHEELS + CPU_BUILD_WHEELS), (GPU_ONLY_PREFIX, GPU_BUILD_WHEELS)):
        s3.upload_file(str(wheel), BUCKET, f"{prefix}x86_64/{wheel.name}")
        for name in stand_ins:
            s3.upload_file(str(stand_in_wheel(name, wheelhouse)), BUCKET, f"{prefix}x86_64/{name}")
    signing_regions.regions.clear()
    yield endpoint
    server.shutdown()
    thread.join()


def run_against(
    endpoint: str, uri: str, runtime: ThrowAwayRuntime, download_parent: Path, imds: str, compute: str = "cpu",
    **environment: str,
) -> subprocess.CompletedProcess[str]:
    return run_install_script(
        compute,
        uri,
        python=runtime.python,
        AWS_ENDPOINT_URL=endpoint,
        MXNET_BOOTSTRAP_DOWNLOAD_DIR=str(download_parent),
        MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS="0",
        MXNET_BOOTSTRAP_IMDS_ENDPOINT=imds,
        **{**FAKE_CREDENTIALS, **environment},
    )


@pytest.fixture(scope="module")
def s3_run(
    s3_endpoint: str, imds_endpoint: str, signing_regions: SigningRegions, tmp_path_factory: pytest.TempPathFactory
) -> S3Run:
    root = tmp_path_factory.mktemp("s3-run")
    runtime = make_throw_away_runtime(root)
    download_parent = root / "tmp"
    download_parent.mkdir()
    signing_regions.regions.clear()
    result = run_against(s3_endpoint, f"s3://{BUCKET}/{PREFIX}", runtime, download_parent, imds_endpoint)
    return S3Run(runtime, download_parent, result, list(signing_regions.regions))


def test_s3_wheelhouse_run_exits_zero(s3_run: S3Run) -> None:
    assert s3_run.result.returncode == 0, s3_run.result.stderr


def test_s3_wheelhouse_supplies_the_missing_pin(s3_run: S3Run) -> None:
    installed = [path.name for path in s3_run.runtime.own_site_packages.glob(f"{LEFT_OUT_DISTRIBUTION}-*.dist-info")]
    assert len(installed) == 1


def test_downloaded_wheelhouse_is_removed_on_exit(s3_run: S3Run) -> None:
    assert list(s3_run.download_parent.iterdir()) == []


def test_s3_requests_are_signed_for_the_nodes_region_from_imds(s3_run: S3Run) -> None:
    """Review finding 6: the CLI must use the node's own region (the S3 gateway endpoint routes only that one), not a
    preset AWS_DEFAULT_REGION or the us-east-1 default."""
    assert f"region {NODE_REGION} (from the instance metadata service)" in s3_run.result.stderr
    assert s3_run.signing_regions and set(s3_run.signing_regions) == {NODE_REGION}


def test_failing_s3_copy_is_retried_then_fails(s3_endpoint: str, imds_endpoint: str, tmp_path: Path) -> None:
    runtime = make_throw_away_runtime(tmp_path)
    download_parent = tmp_path / "tmp"
    download_parent.mkdir()
    result = run_against(s3_endpoint, "s3://no-such-wheelhouse/wheels/", runtime, download_parent, imds_endpoint)
    assert result.returncode != 0
    assert len(re.findall(r"attempt \d of 3 failed; retrying", result.stderr)) == 2
    assert "giving up after 3 attempts" in result.stderr


def test_without_instance_metadata_the_download_fails_naming_it(s3_endpoint: str, tmp_path: Path) -> None:
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        no_imds = f"http://127.0.0.1:{closed.getsockname()[1]}"
    runtime = make_throw_away_runtime(tmp_path)
    download_parent = tmp_path / "tmp"
    download_parent.mkdir()
    result = run_against(s3_endpoint, f"s3://{BUCKET}/{PREFIX}", runtime, download_parent, no_imds)
    assert result.returncode == 1
    assert f"the instance metadata service at {no_imds} gave no IMDSv2 token" in result.stderr


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A loopback server that accepts connections and never answers: a hung mirror."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_a_hung_download_stops_at_the_scripts_deadline(
    silent_endpoint: str, imds_endpoint: str, tmp_path: Path
) -> None:
    """Review finding 13: without the deadline this copy would take 3 attempts x 300 s; with a 6 s deadline the script
    gives up after it, saying so (the helper's 120 s subprocess timeout would raise long before 3 x 300 s)."""
    runtime = make_throw_away_runtime(tmp_path)
    download_parent = tmp_path / "tmp"
    download_parent.mkdir()
    result = run_against(silent_endpoint, f"s3://{BUCKET}/{PREFIX}", runtime, download_parent, imds_endpoint,
                         MXNET_BOOTSTRAP_DEADLINE_SECONDS="6")
    assert result.returncode == 1
    assert "the bootstrap's deadline of 6s" in result.stderr


def no_nvidia_device(root: Path) -> dict[str, str]:
    """A PCI bus with one device that is not NVIDIA's: a CPU primary node (a stand-in for /sys/bus/pci/devices)."""
    device = root / "pci" / "0000:00:05.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x1d0f\n")  # Amazon's (ENA)
    return {"MXNET_BOOTSTRAP_PCI_DEVICES_DIR": str(root / "pci")}


@pytest.mark.skipif(MACHINE != "x86_64", reason="the gpu wheelhouse is x86_64 only")
def test_a_cpu_primary_of_a_gpu_cluster_fetches_only_the_cpu_builds_missing_wheels(
    s3_endpoint: str, imds_endpoint: str, signing_regions: SigningRegions, tmp_path: Path
) -> None:
    """Review finding 3: the primary of a gpu cluster has no GPU, installs the cpu build, and copied the whole 3.9 GB
    gpu folder first. It now chooses its build before fetching and downloads only the wheels of its missing pins."""
    runtime = make_throw_away_runtime(tmp_path)
    download_parent = tmp_path / "var-tmp"
    download_parent.mkdir()
    signing_regions.wheel_gets.clear()
    result = run_against(s3_endpoint, f"s3://{BUCKET}/{GPU_PREFIX}", runtime, download_parent, imds_endpoint,
                         compute="gpu", **no_nvidia_device(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "installing the cpu build" in result.stderr
    # Of the gpu, cpu and shared wheels there, only the one pin this runtime lacks.
    fetched = [path.rsplit("/", 1)[1] for path in signing_regions.wheel_gets]
    assert len(fetched) == 1 and fetched[0].startswith(f"{LEFT_OUT_DISTRIBUTION}-"), fetched
    assert "downloading the 1 wheels of the cpu build's missing pins" in result.stderr


@pytest.mark.skipif(MACHINE != "x86_64", reason="the gpu wheelhouse is x86_64 only")
def test_a_gpu_wheelhouse_without_the_cpu_build_is_refused_before_any_download(
    s3_endpoint: str, imds_endpoint: str, signing_regions: SigningRegions, tmp_path: Path
) -> None:
    """A primary that misses the cpu build's mxnet, given a wheelhouse built before it held the cpu build: a clear
    message naming the pin and the command, and nothing downloaded."""
    runtime = make_throw_away_runtime(tmp_path, left_out="mxnet")
    download_parent = tmp_path / "var-tmp"
    download_parent.mkdir()
    signing_regions.wheel_gets.clear()
    result = run_against(s3_endpoint, f"s3://{BUCKET}/{GPU_ONLY_PREFIX}", runtime, download_parent, imds_endpoint,
                         compute="gpu", **no_nvidia_device(tmp_path))
    assert result.returncode == 1
    assert "no wheel for mxnet==1.9.1" in result.stderr
    assert "a gpu wheelhouse must hold the cpu build too, for the primary node: rebuild it with" in result.stderr
    assert signing_regions.wheel_gets == [] and list(download_parent.iterdir()) == []


def test_the_download_goes_to_var_tmp_not_to_tmpdir(
    s3_endpoint: str, imds_endpoint: str, tmp_path: Path
) -> None:
    """Review finding 3: on Amazon Linux 2023 /tmp is a tmpfs of half the memory. Without MXNET_BOOTSTRAP_DOWNLOAD_DIR
    the wheels go to /var/tmp (this machine's, removed on exit), whatever TMPDIR says."""
    runtime = make_throw_away_runtime(tmp_path)
    tmpdir = tmp_path / "tmpfs"
    tmpdir.mkdir()
    result = run_install_script(
        "cpu",
        f"s3://{BUCKET}/{PREFIX}",
        python=runtime.python,
        AWS_ENDPOINT_URL=s3_endpoint,
        TMPDIR=str(tmpdir),
        MXNET_BOOTSTRAP_IMDS_ENDPOINT=imds_endpoint,
        **FAKE_CREDENTIALS,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"to /var/tmp/mxnet-wheelhouse\.\w+", result.stderr)
    assert list(tmpdir.iterdir()) == []
