"""The IAM rule: every AWS call the code makes, mapped to the IAM authorizations it needs, judged against the
synthesized stack's role policies.

Three parts, each small:

1. ``StackView``: the synthesized template with every CloudFormation intrinsic (Ref, Fn::GetAtt, Fn::Join, Fn::Sub,
   Fn::Select, Fn::Split, pseudo parameters) resolved to a fake but consistent physical value: bucket ``<logical id in
   lower case>``, table and role ``<logical id>``, ARNs built from those in account 123456789012, us-east-1. It also
   answers what the mapping needs to know about a resource: a bucket's or table's or topic's KMS key, an instance
   profile's role, a role's policies (inline, attached ``AWS::IAM::Policy``, AWS managed from moto's copy).
2. ``NEEDS``: the mapping table, one row per (botocore service, operation), each with its source in AWS's
   documentation. A row turns the call's parameters into ``Need`` s: IAM action, resource ARN and request context
   (tags, ``s3:prefix``, ``iam:PassedToService``...), including the actions AWS documents as dependent on the call
   (``iam:PassRole`` and ``elasticmapreduce:AddTags`` for a tagged ``RunJobFlow``, the KMS actions of a CMK-encrypted
   table or topic), and needs of other principals that the call creates (the roles a cluster runs with).
3. ``decide``: moto's own IAM statement matcher (``moto.iam.access_control.IAMPolicyStatement``: action and resource
   wildcards, ``NotAction``, ``StringEquals`` conditions) applied statement by statement, with AWS's combining rule
   (an explicit deny wins, else any allow, else denied). The adapter corrects the two places where moto's statement
   result is not AWS's: an Allow whose condition is false grants nothing (moto reports it as a deny), and a condition
   on a key the request does not carry is false (moto skips it), except for ``...IfExists``, ``Null`` and
   ``ForAllValues:`` operators.

What this cannot prove, and the real account must confirm (the first-deploy checklist: one upload, then CloudTrail for
denied calls):
- Condition operators other than ``StringEquals`` (``StringLike``, ``ArnLike``, ``Bool``, ``ForAllValues:*``...) are
  not evaluated by moto and count as met: the ``s3:prefix`` of a ListBucket and ``iam:PassedToService`` of a PassRole
  are therefore checked only for the action and resource. ``decide`` reports which such conditions it took as met.
- Only identity policies of the stack's roles are judged: no resource policies (bucket policies, the KMS key policy,
  the topic policy), no service control policies, no permission boundaries, no session policies, no VPC endpoint
  policies. (The stack's key policy is CDK's default, which lets the account's IAM policies grant use of the key.)
- The mapping is as good as its rows: an action AWS checks but does not document as dependent cannot be known here.
- Calls are judged on the stack's own resources: the tests' bucket, table, topic and clusters are mapped onto the
  stack's, with the stack's tags (a call the code expects to be refused, such as DescribeCluster of another owner's
  cluster, is judged as if on the stack's own cluster).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from moto.iam.access_control import IAMPolicyStatement, PermissionResult
from moto.iam.aws_managed_policies import aws_managed_policies_data

PARTITION = "aws"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # AWS's documentation example account: nobody's real account
STACK_NAME = "TestInference"
URL_SUFFIX = "amazonaws.com"
# How a new cluster of the stack is named here (transient mode): its id is known only after RunJobFlow.
LAUNCHED_CLUSTER_ID = "j-LAUNCHEDBYTRIGGER"
SAR = "https://docs.aws.amazon.com/service-authorization/latest/reference/"


@dataclass(frozen=True)
class Need:
    """One authorization: ``principal`` ("caller", or the stack role a created resource runs as: "instance role",
    "service role") may do ``action`` on ``resource`` (an ARN, or "*") given the request ``context``."""

    action: str
    resource: str
    context: Mapping[str, Any] = field(default_factory=dict)
    principal: str = "caller"
    why: str = ""

    def describe(self) -> str:
        """One line; EMR's own tag keys (elasticmapreduce:RequestTag/..., ...ResourceTag/...) are left out: they
        repeat the aws: ones."""
        shown = {key: value for key, value in self.context.items() if not re.match(r"elasticmapreduce:\w+Tag/", key)}
        context = f" with {json.dumps(shown, sort_keys=True)}" if shown else ""
        return f"{self.principal}: {self.action} on {self.resource}{context} ({self.why})"


class UnmappedCall(LookupError):
    """A call with no row in ``NEEDS``: its grant cannot be judged until a row says what it needs."""


# --- the synthesized stack, resolved --------------------------------------------------------------------------------


class StackView:
    """A synthesized template with fake physical values for every resource (see the module docstring)."""

    def __init__(self, template: dict) -> None:
        self.template = template
        self.resources: dict[str, dict] = template["Resources"]

    # Physical names and attributes ---------------------------------------------------------------------------------

    def ref(self, logical_id: str) -> str:
        pseudo = {
            "AWS::Partition": PARTITION,
            "AWS::Region": REGION,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": STACK_NAME,
            "AWS::URLSuffix": URL_SUFFIX,
            "AWS::StackId": f"arn:{PARTITION}:cloudformation:{REGION}:{ACCOUNT}:stack/{STACK_NAME}/fake",
        }
        if logical_id in pseudo:
            return pseudo[logical_id]
        kind = self.resources[logical_id]["Type"]
        if kind == "AWS::S3::Bucket":
            return logical_id.lower()
        if kind == "AWS::SNS::Topic":
            return f"arn:{PARTITION}:sns:{REGION}:{ACCOUNT}:{logical_id}"
        if kind == "AWS::SQS::Queue":
            return f"https://sqs.{REGION}.{URL_SUFFIX}/{ACCOUNT}/{logical_id}"
        if kind == "AWS::EMR::Cluster":
            return f"j-{logical_id.upper()}"
        if kind == "AWS::EC2::SecurityGroup":
            return f"sg-{logical_id.lower()}"
        if kind == "AWS::IAM::ManagedPolicy":
            return f"arn:{PARTITION}:iam::{ACCOUNT}:policy/{logical_id}"
        return logical_id  # tables, roles, instance profiles, keys, security configurations: the name or id

    def get_att(self, logical_id: str, attribute: str) -> str:
        kind = self.resources[logical_id]["Type"]
        name = self.ref(logical_id)
        if attribute == "Arn":
            arns = {
                "AWS::S3::Bucket": f"arn:{PARTITION}:s3:::{name}",
                "AWS::DynamoDB::Table": f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{name}",
                "AWS::IAM::Role": f"arn:{PARTITION}:iam::{ACCOUNT}:role/{name}",
                "AWS::IAM::InstanceProfile": f"arn:{PARTITION}:iam::{ACCOUNT}:instance-profile/{name}",
                "AWS::KMS::Key": f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/{name}",
                "AWS::SQS::Queue": f"arn:{PARTITION}:sqs:{REGION}:{ACCOUNT}:{logical_id}",
                "AWS::Lambda::Function": f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{logical_id}",
                "AWS::Logs::LogGroup": f"arn:{PARTITION}:logs:{REGION}:{ACCOUNT}:log-group:{logical_id}:*",
                "AWS::SNS::Topic": name,
            }
            if kind in arns:
                return arns[kind]
        if kind == "AWS::EC2::SecurityGroup" and attribute == "GroupId":
            return name
        return f"{logical_id}.{attribute}"

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic replaced by its fake physical value."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (function, argument), = value.items()
            if function == "Ref":
                return self.ref(argument)
            if function == "Fn::GetAtt":
                logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.get_att(logical_id, attribute)
            if function == "Fn::Join":
                separator, items = argument
                return separator.join(str(self.resolve(item)) for item in self.resolve(items))
            if function == "Fn::Select":
                index, items = argument
                return self.resolve(items)[int(self.resolve(index))]
            if function == "Fn::Split":
                separator, text = argument
                return str(self.resolve(text)).split(separator)
            if function == "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                return re.sub(r"\$\{([^}]+)\}", lambda match: self._sub(match.group(1), variables), text)
            if function.startswith("Fn::"):
                raise ValueError(f"intrinsic {function} is not resolved by this adapter: {json.dumps(value)[:200]}")
        return {key: self.resolve(item) for key, item in value.items()}

    def _sub(self, name: str, variables: dict) -> str:
        if name in variables:
            return str(self.resolve(variables[name]))
        if "." in name and not name.startswith("AWS::"):
            logical_id, attribute = name.split(".", 1)
            return self.get_att(logical_id, attribute)
        return self.ref(name)

    def properties(self, logical_id: str) -> dict:
        return self.resolve(self.resources[logical_id].get("Properties", {}))

    def of_type(self, kind: str) -> list[str]:
        return [logical_id for logical_id, body in self.resources.items() if body["Type"] == kind]

    # What the mapping asks ------------------------------------------------------------------------------------------

    def _find(self, kind: str, physical: str) -> Optional[str]:
        return next((logical for logical in self.of_type(kind) if self.ref(logical) == physical), None)

    def bucket_key(self, bucket: str) -> Optional[str]:
        """The KMS key ARN of the bucket's default encryption when it is SSE-KMS; None for SSE-S3 or unknown buckets."""
        logical = self._find("AWS::S3::Bucket", bucket)
        if logical is None:
            return None
        rules = self.properties(logical).get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        for rule in rules:
            default = rule.get("ServerSideEncryptionByDefault", {})
            if default.get("SSEAlgorithm", "").startswith("aws:kms"):
                return self._key_arn(default.get("KMSMasterKeyID") or "alias/aws/s3")
        return None

    def table_key(self, table: str) -> Optional[str]:
        logical = self._find("AWS::DynamoDB::Table", table)
        sse = self.properties(logical).get("SSESpecification", {}) if logical else {}
        if sse.get("SSEEnabled") and sse.get("SSEType", "KMS") == "KMS" and sse.get("KMSMasterKeyId"):
            return self._key_arn(sse["KMSMasterKeyId"])
        return None

    def topic_key(self, topic_arn: str) -> Optional[str]:
        logical = self._find("AWS::SNS::Topic", topic_arn)
        key = self.properties(logical).get("KmsMasterKeyId") if logical else None
        return self._key_arn(key) if key else None

    def queue_key(self, queue_arn: str) -> Optional[str]:
        """The queue's KMS key when it uses SSE-KMS; None for SSE-SQS (no KMS permission needed) or unknown queues."""
        logical = next((q for q in self.of_type("AWS::SQS::Queue") if self.get_att(q, "Arn") == queue_arn), None)
        key = self.properties(logical).get("KmsMasterKeyId") if logical else None
        return self._key_arn(key) if key else None

    def _key_arn(self, key: str) -> str:
        if key.startswith("arn:"):
            return key
        return f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:{key if key.startswith('alias/') else 'key/' + key}"

    def role_arn_of_instance_profile(self, profile_name: str) -> str:
        logical = self._find("AWS::IAM::InstanceProfile", profile_name)
        if logical is None:
            raise LookupError(f"no instance profile named {profile_name!r} in the stack")
        (role_name,) = self.properties(logical)["Roles"]
        return self.role_arn(role_name)

    def role_arn(self, role: str) -> str:
        return role if role.startswith("arn:") else f"arn:{PARTITION}:iam::{ACCOUNT}:role/{role}"

    def security_configuration(self, name: str) -> dict:
        logical = self._find("AWS::EMR::SecurityConfiguration", name)
        if logical is None:
            for candidate in self.of_type("AWS::EMR::SecurityConfiguration"):
                if self.properties(candidate).get("Name") == name:
                    logical = candidate
        if logical is None:
            raise LookupError(f"no security configuration named {name!r} in the stack")
        configuration = self.properties(logical)["SecurityConfiguration"]
        return json.loads(configuration) if isinstance(configuration, str) else configuration

    def role_statements(self, role_logical_id: str) -> list[dict]:
        """Every statement of the role's identity policies: its own ``Policies``, each ``AWS::IAM::Policy`` and
        ``AWS::IAM::ManagedPolicy`` of the stack attached to it, and the AWS managed policies it names (their text
        from moto's copy of AWS's managed policies)."""
        role = self.properties(role_logical_id)
        role_name = self.ref(role_logical_id)
        documents = [policy["PolicyDocument"] for policy in role.get("Policies", [])]
        for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for logical in self.of_type(kind):
                properties = self.properties(logical)
                if role_name in properties.get("Roles", []):
                    documents.append(properties["PolicyDocument"])
        managed = _aws_managed_policies()
        for arn in role.get("ManagedPolicyArns", []):
            stack_policy = self._find("AWS::IAM::ManagedPolicy", arn)
            if stack_policy is not None:
                documents.append(self.properties(stack_policy)["PolicyDocument"])
                continue
            name = arn.rsplit("/", 1)[-1]
            if not arn.startswith(f"arn:{PARTITION}:iam::aws:policy/") or name not in managed:
                raise LookupError(f"managed policy {arn} of role {role_logical_id} is unknown to moto's copy")
            documents.append(managed[name]["Document"])
        statements = []
        for document in documents:
            found = document["Statement"]
            statements.extend(found if isinstance(found, list) else [found])
        return statements


@functools.lru_cache(maxsize=1)
def _aws_managed_policies() -> dict:
    """AWS's managed policies by name, as moto ships them (1,500 documents: parsed once)."""
    return json.loads(aws_managed_policies_data)


# --- the decision ---------------------------------------------------------------------------------------------------

# Condition operators for which a missing key does not make the condition false (IAM User Guide, "Condition operators":
# ...IfExists; Null; ForAllValues is true for an empty set of values).
_MISSING_KEY_OK = re.compile(r"(IfExists$|^Null$|^ForAllValues:)")
# The only operator moto's condition check implements (moto/iam/policy_conditions.py, CONDITION_OPERATIONS).
MOTO_EVALUATED_OPERATORS = ("StringEquals",)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    by: tuple[str, ...]  # the statements (Sid or index) that allowed or denied
    unevaluated: tuple[str, ...]  # "operator key" of conditions moto could not evaluate, taken as met


def decide(statements: list[dict], need: Need) -> Decision:
    """AWS's combining rule over one principal's identity statements, with moto's matcher per statement."""
    allowing, denying, unevaluated = [], [], []
    for index, statement in enumerate(statements):
        for unsupported in ("NotResource", "NotPrincipal"):
            if unsupported in statement:
                raise ValueError(f"statement {statement.get('Sid', index)} uses {unsupported}, which moto ignores")
        if not _matches(statement, need):
            continue
        condition = statement.get("Condition", {})
        if not _condition_holds(condition, need.context):
            continue
        unevaluated.extend(
            f"{operator} {key}"
            for operator, keys in condition.items()
            if operator not in MOTO_EVALUATED_OPERATORS
            for key in keys
        )
        (allowing if statement["Effect"] == "Allow" else denying).append(str(statement.get("Sid", index)))
    if denying:
        return Decision(False, tuple(denying), ())
    return Decision(bool(allowing), tuple(allowing), tuple(unevaluated) if allowing else ())


def _matches(statement: dict, need: Need) -> bool:
    """Action and resource, by moto's matcher (an Allow copy without its condition, so moto cannot answer DENIED)."""
    bare = {key: value for key, value in statement.items() if key != "Condition"}
    bare["Effect"] = "Allow"
    return IAMPolicyStatement(bare).is_action_permitted(need.action, need.resource) == PermissionResult.PERMITTED


def _condition_holds(condition: dict, context: Mapping[str, Any]) -> bool:
    for operator, keys in condition.items():
        for key in keys:
            if key not in context and not _MISSING_KEY_OK.search(operator):
                return False
    if not condition:
        return True
    only_condition = {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": condition}
    scalar_context = {key: value for key, value in context.items() if isinstance(value, str)}
    result = IAMPolicyStatement(only_condition).is_action_permitted("any:Action", "*", None, scalar_context)
    return result == PermissionResult.PERMITTED


# --- the mapping table ----------------------------------------------------------------------------------------------


def s3_object_arn(bucket: str, key: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}/{key}"


def s3_bucket_arn(bucket: str) -> str:
    return f"arn:{PARTITION}:s3:::{bucket}"


def emr_cluster_arn(cluster_id: str) -> str:
    return f"arn:{PARTITION}:elasticmapreduce:{REGION}:{ACCOUNT}:cluster/{cluster_id}"


def tag_context(tags: Mapping[str, str], kind: str) -> dict:
    """``kind`` "Request" or "Resource": the global and EMR's own tag condition keys for these tags."""
    context: dict[str, Any] = {}
    for key, value in tags.items():
        context[f"aws:{kind}Tag/{key}"] = value
        context[f"elasticmapreduce:{kind}Tag/{key}"] = value
    if kind == "Request":
        context["aws:TagKeys"] = sorted(tags)
    return context


@dataclass(frozen=True)
class CallContext:
    """What a row needs besides the parameters: the stack, and the tags of the clusters the call names."""

    stack: StackView
    cluster_tags: Callable[[str], Mapping[str, str]]


def _kms_needs(key_arn: Optional[str], actions: tuple[str, ...], service: str, why: str) -> list[Need]:
    if key_arn is None:
        return []
    via = {"kms:ViaService": f"{service}.{REGION}.{URL_SUFFIX}", "kms:CallerAccount": ACCOUNT}
    return [Need(action, key_arn, via, why=why) for action in actions]


def _s3_get(params: dict, ctx: CallContext, operation: str) -> list[Need]:
    bucket, key = params["Bucket"], params["Key"]
    # A read of a named version is authorized as s3:GetObjectVersion, not s3:GetObject (manifest entries pinned by
    # version_id: job/sources.py).
    action = "s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject"
    return [Need(action, s3_object_arn(bucket, key), why=f"s3 {operation}")] + _kms_needs(
        ctx.stack.bucket_key(bucket), ("kms:Decrypt",), "s3", f"s3 {operation} of an SSE-KMS object"
    )


def _s3_put(params: dict, ctx: CallContext, operation: str) -> list[Need]:
    bucket, key = params["Bucket"], params["Key"]
    needs = [Need("s3:PutObject", s3_object_arn(bucket, key), why=f"s3 {operation}")]
    if params.get("Tagging"):
        needs.append(Need("s3:PutObjectTagging", s3_object_arn(bucket, key), why=f"s3 {operation} with Tagging"))
    if params.get("ACL") or any(name.startswith("Grant") for name in params):
        needs.append(Need("s3:PutObjectAcl", s3_object_arn(bucket, key), why=f"s3 {operation} with an ACL"))
    # A multipart upload to an SSE-KMS bucket also decrypts the data key for each part (S3 User Guide, SSE-KMS).
    kms = ("kms:GenerateDataKey",) if operation == "PutObject" else ("kms:GenerateDataKey", "kms:Decrypt")
    return needs + _kms_needs(ctx.stack.bucket_key(bucket), kms, "s3", f"s3 {operation} to an SSE-KMS bucket")


def _s3_object(action: str) -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        return [Need(action, s3_object_arn(params["Bucket"], params["Key"]), why=f"s3 {operation}")]

    return needs


def _s3_list(params: dict, ctx: CallContext, operation: str) -> list[Need]:
    context = {"s3:prefix": params.get("Prefix", "")}
    if "Delimiter" in params:
        context["s3:delimiter"] = params["Delimiter"]
    return [Need("s3:ListBucket", s3_bucket_arn(params["Bucket"]), context, why=f"s3 {operation}")]


def _s3_bucket(action: str) -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        return [Need(action, s3_bucket_arn(params["Bucket"]), why=f"s3 {operation}")]

    return needs


def _dynamodb_item(action: str, *, writes: bool) -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        table = params["TableName"]
        arn = f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/{table}"
        context = {"dynamodb:ReturnValues": params["ReturnValues"]} if "ReturnValues" in params else {}
        found = [Need(action, arn, context, why=f"dynamodb {operation}")]
        # A write encrypts with the table's key; a read, a conditional write (it reads the item to check the
        # condition) and a write that returns old values also decrypt.
        reads = (not writes) or any(
            name in params for name in ("ConditionExpression", "ReturnValuesOnConditionCheckFailure", "ReturnValues")
        )
        kms = (("kms:Encrypt", "kms:GenerateDataKey") if writes else ()) + (("kms:Decrypt",) if reads else ())
        return found + _kms_needs(ctx.stack.table_key(table), kms, "dynamodb", f"dynamodb {operation}, CMK table")

    return needs


def _sns_publish(params: dict, ctx: CallContext, operation: str) -> list[Need]:
    topic = params["TopicArn"]
    return [Need("sns:Publish", topic, why="sns Publish")] + _kms_needs(
        ctx.stack.topic_key(topic), ("kms:GenerateDataKey", "kms:Decrypt"), "sns", "sns Publish to a KMS topic"
    )


def _sqs(action: str, kms: tuple[str, ...]) -> Callable[[dict, CallContext, str], list[Need]]:
    """``QueueUrl`` https://sqs.<region>.<suffix>/<account>/<name> -> arn:...:sqs:<region>:<account>:<name>."""

    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        account, name = params["QueueUrl"].rstrip("/").split("/")[-2:]
        arn = f"arn:{PARTITION}:sqs:{REGION}:{account}:{name}"
        return [Need(action, arn, why=f"sqs {operation}")] + _kms_needs(
            ctx.stack.queue_key(arn), kms, "sqs", f"sqs {operation} on an SSE-KMS queue"
        )

    return needs


def _emr_cluster(action: str, id_param: str = "ClusterId") -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        ids = params[id_param] if isinstance(params[id_param], list) else [params[id_param]]
        return [
            Need(action, emr_cluster_arn(cluster_id), tag_context(ctx.cluster_tags(cluster_id), "Resource"),
                 why=f"emr {operation}")
            for cluster_id in ids
        ]  # fmt: skip

    return needs


def _emr_anything(action: str) -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        return [Need(action, "*", why=f"emr {operation}")]

    return needs


def _emr_run_job_flow(params: dict, ctx: CallContext, operation: str) -> list[Need]:
    """RunJobFlow and what AWS documents as depending on it (sources in the row's comment in NEEDS)."""
    tags = {tag["Key"]: tag.get("Value", "") for tag in params.get("Tags", [])}
    request_tags = tag_context(tags, "Request")
    new_cluster = emr_cluster_arn(LAUNCHED_CLUSTER_ID)
    # EMR authorizes what it does to the new cluster on the caller's behalf: both the request's tags and, once
    # created, the cluster's own (the same tags) are in the context.
    on_new_cluster = {**request_tags, **tag_context(tags, "Resource")}
    needs = [Need("elasticmapreduce:RunJobFlow", "*", request_tags, why="emr RunJobFlow")]
    if tags:
        needs.append(
            Need("elasticmapreduce:AddTags", new_cluster, on_new_cluster, why="emr RunJobFlow with Tags (review #1)")
        )
    for policy, action in (
        ("AutoTerminationPolicy", "elasticmapreduce:PutAutoTerminationPolicy"),
        ("ManagedScalingPolicy", "elasticmapreduce:PutManagedScalingPolicy"),
    ):
        if policy in params:
            needs.append(Need(action, new_cluster, on_new_cluster, why=f"emr RunJobFlow with {policy}"))
    service_role = ctx.stack.role_arn(params["ServiceRole"])
    needs.append(Need("iam:PassRole", service_role, {"iam:PassedToService": "elasticmapreduce.amazonaws.com"},
                      why="emr RunJobFlow ServiceRole"))  # fmt: skip
    instance_role = ctx.stack.role_arn_of_instance_profile(params["JobFlowRole"])
    needs.append(Need("iam:PassRole", instance_role, {"iam:PassedToService": "ec2.amazonaws.com"},
                      why="emr RunJobFlow JobFlowRole (the instance profile's role)"))  # fmt: skip
    if "AutoScalingRole" in params:
        needs.append(Need("iam:PassRole", ctx.stack.role_arn(params["AutoScalingRole"]),
                          {"iam:PassedToService": "application-autoscaling.amazonaws.com"},
                          why="emr RunJobFlow AutoScalingRole"))  # fmt: skip
    cleanup_role = (
        f"arn:{PARTITION}:iam::{ACCOUNT}:role/aws-service-role/elasticmapreduce.amazonaws.com/"
        "AWSServiceRoleForEMRCleanup"
    )
    needs.append(Need("iam:CreateServiceLinkedRole", cleanup_role,
                      {"iam:AWSServiceName": "elasticmapreduce.amazonaws.com"},
                      why="emr RunJobFlow, first cluster of an account (EMR cleanup service-linked role)"))  # fmt: skip
    return needs + cluster_role_needs(params, ctx.stack)


def cluster_role_needs(definition: dict, stack: StackView) -> list[Need]:
    """What a cluster launched from ``definition`` (a RunJobFlow request, or the CloudFormation cluster's) needs of
    its own roles: EMR, as the service role, passes the instance profile's role to EC2 (the v2 service policy does
    not: EMR Management Guide, "Service role for Amazon EMR"), and the security configuration's keys."""
    instance_role = stack.role_arn_of_instance_profile(definition["JobFlowRole"])
    needs = [Need("iam:PassRole", instance_role, {"iam:PassedToService": "ec2.amazonaws.com"}, principal="service role",
                  why="the cluster's service role passes the instance profile's role to EC2")]  # fmt: skip
    if "SecurityConfiguration" in definition:
        needs.extend(_security_configuration_needs(stack.security_configuration(definition["SecurityConfiguration"])))
    return needs


def _security_configuration_needs(configuration: dict) -> list[Need]:
    """Local-disk encryption with a KMS key: each node (instance role) gets data keys to set up its disks; EBS
    encryption: EMR (service role) creates encrypted volumes and grants on the key for them."""
    local = configuration.get("EncryptionConfiguration", {}).get("AtRestEncryptionConfiguration", {}).get(
        "LocalDiskEncryptionConfiguration", {}
    )
    if local.get("EncryptionKeyProviderType") != "AwsKms":
        return []
    key = local["AwsKmsKey"]
    needs = [
        Need(action, key, principal="instance role", why="security configuration: local-disk encryption with KMS")
        for action in ("kms:GenerateDataKey", "kms:Decrypt")
    ]
    if local.get("EnableEbsEncryption"):
        needs.extend(
            Need(action, key, principal="service role", why="security configuration: EBS encryption with KMS")
            for action in (
                "kms:CreateGrant", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext",
                "kms:ReEncryptFrom", "kms:ReEncryptTo",
            )
        )  # fmt: skip
    return needs


def _ec2_group(action: str) -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        arn = f"arn:{PARTITION}:ec2:{REGION}:{ACCOUNT}:security-group/{params['GroupId']}"
        return [Need(action, arn, why=f"ec2 {operation}")]

    return needs


def _ec2_anything(action: str) -> Callable[[dict, CallContext, str], list[Need]]:
    def needs(params: dict, ctx: CallContext, operation: str) -> list[Need]:
        return [Need(action, "*", why=f"ec2 {operation}")]

    return needs


S3_SAR = SAR + "list_amazons3.html"
S3_KMS = "https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingKMSEncryption.html"
DYNAMODB_SAR = SAR + "list_amazondynamodb.html"
DYNAMODB_KMS = "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/encryption.usagenotes.html"
EMR_SAR = SAR + "list_amazonelasticmapreduce.html"
EMR_TAGS = "https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-fine-grained-cluster-access.html"
EC2_SAR = SAR + "list_amazonec2.html"
SQS_SAR = SAR + "list_amazonsqs.html"
SQS_KMS = "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-key-management.html"

# (botocore service name, operation) -> (needs of one call, where AWS documents them).
NEEDS: dict[tuple[str, str], tuple[Callable[[dict, CallContext, str], list[Need]], str]] = {
    ("s3", "GetObject"): (_s3_get, f"{S3_SAR}; KMS: {S3_KMS}"),
    ("s3", "HeadObject"): (_s3_get, f"{S3_SAR} (HeadObject is authorized as s3:GetObject); KMS: {S3_KMS}"),
    ("s3", "PutObject"): (_s3_put, f"{S3_SAR}; KMS: {S3_KMS}"),
    ("s3", "CreateMultipartUpload"): (_s3_put, f"{S3_SAR}; KMS: {S3_KMS}"),
    ("s3", "UploadPart"): (_s3_put, f"{S3_SAR}; KMS: {S3_KMS}"),
    ("s3", "CompleteMultipartUpload"): (_s3_put, f"{S3_SAR}; KMS: {S3_KMS}"),
    ("s3", "AbortMultipartUpload"): (_s3_object("s3:AbortMultipartUpload"), S3_SAR),
    ("s3", "DeleteObject"): (_s3_object("s3:DeleteObject"), S3_SAR),
    ("s3", "ListObjectsV2"): (_s3_list, f"{S3_SAR} (ListObjectsV2 is authorized as s3:ListBucket, key s3:prefix)"),
    ("s3", "ListObjects"): (_s3_list, f"{S3_SAR} (authorized as s3:ListBucket, key s3:prefix)"),
    ("s3", "PutBucketLogging"): (_s3_bucket("s3:PutBucketLogging"), S3_SAR),
    ("dynamodb", "GetItem"): (_dynamodb_item("dynamodb:GetItem", writes=False), f"{DYNAMODB_SAR}; {DYNAMODB_KMS}"),
    ("dynamodb", "PutItem"): (_dynamodb_item("dynamodb:PutItem", writes=True), f"{DYNAMODB_SAR}; {DYNAMODB_KMS}"),
    ("dynamodb", "UpdateItem"): (_dynamodb_item("dynamodb:UpdateItem", writes=True), f"{DYNAMODB_SAR}; {DYNAMODB_KMS}"),
    ("dynamodb", "DeleteItem"): (_dynamodb_item("dynamodb:DeleteItem", writes=True), f"{DYNAMODB_SAR}; {DYNAMODB_KMS}"),
    ("sns", "Publish"): (
        _sns_publish,
        SAR + "list_amazonsns.html; KMS: https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html",
    ),
    ("sqs", "SendMessage"): (_sqs("sqs:SendMessage", ("kms:GenerateDataKey", "kms:Decrypt")), f"{SQS_SAR}; {SQS_KMS}"),
    ("sqs", "ReceiveMessage"): (_sqs("sqs:ReceiveMessage", ("kms:Decrypt",)), f"{SQS_SAR}; {SQS_KMS}"),
    ("sqs", "DeleteMessage"): (_sqs("sqs:DeleteMessage", ()), SQS_SAR),
    ("sqs", "ChangeMessageVisibility"): (_sqs("sqs:ChangeMessageVisibility", ()), SQS_SAR),
    # A batch request is authorized as its single action (SQS developer guide, "Amazon SQS batch actions").
    ("sqs", "ChangeMessageVisibilityBatch"): (_sqs("sqs:ChangeMessageVisibility", ()), SQS_SAR),
    ("sqs", "GetQueueAttributes"): (_sqs("sqs:GetQueueAttributes", ()), SQS_SAR),
    ("emr", "ListClusters"): (_emr_anything("elasticmapreduce:ListClusters"), EMR_SAR + " (no resource type)"),
    ("emr", "DescribeCluster"): (_emr_cluster("elasticmapreduce:DescribeCluster"), EMR_SAR),
    ("emr", "ListSteps"): (_emr_cluster("elasticmapreduce:ListSteps"), EMR_SAR),
    ("emr", "AddJobFlowSteps"): (_emr_cluster("elasticmapreduce:AddJobFlowSteps", "JobFlowId"), EMR_SAR),
    ("emr", "TerminateJobFlows"): (_emr_cluster("elasticmapreduce:TerminateJobFlows", "JobFlowIds"), EMR_SAR),
    ("emr", "RunJobFlow"): (
        _emr_run_job_flow,
        f"{EMR_SAR} (dependent action iam:PassRole); AddTags: {EMR_TAGS}; auto-termination: "
        "https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-auto-termination-policy.html; cleanup role: "
        "https://docs.aws.amazon.com/emr/latest/ManagementGuide/using-service-linked-roles-cleanup.html; security "
        "configuration keys: https://docs.aws.amazon.com/kms/latest/developerguide/services-emr.html and "
        "https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-iam-role.html (service role passes the instance "
        "role) and "
        "https://docs.aws.amazon.com/ebs/latest/userguide/ebs-encryption-requirements.html",
    ),
    ("ec2", "DescribeSecurityGroups"): (_ec2_anything("ec2:DescribeSecurityGroups"), EC2_SAR + " (no resource type)"),
    ("ec2", "RevokeSecurityGroupIngress"): (_ec2_group("ec2:RevokeSecurityGroupIngress"), EC2_SAR),
    ("ec2", "RevokeSecurityGroupEgress"): (_ec2_group("ec2:RevokeSecurityGroupEgress"), EC2_SAR),
}


def needs_of(service: str, operation: str, params: dict, ctx: CallContext) -> list[Need]:
    """The authorizations one call needs; raises :class:`UnmappedCall` for a call with no row."""
    row = NEEDS.get((service, operation))
    if row is None:
        raise UnmappedCall(
            f"{service} {operation} has no row in tests/iam/iam_rules.py NEEDS: add one (IAM actions, resource ARN "
            "from the parameters, dependent actions, with the Service Authorization Reference page as its source)"
        )
    return row[0](params, ctx, operation)
