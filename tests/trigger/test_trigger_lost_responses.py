"""Every state-changing call of the trigger, with its response lost after the server carried it out (issue 17).

Each case runs a scenario (new uploads, a launch, a refusal, a takeover after a crash, a retry, a given-up batch) with
one call's response lost (``lost_responses.py``: moto carries the request out, then botocore sees a timeout and, where
it may, sends the request again). SQS redelivery is modelled by delivering the failed messages again after the lease
(``promises.Delivery``). After each, the promises must hold (``promises.assert_promises``): every upload in exactly one
step that runs, or its batch reported as given up; no step twice; no cluster without a recorded batch's step.

What moto cannot show: EMR never ends a step in moto, so "cancelled" steps are announced by the event the test sends,
and the promise counts them as not running; moto evaluates no IAM; DynamoDB's and EMR's real rate of such faults.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from datetime import timedelta

import botocore.endpoint
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError
from lost_responses import lose_response
from promises import Delivery, FrozenClock, all_cluster_ids, assert_promises, invoke

from trigger_helpers import (
    SimulatedCrash,
    crash,
    BUCKET,
    CLAIM_LEASE_SECONDS,
    MAX_STEP_ATTEMPTS,
    TOPIC_ARN,
    base_environment,
    batch_records,
    claimed_by,
    create_cluster,
    stack_definition,
    step_status_event,
    transient_environment,
    upload,
)

DEFINITION_KEY = "artifacts/job-flow.json"
LEASE = timedelta(seconds=CLAIM_LEASE_SECONDS)


@pytest.fixture(autouse=True)
def no_botocore_backoff(monkeypatch):
    """botocore's retries after the lost response happen at once (its back-off sleep is skipped, not its logic)."""
    monkeypatch.setattr(botocore.endpoint, "time", types.SimpleNamespace(sleep=lambda seconds: None))


@dataclass
class World:
    aws: object
    handler: object
    clock: FrozenClock
    delivery: Delivery
    keys: list
    ended_steps: set


@pytest.fixture
def world_factory(aws, load_handler, monkeypatch):
    def make(mode: str) -> World:
        if mode == "persistent":
            handler = load_handler(base_environment(CLUSTER_ID=create_cluster(aws.emr, keep_alive=True)))
        else:
            aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
            handler = load_handler(transient_environment(DEFINITION_KEY))
        clock = FrozenClock()
        monkeypatch.setattr(handler.submitter, "utc_now", clock)
        return World(aws, handler, clock, Delivery(handler, clock, LEASE), [], set())

    return make


def upload_images(world: World, *names: str, first_sequence: int = 1) -> None:
    for sequence, name in enumerate(names, start=first_sequence):
        key = f"incoming/{name}.png"
        notification = upload(world.aws.s3, key, b"png bytes of " + name.encode(), sequence=sequence)
        world.keys.append(key)
        world.delivery.add({f"m-{name}": notification})


def end_step(world: World, batch_id: str, attempt: int, state: str = "CANCELLED") -> None:
    name = f"mxnet-inference-{batch_id}" + (f"-{attempt}" if attempt > 1 else "")
    cluster_id = batch_records(world.aws.dynamodb)[batch_id]["cluster_id"]
    world.ended_steps.add(name)
    world.delivery.add({f"event-{name}": step_status_event(name, state, cluster_id=cluster_id)})


def only_batch(world: World) -> str:
    (batch_id,) = batch_records(world.aws.dynamodb)
    return batch_id


# --- scenarios: each drives the function until its messages settle ----------------------------------------------------


def new_uploads_persistent(world: World) -> None:
    upload_images(world, "a", "b", "c")
    world.delivery.settle()


def new_uploads_transient(world: World) -> None:
    upload_images(world, "a", "b")
    world.delivery.settle()


def refused_then_fixed(world: World) -> None:
    """A definition of another deploy is refused before anything is sent: manifest, claims and record are deleted;
    once the definition is the deployed one, the redelivery runs the uploads."""
    stale = stack_definition(Tags=[{"Key": "inference-stack", "Value": "trigger-tests"}])
    world.aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stale).encode())
    upload_images(world, "a", "b")

    first = invoke(world.handler, world.delivery.pending)
    assert len(first["batchItemFailures"]) == 2
    world.aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    world.delivery.settle()


def takeover_after_a_crash(world: World, monkeypatch) -> None:
    upload_images(world, "a", "b")
    with monkeypatch.context() as patch:
        patch.setattr(world.handler.submitter.StepSubmitter, "_add_step", crash)
        with pytest.raises(SimulatedCrash):
            invoke(world.handler, world.delivery.pending)
    world.clock.now += LEASE + timedelta(seconds=1)
    world.delivery.settle()


def retried_once(world: World) -> None:
    upload_images(world, "a", "b")
    world.delivery.settle()
    end_step(world, only_batch(world), 1)
    world.delivery.settle()


def resumed_retry(world: World, monkeypatch) -> None:
    """A retry whose invocation died before EMR was asked, resumed after its lease by the redelivered event."""
    upload_images(world, "a", "b")
    world.delivery.settle()
    batch_id = only_batch(world)
    end_step(world, batch_id, 1)
    with monkeypatch.context() as patch:
        patch.setattr(world.handler.submitter.StepSubmitter, "_add_step", crash)
        with pytest.raises(SimulatedCrash):
            invoke(world.handler, world.delivery.pending)
    world.clock.now += LEASE + timedelta(seconds=1)
    world.delivery.settle()


def retry_refused_then_fixed(world: World) -> None:
    """Transient: the batch's cluster ended and its step was cancelled; the retry would launch from a definition of
    another deploy, so it is refused and undone (back to attempt 1); once the definition is right, it runs."""
    upload_images(world, "a", "b")
    world.delivery.settle()
    batch_id = only_batch(world)
    world.aws.emr.terminate_job_flows(JobFlowIds=[batch_records(world.aws.dynamodb)[batch_id]["cluster_id"]])
    stale = stack_definition(Tags=[{"Key": "inference-stack", "Value": "trigger-tests"}])
    world.aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stale).encode())
    end_step(world, batch_id, 1)
    first = invoke(world.handler, world.delivery.pending)
    assert len(first["batchItemFailures"]) == 1
    world.aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    world.delivery.settle()


def given_up(world: World) -> None:
    upload_images(world, "a", "b")
    world.delivery.settle()
    batch_id = only_batch(world)
    for attempt in range(1, MAX_STEP_ATTEMPTS + 1):
        end_step(world, batch_id, attempt)
        world.delivery.settle()


CASES = [
    # (case id, mode, scenario, operation, body_contains, skip)
    ("claim-put", "persistent", new_uploads_persistent, "dynamodb.PutItem", ('"upload#',), 1),
    ("batch-record-before-step", "persistent", new_uploads_persistent, "dynamodb.PutItem", ('"batch#',), 0),
    ("batch-record-submitted", "persistent", new_uploads_persistent, "dynamodb.UpdateItem", (":submitting",), 0),
    ("manifest-put", "persistent", new_uploads_persistent, "s3.PutObject", (), 0),
    ("add-job-flow-steps", "persistent", new_uploads_persistent, "emr.AddJobFlowSteps", (), 0),
    ("run-job-flow", "transient", new_uploads_transient, "emr.RunJobFlow", (), 0),
    ("claim-release", "transient", refused_then_fixed, "dynamodb.DeleteItem", ('"upload#',), 0),
    ("batch-record-forgotten", "transient", refused_then_fixed, "dynamodb.DeleteItem", ('"batch#',), 0),
    ("manifest-delete", "transient", refused_then_fixed, "s3.DeleteObject", (), 0),
    ("claim-take-over", "persistent", takeover_after_a_crash, "dynamodb.PutItem", (":previous_owner",), 0),
    ("retry-start", "persistent", retried_once, "dynamodb.UpdateItem", (":new_attempt", ":new_lease_owner"), 0),
    ("retry-add-job-flow-steps", "persistent", retried_once, "emr.AddJobFlowSteps", ("-2/",), 0),
    ("retry-finish", "persistent", retried_once, "dynamodb.UpdateItem", (":new_step_name",), 0),
    ("retry-resume", "persistent", resumed_retry, "dynamodb.UpdateItem", (":new_lease_owner",), 1),
    # The first update setting a new attempt starts the retry; the second undoes it.
    ("retry-undo", "transient", retry_refused_then_fixed, "dynamodb.UpdateItem", (":new_attempt",), 1),
    ("give-up-report", "persistent", given_up, "sns.Publish", (), 0),
    ("give-up-record", "persistent", given_up, "dynamodb.UpdateItem", ("gave_up",), 0),
]


@pytest.mark.parametrize(
    ("mode", "scenario", "operation", "body_contains", "skip"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_a_lost_response_breaks_no_promise(world_factory, monkeypatch, mode, scenario, operation, body_contains, skip):
    world = world_factory(mode)
    faults = lose_response(world.handler, operation, body_contains=body_contains, skip=skip)

    if scenario in (takeover_after_a_crash, resumed_retry):
        scenario(world, monkeypatch)
    else:
        scenario(world)

    assert faults.lost == 1, f"the scenario never made the call whose response is lost ({faults.matched} matched)"
    assert_promises(world.aws, world.keys, ended_steps=frozenset(world.ended_steps))


def test_a_lost_claim_response_is_read_as_this_batchs_own_claim_not_another_owner(world_factory):
    """Reliability review #1 (a): the re-sent claim fails its condition against the item it wrote itself. Read as
    "owned by a batch in flight", the upload was left out of the step and later dropped as a duplicate, for ever."""
    world = world_factory("persistent")
    lose_response(world.handler, "dynamodb.PutItem", body_contains=('"upload#', "incoming/b.png"))
    upload_images(world, "a", "b", "c")

    world.delivery.settle(rounds=1)

    assert world.delivery.rounds_used == 1  # nothing failed: b is in the first step
    assert_promises(world.aws, world.keys)


def test_a_lost_retry_start_response_still_submits_the_retry(world_factory):
    """Reliability review #1 (b): start_retry's update was applied, its response lost; the re-sent update fails its
    condition. Read as "another invocation started it", no step ran attempt 2 and the batch stayed resubmitting."""
    world = world_factory("persistent")
    upload_images(world, "a")
    world.delivery.settle()
    batch_id = only_batch(world)
    lose_response(world.handler, "dynamodb.UpdateItem", body_contains=(":new_attempt",))
    end_step(world, batch_id, 1)

    world.delivery.settle(rounds=1)

    assert batch_records(world.aws.dynamodb)[batch_id]["state"] == "submitted"
    assert batch_records(world.aws.dynamodb)[batch_id]["attempt"] == 2
    assert_promises(world.aws, world.keys, ended_steps=frozenset(world.ended_steps))


def test_a_lost_add_job_flow_steps_response_adds_one_step_not_two(world_factory):
    """Reliability review #3: botocore re-sent AddJobFlowSteps after EMR had accepted it (two identical steps)."""
    world = world_factory("persistent")
    faults = lose_response(world.handler, "emr.AddJobFlowSteps", times=3)
    upload_images(world, "a")

    world.delivery.settle(rounds=1)

    assert faults.matched == 1  # the step was found by name after the first lost answer: no second request
    assert_promises(world.aws, world.keys)


def test_a_lost_run_job_flow_response_launches_one_cluster_not_two(world_factory):
    world = world_factory("transient")
    faults = lose_response(world.handler, "emr.RunJobFlow", times=3)
    upload_images(world, "a")

    world.delivery.settle(rounds=1)

    assert faults.matched == 1
    assert len(all_cluster_ids(world.aws)) == 1
    assert_promises(world.aws, world.keys)


def test_throttling_after_an_unclear_answer_is_not_read_as_a_refusal(world_factory):
    """Reliability review #3, last point: an error left after the last attempt is a refusal only if every attempt was
    refused. Here the first attempt times out (EMR may have it) and every later one is throttled: the old code read the
    last throttling as a refusal, deleted the manifest and released the claims of a step EMR might run. Now they stay,
    and the batch's record still names the cluster for the redelivery to search."""
    world = world_factory("persistent")
    attempts = []

    def time_out_then_throttle(request, **_):
        attempts.append(request.url)
        if len(attempts) == 1:
            raise ReadTimeoutError(endpoint_url=request.url)
        # Raised, not returned: every before-send handler runs, so moto would carry out a request whose response a
        # hook returned. A raised error stops the request before moto, as EMR's throttling does.
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "AddJobFlowSteps")

    # Registered first: moto never sees these requests (nothing is carried out).
    events = world.handler.emr_submit_client.meta.events
    events.register_first("before-send.emr.AddJobFlowSteps", time_out_then_throttle)
    upload_images(world, "a", "b")

    response = invoke(world.handler, world.delivery.pending)

    assert len(response["batchItemFailures"]) == 2
    assert len(attempts) == world.handler.submitter.SUBMIT_ATTEMPTS
    (record,) = batch_records(world.aws.dynamodb).values()
    assert record["state"] == "submitting"
    assert world.aws.s3.head_object(Bucket=BUCKET, Key=record["manifest_key"])
    assert sorted(claimed_by(world.aws.dynamodb)) == ["incoming/a.png", "incoming/b.png"]


def test_the_report_of_a_given_up_batch_names_it(world_factory, aws):
    queue_url = aws.sqs.create_queue(QueueName="reports")["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.sns.subscribe(TopicArn=TOPIC_ARN, Protocol="sqs", Endpoint=queue_arn)
    world = world_factory("persistent")
    lose_response(world.handler, "sns.Publish")

    given_up(world)

    messages = aws.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
    batch_id = only_batch(world)
    # At least once: a lost response re-sends the report (the record is marked only after it was published).
    assert messages and all(batch_id in json.loads(message["Body"])["Subject"] for message in messages)


def test_a_retry_names_the_cluster_it_is_sent_to_before_it_is_sent(world_factory):
    """Final review F1: start_retry and resume_retry kept the previous attempt's cluster in the batch record, so a
    retry sent to another (older) accepting cluster, whose invocation then died, was searched for in the wrong place
    and sent again. Now both name the retry's target, as record_intent does for a first attempt."""
    world = world_factory("persistent")
    upload_images(world, "a")
    world.delivery.settle()
    batch_id = only_batch(world)
    store = world.handler.claim_store
    record = store.batch(batch_id)

    assert store.start_retry(record, now=world.clock(), token="invocation-1", cluster_id="j-RETRYTARGET")
    assert batch_records(world.aws.dynamodb)[batch_id]["cluster_id"] == "j-RETRYTARGET"
    resumed = store.batch(batch_id)
    later = world.clock() + store.lease + timedelta(seconds=1)
    assert store.resume_retry(resumed, now=later, token="invocation-2", cluster_id="")
    assert batch_records(world.aws.dynamodb)[batch_id]["cluster_id"] == ""
