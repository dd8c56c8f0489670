"""The trigger's promises, checked against what moto holds after a scenario, and a driver that redelivers as SQS would.

The promises (README, "How an upload becomes a run"):
- every upload is in exactly one step that runs, or its batch is reported as given up;
- no step is submitted twice (step names are unique: one per batch and attempt);
- no orphan cluster: every running cluster runs a step of a recorded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from trigger_helpers import (
    BUCKET,
    FakeLambdaContext,
    batch_records,
    claimed_by,
    failed_message_ids,
    manifest_objects,
    sqs_event,
    submitted_steps,
)

ALL_CLUSTER_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING", "TERMINATED",
                      "TERMINATED_WITH_ERRORS"]  # fmt: skip
ACCEPTING_STATES = ALL_CLUSTER_STATES[:4]
# The STEP_NAME_PREFIX of base_environment (trigger_helpers).
STEP_PREFIX = "mxnet-inference-"


class FrozenClock:
    """The function's clock (``submitter.utc_now``), moved by hand to cross leases."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def all_cluster_ids(aws, states=ALL_CLUSTER_STATES) -> list[str]:
    clusters = []
    for page in aws.emr.get_paginator("list_clusters").paginate(ClusterStates=list(states)):
        clusters.extend(cluster["Id"] for cluster in page["Clusters"])
    return sorted(clusters)


def invoke(handler, messages: dict[str, dict], *, receive_count: int = 1) -> dict:
    """One invocation with the given SQS messages (message id -> body)."""
    event = sqs_event(list(messages.values()))
    for record, message_id in zip(event["Records"], messages):
        record["messageId"] = message_id
        record["attributes"]["ApproximateReceiveCount"] = str(receive_count)
    return handler.lambda_handler(event, FakeLambdaContext())


@dataclass
class Delivery:
    """Messages still on the queue, delivered until none fails (or ``rounds`` runs out), as SQS redelivers."""

    handler: object
    clock: FrozenClock
    lease: timedelta
    pending: dict[str, dict] = field(default_factory=dict)
    rounds_used: int = 0

    def add(self, messages: dict[str, dict]) -> None:
        self.pending.update(messages)

    def settle(self, rounds: int = 6) -> None:
        for round_number in range(1, rounds + 1):
            if not self.pending:
                return
            response = invoke(self.handler, self.pending, receive_count=round_number)
            failed = set(failed_message_ids(response))
            self.pending = {message_id: body for message_id, body in self.pending.items() if message_id in failed}
            self.rounds_used = round_number
            # The redelivery comes after the visibility timeout, which outlasts every lease.
            self.clock.now += self.lease + timedelta(seconds=1)
        assert not self.pending, f"still failing after {rounds} deliveries: {sorted(self.pending)}"


def assert_promises(
    aws, uploaded_keys: list[str], *, ended_steps: frozenset[str] = frozenset(), step_name_prefix: str = STEP_PREFIX
) -> None:
    """The promises over every cluster moto knows. ``ended_steps``: step names the test reported as cancelled or
    interrupted (moto cannot end a step), so they do not run. ``step_name_prefix``: the environment's
    STEP_NAME_PREFIX."""
    steps = [(cluster_id, step) for cluster_id in all_cluster_ids(aws) for step in submitted_steps(aws.emr, cluster_id)]
    names = [step["Name"] for _, step in steps]
    assert len(names) == len(set(names)), f"a step was submitted twice: {sorted(names)}"
    records = batch_records(aws.dynamodb)
    given_up = {batch_id for batch_id, record in records.items() if record["state"] == "gave_up"}
    runs: dict[str, int] = {}
    for _, step in steps:
        if step["Name"] in ended_steps:
            continue
        for uri in manifest_objects(aws.s3, step):
            runs[uri] = runs.get(uri, 0) + 1
    owners = claimed_by(aws.dynamodb)
    for key in uploaded_keys:
        uri = f"s3://{BUCKET}/{key}"
        if owners.get(key) in given_up:
            assert runs.get(uri, 0) == 0, f"{key} of a given-up batch still runs"
            continue
        assert runs.get(uri, 0) == 1, f"{key} runs {runs.get(uri, 0)} times; every run: {runs}"
        assert records[owners[key]]["state"] == "submitted", f"{key}'s batch is {records[owners[key]]}"
    # An orphan costs money: a running cluster no recorded batch uses (a second launch for one batch, say).
    for cluster_id in all_cluster_ids(aws, ACCEPTING_STATES):
        cluster_steps = [step["Name"] for found_cluster, step in steps if found_cluster == cluster_id]
        recorded = [name for name in cluster_steps if any(name.startswith(f"{step_name_prefix}{b}") for b in records)]
        assert recorded, f"cluster {cluster_id} runs no step of a recorded batch (steps: {cluster_steps})"
