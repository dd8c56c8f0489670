"""What the clusters read from ``artifacts/`` in the data bucket, uploaded at deploy time.

- The packaged job (staged by infra/packaging.py) and, when the trigger may launch clusters, the cluster definition
  it launches them from (``job-flow.json``): one deployment, extracted so the names are fixed. It prunes what it no
  longer ships under ``artifacts/``, but never the bootstrap scripts or the wheelhouse.
- The bootstrap scripts, under ``artifacts/bootstrap/<digest>/`` (infra/packaging.py, ``bootstrap_key_prefix``): a
  deployment of their own that never prunes, so every version of the scripts stays where the clusters created with
  it look for it. A running cluster's later nodes (Spot replacements, managed scaling) thus run the scripts the
  cluster was created with, and a change of scripts changes the definition's ``BootstrapActions`` paths, which
  CloudFormation answers by replacing a persistent cluster (review 2, finding 5).
- The offline wheelhouse (``offline_wheelhouse``), under ``artifacts/wheelhouse/<compute>/<machine>/``: a zip built
  here (``write_wheelhouse_zip``: stored, deterministic) and deployed as a file asset, which the CDK CLI uploads as
  it is (review 2, finding 9). Its deployment never prunes either: each node downloads the wheels of its own
  script's pins by name, so after a deploy with new pins the nodes an older cluster adds still find theirs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

from aws_cdk import DefaultStackSynthesizer, Size, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from infra.instance_types import MACHINE_NAMES
from infra.nag import acknowledge, object_wildcard_finding
from infra.packaging import (
    BOOTSTRAP_DIR_NAME,
    ENTRY_POINT_NAME,
    JOB_ZIP_NAME,
    bootstrap_digest,
    bootstrap_key_prefix,
    stage_artifacts,
    write_wheelhouse_zip,
)
from infra.storage import ARTIFACTS_PREFIX
from infra.trigger_function.emr_step import JobArtifacts

JOB_FLOW_DEFINITION_NAME = "job-flow.json"
JOB_DEPLOYMENT_MEMORY_MB = 512
WHEELHOUSE_DIR_NAME = "wheelhouse"
# Beside the staging folder (which is emptied at every synth): the wheelhouse zips, rebuilt only when the wheels change.
WHEELHOUSE_ZIP_DIR_NAME = "wheelhouse-zips"
# The cpu build's distributions (canonical names): a gpu wheelhouse must hold them too, for the primary node, which
# has no GPU and installs the cpu build (bootstrap/install-mxnet.sh --build-wheelhouse gpu downloads both).
CPU_BUILD_DISTRIBUTIONS = ("mxnet", "onnxruntime")
WHEELHOUSE_DEPLOYMENT_MEMORY_MB = 2048
# The GPU wheelhouse is ~3.9 GB zipped and as much unpacked in the deployment function's /tmp: Lambda's maximum.
WHEELHOUSE_DEPLOYMENT_STORAGE_GIB = 10
# CDK adds one function per memory size for all the stack's bucket deployments, as a child of the stack.
DEPLOYMENT_FUNCTION_ID_PREFIX = "Custom::CDKBucketDeployment"


def wheelhouse_uri(data_bucket: s3.IBucket, compute: str) -> str:
    """Where the nodes install the job's runtime from with ``offline_wheelhouse`` (the cluster definition needs it
    before the deployment exists): ``s3://<data bucket>/artifacts/wheelhouse/<compute>/``."""
    return data_bucket.s3_url_for_object(_wheelhouse_prefix(compute))


def _wheelhouse_prefix(compute: str) -> str:
    return f"{ARTIFACTS_PREFIX}{WHEELHOUSE_DIR_NAME}/{compute}/"


def _wheelhouse_zip(source_root: Path, staging_dir: Path, compute: str, machine: str) -> Path:
    """The zip of ``build/wheelhouse/<compute>/<machine>/`` (the folder of the stack's node machine, ``uname -m``),
    after checking that it holds what the nodes need; raises FileNotFoundError naming the folder and the command."""
    wheelhouse_dir = source_root / "build" / WHEELHOUSE_DIR_NAME / compute
    machine_dir = wheelhouse_dir / machine
    build_command = f"bootstrap/install-mxnet.sh --build-wheelhouse {compute} {wheelhouse_dir} {machine}"
    wheels = sorted(machine_dir.glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(
            f"offline_wheelhouse is true but {machine_dir} holds no wheels; build it with: {build_command}"
        )
    if compute == "gpu":
        present = {re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower() for wheel in wheels}
        missing = [name for name in CPU_BUILD_DISTRIBUTIONS if name not in present]
        if missing:
            raise FileNotFoundError(
                f"offline_wheelhouse with compute gpu: {machine_dir} has no wheel of {', '.join(missing)}, the cpu "
                f"build that the primary node installs (it has no GPU); build the wheelhouse again with: "
                f"{build_command} (it downloads both builds)"
            )
    return write_wheelhouse_zip(machine_dir, staging_dir.parent / WHEELHOUSE_ZIP_DIR_NAME / f"{compute}-{machine}.zip")


class Artifacts(Construct):
    """The deployments of ``artifacts/``: the job (``job_deployment``), the bootstrap scripts
    (``bootstrap_deployment``, to ``bootstrap_uri_prefix``, the digest path) and, if shipped, the wheelhouse
    (``wheelhouse_deployment``). ``job_artifacts`` are the job's S3 URIs for the step builder;
    ``job_flow_definition_key`` is the key of the shipped cluster definition, or None when none is shipped."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data_bucket: s3.IBucket,
        source_root: Path,
        staging_dir: Path,
        job_flow: Optional[Mapping[str, Any]],
        compute: str,
        architecture: str,
        offline_wheelhouse: bool,
    ) -> None:
        super().__init__(scope, construct_id)
        self.job_artifacts = JobArtifacts(
            py_files_uri=data_bucket.s3_url_for_object(ARTIFACTS_PREFIX + JOB_ZIP_NAME),
            entry_point_uri=data_bucket.s3_url_for_object(ARTIFACTS_PREFIX + ENTRY_POINT_NAME),
        )
        self.job_flow_definition_key = ARTIFACTS_PREFIX + JOB_FLOW_DEFINITION_NAME if job_flow is not None else None
        staged = stage_artifacts(source_root, staging_dir)
        sources = [s3_deployment.Source.asset(str(staged), exclude=[BOOTSTRAP_DIR_NAME])]
        if job_flow is not None:
            sources.append(s3_deployment.Source.json_data(JOB_FLOW_DEFINITION_NAME, job_flow))
        self.job_deployment = s3_deployment.BucketDeployment(
            self,
            "Job",
            sources=sources,
            destination_bucket=data_bucket,
            destination_key_prefix=ARTIFACTS_PREFIX,
            # The bootstrap scripts and the wheelhouse have deployments of their own, which keep every version:
            # pruning here must delete neither.
            exclude=[BOOTSTRAP_DIR_NAME + "/*", WHEELHOUSE_DIR_NAME + "/*"],
            memory_limit=JOB_DEPLOYMENT_MEMORY_MB,
        )
        # The digest is over exactly the staged scripts (packaging._bootstrap_files walks the folder for both).
        self.bootstrap_key_prefix = bootstrap_key_prefix(bootstrap_digest(source_root))
        self.bootstrap_uri_prefix = data_bucket.s3_url_for_object(self.bootstrap_key_prefix)
        self.bootstrap_deployment = s3_deployment.BucketDeployment(
            self,
            "Bootstrap",
            sources=[s3_deployment.Source.asset(str(staged / BOOTSTRAP_DIR_NAME))],
            destination_bucket=data_bucket,
            destination_key_prefix=self.bootstrap_key_prefix,
            # Older digests belong to clusters that may still add nodes; the destroy empties the bucket. Retained
            # also when the digest (the destination) changes: without it the deployment deletes the old destination.
            prune=False,
            retain_on_delete=True,
            memory_limit=JOB_DEPLOYMENT_MEMORY_MB,
        )
        self.wheelhouse_deployment: Optional[s3_deployment.BucketDeployment] = None
        if offline_wheelhouse:
            wheelhouse_zip = _wheelhouse_zip(source_root, staging_dir, compute, MACHINE_NAMES[architecture])
            self.wheelhouse_deployment = s3_deployment.BucketDeployment(
                self,
                "Wheelhouse",
                # A .zip file asset: uploaded as it is and extracted by the deployment (<machine>/*.whl).
                sources=[s3_deployment.Source.asset(str(wheelhouse_zip))],
                destination_bucket=data_bucket,
                destination_key_prefix=_wheelhouse_prefix(compute),
                # Append-only: the wheels of earlier pins stay for the clusters that still install them.
                prune=False,
                retain_on_delete=True,
                memory_limit=WHEELHOUSE_DEPLOYMENT_MEMORY_MB,
                # The CUDA wheels are large: room for the zip and its extracted wheels in the function's /tmp.
                ephemeral_storage_size=Size.gibibytes(WHEELHOUSE_DEPLOYMENT_STORAGE_GIB),
            )
        self._acknowledge_deployment_functions(data_bucket)

    @property
    def deployments(self) -> list[s3_deployment.BucketDeployment]:
        """Every deployment that writes ``artifacts/``: the job's, the bootstrap scripts' and, if shipped, the
        wheelhouse's."""
        return [d for d in (self.job_deployment, self.bootstrap_deployment, self.wheelhouse_deployment) if d]

    def _acknowledge_deployment_functions(self, data_bucket: s3.IBucket) -> None:
        """Findings on the functions CDK adds to the stack for these deployments (deploy time only)."""
        for child in Stack.of(self).node.children:
            if not child.node.id.startswith(DEPLOYMENT_FUNCTION_ID_PREFIX):
                continue
            for finding, reason in (
                (
                    "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                    "CDK's bucket-deployment function: managed policy for its own CloudWatch Logs only.",
                ),
                ("AwsSolutions-L1", "CDK's bucket-deployment function; its runtime is chosen by aws-cdk-lib."),
                ("AwsSolutions-IAM5[Action::s3:GetBucket*]", "CDK's grant to read the asset and write artifacts/."),
                ("AwsSolutions-IAM5[Action::s3:GetObject*]", "CDK's grant to read the asset and write artifacts/."),
                ("AwsSolutions-IAM5[Action::s3:List*]", "CDK's grant to read the asset and write artifacts/."),
                ("AwsSolutions-IAM5[Action::s3:DeleteObject*]", "CDK's grant: prune stale job files in artifacts/."),
                ("AwsSolutions-IAM5[Action::s3:Abort*]", "CDK's grant to abort its own multipart uploads."),
                (
                    "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::cdk-"
                    f"{DefaultStackSynthesizer.DEFAULT_QUALIFIER}-assets-<AWS::AccountId>-<AWS::Region>/*]",
                    "CDK's grant to read the staged asset zips from the bootstrap assets bucket.",
                ),
                (
                    object_wildcard_finding(data_bucket, ""),
                    "CDK's deployment writes under artifacts/ only (destination prefix); its grant is bucket-wide.",
                ),
            ):
                acknowledge(child, finding, reason)
