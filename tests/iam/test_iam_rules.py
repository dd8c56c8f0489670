"""IAM from the calls the code really makes: every AWS call of the trigger function, the cleanup function, the job and
the bootstrap scripts must be granted by the synthesized stack's roles, with the stack's resources and tags.

Where the calls come from:
- the recorder (tests/iam/aws_call_recording.py, installed by tests/conftest.py) keeps every call that code in
  ``infra/trigger_function/``, ``infra/cleanup_function/`` and ``job/`` made during this pytest session: these tests run
  last, so in ``make test`` that is every call of tests/trigger/, tests/infra/test_infra_cleanup_function.py and the
  job tests (the driver side; Spark's Python workers are other processes, and call the same ``job.storage`` methods);
- these tests also run a representative set of scenarios themselves (against in-process moto), so that they judge
  the main paths when run alone: transient launch and join, a refused launch, persistent submission, retries of a
  cancelled step up to the report, an uploaded manifest, the destroy-time cleanup, and the job's storage calls with
  the stack's layout;
- the bootstrap scripts' ``aws`` CLI invocations are parsed from bootstrap/*.sh, and each must be one the table
  ``BOOTSTRAP_AWS_CALLS`` knows; the S3 locations come from the stack's bootstrap actions;
- EMR's own reads and writes with the nodes' role (the bootstrap scripts, the step's job artifacts, the log URI) come
  from the stack's cluster definition and the trigger's environment.

Each call is mapped to the IAM authorizations it needs (``iam_rules.NEEDS``, one documented row per operation; a call
with no row fails), then judged against the roles' identity policies by moto's statement matcher (``iam_rules.decide``).
What the evaluation cannot prove (no resource policies, SCPs or permission boundaries; condition operators other than
StringEquals taken as met) is listed in iam_rules.py's docstring.

Review 2 #1 (``RunJobFlow`` with tags needs ``elasticmapreduce:AddTags``) is its own test,
``test_review_2_finding_1_a_tagged_launch_may_add_its_tags``: it fails until the cluster construct grants AddTags.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import aws_call_recording
import iam_rules
from iam_rules import CallContext, Need, StackView, UnmappedCall, decide, needs_of

REPO_ROOT = Path(__file__).resolve().parents[2]
for folder in ("tests/infra", "tests/trigger"):
    if str(REPO_ROOT / folder) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / folder))

from infra_helpers import logical_id, synthesize  # noqa: E402  (after the paths above)

CLEANUP_FUNCTION_FILE = REPO_ROOT / "infra" / "cleanup_function" / "handler.py"
BOOTSTRAP_DIR = REPO_ROOT / "bootstrap"
# Most lines of a failure message: the rest are counted.
SHOWN_FAILURES = 40
# Any idle timeout makes a persistent stack's trigger launch clusters (with an AutoTerminationPolicy) once it idled out.
IDLE_TIMEOUT_MINUTES = 60


# --- the stack ------------------------------------------------------------------------------------------------------


@dataclass
class Variant:
    """A synthesized stack variant, resolved, with the logical ids of the roles judged here."""

    name: str
    stack: object
    view: StackView
    roles: dict[str, str]  # "trigger", "cleanup", "instance role", "service role" -> role logical id
    function_id: str  # the trigger function's logical id
    job_flow: dict  # the RunJobFlow definition the stack ships (resolved; no Steps)
    trigger_environment: dict[str, str]
    cleanup_properties: dict
    _statements: dict[str, list[dict]] = field(default_factory=dict)

    def statements(self, principal: str) -> list[dict]:
        if principal not in self._statements:
            self._statements[principal] = self.view.role_statements(self.roles[principal])
        return self._statements[principal]

    @property
    def stack_tags(self) -> dict[str, str]:
        return {tag["Key"]: tag["Value"] for tag in self.job_flow["Tags"]}


def _variant(name: str, synthesized) -> Variant:
    stack = synthesized.stack
    view = StackView(synthesized.template.to_json())
    roles = {
        "trigger": logical_id(synthesized, stack.trigger.function.role),
        "cleanup": logical_id(synthesized, stack.cleanup.function.role),
        "instance role": logical_id(synthesized, stack.cluster.instance_role),
        "service role": logical_id(synthesized, stack.cluster.service_role),
    }
    function = view.properties(logical_id(synthesized, stack.trigger.function))
    cleanup = view.properties(logical_id(synthesized, stack.cleanup.resource))
    return Variant(
        name=name,
        stack=stack,
        view=view,
        roles=roles,
        function_id=logical_id(synthesized, stack.trigger.function),
        job_flow=view.resolve(stack.resolve(stack.cluster.job_flow)),
        trigger_environment=function["Environment"]["Variables"],
        cleanup_properties=cleanup,
    )


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Variant]:
    """The default (cpu) stack in both cluster modes, and a persistent one whose cluster ends idle (so the trigger
    launches clusters too) and whose nodes install from the shipped wheelhouse (the only set-up in which a bootstrap
    script calls S3 itself)."""
    found = {}
    for name, settings in (
        ("transient", {"compute": "cpu", "cluster_mode": "transient"}),
        ("persistent", {"compute": "cpu", "cluster_mode": "persistent"}),
    ):
        found[name] = _variant(name, synthesize(tmp_path_factory.mktemp(f"artifacts-{name}"), **settings))
    source_root = tmp_path_factory.mktemp("repo")
    for name in ("job", "bootstrap"):
        (source_root / name).symlink_to(REPO_ROOT / name)
    wheelhouse = source_root / "build" / "wheelhouse" / "cpu" / "x86_64"
    wheelhouse.mkdir(parents=True)
    (wheelhouse / "example-1.0-py3-none-any.whl").write_bytes(b"not a real wheel: only its presence is used")
    found["persistent-idle"] = _variant(
        "persistent-idle",
        synthesize(
            tmp_path_factory.mktemp("artifacts-persistent-idle"),
            source_root=source_root,
            compute="cpu",
            cluster_mode="persistent",
            idle_timeout_minutes=IDLE_TIMEOUT_MINUTES,
            offline_wheelhouse=True,
        ),
    )
    return found


# --- the scenarios run here -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> aws_call_recording.Recorder:
    """The session's recorder, after this module's own scenarios ran (so a run of this file alone judges them)."""
    assert aws_call_recording.installed(), "tests/conftest.py must install the recorder before any test module"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
            env.delenv(name, raising=False)
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_SESSION_TOKEN", "testing"), ("AWS_DEFAULT_REGION", iam_rules.REGION)):  # fmt: skip
            env.setenv(name, value)
        _trigger_scenarios(env)
        _cleanup_scenario()
        _job_scenario(tmp_path_factory.mktemp("job-scenario"))
    return aws_call_recording.RECORDER


def _trigger_scenarios(env: pytest.MonkeyPatch) -> None:
    from moto import mock_aws
    from trigger_helpers import (
        BUCKET,
        FakeLambdaContext,
        aws_clients,
        base_environment,
        batch_records,
        create_cluster,
        create_function_resources,
        forget_trigger_modules,
        import_trigger_handler,
        sqs_event,
        stack_definition,
        step_status_event,
        transient_environment,
        upload,
    )

    def load(environment: dict[str, str]):
        """The handler imported afresh with exactly ``environment`` as its settings (as tests/trigger's fixture)."""
        for name in ("CLUSTER_ID", "JOB_FLOW_DEFINITION_KEY", "CLUSTER_DEFINITION_TAG_KEY",
                     "CLUSTER_DEFINITION_TAG_VALUE"):  # fmt: skip
            env.delenv(name, raising=False)
        for name, value in environment.items():
            env.setenv(name, value)
        handler = import_trigger_handler()
        # The function's own back-off between step submissions is not waited here (as in tests/trigger's fixture).
        env.setattr(handler.submitter, "pause", lambda seconds: None)
        return handler

    def submit(aws, handler, key: str, sequence: int, body: bytes = b"png bytes") -> dict:
        notification = upload(aws.s3, key, body, sequence=sequence)
        return handler.lambda_handler(sqs_event([notification], first_message_number=sequence), FakeLambdaContext())

    try:
        with mock_aws():  # persistent: submit, retry a cancelled step until the report, an uploaded manifest
            aws = aws_clients()
            create_function_resources(aws)
            cluster_id = create_cluster(aws.emr, keep_alive=True)
            handler = load(base_environment(CLUSTER_ID=cluster_id))
            submit(aws, handler, "incoming/persistent.png", 1)
            (batch_id,) = batch_records(aws.dynamodb)
            prefix = base_environment()["STEP_NAME_PREFIX"]
            names = [f"{prefix}{batch_id}"] + [f"{prefix}{batch_id}-{n}" for n in (2, 3)]
            for number, name in enumerate(names, start=100):
                event = sqs_event([step_status_event(name, "CANCELLED", cluster_id=cluster_id)])
                event["Records"][0]["messageId"] = f"event-{number}"
                handler.lambda_handler(event, FakeLambdaContext())
            manifest = json.dumps([f"s3://{BUCKET}/incoming/persistent.png"]).encode()
            submit(aws, handler, "incoming/listed.json", 2, body=manifest)
        with mock_aws():  # transient: launch, join, then a refused launch (definition without the deployed tag)
            aws = aws_clients()
            create_function_resources(aws)
            definition_key = "artifacts/iam-rule/job-flow.json"
            aws.s3.put_object(Bucket=BUCKET, Key=definition_key, Body=json.dumps(stack_definition()).encode())
            handler = load(transient_environment(definition_key))
            submit(aws, handler, "incoming/launch.png", 1)
            submit(aws, handler, "incoming/join.png", 2)
            running = [cluster["Id"] for cluster in aws.emr.list_clusters()["Clusters"]]
            aws.emr.terminate_job_flows(JobFlowIds=running)
            stale = stack_definition(Tags=[tag for tag in stack_definition()["Tags"] if "definition" not in tag["Key"]])
            aws.s3.put_object(Bucket=BUCKET, Key=definition_key, Body=json.dumps(stale).encode())
            submit(aws, handler, "incoming/refused.png", 3)
    finally:
        forget_trigger_modules()


def _cleanup_scenario() -> None:
    import boto3
    from moto import mock_aws

    spec = importlib.util.spec_from_file_location("cleanup_function_handler_iam_rule", CLEANUP_FUNCTION_FILE)
    cleanup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cleanup)
    # Named as the stack names its clusters ("<stack>-<compute>"): the cleanup describes only such clusters.
    tag = {"Key": "inference-stack", "Value": "iam-rule"}
    with mock_aws():
        emr, ec2, s3 = (boto3.client(name, region_name=iam_rules.REGION) for name in ("emr", "ec2", "s3"))
        emr.run_job_flow(
            Name=f"{tag['Value']}-cpu", ReleaseLabel="emr-7.13.0", JobFlowRole="instance-profile",
            ServiceRole="service-role",
            Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
            Tags=[tag],
        )  # fmt: skip
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        groups = [ec2.create_security_group(GroupName=n, Description=n, VpcId=vpc_id)["GroupId"] for n in "ab"]
        for group_id, other_id in (groups, groups[::-1]):
            ec2.authorize_security_group_ingress(
                GroupId=group_id,
                IpPermissions=[{"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443,
                                "UserIdGroupPairs": [{"GroupId": other_id}]}],
            )  # fmt: skip
        s3.create_bucket(Bucket="iam-rule-data")
        event = {
            "RequestType": "Delete",
            "ResourceProperties": {
                "TagKey": tag["Key"], "TagValue": tag["Value"], "SecurityGroupIds": groups,
                "AccessLoggedBucket": "iam-rule-data",
            },
        }  # fmt: skip
        # The quiet period passes at once: the clock moves by each sleep instead of waiting (as tests/infra's
        # cleanup tests do); the calls the cleanup makes are unchanged.
        elapsed = [0.0]
        status, reason = cleanup.handle(event, emr, ec2, s3, lambda: 600_000,
                                        sleep=lambda seconds: elapsed.__setitem__(0, elapsed[0] + seconds),
                                        clock=lambda: elapsed[0])
        assert status == "SUCCESS", reason


def _put_parquet(s3, bucket: str, key: str) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"status": ["ok"]}), buffer)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


def _job_scenario(scratch: Path) -> None:
    """The job's storage calls with the stack's layout: the model package under models/, the manifest under
    manifests/, inputs under incoming/, the summary and report under results/, the run's record under runs/ (the URIs a
    step gives the job)."""
    import boto3
    from moto import mock_aws

    from job.pipeline import committed_rows
    from job.storage import Storage, s3_client

    bucket = "iam-rule-data"
    s3_client.cache_clear()  # a client made outside this mock would not reach it
    try:
        with mock_aws():
            s3 = boto3.client("s3", region_name=iam_rules.REGION)
            s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            for key in ("models/resnet/model.json", "models/resnet/model.onnx", "incoming/run/a.png",
                        "incoming/run/records.bin", "staged/photos/b.png"):  # fmt: skip
                s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 4096)
            s3.put_object(Bucket=bucket, Key="manifests/b1.json", Body=b'{"objects": []}')
            model_etag = s3.head_object(Bucket=bucket, Key="models/resnet/model.onnx")["ETag"]
            staged = s3.head_object(Bucket=bucket, Key="staged/photos/b.png")
            storage = Storage()
            storage.read(f"s3://{bucket}/models/resnet/model.json")
            storage.stat(f"s3://{bucket}/models/resnet/model.onnx")
            # A worker copies the files model.json names, each pinned to the ETag the driver read.
            storage.download_files(f"s3://{bucket}/models/resnet/", {"model.onnx": model_etag}, str(scratch / "model"))
            storage.read(f"s3://{bucket}/manifests/b1.json")
            storage.size(f"s3://{bucket}/incoming/run/a.png")
            storage.list_objects(f"s3://{bucket}/incoming/run/")
            storage.read(f"s3://{bucket}/incoming/run/a.png", max_bytes=8192)
            storage.read(f"s3://{bucket}/incoming/run/records.bin", 3073, 3073)
            # Manifest entries pinned by ETag and by version (a staged input, as `{"uri", "etag", "version_id"}`).
            storage.read(f"s3://{bucket}/staged/photos/b.png", etag=staged["ETag"])
            storage.read(f"s3://{bucket}/staged/photos/b.png", version_id=staged["VersionId"])
            storage.exists_below(f"s3://{bucket}/results/b1/")
            storage.write(f"s3://{bucket}/results/b1/summary.json", b"{}", content_type="application/json")
            storage.write(f"s3://{bucket}/results/b1/report.html", b"<html></html>", content_type="text/html")
            # The run's record for the runs table (--run-record, a step's s3://BUCKET/runs/<run id>.json).
            storage.write(f"s3://{bucket}/runs/b1.json", b"{}\n", content_type="application/json")
            # The summary checks the tasks' counts against the committed files' footers: a listing of the output
            # and a ranged read of each file's end (Spark's own writes go through EMRFS/S3A, not this recorder).
            _put_parquet(s3, bucket, "results/b1/predictions/part-00000.snappy.parquet")
            committed_rows(storage, f"s3://{bucket}/results/b1/predictions")
    finally:
        s3_client.cache_clear()


# --- binding the tests' names to the stack's ------------------------------------------------------------------------


def trigger_params(call: aws_call_recording.RecordedCall, variant: Variant) -> dict:
    """The call's parameters with the test's bucket, table, topic, queue, definition key and clusters replaced by the
    stack's; a RunJobFlow request is the stack's shipped definition plus what the code added (Steps)."""
    stack_env, settings = variant.trigger_environment, call.settings
    params = dict(call.params)
    for parameter, setting in (("Bucket", "DATA_BUCKET"), ("TableName", "CLAIMS_TABLE"),
                               ("TopicArn", "NOTIFICATION_TOPIC_ARN"), ("QueueUrl", "UPLOAD_QUEUE_URL")):  # fmt: skip
        if parameter in params and params[parameter] == settings.get(setting):
            params[parameter] = stack_env[setting]
    if "Key" in params and params["Key"] == settings.get("JOB_FLOW_DEFINITION_KEY"):
        params["Key"] = stack_env["JOB_FLOW_DEFINITION_KEY"]
    _stack_clusters(params, stack_env.get("CLUSTER_ID", iam_rules.LAUNCHED_CLUSTER_ID))
    if call.operation == "RunJobFlow":
        params = {**params, **variant.job_flow}
    return params


def cleanup_params(call: aws_call_recording.RecordedCall, variant: Variant) -> list[dict]:
    """The call once per stack security group it may name (the function gets exactly the stack's groups), with the
    stack's data bucket and a cluster of the stack."""
    params = dict(call.params)
    if "Bucket" in params:
        params["Bucket"] = variant.cleanup_properties["AccessLoggedBucket"]
    _stack_clusters(params, "j-STACKCLUSTER")
    if "GroupId" in params:
        return [{**params, "GroupId": group} for group in variant.cleanup_properties["SecurityGroupIds"]]
    return [params]


def job_params(call: aws_call_recording.RecordedCall, variant: Variant) -> dict:
    """The job is given URIs in the stack's data bucket only (model, manifest, output; inputs are uploads to it)."""
    params = dict(call.params)
    if "Bucket" in params:
        params["Bucket"] = variant.trigger_environment["DATA_BUCKET"]
    return params


def _stack_clusters(params: dict, cluster_id: str) -> None:
    for name in ("ClusterId", "JobFlowId"):
        if name in params:
            params[name] = cluster_id
    if "JobFlowIds" in params:
        params["JobFlowIds"] = [cluster_id] * len(params["JobFlowIds"])


# --- judging --------------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    denied: dict[str, str]  # need description -> the test whose call needed it first
    unmapped: dict[str, str]  # "service Operation" -> the test that made it first
    judged: int  # distinct needs judged
    taken_as_met: set[str]  # conditions moto could not evaluate, on statements that granted a need


def judge(variant: Variant, principal: str, calls: Iterable[tuple[str, str, dict, str]]) -> Verdict:
    """Judge (service, operation, bound params, test) calls made as ``principal``; needs of the roles that a call's
    resource runs as (a cluster's instance and service roles) are judged against those roles."""
    ctx = CallContext(stack=variant.view, cluster_tags=lambda _cluster_id: variant.stack_tags)
    verdict = Verdict(denied={}, unmapped={}, judged=0, taken_as_met=set())
    seen: set[str] = set()
    statements = {name: variant.statements(name) for name in variant.roles}
    for service, operation, params, test in calls:
        try:
            needs = needs_of(service, operation, params, ctx)
        except UnmappedCall as error:
            verdict.unmapped.setdefault(f"{service} {operation}", f"{test}: {error}")
            continue
        for need in needs:
            key = need.describe()
            if key in seen:
                continue
            seen.add(key)
            verdict.judged += 1
            role = principal if need.principal == "caller" else need.principal
            decision = decide(statements[role], need)
            if decision.allowed:
                verdict.taken_as_met.update(decision.unevaluated)
            else:
                verdict.denied[f"{role} role lacks {key}"] = test
    return verdict


def failure_message(variant: Variant, verdict: Verdict) -> str:
    lines = [f"{variant.name} stack: {len(verdict.denied)} of {verdict.judged} needed authorizations are not granted, "
             f"{len(verdict.unmapped)} calls have no mapping"]  # fmt: skip
    for description, test in sorted(verdict.denied.items())[:SHOWN_FAILURES]:
        where = "this file's own scenarios" if test.startswith("tests/iam/") else test or "(unknown test)"
        lines.append(f"  DENIED {description}\n      first needed by a call in {where}")
    for call, detail in sorted(verdict.unmapped.items())[:SHOWN_FAILURES]:
        lines.append(f"  UNMAPPED {call}: {detail}")
    if verdict.taken_as_met:
        lines.append(f"  (conditions moto does not evaluate, taken as met: {', '.join(sorted(verdict.taken_as_met))})")
    if any("elasticmapreduce:AddTags" in description for description in verdict.denied):
        lines.append("  (elasticmapreduce:AddTags for the tagged RunJobFlow is review 2 finding #1)")
    return "\n".join(lines)


# --- the rules ------------------------------------------------------------------------------------------------------


def test_the_recorder_saw_every_kind_of_call_and_failed_on_none(recorded):
    """The recording is what the rules judge: it must have seen the scenarios' calls, attributed to their code."""
    assert recorded.errors == []
    operations = {(call.origin, call.operation) for call in recorded.calls}
    expected_calls = (
        ("trigger", "RunJobFlow"), ("trigger", "AddJobFlowSteps"), ("trigger", "PutItem"), ("trigger", "Publish"),
        ("trigger", "DeleteObject"), ("cleanup", "TerminateJobFlows"), ("cleanup", "RevokeSecurityGroupIngress"),
        ("job", "GetObject"), ("job", "PutObject"),
    )  # fmt: skip
    for expected in expected_calls:
        assert expected in operations, f"no {expected[1]} call of the {expected[0]} code was recorded"
    assert recorded.calls_by_tests > 0  # the tests' own setup calls are seen, and not judged


@pytest.mark.parametrize("name", ["transient", "persistent", "persistent-idle"])
def test_the_trigger_roles_grant_every_call_of_the_trigger(recorded, variants, name):
    """Every recorded call of the trigger function made in this variant's cluster mode (and the roles a cluster it
    launches runs with: the security configuration's keys)."""
    variant = variants[name]
    mode = variant.trigger_environment["CLUSTER_MODE"]
    calls = [
        (call.service, call.operation, trigger_params(call, variant), call.test)
        for call in recorded.calls_from("trigger")
        if call.settings.get("CLUSTER_MODE") == mode
    ]
    assert calls, f"no call of the trigger function in {mode} mode was recorded"
    verdict = judge(variant, "trigger", calls)
    if verdict.denied or verdict.unmapped:
        pytest.fail(failure_message(variant, verdict), pytrace=False)


@pytest.mark.parametrize("name", ["transient", "persistent"])
def test_the_trigger_role_grants_lambdas_polling_of_its_queue(variants, name):
    """Lambda's SQS poller calls the queue with the function's role (Lambda Developer Guide, "Using Lambda with Amazon
    SQS": execution role permissions; kms:Decrypt for an SSE-KMS queue). Not recorded: the service makes these calls."""
    variant = variants[name]
    (mapping,) = [variant.view.properties(m) for m in variant.view.of_type("AWS::Lambda::EventSourceMapping")
                  if variant.view.properties(m)["FunctionName"] == variant.view.ref(variant.function_id)]  # fmt: skip
    account, queue_name = mapping["EventSourceArn"].split(":")[-2:]
    queue_url = f"https://sqs.{iam_rules.REGION}.{iam_rules.URL_SUFFIX}/{account}/{queue_name}"
    calls = [("sqs", operation, {"QueueUrl": queue_url}, "Lambda's SQS event source")
             for operation in ("ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility", "GetQueueAttributes")]
    verdict = judge(variant, "trigger", calls)
    if verdict.denied or verdict.unmapped:
        pytest.fail(failure_message(variant, verdict), pytrace=False)


def test_review_2_finding_1_a_tagged_launch_may_add_its_tags(recorded, variants):
    """REVIEW 2 #1, FAILS ON PURPOSE until the cluster construct grants it: creating a tagged cluster also needs
    ``elasticmapreduce:AddTags`` (EMR Management Guide, tag-based access: "To create a cluster with a tag, you must
    also have permission for the elasticmapreduce:AddTags action"). The transient trigger launches every cluster with
    the stack's tags; without the grant EMR refuses RunJobFlow and every upload ends in the dead-letter queue."""
    variant = variants["transient"]
    (launch, *_) = [call for call in recorded.calls_from("trigger") if call.operation == "RunJobFlow"]
    ctx = CallContext(stack=variant.view, cluster_tags=lambda _cluster_id: variant.stack_tags)
    (add_tags,) = [
        need for need in needs_of("emr", "RunJobFlow", trigger_params(launch, variant), ctx)
        if need.action == "elasticmapreduce:AddTags"
    ]  # fmt: skip
    if not decide(variant.statements("trigger"), add_tags).allowed:
        pytest.fail(f"REVIEW 2 #1: the trigger role lacks {add_tags.describe()}", pytrace=False)


@pytest.mark.parametrize("name", ["transient", "persistent"])
def test_the_cleanup_role_grants_every_call_of_the_cleanup(recorded, variants, name):
    variant = variants[name]
    calls = [
        (call.service, call.operation, params, call.test)
        for call in recorded.calls_from("cleanup")
        for params in cleanup_params(call, variant)
    ]
    assert calls, "no call of the cleanup function was recorded"
    verdict = judge(variant, "cleanup", calls)
    if verdict.denied or verdict.unmapped:
        pytest.fail(failure_message(variant, verdict), pytrace=False)


@pytest.mark.parametrize("name", ["transient", "persistent"])
def test_the_instance_role_grants_every_call_of_the_job(recorded, variants, name):
    """The job's storage calls (recorded) and what EMR itself reads and writes with the nodes' role: each bootstrap
    action's script, the step's job artifacts (spark-submit's py-files and entry point), the cluster's logs."""
    variant = variants[name]
    calls = [(call.service, call.operation, job_params(call, variant), call.test)
             for call in recorded.calls_from("job")]  # fmt: skip
    assert calls, "no call of the job was recorded"
    verdict = judge(variant, "instance role", calls + emr_platform_calls(variant))
    if verdict.denied or verdict.unmapped:
        pytest.fail(failure_message(variant, verdict), pytrace=False)


@pytest.mark.parametrize("name", ["transient", "persistent", "persistent-idle"])
def test_a_clusters_own_roles_grant_what_its_definition_needs(variants, name):
    """Whoever launches it (the trigger, or CloudFormation for the persistent cluster), a cluster from the stack's
    definition needs its service role to pass the instance role, and both roles to use the security configuration's
    key (local-disk and EBS encryption)."""
    variant = variants[name]
    needs = iam_rules.cluster_role_needs(variant.job_flow, variant.view)
    assert {need.principal for need in needs} == {"instance role", "service role"}
    denied = [need.describe() for need in needs if not decide(variant.statements(need.principal), need).allowed]
    if denied:
        pytest.fail("\n".join(denied), pytrace=False)


def emr_platform_calls(variant: Variant) -> list[tuple[str, str, dict, str]]:
    """Calls EMR makes on the nodes with the instance role (EMR Management Guide: bootstrap actions are read from S3
    by the nodes; the nodes push logs to LogUri; EMRFS/S3A read the step's files), as S3 operations."""
    calls = []
    for action in variant.job_flow.get("BootstrapActions", []):
        bucket, key = split_s3(action["ScriptBootstrapAction"]["Path"])
        calls.append(("s3", "GetObject", {"Bucket": bucket, "Key": key}, "cluster definition: bootstrap action"))
    environment = variant.trigger_environment
    for setting in ("JOB_PY_FILES_URI", "JOB_ENTRY_POINT_URI"):
        bucket, key = split_s3(environment[setting])
        calls.append(("s3", "GetObject", {"Bucket": bucket, "Key": key}, f"the step's {setting}"))
    bucket, key = split_s3(variant.job_flow["LogUri"])
    calls.append(("s3", "PutObject", {"Bucket": bucket, "Key": f"{key}j-CLUSTER/node/i-1/applications/x.gz"},
                  "cluster definition: LogUri"))  # fmt: skip
    return calls


def split_s3(uri: str) -> tuple[str, str]:
    match = re.fullmatch(r"s3://([^/]+)/(.*)", uri)
    assert match, f"not an s3:// URI: {uri!r}"
    return match.group(1), match.group(2)


# The bootstrap scripts' AWS CLI invocations, as found in bootstrap/*.sh (continuation lines joined, spaces squeezed),
# and what each reads or writes: "read-recursive" = ListBucket on the prefix and GetObject below it. The prefix is the
# bootstrap action's s3:// argument followed by the node's machine (install-mxnet.sh: "${1%/}/$MACHINE/").
BOOTSTRAP_AWS_CALLS = {
    # The listing that picks the node's wheels (ListBucket on the prefix).
    ("install-mxnet.sh", 'aws s3 ls --cli-connect-timeout 20 --cli-read-timeout 120 "$source/") ||'): "read-recursive",
    # The copy of the wheels picked (ListBucket on the prefix, GetObject below it).
    ("install-mxnet.sh", 'aws s3 cp --recursive --only-show-errors --cli-connect-timeout 20 --cli-read-timeout 120 '
                         '--exclude "*" "${include_options[@]}" "$source/" "$WHEELHOUSE_DIR"'): "read-recursive",
}  # fmt: skip
MACHINES = {"x86_64": "x86_64", "arm64": "aarch64"}


def bootstrap_aws_invocations() -> list[tuple[str, str]]:
    """(script name, command) for every ``aws`` command in bootstrap/*.sh."""
    found = []
    for script in sorted(BOOTSTRAP_DIR.glob("*.sh")):
        text = re.sub(r"\\\n\s*", " ", script.read_text())
        for line in text.splitlines():
            code = line.strip()
            if code.startswith("#"):
                continue
            for match in re.finditer(r"(?:^|[\s;&|(`])(aws\s+[a-z0-9-]+\s+[a-z0-9-]+.*)$", code):
                found.append((script.name, " ".join(match.group(1).split())))
    return found


def test_every_aws_cli_call_of_the_bootstrap_scripts_is_mapped():
    """A new or changed ``aws`` invocation in a bootstrap script fails here until BOOTSTRAP_AWS_CALLS says what it
    reads or writes (and the instance role test then judges it)."""
    invocations = bootstrap_aws_invocations()
    assert invocations, "the parser found no aws invocation: install-mxnet.sh downloads the offline wheelhouse with one"
    unmapped = [invocation for invocation in invocations if invocation not in BOOTSTRAP_AWS_CALLS]
    assert unmapped == [], f"add these to BOOTSTRAP_AWS_CALLS with what they read or write: {unmapped}"
    assert all(shlex.split(command)[:2] == ["aws", "s3"] for _, command in invocations)


@pytest.mark.parametrize("name", ["transient", "persistent-idle"])
def test_the_instance_role_grants_the_bootstrap_scripts_calls(variants, name):
    """Each bootstrap action whose script downloads from S3 with the AWS CLI, with the S3 arguments the stack gives it
    (none in the default set-up, which installs from PyPI; the wheelhouse prefix with offline_wheelhouse)."""
    variant = variants[name]
    machine = MACHINES[variant.stack.settings.architecture]
    calls = []
    for action in variant.job_flow.get("BootstrapActions", []):
        script = action["ScriptBootstrapAction"]["Path"].rsplit("/", 1)[-1]
        kinds = {kind for (script_name, _), kind in BOOTSTRAP_AWS_CALLS.items() if script_name == script}
        for argument in action["ScriptBootstrapAction"].get("Args", []):
            if not argument.startswith("s3://") or "read-recursive" not in kinds:
                continue
            bucket, key = split_s3(argument.rstrip("/") + f"/{machine}/")
            calls.append(("s3", "ListObjectsV2", {"Bucket": bucket, "Prefix": key}, f"{script} aws s3 cp"))
            calls.append(("s3", "GetObject", {"Bucket": bucket, "Key": key + "example.whl"}, f"{script} aws s3 cp"))
    if name == "persistent-idle":
        assert calls, "with offline_wheelhouse the bootstrap downloads the wheelhouse from S3"
    verdict = judge(variant, "instance role", calls)
    if verdict.denied or verdict.unmapped:
        pytest.fail(failure_message(variant, verdict), pytrace=False)


# --- the rule itself can fail ---------------------------------------------------------------------------------------


def test_the_evaluation_denies_what_the_policies_do_not_grant(variants):
    """Checks of the judge on the real trigger policy: an action no statement names, a resource outside the granted
    ARNs, and a launch without the stack's tag (a StringEquals condition on a request tag) are denied; a call that is
    granted is allowed. Without these the rule could pass by denying nothing."""
    variant = variants["transient"]
    statements = variant.statements("trigger")
    table = variant.trigger_environment["CLAIMS_TABLE"]
    ctx = CallContext(stack=variant.view, cluster_tags=lambda _cluster_id: variant.stack_tags)
    (put_item, *kms) = needs_of(
        "dynamodb", "PutItem", {"TableName": table, "Item": {}, "ConditionExpression": "attribute_not_exists(pk)"}, ctx
    )
    assert decide(statements, put_item).allowed
    assert {need.action for need in kms} == {"kms:Encrypt", "kms:GenerateDataKey", "kms:Decrypt"}
    assert all(decide(statements, need).allowed for need in kms)
    assert not decide(statements, Need("dynamodb:Scan", put_item.resource)).allowed
    assert not decide(statements, Need("dynamodb:PutItem", put_item.resource.replace(table, "other-table"))).allowed
    tagged = iam_rules.tag_context(variant.stack_tags, "Request")
    assert decide(statements, Need("elasticmapreduce:RunJobFlow", "*", tagged)).allowed
    assert not decide(statements, Need("elasticmapreduce:RunJobFlow", "*", {})).allowed
    other_stack = iam_rules.tag_context({**variant.stack_tags, "mxnet-spark-inference:stack": "Another"}, "Request")
    assert not decide(statements, Need("elasticmapreduce:RunJobFlow", "*", other_stack)).allowed
    # An Allow whose condition is false grants nothing and denies nothing (moto alone reports it as a deny): the
    # statement on the cluster's own tags still allows the policy when the request's tag names another stack.
    cluster = iam_rules.emr_cluster_arn("j-ANY")
    ours_but_requested_as_other = {**iam_rules.tag_context(variant.stack_tags, "Resource"), **other_stack}
    auto_termination = Need("elasticmapreduce:PutAutoTerminationPolicy", cluster, ours_but_requested_as_other)
    assert decide(statements, auto_termination).allowed
    assert not decide(statements, Need(auto_termination.action, cluster, other_stack)).allowed


def test_a_call_without_a_mapping_fails(variants):
    variant = variants["transient"]
    ctx = CallContext(stack=variant.view, cluster_tags=lambda _cluster_id: variant.stack_tags)
    with pytest.raises(UnmappedCall, match="s3 PutBucketPolicy has no row"):
        needs_of("s3", "PutBucketPolicy", {"Bucket": "b", "Policy": "{}"}, ctx)
