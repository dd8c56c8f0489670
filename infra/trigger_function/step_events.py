"""Pure functions: an SQS message body carrying an EventBridge "EMR Step Status Change" event -> the step that ended.

The stack's rule sends this stack's steps that end CANCELLED or INTERRUPTED to the upload queue, so the function can run
their batch again (see ``submitter.StepSubmitter.retry``). No AWS calls here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import runs

EVENT_SOURCE = "aws.emr"
EVENT_DETAIL_TYPE = "EMR Step Status Change"
# States in which a step ended without having run to its own end: the batch is run again, up to MAX_STEP_ATTEMPTS.
# COMPLETED and FAILED are final (a failed job fails again on the same inputs); they are announced, not retried.
RETRIED_STATES = ("CANCELLED", "INTERRUPTED")


@dataclass(frozen=True)
class StepEnded:
    """One of this stack's steps that ended in a retried state."""

    batch_id: str
    attempt: int
    state: str
    step_id: str
    cluster_id: str
    time: datetime | None = None  # when EventBridge saw the change (the event's "time"), None when absent or unreadable


def parse_step_event(body: str, *, step_name_prefix: str) -> StepEnded | None:
    """The step an EMR step-status event announces, or None when ``body`` is not such an event.

    An event about another stack's step, or in a state that is not retried, is None as well: the rule should not send
    one, and running nothing is the safe answer.
    """
    try:
        event = json.loads(body)
    except (json.JSONDecodeError, TypeError):
        return None
    if not isinstance(event, dict) or event.get("source") != EVENT_SOURCE:
        return None
    if event.get("detail-type") != EVENT_DETAIL_TYPE or not isinstance(event.get("detail"), dict):
        return None
    detail = event["detail"]
    name = detail.get("name")
    if detail.get("state") not in RETRIED_STATES or not isinstance(name, str) or not name.startswith(step_name_prefix):
        return None
    parsed = runs.parse_run_id(name[len(step_name_prefix) :])
    if parsed is None:
        return None
    batch_id, attempt = parsed
    return StepEnded(
        batch_id=batch_id,
        attempt=attempt,
        state=detail["state"],
        step_id=str(detail.get("stepId", "")),
        cluster_id=str(detail.get("clusterId", "")),
        time=_event_time(event.get("time")),
    )


def _event_time(text) -> datetime | None:
    """EventBridge's ISO 8601 UTC time ("2026-11-25T10:00:00Z")."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None

