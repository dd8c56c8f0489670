"""Upload-triggered runs: incoming/ -> S3 event -> SQS (with DLQ) -> Lambda -> EMR step; step status -> SNS."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_notifications as s3_notifications
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from infra.nag import acknowledge, object_wildcard_finding
from infra.storage import INCOMING_PREFIX, MANIFESTS_PREFIX

FUNCTION_DIR = Path(__file__).resolve().parent / "trigger_function"
HANDLER = "handler.lambda_handler"
FUNCTION_TIMEOUT = Duration.minutes(2)
# AWS's guidance for SQS event sources: visibility timeout >= 6 x the function timeout (+ the batching window), so a
# message is not redelivered while a (retried) invocation still holds it.
VISIBILITY_TIMEOUT_FACTOR = 6
# A message that fails this often (e.g. the cluster stayed full or broken across ~5 visibility timeouts) is parked in
# the DLQ instead of retrying forever; 1 would park messages on the first throttle.
MAX_RECEIVE_COUNT = 5
DLQ_RETENTION = Duration.days(14)
# Powertools for AWS Lambda publishes each release's layer ARN per region as a public SSM parameter; this is the
# version pinned in requirements.in, so the Lambda runs the same Powertools as the tests.
POWERTOOLS_VERSION = "3.37.0"
POWERTOOLS_LAYER_PARAMETER = f"/aws/service/powertools/python/x86_64/python3.11/{POWERTOOLS_VERSION}"
SQS_MIN_MAX_CONCURRENCY = 2
STEP_END_STATES = ("COMPLETED", "FAILED", "CANCELLED")


class Trigger(Construct):
    """The queue, the Lambda that turns uploads into EMR steps, and the step notifications."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data_bucket: s3.IBucket,
        key: kms.IKey,
        environment: Mapping[str, str],
        emr_statements: list[iam.PolicyStatement],
        job_flow_definition_key: Optional[str],
        step_name_prefix: str,
        batch_size: int,
        batching_window_seconds: int,
        notification_email: Optional[str],
        emr_logs_uri: str,
        results_uri: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dead_letter_queue = sqs.Queue(
            self,
            "DeadLetterQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=DLQ_RETENTION,
        )
        acknowledge(self.dead_letter_queue, "AwsSolutions-SQS3", "This queue is the dead-letter queue.")
        batching_window = Duration.seconds(batching_window_seconds)
        self.queue = sqs.Queue(
            self,
            "UploadQueue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=Duration.seconds(
                FUNCTION_TIMEOUT.to_seconds() * VISIBILITY_TIMEOUT_FACTOR + batching_window_seconds
            ),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue, max_receive_count=MAX_RECEIVE_COUNT),
        )
        # Only incoming/ notifies: manifests, results and logs written by the system can never trigger a run.
        data_bucket.add_event_notification(
            s3.EventType.OBJECT_CREATED,
            s3_notifications.SqsDestination(self.queue),
            s3.NotificationKeyFilter(prefix=INCOMING_PREFIX),
        )

        powertools_layer_arn = ssm.StringParameter.value_for_string_parameter(self, POWERTOOLS_LAYER_PARAMETER)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_11,
            architecture=lambda_.Architecture.X86_64,
            handler=HANDLER,
            code=lambda_.Code.from_asset(str(FUNCTION_DIR), exclude=["__pycache__", "*.pyc", "tests"]),
            layers=[lambda_.LayerVersion.from_layer_version_arn(self, "Powertools", powertools_layer_arn)],
            timeout=FUNCTION_TIMEOUT,
            memory_size=512,
            environment={**environment, "POWERTOOLS_SERVICE_NAME": "inference-trigger"},
            log_group=logs.LogGroup(
                self, "FunctionLogs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
            ),
            description="Turns uploads under incoming/ into one EMR step per batch",
        )
        self.function.add_event_source(
            event_sources.SqsEventSource(
                self.queue,
                batch_size=batch_size,
                max_batching_window=batching_window if batching_window_seconds else None,
                report_batch_item_failures=True,
                # As few concurrent invocations as SQS allows (2): "count the active steps, then submit or launch" is
                # not atomic. Reserved concurrency 1 would be stricter, but fails to deploy in accounts whose whole
                # concurrency quota is the default minimum of 10 unreserved executions.
                max_concurrency=SQS_MIN_MAX_CONCURRENCY,
            )
        )
        self._grant_data_access(data_bucket, job_flow_definition_key)
        for statement in emr_statements:
            self.function.add_to_role_policy(statement)
        acknowledge(
            self.function,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
            "AWS's managed policy for a Lambda's own CloudWatch Logs writes, nothing else.",
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "Python 3.11 on purpose: the whole project (job, EMR PySpark, tests) is pinned to one Python version.",
        )

        self.topic = sns.Topic(self, "StepNotifications", master_key=key, enforce_ssl=True)
        # EventBridge publishes to an encrypted topic only if the key lets it (the AWS-managed SNS key cannot).
        key.grant(iam.ServicePrincipal("events.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        if notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(notification_email))
        step_name = events.EventField.from_path("$.detail.name")
        step_id = events.EventField.from_path("$.detail.stepId")
        cluster_id = events.EventField.from_path("$.detail.clusterId")
        state = events.EventField.from_path("$.detail.state")
        self.step_status_rule = events.Rule(
            self,
            "StepStatusRule",
            description="This stack's EMR steps that ended (completed, failed, cancelled)",
            event_pattern=events.EventPattern(
                source=["aws.emr"],
                detail_type=["EMR Step Status Change"],
                detail={"state": list(STEP_END_STATES), "name": [{"prefix": step_name_prefix}]},
            ),
            targets=[
                targets.SnsTopic(
                    self.topic,
                    message=events.RuleTargetInput.from_text(
                        f"EMR step {step_name} ({step_id}) on cluster {cluster_id} ended: {state}. "
                        f"Results: {results_uri}<batch id>/ where the batch id is the step name after "
                        f"'{step_name_prefix}'. Step logs: {emr_logs_uri}{cluster_id}/steps/{step_id}/"
                    ),
                )
            ],
        )

    def _grant_data_access(self, data_bucket: s3.IBucket, job_flow_definition_key: Optional[str]) -> None:
        """Read uploads (and the job-flow definition); read, write and delete manifests; nothing else in the bucket."""
        readable = [
            data_bucket.arn_for_objects(INCOMING_PREFIX + "*"),
            data_bucket.arn_for_objects(MANIFESTS_PREFIX + "*"),
        ]
        if job_flow_definition_key:
            readable.append(data_bucket.arn_for_objects(job_flow_definition_key))
        self.function.add_to_role_policy(
            iam.PolicyStatement(sid="ReadUploadsAndManifests", actions=["s3:GetObject"], resources=readable)
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="WriteManifests",
                # DeleteObject releases a batch's claim (its manifest) when EMR refused the step, so a retry can submit.
                actions=["s3:PutObject", "s3:DeleteObject"],
                resources=[data_bucket.arn_for_objects(MANIFESTS_PREFIX + "*")],
            )
        )
        # Without ListBucket, S3 answers 403 instead of 404 for a manifest that does not exist yet.
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="ListUploadsAndManifests",
                actions=["s3:ListBucket"],
                resources=[data_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [INCOMING_PREFIX + "*", MANIFESTS_PREFIX + "*"]}},
            )
        )
        acknowledge(
            self.function,
            object_wildcard_finding(data_bucket, INCOMING_PREFIX),
            "Uploads are any object under incoming/; read-only.",
        )
        acknowledge(
            self.function,
            object_wildcard_finding(data_bucket, MANIFESTS_PREFIX),
            "One manifest per batch, named by its content-derived id; the only prefix the Lambda writes.",
        )
