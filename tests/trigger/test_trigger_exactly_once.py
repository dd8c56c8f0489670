"""Exactly once per upload: duplicates in later invocations, crashes, regrouped redeliveries, leases, concurrency.

moto serves S3, EMR, SQS and DynamoDB (the claims table). A "crash" is an exception that no handler catches (a
BaseException, as when the runtime kills the process): the invocation returns no response, so SQS would deliver its
records again, and the test delivers them again, grouped differently. The clock is frozen and moved by hand to cross the
claim lease. What moto cannot prove: DynamoDB's atomicity of one conditional write (moto's threaded server does not
provide it; the concurrent tests serialize its requests to model it, see ``serialized_moto_server_url``), and EMR running
or refusing anything (its steps never leave PENDING/RUNNING).
"""

from __future__ import annotations

import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from trigger_helpers import (
    SimulatedCrash,
    crash,
    BUCKET,
    CLAIM_LEASE_SECONDS,
    FakeLambdaContext,
    aws_clients,
    base_environment,
    batch_records,
    claimed_by,
    count_requests,
    create_cluster,
    create_function_resources,
    failed_message_ids,
    import_trigger_handler,
    manifest_objects,
    runs_per_object,
    sqs_event,
    submitted_steps,
    upload,
)


class FrozenClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(persistent_handler, monkeypatch) -> FrozenClock:
    frozen = FrozenClock()
    monkeypatch.setattr(persistent_handler.submitter, "utc_now", frozen)
    return frozen


def uploads(aws, *names: str, first_sequence: int = 1) -> list[dict]:
    """Upload images ``incoming/<name>.png`` and return S3's notification for each (real ETags)."""
    return [
        upload(aws.s3, f"incoming/{name}.png", b"png bytes of %s" % name.encode(), sequence=sequence)
        for sequence, name in enumerate(names, start=first_sequence)
    ]


def invoke(handler, messages: dict[str, dict]) -> dict:
    """One invocation with the given SQS messages (message id -> S3 notification)."""
    event = sqs_event(list(messages.values()))
    for record, message_id in zip(event["Records"], messages):
        record["messageId"] = message_id
    return handler.lambda_handler(event, FakeLambdaContext())


def uri(name: str) -> str:
    return f"s3://{BUCKET}/incoming/{name}.png"


def dropped_lines(caplog) -> list[tuple[str, list[str]]]:
    """(batch id, keys) of every "Duplicate uploads dropped" log line (Powertools passes `extra` to the log record)."""
    return [
        (record.batch_id, record.keys) for record in caplog.records if record.getMessage() == "Duplicate uploads dropped"
    ]


NO_FAILURES = {"batchItemFailures": []}


# --- duplicates in later invocations ----------------------------------------------------------------------------------


def test_duplicate_of_an_upload_in_a_later_invocation_is_dropped_with_a_log_line_naming_its_batch(
    aws, persistent_cluster, persistent_handler, caplog
):
    a, b = uploads(aws, "a", "b")
    invoke(persistent_handler, {"m-a": a, "m-b": b})
    owner = claimed_by(aws.dynamodb)["incoming/a.png"]
    caplog.clear()

    response = invoke(persistent_handler, {"m-a-again": a})  # S3 sent A's event a second time, in another message

    assert response == NO_FAILURES
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, step) == [uri("a"), uri("b")]
    assert dropped_lines(caplog) == [(owner, ["incoming/a.png"])]


def test_duplicate_together_with_new_uploads_runs_only_the_new_ones(aws, persistent_cluster, persistent_handler):
    a, b, c, d = uploads(aws, "a", "b", "c", "d")
    invoke(persistent_handler, {"m-a": a, "m-b": b})

    response = invoke(persistent_handler, {"m-c": c, "m-a-again": a, "m-d": d})

    assert response == NO_FAILURES
    first, second = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, second) == [uri("c"), uri("d")]
    assert runs_per_object(aws, persistent_cluster) == {uri(name): 1 for name in "abcd"}


def test_the_same_bytes_uploaded_again_are_a_new_run(aws, persistent_cluster, persistent_handler):
    (first_upload,) = uploads(aws, "a")
    invoke(persistent_handler, {"m-1": first_upload})

    (second_upload,) = uploads(aws, "a", first_sequence=50)  # same key and bytes: a new sequencer
    response = invoke(persistent_handler, {"m-2": second_upload})

    assert response == NO_FAILURES
    assert runs_per_object(aws, persistent_cluster) == {uri("a"): 2}


# --- crashes and regrouped redeliveries -------------------------------------------------------------------------------


def test_records_of_a_submitted_invocation_that_returned_nothing_come_back_regrouped_and_run_once(
    aws, persistent_cluster, persistent_handler
):
    a, b, c, d, e = uploads(aws, "a", "b", "c", "d", "e")
    invoke(persistent_handler, {"m-a": a, "m-b": b, "m-c": c})  # submitted and recorded; the response never arrived

    regrouped = [invoke(persistent_handler, {"m-a": a, "m-d": d}), invoke(persistent_handler, {"m-b": b, "m-c": c, "m-e": e})]

    assert regrouped == [NO_FAILURES, NO_FAILURES]
    assert runs_per_object(aws, persistent_cluster) == {uri(name): 1 for name in "abcde"}
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 3


def test_crash_after_emr_accepted_the_step_but_before_the_record_is_found_by_step_name(
    aws, persistent_cluster, persistent_handler, monkeypatch, clock
):
    a, b, c = uploads(aws, "a", "b", "c")
    with monkeypatch.context() as patch:
        patch.setattr(persistent_handler.claim_store, "record_submission", crash)
        with pytest.raises(SimulatedCrash):
            invoke(persistent_handler, {"m-a": a, "m-b": b})
    (crashed_step,) = submitted_steps(aws.emr, persistent_cluster)
    (crashed_record,) = batch_records(aws.dynamodb).values()
    assert (crashed_record["state"], crashed_record["cluster_id"]) == ("submitting", persistent_cluster)

    regrouped = [invoke(persistent_handler, {"m-a": a, "m-c": c}), invoke(persistent_handler, {"m-b": b})]

    assert regrouped == [NO_FAILURES, NO_FAILURES]  # within the lease: the step is found by name, no need to wait
    assert runs_per_object(aws, persistent_cluster) == {uri(name): 1 for name in "abc"}
    owner = claimed_by(aws.dynamodb)["incoming/a.png"]
    assert batch_records(aws.dynamodb)[owner]["step_name"] == crashed_step["Name"]


def die_after_claiming(aws, handler, monkeypatch, messages: dict[str, dict]) -> str:
    """Run an invocation that dies after claiming its uploads, before EMR is asked; return its batch id."""
    with monkeypatch.context() as patch:
        patch.setattr(handler.submitter.StepSubmitter, "_add_step", crash)
        with pytest.raises(SimulatedCrash):
            invoke(handler, messages)
    (owner,) = set(claimed_by(aws.dynamodb).values())
    return owner


def test_claims_of_an_invocation_that_died_before_submitting_are_taken_over_only_after_the_lease(
    aws, persistent_cluster, persistent_handler, monkeypatch, clock
):
    a, b = uploads(aws, "a", "b")
    dead_owner = die_after_claiming(aws, persistent_handler, monkeypatch, {"m-a": a, "m-b": b})
    claimed_at = clock.now

    clock.now = claimed_at + timedelta(seconds=CLAIM_LEASE_SECONDS) - timedelta(seconds=1)
    before = invoke(persistent_handler, {"m-a": a, "m-b": b})  # SQS delivers the same messages again

    assert failed_message_ids(before) == ["m-a", "m-b"]
    assert submitted_steps(aws.emr, persistent_cluster) == []
    assert set(claimed_by(aws.dynamodb).values()) == {dead_owner}

    clock.now = claimed_at + timedelta(seconds=CLAIM_LEASE_SECONDS) + timedelta(seconds=1)
    after = invoke(persistent_handler, {"m-a": a, "m-b": b})

    assert after == NO_FAILURES
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, step) == [uri("a"), uri("b")]
    (new_owner,) = set(claimed_by(aws.dynamodb).values())
    assert new_owner != dead_owner and step["Name"].endswith(new_owner)


def test_a_duplicate_in_another_message_is_dropped_while_the_dead_claims_own_messages_bring_it_back(
    aws, persistent_cluster, persistent_handler, monkeypatch, clock, caplog
):
    a, b, c = uploads(aws, "a", "b", "c")
    dead_owner = die_after_claiming(aws, persistent_handler, monkeypatch, {"m-a": a, "m-b": b})
    claimed_at = clock.now
    caplog.clear()

    during_lease = invoke(persistent_handler, {"m-a-again": a, "m-c": c})

    assert during_lease == NO_FAILURES
    assert dropped_lines(caplog) == [(dead_owner, ["incoming/a.png"])]
    clock.now = claimed_at + timedelta(seconds=CLAIM_LEASE_SECONDS) + timedelta(seconds=1)
    assert invoke(persistent_handler, {"m-a": a, "m-b": b}) == NO_FAILURES
    assert runs_per_object(aws, persistent_cluster) == {uri(name): 1 for name in "abc"}


# --- concurrent invocations -------------------------------------------------------------------------------------------


@pytest.fixture
def two_function_instances(serialized_moto_server_url, load_handler):
    """Two instances of the function (each its own module: clients, claim store, batch processor) on one moto server."""
    aws = aws_clients()
    create_function_resources(aws)
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    first = load_handler(base_environment(CLUSTER_ID=cluster_id))
    second = import_trigger_handler("handler_second_instance", forget_siblings=False)
    yield aws, cluster_id, first, second
    sys.modules.pop("handler_second_instance", None)


def invoke_concurrently(handlers_and_messages) -> list[dict]:
    """Start every invocation at the same moment, each on its own thread; return their responses in order."""
    start = threading.Barrier(len(handlers_and_messages))
    responses: list[dict | BaseException] = [None] * len(handlers_and_messages)

    def run(index, handler, messages):
        start.wait()
        try:
            responses[index] = invoke(handler, messages)
        except BaseException as error:  # reported below, on the test's thread
            responses[index] = error

    threads = [
        threading.Thread(target=run, args=(index, handler, messages))
        for index, (handler, messages) in enumerate(handlers_and_messages)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for response in responses:
        if isinstance(response, BaseException):
            raise response
    return responses


OVERLAP = 60


def overlapping_uploads(aws) -> tuple[list[dict], list[dict], list[dict]]:
    """Uploads only the first invocation gets, uploads both get, uploads only the second gets. The shared ones sort
    first, so both invocations claim them at the same moment (claims go in key order) and race for each one."""
    return (
        uploads(aws, *(f"1-first-{index:03d}" for index in range(OVERLAP))),
        uploads(aws, *(f"0-shared-{index:03d}" for index in range(OVERLAP)), first_sequence=1000),
        uploads(aws, *(f"2-second-{index:03d}" for index in range(OVERLAP)), first_sequence=2000),
    )


def claim_at_the_same_moment(*handlers) -> None:
    """Hold each function instance's first claim until every instance reached its first claim, so their claim phases
    overlap (they otherwise drift apart by their EMR calls). Only the start is aligned; the interleaving is free."""
    reached = [threading.Event() for _ in handlers]

    def hold(index):
        def wait_for_the_others(**_):
            reached[index].set()
            for event in reached:
                assert event.wait(timeout=30), "another instance never reached its claims"

        return wait_for_the_others

    for index, handler in enumerate(handlers):
        handler.dynamodb_client.meta.events.register("before-parameter-build.dynamodb.PutItem", hold(index))


def every_uploaded_uri(aws) -> set[str]:
    return {f"s3://{BUCKET}/{item['Key']}" for item in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="incoming/")["Contents"]}


def shared_uris_per_step(aws, cluster_id) -> list[int]:
    return sorted(
        sum("/0-shared-" in uri for uri in manifest_objects(aws.s3, step)) for step in submitted_steps(aws.emr, cluster_id)
    )


def test_concurrent_invocations_with_duplicate_events_put_each_upload_in_exactly_one_step(two_function_instances):
    aws, cluster_id, first, second = two_function_instances
    only_first, shared, only_second = overlapping_uploads(aws)
    # S3 notified the shared uploads twice: each invocation got one copy, in messages of its own.
    first_messages = {f"first-{index}": body for index, body in enumerate(shared + only_first)}
    second_messages = {f"second-{index}": body for index, body in enumerate(shared + only_second)}
    claim_at_the_same_moment(first, second)

    responses = invoke_concurrently([(first, first_messages), (second, second_messages)])

    assert responses == [NO_FAILURES, NO_FAILURES]
    assert runs_per_object(aws, cluster_id) == dict.fromkeys(every_uploaded_uri(aws), 1)
    assert sum(shared_uris_per_step(aws, cluster_id)) == OVERLAP


def test_concurrent_invocations_of_the_same_messages_fail_what_they_lost_and_the_redelivery_runs_nothing_twice(
    two_function_instances,
):
    aws, cluster_id, first, second = two_function_instances
    only_first, shared, only_second = overlapping_uploads(aws)
    shared_messages = {f"shared-{index}": body for index, body in enumerate(shared)}
    # SQS handed the shared messages to both pollers (at-least-once delivery of the same messages).
    first_messages = {**shared_messages, **{f"first-{index}": body for index, body in enumerate(only_first)}}
    second_messages = {**shared_messages, **{f"second-{index}": body for index, body in enumerate(only_second)}}
    claim_at_the_same_moment(first, second)

    responses = invoke_concurrently([(first, first_messages), (second, second_messages)])
    lost = [message_id for response in responses for message_id in failed_message_ids(response)]
    redelivery = invoke(first, {message_id: shared_messages[message_id] for message_id in lost}) if lost else NO_FAILURES

    assert set(lost) <= set(shared_messages)  # only a shared message can meet a claim held by the other invocation
    assert redelivery == NO_FAILURES
    assert runs_per_object(aws, cluster_id) == dict.fromkeys(every_uploaded_uri(aws), 1)


# --- cost --------------------------------------------------------------------------------------------------------------


def test_requests_grow_by_one_conditional_write_per_upload_and_a_duplicate_costs_no_more(
    aws, persistent_cluster, persistent_handler
):
    uploads_count = 200
    notifications = uploads(aws, *(f"img-{index:04d}" for index in range(uploads_count)))
    messages = {f"m-{index}": body for index, body in enumerate(notifications)}
    counts = count_requests(persistent_handler)

    invoke(persistent_handler, messages)
    first = dict(counts)
    counts.clear()
    invoke(persistent_handler, messages)  # every record again

    assert first == {
        "dynamodb.PutItem": uploads_count + 1,  # a claim per upload, then the batch record naming the target cluster
        "dynamodb.UpdateItem": 1,  # the batch record: submitted
        "s3.PutObject": 1,  # the manifest
        "emr.DescribeCluster": 1,
        "emr.ListSteps": 1,
        "emr.AddJobFlowSteps": 1,
    }
    assert counts == {
        "dynamodb.PutItem": uploads_count,  # each refused, returning its owner
        "dynamodb.GetItem": 1,  # the owner's batch record, once for all its uploads
        "emr.DescribeCluster": 1,
        "emr.ListSteps": 1,
    }
