"""The artifacts the stack uploads: job.zip (the `job` package at its root), the entry point, the bootstrap scripts
under their digest path, and the offline wheelhouse as a ready zip.

Real CDK synthesis and the real cloud assembly (asset manifest, staged asset files); nothing talks to AWS. What synth
cannot prove: what the CDK CLI and the deployment function then do with the assets (review 2, finding 9, read the
pinned CLI's code: it uploads a file asset as it is and zips a directory asset in memory), and that EMR fetches the
scripts from the paths named.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aws_cdk
import boto3
import pytest
from infra_helpers import REPO_ROOT, Synthesized, deployment_resource, synthesize
from moto.server import ThreadedMotoServer

from infra.artifacts import JOB_FLOW_DEFINITION_NAME, WHEELHOUSE_ZIP_DIR_NAME
from infra.packaging import (
    NOT_SHIPPED_MODULES,
    BOOTSTRAP_DIR_NAME,
    ENTRY_POINT_NAME,
    JOB_ZIP_NAME,
    bootstrap_digest,
    bootstrap_key_prefix,
    stage_artifacts,
    write_wheelhouse_zip,
)


@pytest.fixture
def fake_repo(tmp_path):
    """A small repository: a job package with a stale __pycache__, and one bootstrap script."""
    root = tmp_path / "repo"
    (root / "job" / "__pycache__").mkdir(parents=True)
    (root / "job" / "__init__.py").write_text("")
    (root / "job" / ENTRY_POINT_NAME).write_text("print('entry')\n")
    (root / "job" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"stale")
    (root / BOOTSTRAP_DIR_NAME).mkdir()
    (root / BOOTSTRAP_DIR_NAME / "install-mxnet.sh").write_text("#!/bin/bash\n")
    return root


def test_job_zip_holds_the_job_package_at_its_root_without_bytecode(fake_repo, tmp_path):
    staged = stage_artifacts(fake_repo, tmp_path / "staged")
    assert zipfile.ZipFile(staged / JOB_ZIP_NAME).namelist() == ["job/__init__.py", "job/spark_entry.py"]


def test_entry_point_is_a_copy_of_the_jobs(fake_repo, tmp_path):
    staged = stage_artifacts(fake_repo, tmp_path / "staged")
    assert (staged / ENTRY_POINT_NAME).read_text() == "print('entry')\n"


def test_bootstrap_scripts_are_staged(fake_repo, tmp_path):
    staged = stage_artifacts(fake_repo, tmp_path / "staged")
    assert sorted(p.name for p in (staged / BOOTSTRAP_DIR_NAME).iterdir()) == ["install-mxnet.sh"]


def test_job_zip_is_byte_identical_across_runs_so_unchanged_code_is_not_redeployed(fake_repo, tmp_path):
    first = (stage_artifacts(fake_repo, tmp_path / "one") / JOB_ZIP_NAME).read_bytes()
    (fake_repo / "job" / ENTRY_POINT_NAME).touch()  # a new modification time alone must not change the zip
    second = (stage_artifacts(fake_repo, tmp_path / "two") / JOB_ZIP_NAME).read_bytes()
    assert first == second


def test_staging_replaces_what_an_earlier_run_left(fake_repo, tmp_path):
    staged = tmp_path / "staged"
    stage_artifacts(fake_repo, staged)
    (fake_repo / BOOTSTRAP_DIR_NAME / "install-mxnet.sh").unlink()
    assert list((stage_artifacts(fake_repo, staged) / BOOTSTRAP_DIR_NAME).iterdir()) == []


def test_missing_entry_point_is_named(tmp_path):
    (tmp_path / "job").mkdir()
    with pytest.raises(FileNotFoundError, match=r"job/spark_entry.py not found: the stack packages the job from"):
        stage_artifacts(tmp_path, tmp_path / "staged")


def test_real_job_package_is_zipped_without_bytecode(tmp_path):
    staged = stage_artifacts(REPO_ROOT, tmp_path / "staged")
    names = zipfile.ZipFile(staged / JOB_ZIP_NAME).namelist()
    assert "job/__init__.py" in names and f"job/{ENTRY_POINT_NAME}" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_job_zip_ships_the_run_path_and_no_demo_training_or_onnx_tools(tmp_path):
    """Issue 19, "the job's rooms": job.zip holds what a step runs, not the demo, its training or the tools that need
    `onnx` or MXNet's exporter. Read from the real zip alone (the repository is not on the path): the run path imports,
    `inspect --help` answers, and `quantize` says it is not installed there (exit 2) instead of a traceback."""
    staged = stage_artifacts(REPO_ROOT, tmp_path / "staged")
    zip_path = staged / JOB_ZIP_NAME
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert not {f"job/{module}" for module in NOT_SHIPPED_MODULES} & names
    assert {"job/cli.py", "job/pipeline.py", "job/worker.py", "job/model_package.py", "job/package_format.py",
            "job/templates/report.html"} <= names  # fmt: skip
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    environment = {**os.environ, "PYTHONPATH": str(zip_path)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=outside, env=environment, capture_output=True, text=True,
                              timeout=120)

    imported = run("-c", "import job, job.cli, job.pipeline, job.worker, job.report; print(job.__file__)")
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(zip_path))
    assert run("-m", "job.model_package", "inspect", "--help").returncode == 0
    missing = run("-m", "job.model_package", "quantize", "--package", str(outside), "--calibration", str(outside),
                  "--out", str(outside / "int8"))
    assert missing.returncode == 2, missing.stderr
    assert "quantize: its tool (job.quantize) is not installed here" in missing.stderr


# --- the bootstrap scripts under their digest path (review 2, finding 5) ---------------------------------------------


def repository_copy(root: Path, *, wheels: dict[str, bytes] | None = None, compute: str = "cpu") -> Path:
    """A copy of the repository's job and bootstrap folders (so a test may change a script), with an optional
    wheelhouse ``build/wheelhouse/<compute>/x86_64/`` holding ``wheels`` (file name -> bytes)."""
    for directory in ("job", "bootstrap"):
        shutil.copytree(REPO_ROOT / directory, root / directory, ignore=shutil.ignore_patterns("__pycache__"))
    if wheels is not None:
        machine_dir = root / "build" / "wheelhouse" / compute / "x86_64"
        machine_dir.mkdir(parents=True)
        for name, content in wheels.items():
            (machine_dir / name).write_bytes(content)
    return root


def deployment_properties(synthesized: Synthesized, deployment) -> dict:
    return deployment_resource(synthesized, deployment)["Properties"]


def asset_files(synthesized: Synthesized, deployment) -> list[tuple[dict, Path]]:
    """Each source asset of a deployment: its entry in the cloud assembly's asset manifest, and its staged path."""
    assembly = synthesized.app.synth()
    manifest = json.loads((Path(assembly.directory) / f"{synthesized.stack.artifact_id}.assets.json").read_text())
    entries = []
    for key in deployment_properties(synthesized, deployment)["SourceObjectKeys"]:
        entry = manifest["files"][key.removesuffix(".zip")]
        entries.append((entry, Path(assembly.directory) / entry["source"]["path"]))
    return entries


@pytest.fixture(scope="module")
def two_script_versions(tmp_path_factory) -> list[tuple[Synthesized, Path]]:
    """The same persistent stack from two copies of the repository whose install script differs by one comment."""
    first = repository_copy(tmp_path_factory.mktemp("first"))
    second = repository_copy(tmp_path_factory.mktemp("second"))
    script = second / BOOTSTRAP_DIR_NAME / "install-mxnet.sh"
    script.write_text(script.read_text() + "\n# a changed pin\n")
    return [
        (synthesize(tmp_path_factory.mktemp("staging"), source_root=root, cluster_mode="persistent"), root)
        for root in (first, second)
    ]


def test_bootstrap_scripts_are_deployed_under_the_digest_of_exactly_the_shipped_files(two_script_versions):
    prefixes = []
    for synthesized, root in two_script_versions:
        properties = deployment_properties(synthesized, synthesized.stack.artifacts.bootstrap_deployment)
        assert properties["DestinationBucketKeyPrefix"] == f"artifacts/bootstrap/{bootstrap_digest(root)}/"
        ((_, staged),) = asset_files(synthesized, synthesized.stack.artifacts.bootstrap_deployment)
        assert sorted(path.name for path in staged.iterdir()) == sorted(
            path.name for path in (root / BOOTSTRAP_DIR_NAME).iterdir() if path.is_file()
        )
        prefixes.append(properties["DestinationBucketKeyPrefix"])
    assert prefixes[0] != prefixes[1]


def test_no_deployment_deletes_an_older_version_of_the_scripts(two_script_versions):
    """The job deployment prunes its own stale files but excludes the bootstrap digests (and the wheelhouse) from
    its sync; the bootstrap deployment never prunes. So a cluster created before this deploy still finds its scripts
    for the nodes it adds later."""
    synthesized = two_script_versions[0][0]
    artifacts = synthesized.stack.artifacts
    job = deployment_properties(synthesized, artifacts.job_deployment)
    assert job.get("Prune", True) is True and {"bootstrap/*", "wheelhouse/*"} <= set(job["Exclude"])
    assert deployment_properties(synthesized, artifacts.bootstrap_deployment)["Prune"] is False


def test_the_job_asset_no_longer_carries_the_bootstrap_scripts(two_script_versions):
    synthesized = two_script_versions[0][0]
    staged_dirs = [path for _, path in asset_files(synthesized, synthesized.stack.artifacts.job_deployment)
                   if path.is_dir()]
    # The job's staged folder, and the shipped definition's (json_data; shipped in both cluster modes).
    assert sorted(sorted(p.name for p in path.iterdir()) for path in staged_dirs) == sorted(
        [sorted([JOB_ZIP_NAME, ENTRY_POINT_NAME]), [JOB_FLOW_DEFINITION_NAME]])


def test_a_script_change_changes_the_clusters_bootstrap_actions_to_the_digest_path(two_script_versions):
    """Review 2, finding 5: the BootstrapActions paths never changed, so a script-only change retagged the
    CloudFormation cluster in place, and nodes it added later ran the new scripts beside old ones. With the digest in
    the path, a change of scripts changes BootstrapActions, a property whose change replaces the cluster."""
    paths = []
    for synthesized, _ in two_script_versions:
        stack = synthesized.stack
        _, cluster = synthesized.only("AWS::EMR::Cluster")
        actions = cluster["Properties"]["BootstrapActions"]
        prefix = stack.resolve(stack.artifacts.bootstrap_uri_prefix)
        assert actions and all(
            action["ScriptBootstrapAction"]["Path"]["Fn::Join"][1][:-1] == prefix["Fn::Join"][1][:-1]
            and action["ScriptBootstrapAction"]["Path"]["Fn::Join"][1][-1].startswith(prefix["Fn::Join"][1][-1])
            for action in actions
        ), actions
        paths.append(json.dumps(actions, sort_keys=True))
    assert paths[0] != paths[1]


def test_the_key_prefix_takes_only_a_sha256():
    assert bootstrap_key_prefix("ab" * 32) == f"artifacts/bootstrap/{'ab' * 32}/"
    with pytest.raises(ValueError, match=r"bootstrap digest must be 64 lowercase hex digits \(a sha256\), got '\.\./'"):
        bootstrap_key_prefix("../")


# --- the wheelhouse as a ready, stored zip (review 2, findings 9 and 3) ----------------------------------------------

WHEELS = {
    "example-1.0-py3-none-any.whl": bytes(range(256)) * 64,
    "mxnet-1.9.1-py3-none-manylinux2014_x86_64.whl": b"not a real wheel: only its bytes are shipped" * 100,
}


def test_the_wheelhouse_is_a_file_asset_of_stored_untouched_wheels(tmp_path):
    root = repository_copy(tmp_path / "repo", wheels=WHEELS)
    synthesized = synthesize(tmp_path / "staging", source_root=root, offline_wheelhouse=True, nat_gateways=0)
    ((entry, staged),) = asset_files(synthesized, synthesized.stack.artifacts.wheelhouse_deployment)
    # A file asset the CLI uploads as it is; a directory asset it would zip in memory (1 GiB per file at most).
    assert entry["source"]["packaging"] == "file" and staged.suffix == ".zip"
    with zipfile.ZipFile(staged) as archive:
        members = archive.infolist()
        assert [member.filename for member in members] == [f"x86_64/{name}" for name in sorted(WHEELS)]
        assert {member.compress_type for member in members} == {zipfile.ZIP_STORED}
        assert {member.filename: archive.read(member) for member in members} == {
            f"x86_64/{name}": content for name, content in WHEELS.items()
        }
    properties = deployment_properties(synthesized, synthesized.stack.artifacts.wheelhouse_deployment)
    # Extracted under <compute>/, so each node reads <compute>/<machine>/; append-only for older clusters' pins.
    assert properties["DestinationBucketKeyPrefix"] == "artifacts/wheelhouse/cpu/" and properties["Prune"] is False


def test_the_wheelhouse_zip_is_deterministic_and_rebuilt_only_when_the_wheels_change(tmp_path):
    machine_dir = tmp_path / "wheelhouse" / "x86_64"
    machine_dir.mkdir(parents=True)
    for name, content in WHEELS.items():
        (machine_dir / name).write_bytes(content)
    first = write_wheelhouse_zip(machine_dir, tmp_path / "one" / "cpu-x86_64.zip").read_bytes()
    assert write_wheelhouse_zip(machine_dir, tmp_path / "two" / "cpu-x86_64.zip").read_bytes() == first
    (machine_dir / "extra-2.0-py3-none-any.whl").write_bytes(b"new")
    rebuilt = write_wheelhouse_zip(machine_dir, tmp_path / "one" / "cpu-x86_64.zip")
    assert "x86_64/extra-2.0-py3-none-any.whl" in zipfile.ZipFile(rebuilt).namelist()


def test_the_wheelhouse_zip_is_written_beside_the_staging_folder(tmp_path):
    root = repository_copy(tmp_path / "repo", wheels=WHEELS)
    synthesize(tmp_path / "staging", source_root=root, offline_wheelhouse=True, nat_gateways=0)
    assert (tmp_path / WHEELHOUSE_ZIP_DIR_NAME / "cpu-x86_64.zip").is_file()


def test_a_gpu_wheelhouse_without_the_cpu_build_is_refused_at_synth(tmp_path):
    """Review 2, finding 3: the primary of a gpu cluster has no GPU and installs the cpu build, from this wheelhouse
    when the nodes have no internet (bootstrap/install-mxnet.sh --build-wheelhouse gpu now downloads both builds)."""
    gpu_only = {"mxnet_cu117-1.9.1-py3-none-manylinux2014_x86_64.whl": b"stand-in"}
    root = repository_copy(tmp_path / "repo", wheels=gpu_only, compute="gpu")
    with pytest.raises(FileNotFoundError, match=r"gpu/x86_64 has no wheel of mxnet, onnxruntime, the cpu build that "
                                                r"the primary node installs \(it has no GPU\); build the wheelhouse "
                                                r"again with: bootstrap/install-mxnet.sh --build-wheelhouse gpu "):
        synthesize(tmp_path / "staging", source_root=root, compute="gpu", offline_wheelhouse=True, nat_gateways=0)


# --- the deployments run by CDK's own bucket-deployment handler, against a moto S3 server ---------------------------


def aws_cli_runs() -> bool:
    found = shutil.which("aws")
    return found is not None and subprocess.run([found, "--version"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def deployment_handler(tmp_path, monkeypatch, s3_server):
    """aws-cdk-lib's bucket-deployment function code (index.py from the pinned aws-cdk-lib's jsii bundle), with its
    `aws` commands run by this machine's AWS CLI against the moto server and its CloudFormation responses recorded.
    What this cannot prove: Lambda's runtime and limits, and CloudFormation's own ordering of the events."""
    bundle = next((Path(aws_cdk.__file__).parent / "_jsii").glob("aws-cdk-lib@*.jsii.tgz"))
    with tarfile.open(bundle) as archive:
        source = archive.extractfile(f"package/{DEPLOYMENT_HANDLER}").read()
    (tmp_path / "handler").mkdir()
    (tmp_path / "handler" / "index.py").write_bytes(source)
    environment = {**os.environ, **FAKE_AWS, "AWS_ENDPOINT_URL": s3_server}
    for key, value in {**FAKE_AWS, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("bucket_deployment_handler", tmp_path / "handler" / "index.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "aws_command", lambda *args: subprocess.check_call(["aws", *args], env=environment))
    responses = []
    monkeypatch.setattr(module, "cfn_send", lambda event, context, status, **kwargs: responses.append((status, kwargs)))
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name=FAKE_AWS["AWS_DEFAULT_REGION"])
    for bucket in ("assets", "data"):
        s3.create_bucket(Bucket=bucket)
    return module, s3, responses


DEPLOYMENT_HANDLER = "custom-resource-handlers/dist/aws-s3-deployment/bucket-deployment-handler/index.py"
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def deploy(handler, synthesized: Synthesized, deployment, old_properties: dict | None = None) -> dict:
    """Runs one deployment as CloudFormation would (Create, or Update with the old properties): its assets are
    published to the moto `assets` bucket as the CDK CLI publishes them (a directory zipped, a .zip file as is), and
    its properties pass as strings, as CloudFormation passes them. Returns the properties, for a later Update."""
    module, s3, responses = handler
    properties = deployment_properties(synthesized, deployment)
    for (entry, staged), key in zip(asset_files(synthesized, deployment), properties["SourceObjectKeys"]):
        body = staged.read_bytes() if entry["source"]["packaging"] == "file" else zipped(staged)
        s3.put_object(Bucket="assets", Key=key, Body=body)
    resource = {
        **{name: value for name, value in properties.items() if name not in ("ServiceToken", "SourceMarkers")},
        "SourceBucketNames": ["assets"] * len(properties["SourceObjectKeys"]),
        "DestinationBucketName": "data",
        **{name: str(properties[name]).lower() for name in ("Prune", "RetainOnDelete") if name in properties},
    }
    event = {"RequestType": "Create", "ResourceProperties": resource, "ResponseURL": "unused"}
    if old_properties is not None:
        event.update(RequestType="Update", OldResourceProperties=old_properties, PhysicalResourceId="deployment")
    module.handler(event, None)
    assert responses.pop()[0] == "SUCCESS"
    return resource


def zipped(directory: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(directory).as_posix())
    return buffer.getvalue()


def keys(s3, prefix: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket="data", Prefix=prefix).get("Contents", []))


@pytest.mark.skipif(not aws_cli_runs(), reason="no runnable AWS CLI (`aws`) on this machine")
def test_a_deploy_with_new_scripts_keeps_the_old_ones_and_prunes_only_stale_job_files(
    deployment_handler, two_script_versions
):
    """Two deploys in a row, the second with a changed install script: both digests' scripts stay (the bootstrap
    deployment's destination changes, and it neither prunes nor deletes the old one; the job deployment's pruning
    passes them by), while a stale file under artifacts/ is still pruned."""
    _, s3, _ = deployment_handler
    (first, first_root), (second, second_root) = two_script_versions
    s3.put_object(Bucket="data", Key="artifacts/stale-from-an-old-release.txt", Body=b"stale")
    old_job = deploy(deployment_handler, first, first.stack.artifacts.job_deployment)
    old_bootstrap = deploy(deployment_handler, first, first.stack.artifacts.bootstrap_deployment)
    deploy(deployment_handler, second, second.stack.artifacts.bootstrap_deployment, old_properties=old_bootstrap)
    deploy(deployment_handler, second, second.stack.artifacts.job_deployment, old_properties=old_job)
    scripts = sorted(path.name for path in (REPO_ROOT / BOOTSTRAP_DIR_NAME).iterdir() if path.suffix == ".sh")
    for root in (first_root, second_root):
        prefix = bootstrap_key_prefix(bootstrap_digest(root))
        assert keys(s3, prefix) == [prefix + name for name in scripts]
    assert "artifacts/stale-from-an-old-release.txt" not in keys(s3, "artifacts/")
    assert {"artifacts/job.zip", "artifacts/spark_entry.py"} <= set(keys(s3, "artifacts/"))


@pytest.mark.skipif(not aws_cli_runs(), reason="no runnable AWS CLI (`aws`) on this machine")
def test_the_wheelhouse_zip_lands_as_the_nodes_read_it_and_older_wheels_stay(deployment_handler, tmp_path):
    _, s3, _ = deployment_handler
    s3.put_object(Bucket="data", Key="artifacts/wheelhouse/cpu/x86_64/older-0.9-py3-none-any.whl", Body=b"older pin")
    root = repository_copy(tmp_path / "repo", wheels=WHEELS)
    synthesized = synthesize(tmp_path / "staging", source_root=root, offline_wheelhouse=True, nat_gateways=0)
    deploy(deployment_handler, synthesized, synthesized.stack.artifacts.wheelhouse_deployment)
    landed = {key: s3.get_object(Bucket="data", Key=key)["Body"].read()
              for key in keys(s3, "artifacts/wheelhouse/cpu/")}
    assert landed == {
        "artifacts/wheelhouse/cpu/x86_64/older-0.9-py3-none-any.whl": b"older pin",
        **{f"artifacts/wheelhouse/cpu/x86_64/{name}": content for name, content in WHEELS.items()},
    }
