"""The names of a batch and of each attempt to run it: batch ids, run ids, step names, manifest and result keys.

A *batch* is a set of uploads that one invocation claimed; its id is made once, when the claims are written, and never
reused. A *run* is one attempt to run the batch as an EMR step. The first attempt's run id is the batch id; a retried
attempt (its step was cancelled or interrupted) appends ``-<attempt>``, so each attempt writes its own results folder and
never meets the partial output of the attempt before it (the job refuses an existing --output without --overwrite).
All attempts share the batch's manifest.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

from trigger_settings import BATCH_ID_LENGTH

# The batch id starts with its UTC creation time, so `aws s3 ls results/` lists runs in the order they were made.
_TIME_FORMAT = "%Y%m%d%H%M%S"
_RANDOM_HEX_CHARS = BATCH_ID_LENGTH - len("20261201123456")
ATTEMPT_SEPARATOR = "-"


def new_batch_id(now: datetime) -> str:
    """A new batch id: ``YYYYMMDDHHMMSS`` (UTC) and 6 random hex digits (16.7 million per second before a collision
    becomes likely; the function makes a handful per invocation)."""
    return now.strftime(_TIME_FORMAT) + secrets.token_hex(_RANDOM_HEX_CHARS // 2)


def batch_time(batch_id: str) -> datetime:
    """When the batch id was made (UTC, to the second): the claims of the batch were written after it."""
    return datetime.strptime(batch_id[: len("20261201123456")], _TIME_FORMAT).replace(tzinfo=timezone.utc)


def run_id(batch_id: str, attempt: int) -> str:
    return batch_id if attempt == 1 else f"{batch_id}{ATTEMPT_SEPARATOR}{attempt}"


def parse_run_id(text: str) -> tuple[str, int] | None:
    """``(batch_id, attempt)`` of a run id made by :func:`run_id`, or None when ``text`` is not one."""
    batch_id, separator, attempt = text.partition(ATTEMPT_SEPARATOR)
    if len(batch_id) != BATCH_ID_LENGTH or not batch_id.isalnum():
        return None
    if not separator:
        return batch_id, 1
    if not attempt.isdigit() or int(attempt) < 2 or attempt != str(int(attempt)):
        return None
    return batch_id, int(attempt)


def step_name(step_name_prefix: str, batch_id: str, attempt: int) -> str:
    return step_name_prefix + run_id(batch_id, attempt)


def manifest_key(manifests_prefix: str, batch_id: str) -> str:
    return f"{manifests_prefix}{batch_id}.json"


def output_key(results_prefix: str, batch_id: str, attempt: int) -> str:
    return f"{results_prefix}{run_id(batch_id, attempt)}/"


def run_record_key(runs_prefix: str, batch_id: str, attempt: int) -> str:
    """The run's one-line record for the runs table: one object per run, alone under the table's prefix."""
    return f"{runs_prefix}{run_id(batch_id, attempt)}.json"
