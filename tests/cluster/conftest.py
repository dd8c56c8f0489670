"""Fixtures for the multi-process cluster tests: the real CIFAR-10 sample images (``make data`` downloads them)."""

from __future__ import annotations

import glob
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def foolbox_wheel() -> str:
    found = glob.glob(os.path.join(REPO, "build", "data", "foolbox-3.3.4-*.whl"))
    if not found:
        pytest.fail("the foolbox wheel with the CIFAR-10 sample images is missing: run `make data` (make test does)")
    return found[0]
