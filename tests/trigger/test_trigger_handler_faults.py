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

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from trigger_helpers import base_environment
from moto.core.botocore_stubber import MockRawResponse

import emr_step
from trigger_settings import EMR_MAX_ACTIVE_STEPS
from trigger_helpers import (
    BUCKET,
    FakeLambdaContext,
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
