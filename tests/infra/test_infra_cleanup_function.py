"""The destroy-time cleanup function, against moto (EMR, EC2, S3), botocore's Stubber, and a loopback HTTP server.

What the mocks cannot prove: that real EMR adds the cross-referencing rules this function removes (moto adds none by
itself, so the test adds them), how long real clusters take to terminate, that CloudFormation accepts the response, and
that S3 stops delivering access-log records once logging is off (moto records the setting; delivery is S3's).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

FUNCTION_FILE = Path(__file__).resolve().parents[2] / "infra" / "cleanup_function" / "handler.py"
REGION = "us-east-1"
TAG = {"Key": "mxnet-spark-inference:stack", "Value": "TestInference"}
PLENTY_OF_TIME_MS = 600_000


def load_cleanup_module():
    # Loaded under its own name: the trigger function also has a top-level module called `handler`.
    spec = importlib.util.spec_from_file_location("cleanup_function_handler", FUNCTION_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cleanup = load_cleanup_module()


@pytest.fixture(autouse=True)
def fake_aws_environment(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


class FakeTime:
    """The cleanup's clock and sleep: sleeping moves the clock, and ``on_sleep`` lets another actor act meanwhile."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0
        self.on_sleep = lambda: None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds
        self.on_sleep()


@pytest.fixture(autouse=True)
def fake_time(monkeypatch) -> FakeTime:
    """The quiet period (minutes) passes at once; the cleanup's logic is unchanged."""
    fake = FakeTime()
    monkeypatch.setattr(cleanup, "time", fake)
    return fake


@pytest.fixture
def aws():
    with mock_aws():
        yield boto3.client("emr", region_name=REGION), boto3.client("ec2", region_name=REGION)


@pytest.fixture
def s3(aws):
    """S3 inside the same moto mock as EMR and EC2."""
    return boto3.client("s3", region_name=REGION)


def access_logged_bucket(s3) -> str:
    # (A bucket named just "logs" would reach moto's CloudWatch Logs backend: its host starts like that service's.)
    s3.create_bucket(Bucket="example-logs-bucket")
    s3.put_bucket_policy(
        Bucket="example-logs-bucket",
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "logging.s3.amazonaws.com"},
                        "Action": "s3:PutObject",
                        "Resource": "arn:aws:s3:::example-logs-bucket/access/*",
                    }
                ],
            }
        ),
    )
    s3.create_bucket(Bucket="example-data-bucket")
    s3.put_bucket_logging(
        Bucket="example-data-bucket",
        BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": "example-logs-bucket", "TargetPrefix": "access/"}},
    )
    return "example-data-bucket"


def run_cluster(emr, tags: list[dict], name: str = f"{TAG['Value']}-cpu") -> str:
    """A cluster named as the stack names its own ("<stack>-<compute>") unless ``name`` says otherwise."""
    return emr.run_job_flow(
        Name=name,
        ReleaseLabel="emr-7.13.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="instance-profile",
        ServiceRole="service-role",
        Tags=tags,
    )["JobFlowId"]


def cross_referencing_groups(ec2) -> list[str]:
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    ids = [ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc_id)["GroupId"] for name in ("a", "b")]
    for group_id, other_id in (ids, ids[::-1]):
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "UserIdGroupPairs": [{"GroupId": other_id}]}
            ],
        )
    return ids


def delete_event(security_group_ids: list[str], access_logged_bucket: str | None = None) -> dict:
    properties = {"TagKey": TAG["Key"], "TagValue": TAG["Value"], "SecurityGroupIds": security_group_ids}
    if access_logged_bucket:
        properties["AccessLoggedBucket"] = access_logged_bucket
    return {"RequestType": "Delete", "ResourceProperties": properties}


def state(emr, cluster_id: str) -> str:
    return emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]


def test_delete_terminates_only_the_stacks_clusters(aws):
    emr, ec2 = aws
    ours = run_cluster(emr, [TAG])
    other = run_cluster(emr, [{"Key": TAG["Key"], "Value": "AnotherStack"}], name=f"{TAG['Value']}-gpu")
    status, reason = cleanup.handle(
        delete_event(cross_referencing_groups(ec2)), emr, ec2, None, lambda: PLENTY_OF_TIME_MS
    )
    assert (status, state(emr, ours), state(emr, other)) == ("SUCCESS", "TERMINATED", "WAITING")
    assert reason.startswith("terminated 1 cluster(s)")


def test_delete_removes_the_rules_that_tie_the_groups_together(aws):
    emr, ec2 = aws
    group_ids = cross_referencing_groups(ec2)
    cleanup.handle(delete_event(group_ids), emr, ec2, None, lambda: PLENTY_OF_TIME_MS)
    groups = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"]
    assert [(g["IpPermissions"], g["IpPermissionsEgress"]) for g in groups] == [([], []), ([], [])]
    for group_id in group_ids:
        ec2.delete_security_group(GroupId=group_id)  # what CloudFormation does next must now succeed


@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_create_and_update_touch_nothing(aws, s3, request_type):
    emr, ec2 = aws
    cluster_id = run_cluster(emr, [TAG])
    bucket = access_logged_bucket(s3)
    event = {**delete_event([], access_logged_bucket=bucket), "RequestType": request_type}
    assert cleanup.handle(event, emr, ec2, s3, lambda: PLENTY_OF_TIME_MS)[0] == "SUCCESS"
    assert state(emr, cluster_id) == "WAITING"
    assert "LoggingEnabled" in s3.get_bucket_logging(Bucket=bucket)


def test_delete_turns_off_access_logging_after_the_clusters_are_gone(aws, s3):
    """Emptying the data bucket must not produce log records that land after the logs bucket was emptied."""
    emr, ec2 = aws
    bucket = access_logged_bucket(s3)
    status, reason = cleanup.handle(
        delete_event([], access_logged_bucket=bucket), emr, ec2, s3, lambda: PLENTY_OF_TIME_MS
    )
    assert (status, "LoggingEnabled" in s3.get_bucket_logging(Bucket=bucket)) == ("SUCCESS", False)
    assert reason.endswith("stopped access logging of example-data-bucket")


def test_delete_without_an_access_logged_bucket_leaves_logging_alone(aws, s3):
    """With retain_data_on_destroy the stack passes no bucket: a retained bucket keeps its logging."""
    emr, ec2 = aws
    bucket = access_logged_bucket(s3)
    assert cleanup.handle(delete_event([]), emr, ec2, s3, lambda: PLENTY_OF_TIME_MS)[0] == "SUCCESS"
    assert "LoggingEnabled" in s3.get_bucket_logging(Bucket=bucket)


def test_clusters_still_terminating_when_time_runs_out_fail_the_delete():
    emr = boto3.client("emr", region_name=REGION)
    ec2 = boto3.client("ec2", region_name=REGION)
    name = f"{TAG['Value']}-cpu"
    running = {"Cluster": {"Id": "j-1", "Name": name, "Status": {"State": "TERMINATING"}, "Tags": [TAG]}}
    summary = {"Id": "j-1", "Name": name, "Status": {"State": "TERMINATING"}}
    with Stubber(emr) as stub:
        stub.add_response("list_clusters", {"Clusters": [summary]}, {"ClusterStates": cleanup.ACTIVE_STATES})
        stub.add_response("describe_cluster", running, {"ClusterId": "j-1"})
        stub.add_response("terminate_job_flows", {}, {"JobFlowIds": ["j-1"]})
        stub.add_response("describe_cluster", running, {"ClusterId": "j-1"})
        status, reason = cleanup.handle(
            delete_event(["sg-1"]), emr, ec2, None, lambda: cleanup.SAFETY_MARGIN_MS - 1
        )
    assert (status, reason) == ("FAILED", "clusters still terminating: j-1; run the destroy again")


def test_a_cluster_launched_after_the_first_listing_is_terminated_too(aws, fake_time):
    """Reliability review #19: a trigger invocation still running when the function was deleted launches a cluster after
    the cleanup listed the clusters. The cleanup keeps listing until none new appeared for longer than the trigger
    function can run, so that cluster is terminated before CloudFormation deletes what it runs on."""
    emr, ec2 = aws
    first = run_cluster(emr, [TAG])
    late = []

    def trigger_launches_once():
        if not late:
            late.append(run_cluster(emr, [TAG]))

    fake_time.on_sleep = trigger_launches_once

    status, reason = cleanup.handle(delete_event([]), emr, ec2, None, lambda: PLENTY_OF_TIME_MS)

    assert (status, state(emr, first), state(emr, late[0])) == ("SUCCESS", "TERMINATED", "TERMINATED")
    assert reason.startswith("terminated 2 cluster(s)")
    assert fake_time.now >= cleanup.DEFAULT_QUIET_SECONDS  # and it listed on until the quiet period had passed


def test_the_quiet_period_is_the_stacks_figure_when_given(aws, fake_time):
    emr, ec2 = aws
    event = delete_event([])
    event["ResourceProperties"]["QuietSeconds"] = "30"

    assert cleanup.handle(event, emr, ec2, None, lambda: PLENTY_OF_TIME_MS)[0] == "SUCCESS"
    assert 30 <= fake_time.now < cleanup.DEFAULT_QUIET_SECONDS


def test_only_clusters_named_like_the_stacks_are_described(aws):
    """Reliability review #18: in a shared account, one DescribeCluster per foreign cluster is throttled."""
    emr, ec2 = aws
    foreign = [run_cluster(emr, [], name=f"other-team-{index}") for index in range(4)]
    ours = run_cluster(emr, [TAG])
    described = []
    emr.meta.events.register("provide-client-params.emr.DescribeCluster", lambda params, **_: described.append(params))

    status, _ = cleanup.handle(delete_event([]), emr, ec2, None, lambda: PLENTY_OF_TIME_MS)

    assert status == "SUCCESS" and state(emr, ours) == "TERMINATED"
    assert not {params["ClusterId"] for params in described} & set(foreign)


class _Recorder(BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_PUT(self):  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        _Recorder.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_lambda_handler_answers_cloudformation_at_the_response_url(aws):
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    event = {
        "RequestType": "Create",
        "ResponseURL": f"http://127.0.0.1:{server.server_port}/response",
        "StackId": "stack-id",
        "RequestId": "request-id",
        "LogicalResourceId": "ClusterCleanup",
        "ResourceProperties": delete_event([])["ResourceProperties"],
    }
    context = type("Context", (), {"get_remaining_time_in_millis": staticmethod(lambda: PLENTY_OF_TIME_MS)})()
    cleanup.lambda_handler(event, context)
    thread.join(timeout=10)
    server.server_close()
    (body,) = _Recorder.bodies
    assert {key: body[key] for key in ("Status", "RequestId", "LogicalResourceId", "StackId")} == {
        "Status": "SUCCESS", "RequestId": "request-id", "LogicalResourceId": "ClusterCleanup", "StackId": "stack-id",
    }  # fmt: skip
