"""Failures the handler must report per record, and the claims that keep a batch from being submitted twice.

moto serves S3 and EMR; botocore's Stubber replaces EMR where moto cannot produce the state (a cluster at EMR's real limit
of 256 active steps, a terminated cluster that still answers). Throttling goes through botocore's real retry machinery: a
`before-send` hook answers like EMR does when it throttles, because a Stubber response is returned before the retry logic
runs and so could not prove the retries. What none of this proves: EMR's real throttling rates, and that EMR itself refuses
steps on a terminated or full cluster (moto does not).
"""

from __future__ import annotations

import json
from datetime import timedelta

import botocore.endpoint
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from trigger_helpers import base_environment
from moto.core.botocore_stubber import MockRawResponse

import emr_step
import uploads
from trigger_settings import EMR_MAX_ACTIVE_STEPS
from trigger_helpers import (
    BUCKET,
    FakeLambdaContext,
    failed_message_ids,
    object_keys,
    sqs_event,
    submitted_steps,
    upload,
)


def image_notifications(aws, count: int) -> list[dict]:
    return [
        upload(aws.s3, f"incoming/img-{index}.png", b"png %d" % index, sequence=index + 1) for index in range(count)
    ]


def batch_ids(notifications: list[dict]) -> list[str]:
    parsed = [
        (f"msg-{number}", uploads.parse_message_body(json.dumps(body), bucket=BUCKET, incoming_prefix="incoming/"))
        for number, body in enumerate(notifications, start=1)
    ]
    return [batch.batch_id for batch in uploads.group_into_batches(parsed)]


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


# --- claims: a batch is submitted at most once -----------------------------------------------------------------------


def test_claim_held_by_another_invocation_fails_the_records_for_later(aws, persistent_cluster, persistent_handler):
    notifications = image_notifications(aws, 2)
    (batch_id,) = batch_ids(notifications)
    aws.s3.put_object(
        Bucket=BUCKET, Key=f"manifests/{batch_id}.json", Body=b"{}"
    )  # claimed just now, not yet submitted
    event = sqs_event(notifications)

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == all_failed(event)
    assert submitted_steps(aws.emr, persistent_cluster) == []


def test_step_submitted_before_a_crash_is_found_by_name_and_not_repeated(aws, persistent_cluster, persistent_handler):
    notifications = image_notifications(aws, 2)
    (batch_id,) = batch_ids(notifications)
    aws.s3.put_object(Bucket=BUCKET, Key=f"manifests/{batch_id}.json", Body=b"{}")
    add_step_named(aws, persistent_cluster, f"mxnet-inference-{batch_id}")  # submitted; the receipt was never written

    response = persistent_handler.lambda_handler(sqs_event(notifications), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1
    assert f"manifests/{batch_id}.step.json" in object_keys(aws.s3, "manifests/")


def test_claim_older_than_the_lease_is_taken_over(aws, persistent_cluster, persistent_handler, monkeypatch):
    notifications = image_notifications(aws, 2)
    (batch_id,) = batch_ids(notifications)
    aws.s3.put_object(Bucket=BUCKET, Key=f"manifests/{batch_id}.json", Body=b"{}")  # the claimant crashed
    submitter = persistent_handler.submitter
    claimed_at = submitter.utc_now()
    monkeypatch.setattr(submitter, "utc_now", lambda: claimed_at + submitter.CLAIM_LEASE + timedelta(seconds=1))

    response = persistent_handler.lambda_handler(sqs_event(notifications), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert step["Name"] == f"mxnet-inference-{batch_id}"


# --- cluster limits and states ----------------------------------------------------------------------------------------


def test_cluster_at_max_active_steps_fails_every_record(aws, persistent_cluster, load_handler):
    for number in range(2):
        add_step_named(aws, persistent_cluster, f"earlier-{number}")
    handler = load_handler(base_environment(CLUSTER_ID=persistent_cluster, MAX_ACTIVE_STEPS="2"))
    event = sqs_event(image_notifications(aws, 3))

    response = handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == all_failed(event)
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 2
    assert object_keys(aws.s3, "manifests/") == []  # nothing claimed: the redelivery starts clean


def test_batches_beyond_the_free_slots_fail_while_the_first_is_submitted(aws, persistent_cluster, load_handler):
    handler = load_handler(base_environment(CLUSTER_ID=persistent_cluster, MAX_ACTIVE_STEPS="1"))
    image = upload(aws.s3, "incoming/a.png", b"png", sequence=1)
    cifar = upload(aws.s3, "incoming/test_batch.bin", b"\x01" * 3073, sequence=2)
    event = sqs_event([image, cifar])  # msg-1: the image batch, msg-2: the CIFAR-10 batch
    first_batch_id = min(batch_ids([image, cifar]))  # batches are submitted in batch id order
    image_batch_id = batch_ids([image])[0]

    response = handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == (["msg-2"] if first_batch_id == image_batch_id else ["msg-1"])
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert step["Name"] == f"mxnet-inference-{first_batch_id}"


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
    assert object_keys(aws.s3, "manifests/") == []  # never claimed, so AddJobFlowSteps was never reached


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
    assert object_keys(aws.s3, "manifests/") == []


# --- throttling: botocore's standard retry mode, then a failure --------------------------------------------------------


@pytest.fixture
def backoff_sleeps(monkeypatch) -> list[float]:
    """Record botocore's backoff delays instead of sleeping them."""
    sleeps: list[float] = []
    monkeypatch.setattr(botocore.endpoint.time, "sleep", sleeps.append)
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


def test_add_step_refused_after_retries_fails_the_records_and_releases_the_claim(
    aws, persistent_cluster, persistent_handler
):
    event = sqs_event(image_notifications(aws, 2))
    with Stubber(persistent_handler.emr_client) as stubber:
        stubber.add_response(
            "describe_cluster",
            {"Cluster": {"Id": persistent_cluster, "Status": {"State": "WAITING"}}},
            {"ClusterId": persistent_cluster},
        )
        stub_active_steps(stubber, persistent_cluster, 0)
        stubber.add_client_error(
            "add_job_flow_steps",
            service_error_code="ThrottlingException",
            service_message="Rate exceeded",
            http_status_code=400,
        )

        response = persistent_handler.lambda_handler(event, FakeLambdaContext())

        stubber.assert_no_pending_responses()
    assert failed_message_ids(response) == all_failed(event)
    assert object_keys(aws.s3, "manifests/") == []  # the claim is released so the redelivery can submit


def test_add_step_timing_out_keeps_the_claim_because_emr_may_have_accepted_it(
    aws, persistent_cluster, persistent_handler, backoff_sleeps
):
    def time_out(request, **_):
        raise ReadTimeoutError(endpoint_url=request.url)

    persistent_handler.emr_client.meta.events.register_first("before-send.emr.AddJobFlowSteps", time_out)
    notifications = image_notifications(aws, 2)
    (batch_id,) = batch_ids(notifications)
    event = sqs_event(notifications)

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == all_failed(event)
    assert object_keys(aws.s3, "manifests/") == [f"manifests/{batch_id}.json"]
