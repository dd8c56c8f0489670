"""What a user is told about without looking: uploads parked in the dead-letter queue, trigger function errors, and a
cluster of this stack that terminated with errors. Everything goes to the stack's notification topic (optional e-mail).

Steps that failed are announced by the trigger's step-status rule and cancelled ones are retried, then reported, by the
trigger itself (infra/trigger.py): one path each, so nothing here watches steps.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.trigger import MAX_RECEIVE_COUNT

CLOUDWATCH_PRINCIPAL = "cloudwatch.amazonaws.com"
# SQS and Lambda publish these metrics every minute; five minutes of them are one evaluation. One message parked, or
# one error, is already worth a look: there is no normal background rate of either.
ALARM_PERIOD = Duration.minutes(5)
ALARM_THRESHOLD = 0
CLUSTER_FAILED_STATE = "TERMINATED_WITH_ERRORS"


class Alarms(Construct):
    """Two CloudWatch alarms and one EventBridge rule, all publishing to ``topic``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        topic: sns.ITopic,
        key: kms.IKey,
        dead_letter_queue: sqs.IQueue,
        trigger_function: lambda_.IFunction,
        cluster_name: str,
        emr_logs_uri: str,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        # Named after the stack so that the topic's policy can admit exactly this stack's alarms (aws:SourceArn).
        alarm_name_prefix = f"{stack.stack_name}-"
        action = cloudwatch_actions.SnsAction(topic)
        self.dead_letter_alarm = cloudwatch.Alarm(
            self,
            "DeadLetterMessages",
            alarm_name=f"{alarm_name_prefix}uploads-in-dead-letter-queue",
            alarm_description=(
                f"Uploads the trigger could not submit after {MAX_RECEIVE_COUNT} receives are parked in the "
                "dead-letter queue: read the trigger function's log, fix the cause, then redrive the queue (the claims "
                "make a redrive safe)."
            ),
            metric=dead_letter_queue.metric_approximate_number_of_messages_visible(
                period=ALARM_PERIOD, statistic=cloudwatch.Stats.MAXIMUM
            ),
            threshold=ALARM_THRESHOLD,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            # SQS stops reporting an empty, idle queue's metrics: no data is a healthy queue.
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        self.function_errors_alarm = cloudwatch.Alarm(
            self,
            "TriggerFunctionErrors",
            alarm_name=f"{alarm_name_prefix}trigger-function-errors",
            alarm_description=(
                "The trigger function failed as a whole (an exception outside a record, a timeout, out of memory): "
                "its messages come back and may end in the dead-letter queue. Read its log group."
            ),
            metric=trigger_function.metric_errors(period=ALARM_PERIOD, statistic=cloudwatch.Stats.SUM),
            threshold=ALARM_THRESHOLD,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        for alarm in (self.dead_letter_alarm, self.function_errors_alarm):
            alarm.add_alarm_action(action)

        # The topic's policy (CDK writes one for TLS) replaces SNS's default, which let the account's services publish:
        # CloudWatch needs its own statement, limited to this stack's alarms.
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AlarmsOfThisStack",
                principals=[iam.ServicePrincipal(CLOUDWATCH_PRINCIPAL)],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions={
                    "ArnLike": {
                        "aws:SourceArn": stack.format_arn(
                            service="cloudwatch",
                            resource="alarm",
                            resource_name=f"{alarm_name_prefix}*",
                            arn_format=ArnFormat.COLON_RESOURCE_NAME,
                        )
                    },
                    "StringEquals": {"aws:SourceAccount": stack.account},
                },
            )
        )
        # The topic is encrypted with the stack key; CloudWatch must be able to use it (SNS developer guide, "Enable
        # compatibility between event sources from AWS services and encrypted topics", whose statement has no
        # conditions: a condition the request does not carry would drop every alarm without a trace).
        key.grant(iam.ServicePrincipal(CLOUDWATCH_PRINCIPAL), "kms:Decrypt", "kms:GenerateDataKey*")

        # A cluster of this stack (the persistent one, or one the trigger launched) that ended in error: a bootstrap
        # action failed, no capacity, a lost primary node. Its steps were cancelled and are retried by the trigger, so
        # this is what says why. EMR's event carries the cluster's name, not its tags; the name is the stack's own.
        cluster_id = events.EventField.from_path("$.detail.clusterId")
        self.cluster_failure_rule = events.Rule(
            self,
            "ClusterTerminatedWithErrors",
            description="This stack's EMR clusters that terminated with errors",
            event_pattern=events.EventPattern(
                source=["aws.emr"],
                detail_type=["EMR Cluster State Change"],
                detail={"state": [CLUSTER_FAILED_STATE], "name": [cluster_name]},
            ),
            targets=[
                targets.SnsTopic(
                    topic,
                    message=events.RuleTargetInput.from_text(
                        # EMR's message names the cluster, the time and the reason (e.g. BOOTSTRAP_FAILURE).
                        f"EMR cluster {cluster_name} terminated with errors. "
                        f"{events.EventField.from_path('$.detail.message')} "
                        f"Its logs, bootstrap actions included: {emr_logs_uri}{cluster_id}/"
                    ),
                )
            ],
        )
