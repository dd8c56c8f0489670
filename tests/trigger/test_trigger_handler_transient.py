"""Transient mode against moto: join a running cluster of this stack, else launch one from the stack's definition.

What moto cannot prove: that the launched cluster really terminates when its steps end (moto keeps it WAITING while it has
steps), and that EMR refuses steps on a cluster that has begun terminating (moto accepts them).
"""

from __future__ import annotations

import json

import pytest
from botocore.stub import ANY, Stubber

import emr_step
from trigger_helpers import (
    BUCKET,
    CLUSTER_TAG,
    DEFINITION_TAG,
    STACK_CLUSTER_NAME,
    STACK_CLUSTER_TAGS,
    FakeLambdaContext,
    batch_records,
    claims_table_items,
    create_cluster,
    failed_message_ids,
    object_keys,
    stack_definition,
    sqs_event,
    submitted_steps,
    transient_environment,
    upload,
)

DEFINITION_KEY = "artifacts/cluster/run-job-flow.json"


@pytest.fixture
def transient_handler(aws, load_handler):
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    return load_handler(
        transient_environment(DEFINITION_KEY)
    )


def cluster_ids(aws, states=("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")) -> list[str]:
    return sorted(cluster["Id"] for cluster in aws.emr.list_clusters(ClusterStates=list(states))["Clusters"])


def notifications(aws, *keys: str) -> list[dict]:
    return [
        upload(aws.s3, key, b"bytes of %s" % key.encode(), sequence=number) for number, key in enumerate(keys, start=1)
    ]


def test_without_a_running_cluster_one_is_launched_from_the_definition_with_the_step(aws, transient_handler):
    response = transient_handler.lambda_handler(sqs_event(notifications(aws, "incoming/a.png")), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (cluster_id,) = cluster_ids(aws)
    cluster = aws.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert (cluster["Name"], cluster["AutoTerminate"]) == (STACK_CLUSTER_NAME, True)
    assert all(tag in cluster["Tags"] for tag in STACK_CLUSTER_TAGS)  # found by later uploads
    (step,) = submitted_steps(aws.emr, cluster_id)
    (manifest_key,) = object_keys(aws.s3, "manifests/")
    assert emr_step.job_arguments(step)[:2] == ["--manifest", f"s3://{BUCKET}/{manifest_key}"]


def test_step_joins_a_running_cluster_of_this_stack(aws, transient_handler):
    running = create_cluster(aws.emr, keep_alive=False, tags=STACK_CLUSTER_TAGS)
    aws.emr.add_job_flow_steps(
        JobFlowId=running, Steps=[{"Name": "earlier", "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}]
    )

    transient_handler.lambda_handler(sqs_event(notifications(aws, "incoming/a.png")), FakeLambdaContext())

    assert cluster_ids(aws) == [running]
    earlier, added = submitted_steps(aws.emr, running)
    assert earlier["Name"] == "earlier"
    assert added["Name"].startswith("mxnet-inference-")


def test_clusters_of_other_stacks_are_not_used(aws, transient_handler):
    other = create_cluster(aws.emr, keep_alive=True, tags=[{"Key": CLUSTER_TAG["Key"], "Value": "another-stack"}])

    transient_handler.lambda_handler(sqs_event(notifications(aws, "incoming/a.png")), FakeLambdaContext())

    (launched,) = [cluster_id for cluster_id in cluster_ids(aws) if cluster_id != other]
    assert submitted_steps(aws.emr, other) == []
    assert len(submitted_steps(aws.emr, launched)) == 1


def test_a_cluster_launched_before_a_deploy_that_changed_its_definition_gets_no_more_steps(aws, transient_handler):
    """Defect found in review: a redeploy (say compute cpu -> gpu, or new bootstrap pins) never reached a transient
    cluster that a trickle of uploads kept alive. The old one is still this stack's (IAM, destroy cleanup): it just
    idles out."""
    previous = create_cluster(aws.emr, keep_alive=True, tags=[CLUSTER_TAG, {**DEFINITION_TAG, "Value": "definition-0"}])

    transient_handler.lambda_handler(sqs_event(notifications(aws, "incoming/a.png")), FakeLambdaContext())

    (launched,) = [cluster_id for cluster_id in cluster_ids(aws) if cluster_id != previous]
    assert submitted_steps(aws.emr, previous) == []
    assert len(submitted_steps(aws.emr, launched)) == 1


@pytest.mark.parametrize(
    "definition_changes",
    [
        # Mid-deploy, the function may already have the new definition tag while S3 still holds the old definition:
        # launching from it would start a cluster that no later upload finds.
        {"Tags": [CLUSTER_TAG, {**DEFINITION_TAG, "Value": "definition-0"}]},
        # botocore validates a request before sending it (ParamValidationError: neither a ClientError nor a
        # ValueError). The step certainly was not accepted.
        {"Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": "one"}},
    ],
    ids=["definition-of-another-deploy", "refused-by-botocore-before-sending"],
)
def test_a_definition_that_cannot_be_launched_releases_the_uploads_at_once(aws, transient_handler, definition_changes):
    """The uploads come back at once (not after the claims' lease): no manifest, no claim, no cluster left behind."""
    definition = stack_definition(**definition_changes)
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(definition).encode())
    event = sqs_event(notifications(aws, "incoming/a.png"))

    response = transient_handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == sorted(record["messageId"] for record in event["Records"])
    assert cluster_ids(aws) == []
    assert object_keys(aws.s3, "manifests/") == [] and claims_table_items(aws.dynamodb) == []


def test_terminated_cluster_of_this_stack_is_replaced(aws, transient_handler):
    ended = create_cluster(aws.emr, keep_alive=True, tags=STACK_CLUSTER_TAGS)
    aws.emr.terminate_job_flows(JobFlowIds=[ended])

    transient_handler.lambda_handler(sqs_event(notifications(aws, "incoming/a.png")), FakeLambdaContext())

    (launched,) = cluster_ids(aws)
    assert launched != ended
    assert len(submitted_steps(aws.emr, launched)) == 1


def test_batches_of_one_invocation_share_the_cluster_it_launched(aws, transient_handler):
    event = sqs_event(
        notifications(aws, "incoming/a.png", "incoming/cifar/data_batch_1.bin", "incoming/cifar/data_batch_2.bin")
    )

    response = transient_handler.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (cluster_id,) = cluster_ids(aws)
    assert len(submitted_steps(aws.emr, cluster_id)) == 3


def test_batch_record_names_the_launched_cluster(aws, transient_handler):
    transient_handler.lambda_handler(sqs_event(notifications(aws, "incoming/a.png")), FakeLambdaContext())

    (cluster_id,) = cluster_ids(aws)
    (record,) = batch_records(aws.dynamodb).values()
    assert record["cluster_id"] == cluster_id


@pytest.mark.parametrize(
    "definition",
    [
        stack_definition(
            Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True}
        ),
        stack_definition(Tags=[]),
        stack_definition(Steps=[]),
    ],
    ids=["kept-alive", "untagged", "with-steps"],
)
def test_unusable_definition_fails_the_records_and_launches_nothing(aws, transient_handler, definition):
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(definition).encode())
    event = sqs_event(notifications(aws, "incoming/a.png"))

    response = transient_handler.lambda_handler(event, FakeLambdaContext())

    assert failed_message_ids(response) == ["msg-1"]
    assert cluster_ids(aws, states=("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATED")) == []
    assert object_keys(aws.s3, "manifests/") == []
    assert claims_table_items(aws.dynamodb) == []


def test_clusters_the_function_may_not_describe_are_skipped(aws, transient_handler):
    """IAM lets the function describe only clusters tagged for this stack; EMR refuses the others (Stubber: moto has no
    IAM enforcement)."""
    foreign, ours = "j-1FOREIGNCLUSTER", "j-2OURSTACKCLUSTER"
    event = sqs_event(notifications(aws, "incoming/a.png"))
    with Stubber(transient_handler.emr_client) as stubber:
        stubber.add_response(
            "list_clusters",
            {
                "Clusters": [
                    # Named like the stack's clusters, so the name filter passes it to DescribeCluster.
                    {"Id": foreign, "Name": STACK_CLUSTER_NAME, "Status": {"State": "RUNNING"}},
                    {"Id": ours, "Name": STACK_CLUSTER_NAME, "Status": {"State": "WAITING"}},
                ]
            },
            {"ClusterStates": ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING"]},
        )
        stubber.add_client_error(
            "describe_cluster",
            service_error_code="AccessDeniedException",
            http_status_code=400,
            expected_params={"ClusterId": foreign},
        )
        tagged = {"Cluster": {"Id": ours, "Status": {"State": "WAITING"}, "Tags": STACK_CLUSTER_TAGS}}
        stubber.add_response("describe_cluster", tagged, {"ClusterId": ours})
        stubber.add_response("describe_cluster", tagged, {"ClusterId": ours})
        stubber.add_response("list_steps", {"Steps": []}, {"ClusterId": ours, "StepStates": ["PENDING", "RUNNING"]})
        with Stubber(transient_handler.emr_submit_client) as submit_stubber:
            submit_stubber.add_response("add_job_flow_steps", {"StepIds": ["s-1"]}, {"JobFlowId": ours, "Steps": ANY})

            response = transient_handler.lambda_handler(event, FakeLambdaContext())

            submit_stubber.assert_no_pending_responses()
        stubber.assert_no_pending_responses()
    assert response == {"batchItemFailures": []}
