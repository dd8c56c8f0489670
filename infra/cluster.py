"""The EMR side: roles, instance profile, encryption key, security configuration, and the cluster (persistent mode)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

from aws_cdk import Aws, Duration, RemovalPolicy, Stack, Token
from aws_cdk import aws_emr as emr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.cluster_definition import (
    ClusterInputs,
    InstanceFleet,
    ManagedScaling,
    build_job_flow,
    to_cfn_cluster_properties,
)
from infra.nag import acknowledge, object_wildcard_finding
from infra.packaging import bootstrap_key_prefix
from infra.network import EMR_MANAGED_POLICY_TAG, Network
from infra.storage import (
    ARTIFACTS_PREFIX,
    EMR_LOGS_PREFIX,
    INCOMING_PREFIX,
    MANIFESTS_PREFIX,
    MODELS_PREFIX,
    RESULTS_PREFIX,
    RUNS_PREFIX,
    STAGED_PREFIX,
)

EMR_SERVICE_POLICY = "service-role/AmazonEMRServicePolicy_v2"
EMR_SERVICE_PRINCIPAL = "elasticmapreduce.amazonaws.com"
EMR_CLEANUP_SERVICE_LINKED_ROLE = "AWSServiceRoleForEMRCleanup"
KEY_PENDING_WINDOW_DAYS = 7
CONTENT_HASH_CHARS = 12  # of the security configuration's name and the definition tag: 48 bits, collisions moot


class Cluster(Construct):
    """Everything an inference cluster needs, and (``persistent``) the cluster itself.

    ``job_flow`` is the single ``RunJobFlow`` definition: the ``persistent`` cluster is rendered from it, and the stack
    ships it as JSON for the trigger Lambda to launch clusters from (transient mode; in persistent mode, a replacement
    for a persistent cluster that ended or no longer accepts steps).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        compute: str,
        release_label: str,
        fleets: Sequence[InstanceFleet],
        spot_timeout_minutes: int,
        managed_scaling: Optional[ManagedScaling],
        idle_timeout_minutes: Optional[int],
        step_concurrency_level: int,
        persistent: bool,
        network: Network,
        data_bucket: s3.IBucket,
        logs_bucket: s3.IBucket,
        key: kms.IKey,
        tag_key: str,
        tag_value: str,
        definition_tag_key: str,
        bootstrap_digest: str,
        wheelhouse_uri: Optional[str],
    ) -> None:
        super().__init__(scope, construct_id)
        self._tag_key, self._tag_value = tag_key, tag_value
        self._managed_scaling = managed_scaling is not None
        self.instance_role = self._instance_role(data_bucket, logs_bucket, key)
        self.instance_profile = iam.InstanceProfile(self, "InstanceProfile", role=self.instance_role)
        self.service_role = self._service_role(key)
        security_configuration = _security_configuration(key.key_arn)
        # Named after the stack (names are unique per account and region; cdk-nag matches clusters to it by name) and
        # after its content: CloudFormation replaces a security configuration on any change, and cannot replace a
        # resource whose custom name stays the same. The definition names it by this literal (known at synth), not by a
        # Ref, so that its hash - the definition tag - changes with it (review 2, #11). When it is replaced,
        # CloudFormation deletes the old one in the update's clean-up; EMR refuses while a cluster still uses it (a
        # transient cluster idling out), and that old configuration is then left in the account, unused and free of
        # charge, for the user to delete (infra README, "Changing settings on a running stack").
        self.security_configuration_name = (
            f"{Stack.of(self).stack_name}-{_content_hash(Stack.of(self).resolve(security_configuration))}"
        )
        if Token.is_unresolved(self.security_configuration_name):
            raise ValueError("the stack's name must be known at synth: the security configuration is named after it")
        self.security_configuration = emr.CfnSecurityConfiguration(
            self,
            "SecurityConfiguration",
            name=self.security_configuration_name,
            security_configuration=security_configuration,
        )
        stack = Stack.of(self)
        self.job_flow: dict[str, Any] = build_job_flow(
            ClusterInputs(
                name=f"{stack.stack_name}-{compute}",
                release_label=release_label,
                region=Aws.REGION,
                compute=compute,
                fleets=tuple(fleets),
                spot_timeout_minutes=spot_timeout_minutes,
                managed_scaling=managed_scaling,
                idle_timeout_minutes=idle_timeout_minutes,
                subnet_ids=network.subnet_ids,
                primary_security_group_id=network.primary_security_group.security_group_id,
                worker_security_group_id=network.worker_security_group.security_group_id,
                service_access_security_group_id=network.service_access_security_group.security_group_id,
                service_role_name=self.service_role.role_name,
                instance_profile_name=self.instance_profile.instance_profile_name,
                security_configuration_name=self.security_configuration_name,
                log_uri=logs_bucket.s3_url_for_object(EMR_LOGS_PREFIX),
                # The scripts' own digest path (infra/packaging.py): a change of scripts changes BootstrapActions, which
                # replaces the CloudFormation cluster, and nodes a cluster adds later run the scripts it started with.
                bootstrap_uri_prefix=data_bucket.s3_url_for_object(bootstrap_key_prefix(bootstrap_digest)),
                wheelhouse_uri=wheelhouse_uri,
                step_concurrency_level=step_concurrency_level,
                # The v2 service policy acts only on resources with this tag; EMR copies cluster tags to its instances.
                tags={tag_key: tag_value, EMR_MANAGED_POLICY_TAG[0]: EMR_MANAGED_POLICY_TAG[1]},
            )
        )
        # A running cluster keeps the definition and bootstrap runtime it was launched with. This tag names them, so
        # that after a deploy that changed either, a trigger that finds clusters by tag launches a new one instead of
        # feeding the old one (which idles out, and is still this stack's by its stack tag for IAM and the destroy
        # cleanup). The CloudFormation cluster carries it too: with an idle timeout the trigger finds that one by tag.
        self.definition_tag_value = _content_hash(
            {"job_flow": stack.resolve(self.job_flow), "bootstrap": bootstrap_digest}
        )
        self.job_flow["Tags"].append({"Key": definition_tag_key, "Value": self.definition_tag_value})
        self.cfn_cluster: Optional[emr.CfnCluster] = None
        if persistent:
            self.cfn_cluster = emr.CfnCluster(self, "Cluster", **to_cfn_cluster_properties(self.job_flow))
            # CloudFormation deletes the cluster before its roles and security configuration.
            self.cfn_cluster.node.add_dependency(self.instance_profile, self.service_role, self.security_configuration)
            acknowledge(
                self.cfn_cluster,
                "AwsSolutions-EMR4",
                "Local-disk (and EBS) encryption is on: see _security_configuration, checked by the tests. cdk-nag "
                "3.0.2 looks for EnableAtRestEncryption at the top level of the configuration, where EMR's schema "
                "has it under EncryptionConfiguration, so it cannot see it.",
            )
            acknowledge(
                self.cfn_cluster,
                "AwsSolutions-EMR5",
                "In-transit encryption needs a TLS certificate bundle that only the user can supply; traffic stays "
                "inside private subnets, and at-rest plus local-disk encryption are on (security configuration).",
            )
            acknowledge(
                self.cfn_cluster,
                "AwsSolutions-EMR6",
                "No interactive access at all: no EC2 key pair, no Kerberos realm; the cluster only runs steps "
                "submitted through the EMR API by the trigger Lambda.",
            )

    @property
    def launch_tag_keys(self) -> list[str]:
        """The keys of the tags every cluster of this stack is launched with (the definition's ``Tags``), sorted."""
        return sorted(tag["Key"] for tag in self.job_flow["Tags"])

    @property
    def cluster_id(self) -> Optional[str]:
        return self.cfn_cluster.ref if self.cfn_cluster else None

    def grant_step_submission(self, function: lambda_.Function) -> None:
        """Let ``function`` submit steps to clusters carrying this stack's tag (the persistent cluster carries it too),
        and launch such clusters from the definition with this stack's two roles and nothing else: in transient mode,
        and in persistent mode to replace a persistent cluster that no longer accepts steps (review 2, #10)."""
        stack = Stack.of(self)
        tag_value = self._tag_value
        statements = [
            # RunJobFlow has no resource-level permission (the cluster does not exist yet): the condition is the limit,
            # as in AWS's own AmazonEMRFullAccessPolicy_v2.
            iam.PolicyStatement(
                sid="LaunchClustersTaggedByThisStack",
                actions=["elasticmapreduce:RunJobFlow"],
                resources=["*"],
                conditions={"StringEquals": {f"aws:RequestTag/{self._tag_key}": tag_value}},
            ),
            iam.PolicyStatement(
                sid="StepsOnClustersTaggedByThisStack",
                actions=[
                    "elasticmapreduce:AddJobFlowSteps",
                    "elasticmapreduce:ListSteps",
                    "elasticmapreduce:DescribeCluster",
                    # EMR checks these on the new cluster when RunJobFlow carries the definition's policies.
                    "elasticmapreduce:PutAutoTerminationPolicy",
                    *(["elasticmapreduce:PutManagedScalingPolicy"] if self._managed_scaling else []),
                ],
                resources=[stack.format_arn(service="elasticmapreduce", resource="cluster", resource_name="*")],
                conditions={"StringEquals": {f"aws:ResourceTag/{self._tag_key}": tag_value}},
            ),
            # The same policies when EMR authorizes them as part of the RunJobFlow that creates the cluster: whether it
            # then reads the new cluster's tags or the request's is not documented, so both are allowed, each limited
            # to this stack's tag. (Not verifiable without an account: see infra/README.md, "Not verified".)
            iam.PolicyStatement(
                sid="PoliciesOfClustersLaunchedByThisStack",
                actions=[
                    "elasticmapreduce:PutAutoTerminationPolicy",
                    *(["elasticmapreduce:PutManagedScalingPolicy"] if self._managed_scaling else []),
                ],
                resources=[stack.format_arn(service="elasticmapreduce", resource="cluster", resource_name="*")],
                conditions={"StringEquals": {f"aws:RequestTag/{self._tag_key}": tag_value}},
            ),
            # A RunJobFlow that carries tags also needs AddTags ("IAM policies for tag-based access to clusters",
            # EMR Management Guide: "To create a cluster with a tag, you must also have permission for the AddTags
            # action"). Whether EMR then checks the request's tags or the new cluster's is not documented: both are
            # allowed, each limited to this stack's tag, and to the definition's own tag keys (no other tag can be set).
            *(
                iam.PolicyStatement(
                    sid=sid,
                    actions=["elasticmapreduce:AddTags"],
                    resources=[stack.format_arn(service="elasticmapreduce", resource="cluster", resource_name="*")],
                    conditions={
                        "StringEquals": {f"aws:{tag_condition}/{self._tag_key}": tag_value},
                        "ForAllValues:StringEquals": {"aws:TagKeys": self.launch_tag_keys},
                    },
                )
                for sid, tag_condition in (
                    ("TagClustersLaunchedByThisStack", "RequestTag"),
                    ("TagClustersOfThisStack", "ResourceTag"),
                )
            ),
            # ListClusters has no resource-level permissions; it only reveals ids, states and names.
            iam.PolicyStatement(sid="FindRunningClusters", actions=["elasticmapreduce:ListClusters"], resources=["*"]),
            iam.PolicyStatement(
                sid="PassOnlyThisStacksRoles",
                actions=["iam:PassRole"],
                resources=[self.service_role.role_arn, self.instance_role.role_arn],
                # StringLike with a trailing * as in AWS's own EMR policies: service names end in .com.cn in aws-cn.
                conditions={
                    "StringLike": {"iam:PassedToService": ["elasticmapreduce.amazonaws.com*", "ec2.amazonaws.com*"]}
                },
            ),
            # EMR creates its cleanup service-linked role at the first cluster of an account, as the caller of
            # RunJobFlow; without this the first transient cluster in a fresh account fails. Scoped as in AWS's
            # AmazonEMRFullAccessPolicy_v2 (statement ElasticMapReduceServiceLinkedRole).
            iam.PolicyStatement(
                sid="CreateEmrCleanupServiceLinkedRole",
                actions=["iam:CreateServiceLinkedRole"],
                resources=[
                    stack.format_arn(
                        service="iam",
                        region="",
                        resource="role",
                        resource_name=f"aws-service-role/{EMR_SERVICE_PRINCIPAL}*/{EMR_CLEANUP_SERVICE_LINKED_ROLE}*",
                    )
                ],
                conditions={
                    "StringEquals": {"iam:AWSServiceName": [EMR_SERVICE_PRINCIPAL, EMR_SERVICE_PRINCIPAL + ".cn"]}
                },
            ),
        ]
        for statement in statements:
            function.add_to_role_policy(statement)
        acknowledge(
            function,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:elasticmapreduce:<AWS::Region>:<AWS::AccountId>:cluster/*]",
            "Transient clusters get their ids at launch; every action is conditioned on this stack's cluster tag.",
        )
        acknowledge(
            function,
            "AwsSolutions-IAM5[Resource::*]",
            "elasticmapreduce:ListClusters supports no resource-level permission, nor does RunJobFlow, which is "
            "allowed only for requests carrying this stack's cluster tag.",
        )
        acknowledge(
            function,
            "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:iam::<AWS::AccountId>:role/aws-service-role/"
            f"{EMR_SERVICE_PRINCIPAL}*/{EMR_CLEANUP_SERVICE_LINKED_ROLE}*]",
            "EMR's cleanup service-linked role only, created once per account at the first cluster; the pattern "
            "and the iam:AWSServiceName condition are AWS's own (AmazonEMRFullAccessPolicy_v2).",
        )

    def _instance_role(self, data_bucket: s3.IBucket, logs_bucket: s3.IBucket, key: kms.IKey) -> iam.Role:
        """The nodes' role: read models, inputs, manifests and artifacts; write results and logs; nothing else."""
        role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="EMR nodes of the inference stack: read inputs/models/artifacts, write results and logs",
        )
        readable = [MODELS_PREFIX, INCOMING_PREFIX, STAGED_PREFIX, MANIFESTS_PREFIX, ARTIFACTS_PREFIX, RESULTS_PREFIX]
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadInputsModelsArtifacts",
                actions=["s3:GetObject"],
                resources=[data_bucket.arn_for_objects(prefix + "*") for prefix in readable],
            )
        )
        # A manifest entry may pin the version to read ({"uri", "version_id"}: job/sources.py); reading a named version
        # is s3:GetObjectVersion. Inputs only: models are pinned by ETag, which s3:GetObject covers.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ReadPinnedInputVersions",
                actions=["s3:GetObjectVersion"],
                resources=[data_bucket.arn_for_objects(prefix + "*") for prefix in (INCOMING_PREFIX, STAGED_PREFIX)],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListInputPrefixes",
                actions=["s3:ListBucket"],
                resources=[data_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [prefix + "*" for prefix in readable]}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteResults",
                # Spark's committer writes the output and deletes what it replaces; on emr-7.10.0 and later s3:// is
                # S3A with EMR's magic committer, which stages files under results/.../__magic/ as multipart uploads
                # and completes (or aborts and lists) them at commit.
                actions=["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
                resources=[data_bucket.arn_for_objects(RESULTS_PREFIX + "*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                # The job's one-line run record (--run-record runs/<run id>.json), the runs table's object; nothing
                # there is read or replaced by the nodes.
                sid="WriteRunRecords",
                actions=["s3:PutObject"],
                resources=[data_bucket.arn_for_objects(RUNS_PREFIX + "*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="WriteLogs",
                actions=["s3:PutObject"],
                resources=[logs_bucket.arn_for_objects(EMR_LOGS_PREFIX + "*")],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="ListLogPrefix",
                actions=["s3:ListBucket"],
                resources=[logs_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [EMR_LOGS_PREFIX + "*"]}},
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="LocateBucketsAndUploads",
                # Bucket metadata only (region, pending multipart uploads), no object data.
                actions=["s3:GetBucketLocation", "s3:ListBucketMultipartUploads"],
                resources=[data_bucket.bucket_arn, logs_bucket.bucket_arn],
            )
        )
        key.grant_encrypt_decrypt(role)
        for bucket, prefix, reason in (
            (data_bucket, MODELS_PREFIX, "Any model package under models/ can be chosen per run; read-only."),
            (data_bucket, INCOMING_PREFIX, "Inputs are any object uploaded under incoming/; read-only."),
            (data_bucket, STAGED_PREFIX, "Inputs a manifest lists are any object under staged/; read-only."),
            (data_bucket, MANIFESTS_PREFIX, "One manifest per batch, named by the batch id; read-only."),
            (data_bucket, ARTIFACTS_PREFIX, "The job zip, entry point and bootstrap scripts; read-only."),
            (data_bucket, RESULTS_PREFIX, "Each step writes its own results/<batch id>/ prefix."),
            (data_bucket, RUNS_PREFIX, "Each step writes its own runs/<run id>.json record; write-only."),
            (logs_bucket, EMR_LOGS_PREFIX, "EMR writes logs per cluster and per step under emr/."),
        ):
            acknowledge(role, object_wildcard_finding(bucket, prefix), reason)
        acknowledge(
            role, "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]", "CDK's encrypt/decrypt grant on the stack key."
        )
        acknowledge(role, "AwsSolutions-IAM5[Action::kms:ReEncrypt*]", "CDK's encrypt/decrypt grant on the stack key.")
        return role

    def _service_role(self, key: kms.IKey) -> iam.Role:
        role = iam.Role(
            self,
            "ServiceRole",
            assumed_by=iam.ServicePrincipal(
                "elasticmapreduce.amazonaws.com",
                conditions={
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{Aws.PARTITION}:elasticmapreduce:{Aws.REGION}:{Aws.ACCOUNT_ID}:*"
                    },
                },
            ),
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name(EMR_SERVICE_POLICY)],
            description="EMR service role of the inference stack (v2 policy: acts only on resources tagged for EMR)",
        )
        # The v2 policy does not pass the instance role itself: allow exactly this stack's instance role.
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PassInstanceRole",
                actions=["iam:PassRole"],
                resources=[self.instance_role.role_arn],
                # StringLike with a trailing * as in AWS's own EMR policies: the service name ends in .com.cn in aws-cn.
                conditions={"StringLike": {"iam:PassedToService": "ec2.amazonaws.com*"}},
            )
        )
        # Local-disk encryption with EBS encryption: EMR encrypts the nodes' volumes with the stack key.
        key.grant(
            role,
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:GenerateDataKey*",
            "kms:DescribeKey",
            "kms:CreateGrant",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2]",
            "AWS's own scoped-down EMR service policy, required by EMR; it acts only on resources tagged "
            "for-use-with-amazon-emr-managed-policies=true.",
        )
        acknowledge(role, "AwsSolutions-IAM5[Action::kms:GenerateDataKey*]", "EBS encryption with the stack key.")
        acknowledge(role, "AwsSolutions-IAM5[Action::kms:ReEncrypt*]", "EBS encryption with the stack key.")
        return role


def _content_hash(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:CONTENT_HASH_CHARS]


def _security_configuration(key_arn: str) -> dict[str, Any]:
    """Encryption at rest of S3 data (SSE-S3) and of local disks (incl. EBS) with the stack key; IMDSv2 only.

    ``S3EncryptionConfiguration`` is EMRFS's setting; from emr-7.10.0 on ``s3://`` goes through S3A instead of EMRFS, and
    what protects the job's objects is then the buckets' own default encryption (SSE-S3, see storage.py), which S3
    applies to every write whatever the client asks for.
    """
    return {
        "EncryptionConfiguration": {
            "EnableInTransitEncryption": False,
            "EnableAtRestEncryption": True,
            "AtRestEncryptionConfiguration": {
                "S3EncryptionConfiguration": {"EncryptionMode": "SSE-S3"},
                "LocalDiskEncryptionConfiguration": {
                    "EncryptionKeyProviderType": "AwsKms",
                    "AwsKmsKey": key_arn,
                    "EnableEbsEncryption": True,
                },
            },
        },
        "InstanceMetadataServiceConfiguration": {
            "MinimumInstanceMetadataServiceVersion": 2,
            "HttpPutResponseHopLimit": 1,
        },
    }


def stack_key(scope: Construct, construct_id: str) -> kms.Key:
    """One customer-managed key for the nodes' local disks and the notification topic (EventBridge cannot publish
    to a topic encrypted with the AWS-managed SNS key)."""
    return kms.Key(
        scope,
        construct_id,
        enable_key_rotation=True,
        description="Inference stack: EMR local-disk/EBS encryption and the notification topic",
        removal_policy=RemovalPolicy.DESTROY,
        pending_window=Duration.days(KEY_PENDING_WINDOW_DAYS),
    )
