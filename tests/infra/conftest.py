"""Fixtures for the infrastructure tests: each stack variant is synthesized once per test session, in-process."""

from __future__ import annotations

from typing import Any

import pytest
from infra_helpers import MAIN_VARIANTS, Synthesized, synthesize

_cache: dict[tuple, Synthesized] = {}


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Return the synthesized variant for the given settings, synthesizing each distinct variant only once."""

    def get(**setting_overrides: Any) -> Synthesized:
        key = tuple(sorted(setting_overrides.items()))
        if key not in _cache:
            _cache[key] = synthesize(tmp_path_factory.mktemp("artifacts"), **setting_overrides)
        return _cache[key]

    return get


@pytest.fixture(scope="module", params=MAIN_VARIANTS, ids=[f"{c}-{m}" for c, m in MAIN_VARIANTS])
def variant(request, synth) -> Synthesized:
    """Each of the four compute x cluster_mode variants (synthesized once for the whole session)."""
    compute, mode = request.param
    return synth(compute=compute, cluster_mode=mode)
