"""Failures the handler must report per record: cluster limits and states, throttling, refused and timed-out steps.

moto serves S3 and EMR; botocore's Stubber replaces EMR where moto cannot produce the state (a cluster at EMR's real limit
of 256 active steps, a terminated cluster that still answers). Throttling goes through botocore's real retry machinery: a
`before-send` hook answers like EMR does when it throttles, because a Stubber response is returned before the retry logic
runs and so could not prove the retries. What none of this proves: EMR's real throttling rates, and that EMR itself refuses
steps on a terminated or full cluster (moto does not).
"""

from __future__ import annotations

import json
import types
from datetime import timedelta

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from trigger_helpers import base_environment
from lost_responses import lose_response
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.botocore_stubber import MockRawResponse
from moto.emr.models import emr_backends
from promises import FrozenClock, invoke

import emr_step
from trigger_settings import EMR_MAX_ACTIVE_STEPS
from trigger_helpers import (
    BUCKET,
    CLAIM_LEASE_SECONDS,
    REGION,
    FakeLambdaContext,
    SimulatedCrash,
    crash,
    claimed_by,
    claims_table_items,
    failed_message_ids,
    manifest_objects,
    object_keys,
    sqs_event,
    submitted_steps,
    upload,
)


def image_notifications(aws, count: int) -> list[dict]:
    return [
        upload(aws.s3, f"incoming/img-{index}.png", b"png %d" % index, sequence=index + 1) for index in range(count)
    ]


def add_step_named(aws, cluster_id: str, name: str) -> None:
    step = emr_step.build_step(
        name=name,
        artifacts=emr_step.JobArtifacts(py_files_uri="s3://b/job.zip", entry_point_uri="s3://b/spark_entry.py"),
        manifest_uri="s3://b/m.json",
        model_uri="s3://b/model/",
        output_uri="s3://b/out/",
        options=emr_step.JobOptions(),
    )
    aws.emr.add_job_flow_steps(JobFlowId=cluster_id, Steps=[step])


def all_failed(event: dict) -> list[str]:
    return sorted(record["messageId"] for record in event["Records"])


# --- cluster limits and states ----------------------------------------------------------------------------------------


def test_cluster_at_max_active_steps_fails_every_record(aws, persistent_cluster, load_handler):
    for number in range(2):
        add_step_named(aws, persistent_cluster, f"earlier-{number}")
    handler = load_handler(base_environment(CLUSTER_ID=persistent_cluster, MAX_ACTIVE_STEPS="2"))
    event = sqs_event(image_notifications(aws, 3))

    response = handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == all_failed(event)
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 2
    assert object_keys(aws.s3, "manifests/") == []
    assert claims_table_items(aws.dynamodb) == []  # nothing claimed: the redelivery starts clean


def test_batches_beyond_the_free_slots_fail_while_the_first_is_submitted(aws, persistent_cluster, load_handler):
    handler = load_handler(base_environment(CLUSTER_ID=persistent_cluster, MAX_ACTIVE_STEPS="1"))
    image = upload(aws.s3, "incoming/a.png", b"png", sequence=1)
    cifar = upload(aws.s3, "incoming/test_batch.bin", b"\x01" * 3073, sequence=2)
    event = sqs_event([image, cifar])  # msg-1: the image batch, msg-2: the CIFAR-10 batch

    response = handler.lambda_handler(event, FakeLambdaContext())

    # Groups are submitted in the order of their first key: incoming/a.png before incoming/test_batch.bin.
    assert failed_message_ids(response) == ["msg-2"]
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, step) == [f"s3://{BUCKET}/incoming/a.png"]
    assert list(claimed_by(aws.dynamodb)) == ["incoming/a.png"]


def stub_active_steps(stubber: Stubber, cluster_id: str, count: int, page_size: int = 50) -> None:
    """ListSteps answers as EMR does: pages of at most 50 steps linked by Marker."""
    for start in range(0, max(count, 1), page_size):
        page = {
            "Steps": [
                {"Id": f"s-{index:013d}", "Name": f"earlier-{index}", "Status": {"State": "PENDING"}}
                for index in range(start, min(count, start + page_size))
            ]
        }
        expected = {"ClusterId": cluster_id, "StepStates": ["PENDING", "RUNNING"]}
        if start:
            expected["Marker"] = f"page-{start}"
        if start + page_size < count:
            page["Marker"] = f"page-{start + page_size}"
        stubber.add_response("list_steps", page, expected)


def test_cluster_at_emrs_limit_of_active_steps_fails_every_record(aws, persistent_cluster, persistent_handler):
    event = sqs_event(image_notifications(aws, 2))
    with Stubber(persistent_handler.emr_client) as stubber:
        stubber.add_response(
            "describe_cluster",
            {"Cluster": {"Id": persistent_cluster, "Status": {"State": "RUNNING"}}},
            {"ClusterId": persistent_cluster},
        )
        stub_active_steps(stubber, persistent_cluster, EMR_MAX_ACTIVE_STEPS)

        response = persistent_handler.lambda_handler(event, FakeLambdaContext())

        stubber.assert_no_pending_responses()
    assert failed_message_ids(response) == all_failed(event)
    assert claims_table_items(aws.dynamodb) == []  # never claimed, so AddJobFlowSteps was never reached


@pytest.mark.parametrize("state", ["TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS"])
def test_cluster_not_accepting_steps_fails_every_record(aws, persistent_cluster, persistent_handler, state):
    event = sqs_event(image_notifications(aws, 2))
    with Stubber(persistent_handler.emr_client) as stubber:
        stubber.add_response(
            "describe_cluster",
            {"Cluster": {"Id": persistent_cluster, "Status": {"State": state}}},
            {"ClusterId": persistent_cluster},
        )

        response = persistent_handler.lambda_handler(event, FakeLambdaContext())

        stubber.assert_no_pending_responses()
    assert failed_message_ids(response) == all_failed(event)
    assert claims_table_items(aws.dynamodb) == []


# --- throttling: botocore's standard retry mode, then a failure --------------------------------------------------------


@pytest.fixture
def backoff_sleeps(monkeypatch) -> list[float]:
    """Record botocore's backoff delays instead of sleeping them.

    Only botocore.endpoint's own reference to the time module is replaced: patching ``time.sleep`` itself would also
    record the sleeps of every other thread in the test process (servers, pools), which made this flaky.
    """
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=sleeps.append))
    return sleeps


def throttle_describe_cluster(emr_client, times: int) -> list[int]:
    """Make the next ``times`` DescribeCluster requests answer as EMR does when throttling; return the attempt count.

    DescribeCluster is throttled rather than AddJobFlowSteps because moto still executes a request whose response a hook
    replaced (every `before-send` handler runs), which would add phantom steps; DescribeCluster has no side effect.
    """
    attempts = [0]

    def answer(request, **_):
        attempts[0] += 1
        if attempts[0] > times:
            return None  # let moto answer
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.1"}, MockRawResponse(body))

    emr_client.meta.events.register_first("before-send.emr.DescribeCluster", answer)
    return attempts


def test_throttled_call_is_retried_with_backoff_then_the_step_submitted(
    aws, persistent_cluster, persistent_handler, backoff_sleeps
):
    attempts = throttle_describe_cluster(persistent_handler.emr_client, times=2)

    response = persistent_handler.lambda_handler(sqs_event(image_notifications(aws, 2)), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert attempts == [3]
    assert len(backoff_sleeps) == 2
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_throttling_beyond_the_retry_budget_fails_every_record(
    aws, persistent_cluster, persistent_handler, backoff_sleeps
):
    attempts = throttle_describe_cluster(persistent_handler.emr_client, times=1000)
    event = sqs_event(image_notifications(aws, 2))

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == all_failed(event)
    assert attempts == [persistent_handler.AWS_TOTAL_ATTEMPTS]
    assert len(backoff_sleeps) == persistent_handler.AWS_TOTAL_ATTEMPTS - 1
    assert submitted_steps(aws.emr, persistent_cluster) == []


def test_add_step_throttled_on_every_attempt_fails_the_records_and_releases_the_claims(
    aws, persistent_cluster, persistent_handler
):
    """Throttling is EMR refusing a request it did not carry out: throttled on every one of the function's attempts,
    nothing was accepted, so the claims and the manifest go and the redelivery starts clean."""
    event = sqs_event(image_notifications(aws, 2))
    with Stubber(persistent_handler.emr_submit_client) as stubber:
        for _ in range(persistent_handler.submitter.SUBMIT_ATTEMPTS):
            stubber.add_client_error(
                "add_job_flow_steps",
                service_error_code="ThrottlingException",
                service_message="Rate exceeded",
                http_status_code=400,
            )

        response = persistent_handler.lambda_handler(event, FakeLambdaContext())

        stubber.assert_no_pending_responses()
    assert failed_message_ids(response) == all_failed(event)
    assert claims_table_items(aws.dynamodb) == []  # the claims are released so the redelivery can submit
    assert object_keys(aws.s3, "manifests/") == []  # and the manifest of the batch that was never submitted removed
    assert submitted_steps(aws.emr, persistent_cluster) == []


def test_add_step_timing_out_keeps_the_claims_because_emr_may_have_accepted_it(
    aws, persistent_cluster, persistent_handler, backoff_sleeps
):
    """The request times out before moto sees it (registered first): EMR never had it, but the function cannot know.
    After each attempt it searches for the step by name; never found, the claims, the manifest and the batch's record
    stay for the redelivery to sort out."""

    def time_out(request, **_):
        raise ReadTimeoutError(endpoint_url=request.url)

    persistent_handler.emr_submit_client.meta.events.register_first("before-send.emr.AddJobFlowSteps", time_out)
    event = sqs_event(image_notifications(aws, 2))

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == all_failed(event)
    owners = claimed_by(aws.dynamodb)
    (batch_id,) = set(owners.values())
    assert sorted(owners) == ["incoming/img-0.png", "incoming/img-1.png"]
    assert object_keys(aws.s3, "manifests/") == [f"manifests/{batch_id}.json"]
    assert backoff_sleeps == []  # botocore never re-sent AddJobFlowSteps: the function's own attempts searched first


# --- the invocation's time (final review F2, F4) ----------------------------------------------------------------------


class RunningClock:
    """The invocation's time as the function sees it: Lambda's remaining time, which the function's own waits
    (``submitter.pause``, patched to advance this clock instead of sleeping) use up. ``also_spent`` is taken off at
    each reading of the remaining time after the first ``free_readings`` (work between two readings)."""

    def __init__(self, remaining_seconds: float, *, also_spent: float = 0.0, free_readings: int = 0) -> None:
        self.remaining_seconds = remaining_seconds
        self.also_spent = also_spent
        self.free_readings = free_readings
        self.waits: list[float] = []

    def pause(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.remaining_seconds -= seconds

    def context(self) -> FakeLambdaContext:
        clock = self

        class Context(FakeLambdaContext):
            @staticmethod
            def get_remaining_time_in_millis() -> int:
                if clock.free_readings > 0:
                    clock.free_readings -= 1
                else:
                    clock.remaining_seconds -= clock.also_spent
                return int(clock.remaining_seconds * 1000)

        return Context()


def test_every_client_ends_a_hung_call_within_the_invocations_stop_margin(persistent_handler):
    """botocore's default (60 s to connect, 60 s to read) would let one hung call outlast the margin the function
    keeps to report its records: the limits are the function's own."""
    handler = persistent_handler
    for client in (handler.s3_client, handler.emr_client, handler.emr_submit_client, handler.sns_client,
                   handler.sqs_client, handler.dynamodb_client):  # fmt: skip
        config = client.meta.config
        assert (config.connect_timeout, config.read_timeout) == (
            handler.CONNECT_TIMEOUT_SECONDS, handler.READ_TIMEOUT_SECONDS
        )
    assert handler.CONNECT_TIMEOUT_SECONDS + handler.READ_TIMEOUT_SECONDS < handler.STOP_MARGIN_SECONDS
    assert handler.emr_submit_client.meta.config.retries["total_max_attempts"] == 1


def test_a_group_not_started_for_lack_of_time_fails_to_come_back_soon(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    """Two CIFAR-10 files are two groups. The first is submitted; by the second, less than the stop margin is left:
    the second's record is reported as a failure (and its visibility shortened) instead of the invocation running into
    Lambda's timeout, which fails every record, the submitted one too, for the queue's 13 minutes."""
    clock = RunningClock(60, also_spent=persistent_handler.STOP_MARGIN_SECONDS, free_readings=1)
    monkeypatch.setattr(persistent_handler.submitter, "pause", clock.pause)
    shortened = []
    persistent_handler.sqs_client.meta.events.register(
        "before-parameter-build.sqs.ChangeMessageVisibilityBatch",
        lambda params, **_: shortened.extend(params["Entries"]),
    )
    event = sqs_event(
        [upload(aws.s3, f"incoming/{name}.bin", b"cifar " + name.encode(), sequence=number)
         for number, name in enumerate(("a", "b"), start=1)]
    )  # fmt: skip

    response = persistent_handler.lambda_handler(event, clock.context())

    second = event["Records"][1]
    assert failed_message_ids(response) == [second["messageId"]]
    assert [entry["ReceiptHandle"] for entry in shortened] == [second["receiptHandle"]]
    assert sorted(claimed_by(aws.dynamodb)) == ["incoming/a.bin"]  # nothing of b.bin was claimed
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_attempts_and_waits_after_unanswered_submissions_stop_within_the_invocations_time(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    """Every AddJobFlowSteps times out before EMR sees it. With 40 s left (10 s beyond the stop margin) the function
    may not spend the up to 30 s of back-off and 5 attempts it has: it waits and searches within the 10 s, sends no
    attempt past them, and reports the records (the claims stay: EMR may have taken an attempt)."""
    clock = RunningClock(40)
    monkeypatch.setattr(persistent_handler.submitter, "pause", clock.pause)
    attempts = []

    def time_out(request, **_):
        attempts.append(request.url)
        raise ReadTimeoutError(endpoint_url=request.url)

    persistent_handler.emr_submit_client.meta.events.register_first("before-send.emr.AddJobFlowSteps", time_out)
    event = sqs_event(image_notifications(aws, 2))

    response = persistent_handler.lambda_handler(event, clock.context())

    assert failed_message_ids(response) == all_failed(event)
    assert sum(clock.waits) <= 40 - persistent_handler.STOP_MARGIN_SECONDS
    assert len(attempts) == 1
    assert sorted(claimed_by(aws.dynamodb)) == ["incoming/img-0.png", "incoming/img-1.png"]


def test_after_a_lost_answer_the_search_waits_for_emr_to_list_the_step(aws, persistent_cluster, persistent_handler,
                                                                        monkeypatch):
    """EMR carried out the AddJobFlowSteps whose answer was lost (lost_responses.py), but may list the step only
    seconds later: the first search must come after UNCLEAR_SEARCH_DELAY_SECONDS, not within the first back-off's
    0-2 s (a search that came too early would send the step again). What moto cannot show: EMR's real listing lag
    (moto lists at once, so the step is found either way; the order of waits and searches is what is checked)."""
    handler = persistent_handler
    timeline: list[tuple[str, float]] = []
    monkeypatch.setattr(handler.submitter, "pause", lambda seconds: timeline.append(("wait", seconds)))
    lose_response(handler, "emr.AddJobFlowSteps")
    handler.emr_submit_client.meta.events.register(
        "before-call.emr.AddJobFlowSteps", lambda **_: timeline.append(("AddJobFlowSteps", 0))
    )
    handler.emr_client.meta.events.register(
        "before-parameter-build.emr.ListSteps",
        lambda params, **_: None if "StepStates" in params else timeline.append(("search", 0)),
    )

    response = handler.lambda_handler(sqs_event(image_notifications(aws, 2)), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1
    sent = timeline.index(("AddJobFlowSteps", 0))
    searched = timeline.index(("search", 0))
    waited = sum(seconds for what, seconds in timeline[sent:searched] if what == "wait")
    assert sent < searched and waited >= handler.submitter.UNCLEAR_SEARCH_DELAY_SECONDS


def test_the_search_for_a_step_stops_listing_at_steps_older_than_its_batch(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    """A long-lived cluster has hundreds of steps from the day before. Crash recovery for a batch made today must not
    page through all of them (ListSteps, newest first, 100 a page in moto, 50 in EMR): the listing stops at the first
    page that reaches a step older than the batch. Their creation times are set in moto's backend (moto stamps a step
    with the wall clock); what moto cannot show is EMR's page size and how much history it keeps."""
    old_steps = 250
    for start in range(0, old_steps, 50):
        for number in range(start, start + 50):
            add_step_named(aws, persistent_cluster, f"yesterday-{number}")
    clock = FrozenClock()
    monkeypatch.setattr(persistent_handler.submitter, "utc_now", clock)
    for step in emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[persistent_cluster].steps:
        step.creation_date_time = (clock.now - timedelta(days=1)).replace(tzinfo=None)  # moto keeps naive UTC
        step.state = "COMPLETED"  # not active: the cluster has free slots
    messages = {"m-a": upload(aws.s3, "incoming/a.png", b"png a", sequence=1)}
    with monkeypatch.context() as patch:
        patch.setattr(persistent_handler.submitter.StepSubmitter, "_add_step", crash)
        with pytest.raises(SimulatedCrash):
            invoke(persistent_handler, messages)
    clock.now += timedelta(seconds=CLAIM_LEASE_SECONDS + 1)
    searches = []
    persistent_handler.emr_client.meta.events.register(
        "before-parameter-build.emr.ListSteps",
        lambda params, **_: None if "StepStates" in params else searches.append(params.get("Marker")),
    )

    assert invoke(persistent_handler, messages) == {"batchItemFailures": []}

    assert searches == [None]  # one page, not the three of the whole history
    assert len(submitted_steps(aws.emr, persistent_cluster)) == old_steps + 1
