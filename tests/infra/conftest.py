"""Fixtures for the infrastructure tests: each stack variant is synthesized once per test session, in-process."""

from __future__ import annotations

import json
from typing import Any

import pytest
from infra_helpers import MAIN_VARIANTS, REPO_ROOT, Synthesized, synthesize

_cache: dict[str, Synthesized] = {}


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """Return the synthesized variant for the given settings, synthesizing each distinct variant only once."""

    def get(**setting_overrides: Any) -> Synthesized:
        key = json.dumps(setting_overrides, sort_keys=True)  # list settings (instance types, subnets) are unhashable
        if key not in _cache:
            _cache[key] = synthesize(tmp_path_factory.mktemp("artifacts"), **setting_overrides)
        return _cache[key]

    return get


@pytest.fixture(scope="module", params=MAIN_VARIANTS, ids=[f"{c}-{m}" for c, m in MAIN_VARIANTS])
def variant(request, synth) -> Synthesized:
    """Each of the four compute x cluster_mode variants (synthesized once for the whole session)."""
    compute, mode = request.param
    return synth(compute=compute, cluster_mode=mode)


def _offline_wheelhouse_stack(tmp_path_factory, **setting_overrides: Any) -> Synthesized:
    """A stack with offline_wheelhouse, from a repository copy holding a (fake) wheelhouse."""
    source_root = tmp_path_factory.mktemp("repo")
    for name in ("job", "bootstrap"):
        (source_root / name).symlink_to(REPO_ROOT / name)
    wheelhouse = source_root / "build" / "wheelhouse" / "cpu" / "x86_64"
    wheelhouse.mkdir(parents=True)
    (wheelhouse / "example-1.0-py3-none-any.whl").write_bytes(b"not a real wheel: only its presence is used")
    return synthesize(
        tmp_path_factory.mktemp("artifacts"), source_root=source_root, offline_wheelhouse=True, **setting_overrides
    )


@pytest.fixture(scope="session")
def offline_wheelhouse_variant(tmp_path_factory) -> Synthesized:
    """A stack with offline_wheelhouse and no NAT."""
    return _offline_wheelhouse_stack(tmp_path_factory, nat_gateways=0)


@pytest.fixture(scope="session")
def persistent_offline_wheelhouse_variant(tmp_path_factory) -> Synthesized:
    """A persistent cluster that installs from the shipped wheelhouse."""
    return _offline_wheelhouse_stack(tmp_path_factory, cluster_mode="persistent")
