"""Upload-triggered runs: incoming/ -> S3 event -> SQS (with DLQ) -> Lambda -> EMR step; step status -> SNS.

The Lambda claims every upload in a DynamoDB table (one item per upload, see trigger_function/claims.py) so that an
upload runs in exactly one batch however often its event is delivered; steps that end cancelled or interrupted come
back through the queue and are submitted again, a bounded number of times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
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
from constructs import Construct

from infra.function_asset import build_function_zip
from infra.nag import acknowledge, object_wildcard_finding
from infra.storage import INCOMING_PREFIX, MANIFESTS_PREFIX

FUNCTION_DIR = Path(__file__).resolve().parent / "trigger_function"
# The lock of the environment the stack is synthesized from: the function ships the SDK and Powertools pinned there.
REQUIREMENTS_LOCK = Path(__file__).resolve().parents[1] / "requirements.lock"
HANDLER = "handler.lambda_handler"
FUNCTION_TIMEOUT = Duration.minutes(2)
# A claim (and a resubmission) is reserved for the invocation that wrote it for the function's timeout plus this margin
# for clock skew between invocations: no live invocation holds one longer, and a crashed one's uploads are taken over
# on the first redelivery (the queue's visibility timeout is longer) instead of two receives later
# (aws-validity-review-2 #12).
CLAIM_LEASE_MARGIN = Duration.minutes(1)
# Lambda gives a function one vCPU at 1,769 MB (CPU grows with memory). Claiming 10,000 uploads is 10,000 DynamoDB
# requests whose signing and parsing took 19 s of one core here (README, "How an upload becomes a run"): at 512 MB
# (~0.3 vCPU) that would be about a minute of the two; at one vCPU it stays well inside. Cost: about $0.0006 for such
# an invocation, nothing noticeable for a small one.
FUNCTION_MEMORY_MB = 1769
# AWS's guidance for SQS event sources: visibility timeout >= 6 x the function timeout (+ the batching window), so a
# message is not redelivered while a (retried) invocation still holds it.
VISIBILITY_TIMEOUT_FACTOR = 6
# A message that fails this often (e.g. the cluster stayed full or broken across ~5 visibility timeouts) is parked in
# the DLQ instead of retrying forever; 1 would park messages on the first throttle.
MAX_RECEIVE_COUNT = 5
DLQ_RETENTION = Duration.days(14)
# An upload's claim must outlive every message that can repeat the upload: at most DLQ_RETENTION on the queues, and a
# redrive from the dead-letter queue can give a message that long again. Twice that and a margin; TTL then deletes it.
CLAIM_RETENTION_DAYS = 2 * int(DLQ_RETENTION.to_days()) + 2
CLAIM_TTL_ATTRIBUTE = "expires_at"
SQS_MIN_MAX_CONCURRENCY = 2
# Steps that ran to their own end are announced on the topic. Steps that ended without running to their end (added as a
# transient cluster shut down, queued on a cluster whose bootstrap failed, interrupted) go back to the queue, and the
# function submits their batch again (trigger_function/step_events.py, RETRIED_STATES); it reports on the topic a batch
# whose last allowed attempt ended so too.
STEP_ANNOUNCED_STATES = ("COMPLETED", "FAILED")
STEP_RETRIED_STATES = ("CANCELLED", "INTERRUPTED")
# Attempts per batch, the first included (at most trigger_settings.MAX_STEP_ATTEMPTS_LIMIT).
MAX_STEP_ATTEMPTS = 3
# CDK adds one function to configure a stack's S3 notifications, as a child of the stack.
NOTIFICATION_HELPER_ID_PREFIX = "BucketNotificationsHandler"


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
        job_flow_definition_key: Optional[str],
        step_name_prefix: str,
        batch_size: int,
        batching_window_seconds: int,
        notification_email: Optional[str],
        emr_logs_uri: str,
        results_uri: str,
        function_zip_path: Path,
    ) -> None:
        super().__init__(scope, construct_id)
        self.claims_table = dynamodb.Table(
            self,
            "Claims",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            time_to_live_attribute=CLAIM_TTL_ATTRIBUTE,
            # A few cents a month for a table of claims; a restore brings back which uploads already ran.
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            # Claims describe uploads of this stack's bucket only: nothing to keep once the stack is gone.
            removal_policy=RemovalPolicy.DESTROY,
        )
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
        _acknowledge_notification_helper(Stack.of(self))

        self.topic = sns.Topic(self, "StepNotifications", master_key=key, enforce_ssl=True)
        # EventBridge publishes to an encrypted topic only if the key lets it (the AWS-managed SNS key cannot).
        key.grant(iam.ServicePrincipal("events.amazonaws.com"), "kms:Decrypt", "kms:GenerateDataKey*")
        if notification_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(notification_email))

        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_11,
            architecture=lambda_.Architecture.X86_64,
            handler=HANDLER,
            # The function's modules with boto3, botocore and Powertools as pinned in requirements.lock (no layer).
            code=lambda_.Code.from_asset(str(build_function_zip(FUNCTION_DIR, function_zip_path, REQUIREMENTS_LOCK))),
            timeout=FUNCTION_TIMEOUT,
            memory_size=FUNCTION_MEMORY_MB,
            environment={
                **environment,
                "CLAIMS_TABLE": self.claims_table.table_name,
                "CLAIM_RETENTION_DAYS": str(CLAIM_RETENTION_DAYS),
                "NOTIFICATION_TOPIC_ARN": self.topic.topic_arn,
                "MAX_STEP_ATTEMPTS": str(MAX_STEP_ATTEMPTS),
                "CLAIM_LEASE_SECONDS": str(int(FUNCTION_TIMEOUT.to_seconds() + CLAIM_LEASE_MARGIN.to_seconds())),
                # Records refused for a passing reason get a shorter visibility timeout (the event source's consume
                # grant includes sqs:ChangeMessageVisibility on this queue).
                "UPLOAD_QUEUE_URL": self.queue.queue_url,
                "POWERTOOLS_SERVICE_NAME": "inference-trigger",
            },
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
        self._grant_claims_access(key)
        # A batch whose every attempt was cancelled is reported by the function (the grant includes the topic's key).
        self.topic.grant_publish(self.function)
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

        step_name = events.EventField.from_path("$.detail.name")
        step_id = events.EventField.from_path("$.detail.stepId")
        cluster_id = events.EventField.from_path("$.detail.clusterId")
        state = events.EventField.from_path("$.detail.state")
        self.step_status_rule = events.Rule(
            self,
            "StepStatusRule",
            description="This stack's EMR steps that ran to their end (completed or failed)",
            event_pattern=_step_states_pattern(STEP_ANNOUNCED_STATES, step_name_prefix),
            targets=[
                targets.SnsTopic(
                    self.topic,
                    message=events.RuleTargetInput.from_text(
                        f"EMR step {step_name} ({step_id}) on cluster {cluster_id} ended: {state}. "
                        # No angle brackets: EventBridge reads <name> in an input template as a placeholder.
                        f"Run report: {results_uri}RUN_ID/report.html, beside summary.json and predictions/, "
                        f"where RUN_ID is the step name after '{step_name_prefix}'. "
                        f"Step logs: {emr_logs_uri}{cluster_id}/steps/{step_id}/"
                    ),
                )
            ],
        )
        # The whole event goes to the queue: the function reads the step name, state, step and cluster ids from it.
        self.step_retry_rule = events.Rule(
            self,
            "StepRetryRule",
            description="This stack's EMR steps that ended cancelled or interrupted: their batches are submitted again",
            event_pattern=_step_states_pattern(STEP_RETRIED_STATES, step_name_prefix),
            targets=[targets.SqsQueue(self.queue)],
        )

    def _grant_claims_access(self, key: kms.IKey) -> None:
        """The four item operations claims.py makes, on the claims table only; the key to read and write its items."""
        self.claims_table.grant(
            self.function, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"
        )
        key.grant_encrypt_decrypt(self.function)
        for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
            acknowledge(
                self.function,
                f"AwsSolutions-IAM5[Action::{action}]",
                "CDK's encrypt/decrypt grant on the stack key, which encrypts the claims table.",
            )

    def _grant_data_access(self, data_bucket: s3.IBucket, job_flow_definition_key: Optional[str]) -> None:
        """Read uploads (and the job-flow definition); write and delete manifests; nothing else in the bucket."""
        readable = [data_bucket.arn_for_objects(INCOMING_PREFIX + "*")]
        if job_flow_definition_key:
            readable.append(data_bucket.arn_for_objects(job_flow_definition_key))
        self.function.add_to_role_policy(
            iam.PolicyStatement(sid="ReadUploads", actions=["s3:GetObject"], resources=readable)
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="WriteManifests",
                # DeleteObject removes a batch's manifest when EMR refused its step (the batch will get a new id).
                actions=["s3:PutObject", "s3:DeleteObject"],
                resources=[data_bucket.arn_for_objects(MANIFESTS_PREFIX + "*")],
            )
        )
        # Without ListBucket, S3 answers 403 instead of 404 for an uploaded manifest deleted before it was read.
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="ListUploads",
                actions=["s3:ListBucket"],
                resources=[data_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [INCOMING_PREFIX + "*"]}},
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
            "One manifest per batch, named by its batch id; the only prefix the Lambda writes.",
        )


def _acknowledge_notification_helper(stack: Stack) -> None:
    """Findings on the function CDK adds to the stack to configure S3 notifications (deploy time only)."""
    for child in stack.node.children:
        if child.node.id.startswith(NOTIFICATION_HELPER_ID_PREFIX):
            acknowledge(
                child,
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                "CDK's S3-notification helper: managed policy for its own CloudWatch Logs only.",
            )
            acknowledge(
                child,
                "AwsSolutions-IAM5[Resource::*]",
                "CDK's S3-notification helper: s3:PutBucketNotification has to name buckets created in the "
                "same deployment; it only runs at deploy time.",
            )


def _step_states_pattern(states: tuple[str, ...], step_name_prefix: str) -> events.EventPattern:
    return events.EventPattern(
        source=["aws.emr"],
        detail_type=["EMR Step Status Change"],
        detail={"state": list(states), "name": [{"prefix": step_name_prefix}]},
    )
