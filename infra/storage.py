"""The data bucket (models, uploads, manifests, results, job artifacts) and the logs bucket."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge

MODELS_PREFIX = "models/"
INCOMING_PREFIX = "incoming/"
MANIFESTS_PREFIX = "manifests/"
RESULTS_PREFIX = "results/"
ARTIFACTS_PREFIX = "artifacts/"
# Athena's query results (the stack's workgroup writes here, infra/catalog.py).
QUERY_RESULTS_PREFIX = "query-results/"
DATA_PREFIXES = (
    MODELS_PREFIX, INCOMING_PREFIX, MANIFESTS_PREFIX, RESULTS_PREFIX, ARTIFACTS_PREFIX, QUERY_RESULTS_PREFIX
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
