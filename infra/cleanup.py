"""A custom resource that, on ``cdk destroy``, terminates this stack's EMR clusters, untangles its security groups and
turns off the data bucket's access logging before the buckets are emptied."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from aws_cdk import CustomResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.nag import acknowledge

FUNCTION_DIR = Path(__file__).resolve().parent / "cleanup_function"
# Terminating a cluster takes a few minutes; the Lambda maximum leaves room to wait for it.
FUNCTION_TIMEOUT = Duration.minutes(15)


class ClusterCleanup(Construct):
    """Deleted before the resources the clusters use; see ``cleanup_function/handler.py`` for what it does."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        tag_key: str,
        tag_value: str,
        security_groups: list[ec2.ISecurityGroup],
        access_logged_bucket: Optional[s3.IBucket],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_11,
            handler="handler.lambda_handler",
            code=lambda_.Code.from_asset(str(FUNCTION_DIR), exclude=["__pycache__", "*.pyc"]),
            timeout=FUNCTION_TIMEOUT,
            log_group=logs.LogGroup(
                self, "FunctionLogs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=RemovalPolicy.DESTROY
            ),
            description="On stack deletion: terminate the stack's EMR clusters, remove EMR's security-group rules, stop "
            "access logging",
        )
        cluster_arns = stack.format_arn(service="elasticmapreduce", resource="cluster", resource_name="*")
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="FindClusters",
                actions=["elasticmapreduce:ListClusters"],
                resources=["*"],
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="DescribeClusters",
                # Describing is how the tag is read; ListClusters returns no tags.
                actions=["elasticmapreduce:DescribeCluster"],
                resources=[cluster_arns],
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="TerminateThisStacksClusters",
                actions=["elasticmapreduce:TerminateJobFlows"],
                resources=[cluster_arns],
                conditions={"StringEquals": {f"aws:ResourceTag/{tag_key}": tag_value}},
            )
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(sid="DescribeGroups", actions=["ec2:DescribeSecurityGroups"], resources=["*"])
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="UntangleThisStacksGroups",
                actions=["ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress"],
                resources=[
                    stack.format_arn(service="ec2", resource="security-group", resource_name=group.security_group_id)
                    for group in security_groups
                ],
            )
        )
        properties = {
            "TagKey": tag_key,
            "TagValue": tag_value,
            "SecurityGroupIds": [group.security_group_id for group in security_groups],
        }
        if access_logged_bucket is not None:
            properties["AccessLoggedBucket"] = access_logged_bucket.bucket_name
            self.function.add_to_role_policy(
                iam.PolicyStatement(
                    sid="StopAccessLoggingBeforeEmptying",
                    actions=["s3:PutBucketLogging"],
                    resources=[access_logged_bucket.bucket_arn],
                )
            )
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=self.function.function_arn,
            resource_type="Custom::EmrClusterCleanup",
            properties=properties,
        )
        acknowledge(
            self.function,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
            "AWS's managed policy for a Lambda's own CloudWatch Logs writes, nothing else.",
        )
        acknowledge(self.function, "AwsSolutions-L1", "Python 3.11, the project's one pinned Python version.")
        acknowledge(
            self.function,
            "AwsSolutions-IAM5[Resource::*]",
            "ListClusters and DescribeSecurityGroups support no resource-level permission; both only read.",
        )
        acknowledge(
            self.function,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:elasticmapreduce:<AWS::Region>:<AWS::AccountId>:cluster/*]",
            "Transient cluster ids are unknown in advance; termination is conditioned on this stack's tag.",
        )
