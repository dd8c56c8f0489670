"""Two function instances at the same moment, on threads, against one moto server on loopback (issue 17).

Each instance is its own module (clients, claim store, batch processor), as two Lambda execution environments are. The
server handles one request at a time (``serialized_moto_server_url``), which is what DynamoDB and S3 promise for each
conditional request; the requests of the two instances interleave freely. After each race the promises of
``promises.assert_promises`` must hold.

What this cannot show: real DynamoDB and EMR under load, EMR's ordering of ListClusters (newest first; moto lists oldest
first), and steps that end (moto never ends one, so a cancelled step is announced by the event the test sends).
"""

from __future__ import annotations

import json
import sys
import threading

import pytest
from promises import ACCEPTING_STATES, all_cluster_ids, assert_promises, invoke

from trigger_helpers import (
    BUCKET,
    CLUSTER_TAG,
    DEFINITION_TAG,
    aws_clients,
    base_environment,
    batch_records,
    create_cluster,
    create_function_resources,
    failed_message_ids,
    import_trigger_handler,
    stack_definition,
    step_status_event,
    submitted_steps,
    transient_environment,
    upload,
)

DEFINITION_KEY = "artifacts/job-flow.json"
SECOND = "handler_second_instance"


@pytest.fixture
def server_aws(serialized_moto_server_url):
    aws = aws_clients()
    create_function_resources(aws)
    yield aws
    sys.modules.pop(SECOND, None)


def second_instance(monkeypatch, environment: dict[str, str]):
    """Another execution environment of the function, made with ``environment`` (e.g. after a deploy)."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    instance = import_trigger_handler(SECOND, forget_siblings=False)
    return instance


def images(aws, prefix: str, count: int, *, first_sequence: int = 1) -> dict[str, dict]:
    return {
        f"{prefix}-{index}": upload(
            aws.s3, f"incoming/{prefix}-{index:03d}.png", b"png %s %d" % (prefix.encode(), index), sequence=sequence
        )
        for index, sequence in enumerate(range(first_sequence, first_sequence + count))
    }


def uploaded_keys(aws) -> list[str]:
    return [item["Key"] for item in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="incoming/")["Contents"]]


def run_together(*calls) -> list:
    """Start every call at the same moment, each on its own thread; return their results (errors re-raised here)."""
    start = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(index, call):
        start.wait()
        try:
            results[index] = call()
        except BaseException as error:  # reported on the test's thread
            results[index] = error

    threads = [threading.Thread(target=run, args=(index, call)) for index, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def redeliver_until_settled(handler, messages: dict[str, dict], responses: list[dict]) -> None:
    """Deliver again, to one instance, every message any response failed (the claims' holders have finished)."""
    failed = {message_id for response in responses for message_id in failed_message_ids(response)}
    for _ in range(3):
        if not failed:
            return
        response = invoke(handler, {message_id: messages[message_id] for message_id in sorted(failed)})
        failed = set(failed_message_ids(response))
    assert not failed


def test_two_instances_racing_on_the_same_uploads_in_transient_mode_run_each_once(
    server_aws, load_handler, monkeypatch
):
    """Both instances get the same messages (SQS delivered them twice) and find no cluster: each may launch one, but
    no upload runs twice and no launched cluster is left without a recorded batch."""
    aws = server_aws
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    first = load_handler(transient_environment(DEFINITION_KEY))
    second = second_instance(monkeypatch, transient_environment(DEFINITION_KEY))
    messages = images(aws, "shared", 30)

    responses = run_together(lambda: invoke(first, messages), lambda: invoke(second, messages))
    redeliver_until_settled(first, messages, responses)

    assert_promises(aws, uploaded_keys(aws))


def test_a_redelivered_step_event_during_its_retry_starts_one_retry(server_aws, load_handler, monkeypatch):
    """The same CANCELLED event reaches both instances at once (at-least-once delivery) while the uploads' duplicate
    events arrive too: one retry step, and the uploads run once (the cancelled attempt does not run)."""
    aws = server_aws
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    first = load_handler(base_environment(CLUSTER_ID=cluster_id))
    second = second_instance(monkeypatch, base_environment(CLUSTER_ID=cluster_id))
    messages = images(aws, "a", 5)
    assert invoke(first, messages) == {"batchItemFailures": []}
    (batch_id,) = batch_records(aws.dynamodb)
    cancelled = f"mxnet-inference-{batch_id}"
    event = {"event": step_status_event(cancelled, "CANCELLED", cluster_id=cluster_id)}

    responses = run_together(lambda: invoke(first, {**event, **messages}), lambda: invoke(second, event))
    redeliver_until_settled(first, {**event, **messages}, responses)

    assert [step["Name"] for step in submitted_steps(aws.emr, cluster_id)] == [cancelled, f"{cancelled}-2"]
    assert batch_records(aws.dynamodb)[batch_id]["attempt"] == 2
    assert_promises(aws, uploaded_keys(aws), ended_steps=frozenset({cancelled}))


def test_a_deploy_that_changes_the_definition_while_a_batch_is_in_flight_loses_and_repeats_nothing(
    server_aws, load_handler, monkeypatch
):
    """Instance A (deployed with definition 1) is claiming its batch when the deploy replaces the definition in S3 and
    a new instance B (definition 2) starts on other uploads. A must not launch from a definition it was not deployed
    with: its batch is refused and released, and its redelivery (to B) runs it on definition 2's cluster."""
    aws = server_aws
    aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=json.dumps(stack_definition()).encode())
    old = load_handler(transient_environment(DEFINITION_KEY))
    new_tag = {**DEFINITION_TAG, "Value": "definition-2"}
    new = second_instance(
        monkeypatch, transient_environment(DEFINITION_KEY, CLUSTER_DEFINITION_TAG_VALUE=new_tag["Value"])
    )
    new_definition = json.dumps(stack_definition(Tags=[CLUSTER_TAG, new_tag])).encode()
    deployed = threading.Event()

    def deploy_while_a_claims(**_):
        if not deployed.is_set():
            aws.s3.put_object(Bucket=BUCKET, Key=DEFINITION_KEY, Body=new_definition)
            deployed.set()

    old.dynamodb_client.meta.events.register("before-call.dynamodb.PutItem", deploy_while_a_claims)
    old_messages = images(aws, "old", 20)
    new_messages = images(aws, "new", 20, first_sequence=100)

    def new_after_the_deploy():
        assert deployed.wait(timeout=60)
        return invoke(new, new_messages)

    responses = run_together(lambda: invoke(old, old_messages), new_after_the_deploy)
    redeliver_until_settled(new, {**old_messages, **new_messages}, responses)

    assert_promises(aws, uploaded_keys(aws))
    for cluster_id in all_cluster_ids(aws, ACCEPTING_STATES):
        tags = aws.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Tags"]
        assert new_tag in tags, f"cluster {cluster_id} was launched from the old definition after the deploy"
