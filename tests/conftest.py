"""Session-wide plugin for every test folder: records the AWS calls the project's code makes, for the IAM rule test.

The recorder (tests/iam/aws_call_recording.py) is installed here, before any test module is imported, so it sees every
boto3 client, including those a Lambda handler module creates at import time. The IAM rule tests (tests/iam/) are moved
to the end of the run, so that they read the calls of every suite that ran before them in the same session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

IAM_TESTS_DIR = Path(__file__).resolve().parent / "iam"
if str(IAM_TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(IAM_TESTS_DIR))

import aws_call_recording  # noqa: E402  (after the path above)

aws_call_recording.install()

# Local runs keep their driver JVM's class archive (job/local_jvm.py) in the user's cache; the suite's, and its
# subprocesses', stay in this checkout's build/ (a test that needs a cache of its own sets the variable itself).
os.environ.setdefault("JOB_JVM_CACHE", str(Path(__file__).resolve().parent.parent / "build" / "jvm-cache"))


def pytest_collection_modifyitems(session, config, items):
    """The IAM rule tests last, in their own order: they judge the calls that the other tests' code made."""
    rules = [item for item in items if IAM_TESTS_DIR in Path(str(item.path)).resolve().parents]
    if rules:
        others = [item for item in items if item not in rules]
        items[:] = others + rules


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Each recorded call names the test during which it was made (failure messages point at it)."""
    aws_call_recording.RECORDER.current_test = item.nodeid
    try:
        return (yield)
    finally:
        aws_call_recording.RECORDER.current_test = ""
