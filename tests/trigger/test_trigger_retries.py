"""Steps that end CANCELLED or INTERRUPTED: their batch is submitted again, a bounded number of times, then reported.

The stack's EventBridge rule sends such step events to the upload queue (the rule's pattern is checked by the infra
tests); here the events are delivered as that queue would, in the shape of AWS's documented "EMR Step Status Change"
event. moto serves S3, EMR, DynamoDB, SNS and SQS (the report is read from a queue subscribed to the topic).

What moto cannot show: moto's steps never leave PENDING/RUNNING and moto implements no step cancellation, so no step
here really ends cancelled: the test sends the event EMR would send. That a transient cluster cancels a step added while
it shuts down, or one queued when its bootstrap fails, and that EventBridge delivers those events to SQS, is EMR's and
EventBridge's documented behaviour, not something these tests prove.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from botocore.stub import Stubber

from trigger_helpers import (
    SimulatedCrash,
    crash,
    BUCKET,
    CLAIM_LEASE_SECONDS,
    STACK_CLUSTER_TAGS,
    MAX_STEP_ATTEMPTS,
    FakeLambdaContext,
    base_environment,
    batch_records,
    claimed_by,
    failed_message_ids,
    manifest_objects,
    object_keys,
    sqs_event,
    stack_definition,
    step_output,
    step_status_event,
    submitted_steps,
    transient_environment,
    upload,
)

NO_FAILURES = {"batchItemFailures": []}
LEASE = timedelta(seconds=CLAIM_LEASE_SECONDS)




def submit_one_batch(aws, handler) -> str:
    """Upload two images, let the handler submit them; return the batch id."""
    notifications = [
        upload(aws.s3, f"incoming/{name}.png", b"png bytes of %s" % name.encode(), sequence=number)
        for number, name in enumerate("ab", start=1)
    ]
    assert handler.lambda_handler(sqs_event(notifications), FakeLambdaContext()) == NO_FAILURES
    (batch_id,) = batch_records(aws.dynamodb)
    return batch_id


def step_ended(handler, step_name: str, state: str, cluster_id: str, *, message_id: str = "event-1") -> dict:
    event = sqs_event([step_status_event(step_name, state, cluster_id=cluster_id)])
    event["Records"][0]["messageId"] = message_id
    return handler.lambda_handler(event, FakeLambdaContext())


def max_executors(step: dict) -> list[str]:
    return [arg for arg in step["HadoopJarStep"]["Args"] if arg.startswith("spark.dynamicAllocation.maxExecutors=")]


def steps_named(aws, cluster_id: str) -> list[str]:
    return [step["Name"] for step in submitted_steps(aws.emr, cluster_id)]


@pytest.mark.parametrize("state", ["CANCELLED", "INTERRUPTED"])
def test_a_cancelled_or_interrupted_step_is_submitted_again_with_its_own_output(
    aws, persistent_cluster, persistent_handler, state
):
    batch_id = submit_one_batch(aws, persistent_handler)

    response = step_ended(persistent_handler, f"mxnet-inference-{batch_id}", state, persistent_cluster)

    assert response == NO_FAILURES
    first, second = submitted_steps(aws.emr, persistent_cluster)
    assert second["Name"] == f"mxnet-inference-{batch_id}-2"
    assert manifest_objects(aws.s3, second) == manifest_objects(aws.s3, first)  # the same batch, the same manifest
    assert (step_output(first), step_output(second)) == (
        f"s3://{BUCKET}/results/{batch_id}/",
        f"s3://{BUCKET}/results/{batch_id}-2/",  # never the first attempt's partial output
    )
    assert batch_records(aws.dynamodb)[batch_id]["attempt"] == 2
    # The retry caps its executors for the batch's images like the first attempt (review 2, #8).
    assert [max_executors(first), max_executors(second)] == [["spark.dynamicAllocation.maxExecutors=1"]] * 2


def test_a_duplicated_event_starts_one_retry(aws, persistent_cluster, persistent_handler):
    batch_id = submit_one_batch(aws, persistent_handler)
    name = f"mxnet-inference-{batch_id}"

    first = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster, message_id="event-1")
    again = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster, message_id="event-1-duplicate")

    assert first == again == NO_FAILURES
    assert steps_named(aws, persistent_cluster) == [name, f"{name}-2"]


def test_after_the_last_attempt_the_batch_is_reported_once_and_not_submitted_again(
    aws, persistent_cluster, persistent_handler, reports
):
    batch_id = submit_one_batch(aws, persistent_handler)
    names = [f"mxnet-inference-{batch_id}"] + [f"mxnet-inference-{batch_id}-{n}" for n in range(2, MAX_STEP_ATTEMPTS + 1)]
    for name in names:
        assert step_ended(persistent_handler, name, "CANCELLED", persistent_cluster) == NO_FAILURES
    (report,) = reports()

    duplicate = step_ended(persistent_handler, names[-1], "CANCELLED", persistent_cluster, message_id="duplicate")

    assert duplicate == NO_FAILURES
    assert steps_named(aws, persistent_cluster) == names
    assert reports() == []
    assert report["Subject"] == f"Batch {batch_id} not run: its step ended CANCELLED {MAX_STEP_ATTEMPTS} times"
    assert f"s3://{BUCKET}/manifests/{batch_id}.json" in report["Message"]
    assert batch_records(aws.dynamodb)[batch_id]["state"] == "gave_up"


def test_a_retried_batch_still_owns_its_uploads_so_their_duplicates_are_dropped(
    aws, persistent_cluster, persistent_handler
):
    batch_id = submit_one_batch(aws, persistent_handler)
    step_ended(persistent_handler, f"mxnet-inference-{batch_id}", "CANCELLED", persistent_cluster)
    duplicate = upload(aws.s3, "incoming/a.png", b"png bytes of a", sequence=1)  # the same upload's event again

    response = persistent_handler.lambda_handler(sqs_event([duplicate]), FakeLambdaContext())

    assert response == NO_FAILURES
    assert set(claimed_by(aws.dynamodb).values()) == {batch_id}
    assert object_keys(aws.s3, "manifests/") == [f"manifests/{batch_id}.json"]
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 2  # the first attempt and its retry, nothing more


def test_a_completed_or_failed_step_is_never_retried(aws, persistent_cluster, persistent_handler):
    batch_id = submit_one_batch(aws, persistent_handler)

    responses = [
        step_ended(persistent_handler, f"mxnet-inference-{batch_id}", state, persistent_cluster)
        for state in ("COMPLETED", "FAILED")
    ]

    assert responses == [NO_FAILURES, NO_FAILURES]
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_an_event_for_a_batch_that_is_not_recorded_runs_nothing(aws, persistent_cluster, persistent_handler):
    response = step_ended(persistent_handler, "mxnet-inference-20261125100000abcdef", "CANCELLED", persistent_cluster)

    assert response == NO_FAILURES
    assert submitted_steps(aws.emr, persistent_cluster) == []


def test_a_retry_on_a_full_cluster_waits_on_the_queue_and_keeps_the_attempt(aws, persistent_cluster, load_handler):
    handler = load_handler(base_environment(CLUSTER_ID=persistent_cluster, MAX_ACTIVE_STEPS="1"))
    batch_id = submit_one_batch(aws, handler)  # its step is PENDING in moto: the cluster is full

    response = step_ended(handler, f"mxnet-inference-{batch_id}", "CANCELLED", persistent_cluster)

    assert failed_message_ids(response) == ["event-1"]
    assert batch_records(aws.dynamodb)[batch_id]["attempt"] == 1
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_a_refused_retry_is_undone_so_the_redelivered_event_tries_again(aws, persistent_cluster, persistent_handler):
    batch_id = submit_one_batch(aws, persistent_handler)
    name = f"mxnet-inference-{batch_id}"
    with Stubber(persistent_handler.emr_client) as stubber, Stubber(persistent_handler.emr_submit_client) as submit:
        stubber.add_response("describe_cluster", {"Cluster": {"Id": persistent_cluster, "Status": {"State": "WAITING"}}})
        stubber.add_response("list_steps", {"Steps": []})
        submit.add_client_error("add_job_flow_steps", service_error_code="ValidationException", http_status_code=400)
        refused = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)
    assert failed_message_ids(refused) == ["event-1"]
    assert (batch_records(aws.dynamodb)[batch_id]["attempt"], batch_records(aws.dynamodb)[batch_id]["state"]) == (
        1,
        "submitted",
    )

    retried = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)

    assert retried == NO_FAILURES
    assert steps_named(aws, persistent_cluster) == [name, f"{name}-2"]


def test_a_retry_whose_invocation_died_before_emr_took_it_is_resumed_after_the_lease(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    batch_id = submit_one_batch(aws, persistent_handler)
    name = f"mxnet-inference-{batch_id}"
    with monkeypatch.context() as patch:
        patch.setattr(persistent_handler.submitter.StepSubmitter, "_add_step", crash)
        with pytest.raises(SimulatedCrash):
            step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)
    started = persistent_handler.submitter.utc_now()

    before = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)  # SQS delivers the event again
    monkeypatch.setattr(
        persistent_handler.submitter, "utc_now", lambda: started + LEASE + timedelta(seconds=1)
    )
    after = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)

    assert failed_message_ids(before) == ["event-1"]
    assert after == NO_FAILURES
    assert steps_named(aws, persistent_cluster) == [name, f"{name}-2"]
    assert batch_records(aws.dynamodb)[batch_id]["state"] == "submitted"


def test_a_retry_emr_took_before_its_invocation_died_is_found_by_name_not_added_twice(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    batch_id = submit_one_batch(aws, persistent_handler)
    name = f"mxnet-inference-{batch_id}"
    with monkeypatch.context() as patch:
        patch.setattr(persistent_handler.claim_store, "finish_retry", crash)
        with pytest.raises(SimulatedCrash):
            step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)
    started = persistent_handler.submitter.utc_now()
    monkeypatch.setattr(
        persistent_handler.submitter, "utc_now", lambda: started + LEASE + timedelta(seconds=1)
    )

    response = step_ended(persistent_handler, name, "CANCELLED", persistent_cluster)

    assert response == NO_FAILURES
    assert steps_named(aws, persistent_cluster) == [name, f"{name}-2"]
    assert batch_records(aws.dynamodb)[batch_id] == {
        "state": "submitted",
        "attempt": 2,
        "step_name": f"{name}-2",
        "cluster_id": persistent_cluster,
        "manifest_key": f"manifests/{batch_id}.json",
    }


def test_transient_a_step_cancelled_by_its_ended_cluster_runs_on_a_new_cluster(aws, load_handler):
    definition_key = "artifacts/job-flow.json"
    aws.s3.put_object(Bucket=BUCKET, Key=definition_key, Body=json.dumps(stack_definition()).encode())
    handler = load_handler(
        transient_environment(definition_key)
    )
    batch_id = submit_one_batch(aws, handler)
    (first_cluster,) = [cluster["Id"] for cluster in aws.emr.list_clusters()["Clusters"]]
    aws.emr.terminate_job_flows(JobFlowIds=[first_cluster])  # e.g. its bootstrap failed: EMR cancels the step

    response = step_ended(handler, f"mxnet-inference-{batch_id}", "CANCELLED", first_cluster)

    assert response == NO_FAILURES
    running = aws.emr.list_clusters(ClusterStates=["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"])["Clusters"]
    (second_cluster,) = [cluster["Id"] for cluster in running]
    assert second_cluster != first_cluster
    assert steps_named(aws, second_cluster) == [f"mxnet-inference-{batch_id}-2"]
    assert batch_records(aws.dynamodb)[batch_id]["cluster_id"] == second_cluster
