"""The data bucket (models, uploads, manifests, results, job artifacts) and the logs bucket."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge, object_wildcard_finding

MODELS_PREFIX = "models/"
INCOMING_PREFIX = "incoming/"
MANIFESTS_PREFIX = "manifests/"
RESULTS_PREFIX = "results/"
ARTIFACTS_PREFIX = "artifacts/"
# Inputs that a manifest under incoming/ lists (reliability review #4): uploads here notify nothing, so they never
# start a run of their own; the nodes may read them.
STAGED_PREFIX = "staged/"
# Athena's query results (the stack's workgroup writes here, infra/catalog.py).
QUERY_RESULTS_PREFIX = "query-results/"
# One JSON record per run, written by the job (--run-record): the runs table's location (infra/catalog.py).
RUNS_PREFIX = "runs/"
DATA_PREFIXES = (
    MODELS_PREFIX, INCOMING_PREFIX, STAGED_PREFIX, MANIFESTS_PREFIX, RESULTS_PREFIX, ARTIFACTS_PREFIX,
    QUERY_RESULTS_PREFIX, RUNS_PREFIX,
)
# Prefixes in the logs bucket: EMR cluster logs and the data bucket's server access logs.
EMR_LOGS_PREFIX = "emr/"
ACCESS_LOGS_PREFIX = "access-logs/data/"
INCOMPLETE_UPLOAD_DAYS = 7
# Athena keeps a query in its history for 45 days: its result file lives as long, so every query the console lists can
# still be downloaded, and no older one piles up.
QUERY_RESULTS_EXPIRATION_DAYS = 45


class Storage(Construct):
    """Both buckets, secure by construction: public access blocked, TLS only, encrypted, versioning off.

    On ``cdk destroy`` the buckets and their objects are deleted, unless ``retain_data`` keeps the data bucket and
    the logs bucket (with everything in them) in the account.
    """

    def __init__(self, scope: Construct, construct_id: str, *, retain_data: bool, log_retention_days: int) -> None:
        super().__init__(scope, construct_id)
        removal_policy = RemovalPolicy.RETAIN if retain_data else RemovalPolicy.DESTROY
        self.logs_bucket = s3.Bucket(
            self,
            "LogsBucket",
            # S3 server access logging delivers only to buckets encrypted with S3-managed keys.
            encryption=s3.BucketEncryption.S3_MANAGED,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-logs",
                    expiration=Duration.days(log_retention_days),
                    abort_incomplete_multipart_upload_after=Duration.days(INCOMPLETE_UPLOAD_DAYS),
                )
            ],
            removal_policy=removal_policy,
            auto_delete_objects=not retain_data,
            **_secure_bucket_properties(),
        )
        acknowledge(
            self.logs_bucket,
            "AwsSolutions-S1",
            "This is the access-log destination itself; logging its own accesses into itself would loop.",
        )
        self.data_bucket = s3.Bucket(
            self,
            "DataBucket",
            encryption=s3.BucketEncryption.S3_MANAGED,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.logs_bucket,
            server_access_logs_prefix=ACCESS_LOGS_PREFIX,
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="abort-incomplete-uploads",
                    abort_incomplete_multipart_upload_after=Duration.days(INCOMPLETE_UPLOAD_DAYS),
                ),
                s3.LifecycleRule(
                    id="expire-query-results",
                    prefix=QUERY_RESULTS_PREFIX,
                    expiration=Duration.days(QUERY_RESULTS_EXPIRATION_DAYS),
                ),
            ],
            removal_policy=removal_policy,
            auto_delete_objects=not retain_data,
            **_secure_bucket_properties(),
        )
        if not retain_data:
            # On destroy, emptying the data bucket writes access-log records into the logs bucket, best effort and
            # minutes later (aws-cdk#21776). The stack's cleanup resource turns the data bucket's access logging off
            # before it is emptied (cleanup_function/handler.py), and the logs bucket is emptied only after the data
            # bucket was (CloudFormation deletes a dependent first), so no record of that emptying comes too late.
            logs_emptying = self.logs_bucket.node.find_child("AutoDeleteObjectsCustomResource")
            self.data_bucket.node.find_child("AutoDeleteObjectsCustomResource").node.add_dependency(logs_emptying)


def _secure_bucket_properties() -> dict:
    """Applied last to every bucket so no caller can weaken them."""
    return {
        "block_public_access": s3.BlockPublicAccess.BLOCK_ALL,
        "enforce_ssl": True,
        "minimum_tls_version": 1.2,
        "versioned": False,
    }


# A principal that may write models/ besides the stack's deployment: one with ModelPublisherPolicy attached and this
# tag, valued with the stack's name (the bucket policy cannot name a managed policy, only principals and their tags).
MODEL_PUBLISHER_TAG_KEY = "mxnet-spark-inference:model-publisher"
# What the trigger and the nodes trust: the cluster definition, job and bootstrap scripts (artifacts/) and the model
# packages the job loads and runs (models/).
TRUSTED_PREFIXES = (ARTIFACTS_PREFIX, MODELS_PREFIX)
OBJECT_WRITE_ACTIONS = ["s3:PutObject", "s3:DeleteObject"]


class UploadAccess(Construct):
    """Who may write what in the data bucket (reliability review #9).

    - ``uploader_policy``: a managed policy for the people and systems that upload inputs: ``incoming/`` (each upload
      batch is a run) and ``staged/`` (inputs a manifest lists; no run of their own), nothing the trigger or the nodes
      trust.
    - ``model_publisher_policy``: a managed policy to publish model packages under ``models/``; the principal must also
      carry MODEL_PUBLISHER_TAG_KEY = the stack's name.
    - A bucket policy that denies every other principal writes to ``artifacts/`` (only the stack's deployments and its
      destroy-time emptying) and ``models/`` (those, and tagged model publishers), whatever its own IAM policies allow:
      a principal with s3:PutObject on the whole bucket cannot rewrite the cluster definition or plant a model.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data_bucket: s3.Bucket,
        stack_name: str,
        artifact_writer_arns: list[str],
        model_publisher_arns: tuple[str, ...] = (),
    ) -> None:
        super().__init__(scope, construct_id)
        self.uploader_policy = iam.ManagedPolicy(
            self,
            "UploaderPolicy",
            description=f"Upload inputs to {INCOMING_PREFIX} and {STAGED_PREFIX} of the inference stack's data bucket",
            statements=[
                iam.PolicyStatement(
                    sid="UploadInputs",
                    # Multipart uploads (aws s3 cp of large files) are s3:PutObject too; abort cleans one up.
                    actions=["s3:PutObject", "s3:AbortMultipartUpload"],
                    resources=[data_bucket.arn_for_objects(p + "*") for p in (INCOMING_PREFIX, STAGED_PREFIX)],
                )
            ],
        )
        self.model_publisher_policy = iam.ManagedPolicy(
            self,
            "ModelPublisherPolicy",
            description=f"Publish model packages under {MODELS_PREFIX} (the principal also needs the tag "
            f"{MODEL_PUBLISHER_TAG_KEY}={stack_name})",
            statements=[
                iam.PolicyStatement(
                    sid="PublishModels",
                    actions=[*OBJECT_WRITE_ACTIONS, "s3:AbortMultipartUpload", "s3:GetObject"],
                    resources=[data_bucket.arn_for_objects(MODELS_PREFIX + "*")],
                ),
                iam.PolicyStatement(
                    sid="ListModels",  # aws s3 sync compares with what is there
                    actions=["s3:ListBucket"],
                    resources=[data_bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [MODELS_PREFIX + "*"]}},
                ),
            ],
        )
        for policy, prefixes in (
            (self.uploader_policy, (INCOMING_PREFIX, STAGED_PREFIX)),
            (self.model_publisher_policy, (MODELS_PREFIX,)),
        ):
            for prefix in prefixes:
                acknowledge(
                    policy,
                    object_wildcard_finding(data_bucket, prefix),
                    f"Any object under {prefix}: the policy's purpose; nothing outside that prefix.",
                )
        for prefix in TRUSTED_PREFIXES:
            conditions: dict = {"ArnNotEquals": {"aws:PrincipalArn": artifact_writer_arns}}
            if prefix == MODELS_PREFIX:
                # Tagged publishers, and the principals the model_publisher_arns setting names (an IAM Identity Center
                # role cannot carry the tag), may write models/. ArnNotLike: the setting may use IAM's wildcards.
                conditions["StringNotEquals"] = {f"aws:PrincipalTag/{MODEL_PUBLISHER_TAG_KEY}": stack_name}
                if model_publisher_arns:
                    conditions["ArnNotLike"] = {"aws:PrincipalArn": list(model_publisher_arns)}
            data_bucket.add_to_resource_policy(
                iam.PolicyStatement(
                    sid=f"OnlyTheStackWrites{prefix.strip('/').capitalize()}",
                    effect=iam.Effect.DENY,
                    principals=[iam.AnyPrincipal()],
                    actions=OBJECT_WRITE_ACTIONS,
                    resources=[data_bucket.arn_for_objects(prefix + "*")],
                    conditions=conditions,
                )
            )
