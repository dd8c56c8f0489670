"""The names of a batch: its id, its step name, its manifest and results keys.

A *batch* is a set of uploads that one invocation claimed; its id is made once, when the claims are written, and never
reused.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from trigger_settings import BATCH_ID_LENGTH

# The batch id starts with its UTC creation time, so `aws s3 ls results/` lists runs in the order they were made.
_TIME_FORMAT = "%Y%m%d%H%M%S"
_RANDOM_HEX_CHARS = BATCH_ID_LENGTH - len("20261201123456")


def new_batch_id(now: datetime) -> str:
    """A new batch id: ``YYYYMMDDHHMMSS`` (UTC) and 6 random hex digits (16.7 million per second before a collision
    becomes likely; the function makes a handful per invocation)."""
    return now.strftime(_TIME_FORMAT) + secrets.token_hex(_RANDOM_HEX_CHARS // 2)


def step_name(step_name_prefix: str, batch_id: str) -> str:
    return step_name_prefix + batch_id


def manifest_key(manifests_prefix: str, batch_id: str) -> str:
    return f"{manifests_prefix}{batch_id}.json"


def output_key(results_prefix: str, batch_id: str) -> str:
    return f"{results_prefix}{batch_id}/"
