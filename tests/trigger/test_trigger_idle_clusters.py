"""Clusters that end by themselves after an idle timeout: the trigger launches them from a kept-alive definition, and a
batch that finds the cluster gone (ended, or ending at the moment its step is added) is not lost.

Against moto, with botocore's Stubber for the refusal EMR gives a cluster that is shutting down. What moto cannot
prove: that EMR terminates an idle cluster after its IdleTimeout (moto ignores AutoTerminationPolicy: the tests end the
cluster themselves, as EMR would), and that EMR's refusal is exactly the ValidationException used here.
"""

from __future__ import annotations

import json

import pytest
from botocore.stub import ANY, Stubber

from trigger_helpers import (
    BUCKET,
    STACK_CLUSTER_NAME,
    STACK_CLUSTER_TAGS,
    FakeLambdaContext,
    batch_records,
    claims_table_items,
    failed_message_ids,
    object_keys,
    sqs_event,
    stack_definition,
    submitted_steps,
    transient_environment,
    upload,
)

DEFINITION_KEY = "artifacts/job-flow.json"
IDLE_TIMEOUT_SECONDS = 600
ACCEPTING = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
# What EMR answers AddJobFlowSteps on a cluster that has begun terminating.
SHUTTING_DOWN = "A job flow that is shutting down, terminated, or finished may not be modified."


def kept_alive_definition() -> dict:
    """The stack's definition as it now is: kept alive between steps, ended by EMR after an idle timeout."""
    return stack_definition(
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        AutoTerminationPolicy={"IdleTimeout": IDLE_TIMEOUT_SECONDS},
    )


@pytest.fixture
def handler(aws, load_handler):
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(kept_alive_definition()).encode())
    return load_handler(
        transient_environment(DEFINITION_KEY)
    )


def accepting_clusters(aws) -> list[str]:
    return sorted(cluster["Id"] for cluster in aws.emr.list_clusters(ClusterStates=list(ACCEPTING))["Clusters"])


def event_for(aws, key: str, sequence: int) -> dict:
    return sqs_event([upload(aws.s3, key, b"bytes of " + key.encode(), sequence=sequence)])


def test_a_kept_alive_definition_with_an_idle_timeout_is_launched_with_its_policy(aws, handler):
    sent = []
    handler.emr_submit_client.meta.events.register(
        "provide-client-params.emr.RunJobFlow", lambda params, **_: sent.append(params)
    )

    response = handler.lambda_handler(event_for(aws, "incoming/a.png", 1), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (request,) = sent
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": IDLE_TIMEOUT_SECONDS}
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    (cluster_id,) = accepting_clusters(aws)
    assert len(submitted_steps(aws.emr, cluster_id)) == 1


def test_the_next_batch_joins_the_cluster_while_it_waits_idle(aws, handler):
    handler.lambda_handler(event_for(aws, "incoming/a.png", 1), FakeLambdaContext())
    handler.lambda_handler(event_for(aws, "incoming/b.png", 2), FakeLambdaContext())

    (cluster_id,) = accepting_clusters(aws)
    assert len(submitted_steps(aws.emr, cluster_id)) == 2


def test_a_batch_after_the_cluster_ended_idle_gets_a_new_cluster_and_both_batches_are_recorded(aws, handler):
    handler.lambda_handler(event_for(aws, "incoming/a.png", 1), FakeLambdaContext())
    (first,) = accepting_clusters(aws)
    aws.emr.terminate_job_flows(JobFlowIds=[first])  # what EMR does after IdleTimeout seconds without work

    response = handler.lambda_handler(event_for(aws, "incoming/b.png", 2), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (second,) = accepting_clusters(aws)
    assert second != first
    records = batch_records(aws.dynamodb).values()
    assert sorted(record["cluster_id"] for record in records) == sorted([first, second])
    assert len(submitted_steps(aws.emr, second)) == 1


def test_a_cluster_that_starts_shutting_down_as_the_step_is_added_loses_no_batch(aws, handler):
    """The cluster is WAITING when listed, and refuses the step a moment later: the batch's claims and manifest are
    released and its message fails, so SQS redelivers it; the redelivery launches a new cluster and runs the batch."""
    idle = "j-IDLEENDINGCLUSTER"
    event = event_for(aws, "incoming/a.png", 1)
    with Stubber(handler.emr_client) as stubber:
        stubber.add_response(
            "list_clusters",
            {"Clusters": [{"Id": idle, "Name": STACK_CLUSTER_NAME, "Status": {"State": "WAITING"}}]},
            {"ClusterStates": ANY},
        )
        waiting = {"Cluster": {"Id": idle, "Status": {"State": "WAITING"}, "Tags": STACK_CLUSTER_TAGS}}
        stubber.add_response("describe_cluster", waiting, {"ClusterId": idle})
        stubber.add_response("describe_cluster", waiting, {"ClusterId": idle})
        stubber.add_response("list_steps", {"Steps": []}, {"ClusterId": idle, "StepStates": ["PENDING", "RUNNING"]})
        with Stubber(handler.emr_submit_client) as submit_stubber:
            submit_stubber.add_client_error(
                "add_job_flow_steps",
                service_error_code="ValidationException",
                service_message=SHUTTING_DOWN,
                http_status_code=400,
                expected_params={"JobFlowId": idle, "Steps": ANY},
            )

            refused = handler.lambda_handler(event, FakeLambdaContext())

            submit_stubber.assert_no_pending_responses()
        stubber.assert_no_pending_responses()
    assert failed_message_ids(refused) == ["msg-1"]
    assert object_keys(aws.s3, "manifests/") == []
    assert claims_table_items(aws.dynamodb) == []

    redelivered = handler.lambda_handler(event, FakeLambdaContext())

    assert redelivered == {"batchItemFailures": []}
    (launched,) = accepting_clusters(aws)
    (step,) = submitted_steps(aws.emr, launched)
    ((batch_id, record),) = batch_records(aws.dynamodb).items()
    assert (record["cluster_id"], step["Name"].endswith(batch_id)) == (launched, True)
