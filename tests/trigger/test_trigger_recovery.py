"""Crash recovery, cancelled steps, replacement clusters and refused manifests (reliability review #2, #5, #10, #18,
#21; aws-validity-review-2 #10, #12, #14).

moto serves S3, EMR, SQS, SNS and DynamoDB. What moto cannot show: it never ends a step, so a cancelled step is made so
by setting its state in moto's backend (as EMR would have), or announced by the event the test sends; moto evaluates
no IAM; and ListClusters in moto lists oldest first, EMR newest first (the search here does not depend on the order).
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.emr.models import emr_backends
from submitter import REPLACEMENT_IDLE_TIMEOUT_SECONDS
from promises import Delivery, FrozenClock, all_cluster_ids, assert_promises, invoke

from trigger_helpers import (
    SimulatedCrash,
    crash,
    BUCKET,
    CLAIM_LEASE_SECONDS,
    CLUSTER_TAG,
    DEFINITION_TAG,
    QUEUE_URL,
    FakeLambdaContext,
    REGION,
    TOPIC_ARN,
    base_environment,
    batch_records,
    claimed_by,
    create_cluster,
    failed_message_ids,
    manifest_objects,
    stack_definition,
    step_status_event,
    submitted_steps,
    transient_environment,
    upload,
)

DEFINITION_KEY = "artifacts/job-flow.json"
LEASE = timedelta(seconds=CLAIM_LEASE_SECONDS)




def frozen(handler, monkeypatch) -> FrozenClock:
    clock = FrozenClock()
    monkeypatch.setattr(handler.submitter, "utc_now", clock)
    return clock


def images(aws, *names: str, first_sequence: int = 1) -> dict[str, dict]:
    return {
        f"m-{name}": upload(aws.s3, f"incoming/{name}.png", b"png bytes of " + name.encode(), sequence=sequence)
        for sequence, name in enumerate(names, start=first_sequence)
    }


def keys(*names: str) -> list[str]:
    return [f"incoming/{name}.png" for name in names]


def crash_after_emr_accepted(handler, messages, monkeypatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(handler.claim_store, "record_submission", crash)
        with pytest.raises(SimulatedCrash):
            invoke(handler, messages)


def set_step_state(cluster_id: str, step_name: str, state: str) -> None:
    """What EMR does when it cancels a step (moto implements no cancellation)."""
    cluster = emr_backends[DEFAULT_ACCOUNT_ID][REGION].clusters[cluster_id]
    (step,) = [step for step in cluster.steps if step.name == step_name]
    step.state = state


# --- reliability review #2: a step cancelled before its batch was recorded --------------------------------------------


def test_a_step_cancelled_before_its_batch_was_recorded_is_retried_by_its_event(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    clock = frozen(persistent_handler, monkeypatch)
    messages = images(aws, "a", "b")
    crash_after_emr_accepted(persistent_handler, messages, monkeypatch)
    (first,) = submitted_steps(aws.emr, persistent_cluster)
    event = step_status_event(first["Name"], "CANCELLED", cluster_id=persistent_cluster)
    delivery = Delivery(persistent_handler, clock, LEASE)
    delivery.add({"event": event, **messages})  # the event and the uploads' messages come back together

    delivery.settle()

    names = [step["Name"] for step in submitted_steps(aws.emr, persistent_cluster)]
    assert names == [first["Name"], f"{first['Name']}-2"]
    assert_promises(aws, keys("a", "b"), ended_steps=frozenset({first["Name"]}))


def test_a_cancelled_step_found_by_crash_recovery_is_retried_not_dropped_as_a_duplicate(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    """The uploads' messages come back first: the step found by name is CANCELLED, so the batch is recorded and retried
    at once. The old code recorded it as submitted and dropped the uploads: nothing ever ran them."""
    clock = frozen(persistent_handler, monkeypatch)
    messages = images(aws, "a", "b")
    crash_after_emr_accepted(persistent_handler, messages, monkeypatch)
    (first,) = submitted_steps(aws.emr, persistent_cluster)
    set_step_state(persistent_cluster, first["Name"], "CANCELLED")
    clock.now += LEASE + timedelta(seconds=1)

    response = invoke(persistent_handler, messages)

    assert response == {"batchItemFailures": []}
    names = [step["Name"] for step in submitted_steps(aws.emr, persistent_cluster)]
    assert names == [first["Name"], f"{first['Name']}-2"]
    assert_promises(aws, keys("a", "b"), ended_steps=frozenset({first["Name"]}))


def test_an_event_for_an_unrecorded_batch_waits_out_the_lease_instead_of_being_dropped(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    clock = frozen(persistent_handler, monkeypatch)
    name = "mxnet-inference-20261201085959abcdef"
    event = step_status_event(name, "CANCELLED", cluster_id=persistent_cluster)
    event["time"] = clock.now.strftime("%Y-%m-%dT%H:%M:%SZ")

    during = invoke(persistent_handler, {"event": event})
    clock.now += LEASE + timedelta(seconds=1)
    after = invoke(persistent_handler, {"event": event})

    assert failed_message_ids(during) == ["event"]  # its invocation may still record it
    assert after == {"batchItemFailures": []}  # no batch will ever be recorded for it: nothing to retry
    assert submitted_steps(aws.emr, persistent_cluster) == []


# --- reliability review #5: crash recovery looks where the step may be ------------------------------------------------


def test_crash_recovery_after_a_deploy_finds_the_step_on_the_cluster_of_the_old_definition(
    aws, load_handler, monkeypatch
):
    """An invocation launched C1 with its step and died before recording it; a deploy then changed the definition tag,
    so the function would no longer choose C1. After the lease, the redelivery must find the step on C1, not launch C2
    and run the uploads again (the old code searched no cluster in this case)."""
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    old = load_handler(transient_environment(DEFINITION_KEY))
    clock = frozen(old, monkeypatch)
    messages = images(aws, "a", "b")
    crash_after_emr_accepted(old, messages, monkeypatch)
    (launched,) = all_cluster_ids(aws)
    new_tag = {**DEFINITION_TAG, "Value": "definition-2"}
    new_definition = stack_definition(Tags=[CLUSTER_TAG, new_tag])
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(new_definition).encode())
    new = load_handler(transient_environment(DEFINITION_KEY, CLUSTER_DEFINITION_TAG_VALUE=new_tag["Value"]))
    monkeypatch.setattr(new.submitter, "utc_now", clock)
    clock.now += LEASE + timedelta(seconds=1)

    response = invoke(new, messages)

    assert response == {"batchItemFailures": []}
    assert all_cluster_ids(aws) == [launched]
    (record,) = batch_records(aws.dynamodb).values()
    assert (record["state"], record["cluster_id"]) == ("submitted", launched)
    assert_promises(aws, keys("a", "b"))


def test_the_batch_record_names_the_target_cluster_before_the_step_is_sent(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    seen = []
    persistent_handler.emr_submit_client.meta.events.register(
        "before-call.emr.AddJobFlowSteps", lambda **_: seen.append(batch_records(aws.dynamodb))
    )

    invoke(persistent_handler, images(aws, "a"))

    ((record,),) = [list(records.values()) for records in seen]
    assert (record["state"], record["cluster_id"]) == ("submitting", persistent_cluster)


# --- reliability review #18: only the stack's clusters are described --------------------------------------------------


def test_only_clusters_named_like_the_stacks_are_described(aws, load_handler):
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    others = [create_cluster(aws.emr, keep_alive=True, tags=[], name=f"other-team-{index}") for index in range(5)]
    ours = create_cluster(aws.emr, keep_alive=True)
    handler = load_handler(transient_environment(DEFINITION_KEY))
    described = []
    handler.emr_client.meta.events.register(
        "provide-client-params.emr.DescribeCluster", lambda params, **_: described.append(params["ClusterId"])
    )

    response = invoke(handler, images(aws, "a"))

    assert response == {"batchItemFailures": []}
    assert set(described) == {ours} and not set(others) & set(described)
    assert len(submitted_steps(aws.emr, ours)) == 1


# --- reliability review #10 and #21: uploaded manifests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("objects", "reason"),
    [
        (["s3://%s/models/default/weights.bin" % BUCKET], "is outside the allowed prefixes"),
        (["s3://another-bucket/incoming/a.png"], "is not in the data bucket"),
        ("not a list", "must be a non-empty JSON list"),
    ],
)
def test_a_refused_uploaded_manifest_is_reported_with_its_key_and_reason(
    aws, persistent_cluster, persistent_handler, reports, objects, reason
):
    notification = upload(aws.s3, "incoming/run-7/list.json", json.dumps(objects).encode(), sequence=1)

    response = invoke(persistent_handler, {"m-manifest": notification})

    assert response == {"batchItemFailures": []}  # redelivery cannot fix it
    assert submitted_steps(aws.emr, persistent_cluster) == []
    (report,) = reports()
    assert f"s3://{BUCKET}/incoming/run-7/list.json" in report["Message"] and reason in report["Message"]


def test_an_uploaded_manifest_of_staged_images_runs_them_once(aws, persistent_cluster, persistent_handler):
    """Reliability review #4: the images a manifest lists live under staged/, which never notifies, so they run only in
    the manifest's step."""
    staged = [f"s3://{BUCKET}/staged/run-1/{index}.png" for index in range(3)]
    for uri in staged:
        aws.s3.put_object(Bucket=BUCKET, Key=uri.removeprefix(f"s3://{BUCKET}/"), Body=b"png")
    notification = upload(aws.s3, "incoming/run-1.json", json.dumps({"objects": staged}).encode(), sequence=1)

    response = invoke(persistent_handler, {"m-manifest": notification})

    assert response == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, step) == staged


def test_a_manifest_replaced_before_it_was_read_is_skipped(
    aws, persistent_cluster, persistent_handler, reports
):
    """Final review F5: the event announces the first upload; by the time the function reads the key, a second upload
    replaced it. The first event must not run the second manifest's entries (read with IfMatch on the announced
    ETag); it is skipped with nothing reported, and the second upload's own event runs the second manifest once."""
    key = "incoming/run-2/list.json"
    first = [f"s3://{BUCKET}/staged/run-2/first.png"]
    second = [f"s3://{BUCKET}/staged/run-2/second.png"]
    first_notification = upload(aws.s3, key, json.dumps(first).encode(), sequence=1)
    second_notification = upload(aws.s3, key, json.dumps(second).encode(), sequence=2)

    response = invoke(persistent_handler, {"m-first": first_notification})

    assert response == {"batchItemFailures": []}  # nothing is lost: the replacing upload has its own event
    assert submitted_steps(aws.emr, persistent_cluster) == []
    assert reports() == []
    assert invoke(persistent_handler, {"m-second": second_notification}) == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, step) == second


# --- final review F3: a takeover lists the cluster's steps afresh -----------------------------------------------------


def test_a_takeover_lists_the_steps_afresh(
    aws, persistent_cluster, persistent_handler, monkeypatch
):
    """Two CIFAR-10 files, each claimed by an invocation that died; after the lease one invocation handles both. Its
    search for the first file's step lists the cluster; the second file's step (sent by its dead invocation just
    before it died) becomes visible only after that listing, as EMR's listing may lag. The takeover of the second file
    must list again and find it, not send the file a second time (the per-invocation listing would miss it).

    What moto cannot show: how long EMR's ListSteps lags behind AddJobFlowSteps; the lag is placed by the test."""
    clock = frozen(persistent_handler, monkeypatch)
    messages = {
        f"m-{name}": upload(aws.s3, f"incoming/{name}.bin", b"cifar bytes of " + name.encode(), sequence=sequence)
        for sequence, name in enumerate(("a", "b"), start=1)
    }
    for message_id, body in messages.items():  # one invocation per file, each dying before it asked EMR
        with monkeypatch.context() as patch:
            patch.setattr(persistent_handler.submitter.StepSubmitter, "_add_step", crash)
            with pytest.raises(SimulatedCrash):
                invoke(persistent_handler, {message_id: body})
    dead_batch_b = claimed_by(aws.dynamodb)["incoming/b.bin"]
    dead_step_b = batch_records(aws.dynamodb)[dead_batch_b]["step_name"]
    late = []

    def step_b_becomes_visible(**_):
        """Runs when the takeover of a.bin sends its step: after the invocation listed the cluster for a.bin."""
        if not late:
            late.append(dead_step_b)
            step = {"Name": dead_step_b, "ActionOnFailure": "CONTINUE",
                    "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}  # fmt: skip
            aws.emr.add_job_flow_steps(JobFlowId=persistent_cluster, Steps=[step])

    persistent_handler.emr_submit_client.meta.events.register(
        "before-call.emr.AddJobFlowSteps", step_b_becomes_visible
    )
    clock.now += LEASE + timedelta(seconds=1)

    response = invoke(persistent_handler, messages)

    assert response == {"batchItemFailures": []}
    assert late == [dead_step_b]
    names = [step["Name"] for step in submitted_steps(aws.emr, persistent_cluster)]
    assert len(names) == 2 and names.count(dead_step_b) == 1  # a.bin's new step and b.bin's own one, nothing more
    assert batch_records(aws.dynamodb)[dead_batch_b]["state"] == "submitted"


def test_a_resumed_retry_lists_the_steps_afresh(aws, persistent_cluster, persistent_handler, monkeypatch):
    """The resume path of final review F3. Batch B's step was cancelled and the invocation retrying it as attempt 2
    died; a.bin's invocation died too. After the lease one invocation carries a.bin's message and B's step event
    again: a.bin's takeover lists the cluster first, and B's attempt-2 step (sent just before its invocation died)
    becomes visible only after that listing. Resuming the retry must list again and find it, not send attempt 2 a
    second time. What moto cannot show: how long EMR's listing lags; the lag is placed by the test."""
    clock = frozen(persistent_handler, monkeypatch)
    batch_b = images(aws, "b")
    invoke(persistent_handler, batch_b)
    (first,) = submitted_steps(aws.emr, persistent_cluster)
    event = {"event": step_status_event(first["Name"], "CANCELLED", cluster_id=persistent_cluster)}
    file_a = {"m-a": upload(aws.s3, "incoming/a.bin", b"cifar bytes of a", sequence=2)}
    for messages in (event, file_a):  # the retry's invocation and a.bin's both die before they ask EMR
        with monkeypatch.context() as patch:
            patch.setattr(persistent_handler.submitter.StepSubmitter, "_add_step", crash)
            with pytest.raises(SimulatedCrash):
                invoke(persistent_handler, messages)
    retry_name = f"{first['Name']}-2"
    late = []

    def retry_becomes_visible(**_):
        """Runs when a.bin's takeover sends its step: after the invocation listed the cluster for a.bin."""
        if not late:
            late.append(retry_name)
            step = {"Name": retry_name, "ActionOnFailure": "CONTINUE",
                    "HadoopJarStep": {"Jar": "command-runner.jar", "Args": ["true"]}}  # fmt: skip
            aws.emr.add_job_flow_steps(JobFlowId=persistent_cluster, Steps=[step])

    persistent_handler.emr_submit_client.meta.events.register("before-call.emr.AddJobFlowSteps", retry_becomes_visible)
    clock.now += LEASE + timedelta(seconds=1)

    response = invoke(persistent_handler, {**file_a, **event})

    assert response == {"batchItemFailures": []}
    assert late == [retry_name]
    names = [step["Name"] for step in submitted_steps(aws.emr, persistent_cluster)]
    assert names.count(retry_name) == 1 and len(names) == 3  # B's two attempts and a.bin's step
    batch_id = claimed_by(aws.dynamodb)["incoming/b.png"]
    assert (batch_records(aws.dynamodb)[batch_id]["state"], batch_records(aws.dynamodb)[batch_id]["attempt"]) == (
        "submitted", 2
    )


# --- aws-validity-review-2 #10: a persistent cluster that died is replaced -------------------------------------------


def test_a_persistent_stack_whose_cluster_ended_launches_one_from_its_definition(aws, load_handler):
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    aws.emr.terminate_job_flows(JobFlowIds=[cluster_id])
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    handler = load_handler(
        transient_environment(DEFINITION_KEY, CLUSTER_MODE="persistent", CLUSTER_ID=cluster_id)
    )

    first = invoke(handler, images(aws, "a"))
    second = invoke(handler, images(aws, "b", first_sequence=2))

    assert first == second == {"batchItemFailures": []}
    (replacement,) = [found for found in all_cluster_ids(aws) if found != cluster_id]
    assert len(submitted_steps(aws.emr, replacement)) == 2  # the second batch joined the replacement
    assert_promises(aws, keys("a", "b"))


@pytest.fixture(scope="module")
def persistent_stack(tmp_path_factory):
    """The stack in persistent mode, synthesized as `cdk synth` does: the function's environment and the shipped
    cluster definition (deploy-time values, such as role names, as placeholder strings)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))
    from infra_helpers import logical_id, shipped_job_flow, synthesize

    from infra.artifacts import JOB_FLOW_DEFINITION_NAME

    variant = synthesize(tmp_path_factory.mktemp("artifacts"), cluster_mode="persistent")
    function = variant.resources[logical_id(variant, variant.stack.trigger.function)]
    return function["Properties"]["Environment"]["Variables"], shipped_job_flow(variant, JOB_FLOW_DEFINITION_NAME)


def deployed_environment(synthesized: dict, values: dict[str, str]) -> dict[str, str]:
    """The synthesized environment with each CloudFormation reference replaced as a deployment would: ``values`` gives
    the deployed value of the variables that are a plain Ref (the same resource wherever else it is referenced)."""
    refs = {synthesized[name]["Ref"]: value for name, value in values.items()}

    def resolve(value):
        if isinstance(value, str):
            return value
        if set(value) == {"Ref"}:
            return refs[value["Ref"]]
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(resolve(part) for part in parts)
        raise AssertionError(f"no deployed value for {value}")

    return {name: resolve(value) for name, value in synthesized.items()}


def test_the_stacks_own_persistent_environment_and_definition_replace_an_ended_cluster(
    aws, load_handler, persistent_stack
):
    """Review 2, #10 with exactly what the stack sets: CLUSTER_ID beside JOB_FLOW_DEFINITION_KEY and the definition
    tag, and the definition the stack ships (a persistent one: kept alive, no idle timeout). The replacement is
    launched from it with the function's idle timeout (a cluster outside CloudFormation must end by itself), carries
    the definition tag, and the next batch finds it by that tag. What moto cannot show: EMR validating the real
    definition (moto accepts placeholder role and bucket names) and the replacement booting."""
    synthesized, definition = persistent_stack
    own = create_cluster(aws.emr, keep_alive=True, tags=definition["Tags"], name=definition["Name"])
    aws.emr.terminate_job_flows(JobFlowIds=[own])
    values = {"DATA_BUCKET": BUCKET, "CLUSTER_ID": own, "CLAIMS_TABLE": "trigger-claims",
              "NOTIFICATION_TOPIC_ARN": TOPIC_ARN, "UPLOAD_QUEUE_URL": QUEUE_URL}  # fmt: skip
    environment = deployed_environment(synthesized, values)
    aws.s3.put_object(Bucket=BUCKET, Key=environment["JOB_FLOW_DEFINITION_KEY"], Body=json.dumps(definition).encode())
    handler = load_handler(environment)
    launches = []
    handler.emr_submit_client.meta.events.register(
        "provide-client-params.emr.RunJobFlow", lambda params, **_: launches.append(params)
    )

    first = invoke(handler, images(aws, "a"))
    second = invoke(load_handler(environment), images(aws, "b", first_sequence=2))  # a later invocation

    assert first == second == {"batchItemFailures": []}
    (replacement,) = [found for found in all_cluster_ids(aws) if found != own]
    assert len(submitted_steps(aws.emr, replacement)) == 2
    (launch,) = launches
    assert launch["AutoTerminationPolicy"] == {"IdleTimeout": REPLACEMENT_IDLE_TIMEOUT_SECONDS}
    definition_tag = {"Key": environment["CLUSTER_DEFINITION_TAG_KEY"],
                      "Value": environment["CLUSTER_DEFINITION_TAG_VALUE"]}  # fmt: skip
    assert definition_tag in aws.emr.describe_cluster(ClusterId=replacement)["Cluster"]["Tags"]
    assert_promises(aws, keys("a", "b"), step_name_prefix=environment["STEP_NAME_PREFIX"])


def test_a_persistent_stack_without_a_definition_still_waits_for_its_cluster(
    aws, persistent_handler, persistent_cluster
):
    aws.emr.terminate_job_flows(JobFlowIds=[persistent_cluster])

    response = invoke(persistent_handler, images(aws, "a"))

    assert failed_message_ids(response) == ["m-a"]
    assert all_cluster_ids(aws) == [persistent_cluster]


# --- aws-validity-review-2 #14: a step an operator cancelled is not retried -------------------------------------------


def test_a_batch_an_operator_marked_cancelled_is_reported_not_retried(
    aws, persistent_cluster, persistent_handler, reports
):
    invoke(persistent_handler, images(aws, "a"))
    (batch_id,) = batch_records(aws.dynamodb)
    # The documented mark: one item in the claims table, written before (or after) cancelling the step.
    aws.dynamodb.put_item(TableName="trigger-claims", Item={"pk": {"S": f"cancel#{batch_id}"}})

    response = invoke(
        persistent_handler,
        {"event": step_status_event(f"mxnet-inference-{batch_id}", "CANCELLED", cluster_id=persistent_cluster)},
    )

    assert response == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1
    assert batch_records(aws.dynamodb)[batch_id]["state"] == "gave_up"
    (report,) = reports()
    assert report["Subject"] == f"Batch {batch_id} not run: its step was cancelled by an operator"


# --- aws-validity-review-2 #12: a batch refused for a passing reason comes back soon ----------------------------------


def test_records_of_a_batch_refused_for_a_passing_reason_come_back_after_a_minute(aws, load_handler):
    queue_url = aws.sqs.create_queue(QueueName="trigger-uploads", Attributes={"VisibilityTimeout": "780"})["QueueUrl"]
    assert queue_url.endswith("/trigger-uploads") and QUEUE_URL.endswith("/trigger-uploads")
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    aws.emr.terminate_job_flows(JobFlowIds=[cluster_id])  # ClusterNotAccepting: a passing reason
    handler = load_handler(base_environment(CLUSTER_ID=cluster_id, UPLOAD_QUEUE_URL=queue_url))
    for body in images(aws, "a", "b").values():
        aws.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
    received = aws.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    changes = []
    handler.sqs_client.meta.events.register(
        "provide-client-params.sqs.ChangeMessageVisibilityBatch", lambda params, **_: changes.append(params)
    )
    event = {"Records": [
        {"messageId": message["MessageId"], "receiptHandle": message["ReceiptHandle"], "body": message["Body"],
         "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "eventSource": "aws:sqs",
         "eventSourceARN": f"arn:aws:sqs:{REGION}:123456789012:trigger-uploads", "awsRegion": REGION}
        for message in received
    ]}  # fmt: skip

    response = handler.lambda_handler(event, FakeLambdaContext())

    assert len(response["batchItemFailures"]) == 2
    ((change,),) = [[params] for params in changes]
    assert sorted(entry["VisibilityTimeout"] for entry in change["Entries"]) == [60, 60]
    assert {entry["ReceiptHandle"] for entry in change["Entries"]} == {m["ReceiptHandle"] for m in received}
