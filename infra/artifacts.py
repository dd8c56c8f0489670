"""What the clusters read from ``artifacts/`` in the data bucket, uploaded at deploy time.

- The packaged job and the bootstrap scripts (staged by infra/packaging.py) and, when the trigger may launch clusters,
  the cluster definition it launches them from (``job-flow.json``): one deployment, extracted so the names are fixed.
- The offline wheelhouse (``offline_wheelhouse``), under ``artifacts/wheelhouse/<compute>/``: a deployment of its own,
  because it is large and changes rarely, and the job's deployment prunes everything else under ``artifacts/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from aws_cdk import DefaultStackSynthesizer, Size, Stack
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_deployment as s3_deployment
from constructs import Construct

from infra.instance_types import MACHINE_NAMES
from infra.nag import acknowledge, object_wildcard_finding
from infra.packaging import ENTRY_POINT_NAME, JOB_ZIP_NAME, stage_artifacts
from infra.storage import ARTIFACTS_PREFIX
from infra.trigger_function.emr_step import JobArtifacts

JOB_FLOW_DEFINITION_NAME = "job-flow.json"
JOB_DEPLOYMENT_MEMORY_MB = 512
WHEELHOUSE_DIR_NAME = "wheelhouse"
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


class Artifacts(Construct):
    """The deployments of ``artifacts/``: the job (``job_deployment``) and, if shipped, the wheelhouse
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
        sources = [s3_deployment.Source.asset(str(stage_artifacts(source_root, staging_dir)))]
        if job_flow is not None:
            sources.append(s3_deployment.Source.json_data(JOB_FLOW_DEFINITION_NAME, job_flow))
        self.job_deployment = s3_deployment.BucketDeployment(
            self,
            "Job",
            sources=sources,
            destination_bucket=data_bucket,
            destination_key_prefix=ARTIFACTS_PREFIX,
            # The wheelhouse has its own deployment: pruning here must not delete it.
            exclude=[WHEELHOUSE_DIR_NAME + "/*"],
            memory_limit=JOB_DEPLOYMENT_MEMORY_MB,
        )
        self.wheelhouse_deployment: Optional[s3_deployment.BucketDeployment] = None
        if offline_wheelhouse:
            wheelhouse_dir = source_root / "build" / WHEELHOUSE_DIR_NAME / compute
            # One folder per machine architecture (`uname -m`): each node installs from its own.
            machine = MACHINE_NAMES[architecture]
            if not any((wheelhouse_dir / machine).glob("*.whl")):
                raise FileNotFoundError(
                    f"offline_wheelhouse is true but {wheelhouse_dir / machine} holds no wheels; build it with: "
                    f"bootstrap/install-mxnet.sh --build-wheelhouse {compute} {wheelhouse_dir} {machine}"
                )
            self.wheelhouse_deployment = s3_deployment.BucketDeployment(
                self,
                "Wheelhouse",
                sources=[s3_deployment.Source.asset(str(wheelhouse_dir))],
                destination_bucket=data_bucket,
                destination_key_prefix=_wheelhouse_prefix(compute),
                memory_limit=WHEELHOUSE_DEPLOYMENT_MEMORY_MB,
                # The CUDA wheels are large: room for the zip and its extracted wheels in the function's /tmp.
                ephemeral_storage_size=Size.gibibytes(WHEELHOUSE_DEPLOYMENT_STORAGE_GIB),
            )
        self._acknowledge_deployment_functions(data_bucket)

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
                ("AwsSolutions-IAM5[Action::s3:DeleteObject*]", "CDK's grant: prune stale files in artifacts/."),
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
