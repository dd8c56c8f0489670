"""Records every AWS API call that the project's own code makes during a pytest session, for the IAM rule test.

How it sees every client: botocore registers ``botocore.handlers.BUILTIN_HANDLERS`` on each botocore session when the
session is created, and every boto3 client (``boto3.client``, ``boto3.session.Session().client``, clients made at
import time by a Lambda handler module, clients under moto, clients wrapped by a Stubber) belongs to one. ``install``
appends the recorder there before any test module is imported (tests/conftest.py calls it at start-up) and also
registers it on boto3's default session if one exists already, so a client created earlier is seen too.

The hook is ``before-parameter-build.*.*``: botocore emits it for every API call with the caller's own parameters
(before serialization), and before a Stubber or moto answers, so stubbed calls and calls that then fail are recorded
too. Who made the call is read from the Python stack: the innermost frame in the repository that is not the recorder
itself names the code. Calls from ``infra/trigger_function/``, ``infra/cleanup_function/`` and ``job/`` are kept, with
the origin; calls made by the tests themselves (creating buckets, reading results) are only counted.

What it cannot see: calls made in other processes (Spark's Python workers, the AWS CLI of the bootstrap scripts, the
JVM's EMRFS/S3A); the IAM test covers those from the code that makes them (see test_iam_rules.py).
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
# Where each kind of code lives, relative to the repository: the origin a recorded call is attributed to.
ORIGINS = {
    "infra/trigger_function/": "trigger",
    "infra/cleanup_function/": "cleanup",
    "job/": "job",
}
# The trigger function's settings that name resources, read at the time of each of its calls (the tests give the
# function other names than the stack does; the IAM test maps them onto the stack's).
TRIGGER_SETTINGS = ("CLUSTER_MODE", "DATA_BUCKET", "CLAIMS_TABLE", "NOTIFICATION_TOPIC_ARN", "JOB_FLOW_DEFINITION_KEY",
                    "UPLOAD_QUEUE_URL")
# The job's tools that write or inspect packages (STYLE.md, "the job package's rooms") run on a developer's machine with
# the developer's credentials, never on the nodes: their calls are kept apart ("job-tool") and not judged against the
# nodes' role. (file relative to the repository, function name or None for the whole module)
JOB_TOOLS = (
    ("job/quantize.py", None),
    ("job/onnx_twin.py", None),
    ("job/demo.py", None),
    ("job/train_digits.py", None),
    ("job/model_package.py", "main"),
)
# Tests of those tools: a tool reads through the job's shared fetch threads, whose stacks do not show the tool, so a
# call of the job's code made while one of these tests runs is the tool's too.
JOB_TOOL_TESTS = ("tests/job/test_job_quantize.py",)
# Unit tests of job.storage's mechanics (pinned, bounded and ranged reads), on keys of their own choosing outside the
# stack's layout: the job's calls there are the test's, not the job's. The same calls on the stack's layout are judged
# in the IAM test's own job scenario (tests/iam/test_iam_rules.py, _job_scenario).
STORAGE_MECHANICS_TESTS = ("tests/job/test_job_storage.py",)
HOOK = "before-parameter-build.*.*"


@dataclass(frozen=True)
class RecordedCall:
    """One API call: ``service`` is botocore's service name (``emr``, ``s3``), ``operation`` the API name
    (``RunJobFlow``), ``params`` the caller's parameters as JSON-like data (bodies and streams as type names)."""

    origin: str
    service: str
    operation: str
    params: dict
    settings: dict = field(default_factory=dict)
    test: str = ""


@dataclass
class Recorder:
    calls: list[RecordedCall] = field(default_factory=list)
    calls_by_tests: int = 0
    errors: list[str] = field(default_factory=list)
    current_test: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _origin_by_file: dict[str, Optional[str]] = field(default_factory=dict)

    def __call__(self, params: dict, model: Any, **_) -> None:
        try:
            origin = self._origin()
            if origin is None or (origin == "job" and self.current_test.startswith(STORAGE_MECHANICS_TESTS)):
                with self._lock:
                    self.calls_by_tests += 1
                return
            if origin == "job" and self.current_test.startswith(JOB_TOOL_TESTS):
                origin = "job-tool"
            call = RecordedCall(
                origin=origin,
                service=model.service_model.service_name,
                operation=model.name,
                params=snapshot(params),
                settings={name: os.environ.get(name) for name in TRIGGER_SETTINGS} if origin == "trigger" else {},
                test=self.current_test,
            )
            with self._lock:
                self.calls.append(call)
        except Exception as error:  # noqa: BLE001 - never break the test that made the call; the IAM test reports it
            with self._lock:
                self.errors.append(f"{type(error).__name__}: {error}")

    def _origin(self) -> Optional[str]:
        """The kind of the innermost repository code on the stack ("job-tool" when a job tool called the job's code);
        None for a call the tests made themselves."""
        origin = None
        frame = sys._getframe(2)
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename not in self._origin_by_file:
                self._origin_by_file[filename] = _classify(filename)
            kind = self._origin_by_file[filename]
            if kind == "test":
                return origin
            if origin is None and kind is not None:
                origin = kind
            if origin == "job" and _is_job_tool(filename, frame.f_code.co_name):
                return "job-tool"
            frame = frame.f_back
        return origin

    def calls_from(self, origin: str) -> list[RecordedCall]:
        with self._lock:
            return [call for call in self.calls if call.origin == origin]


def _is_job_tool(filename: str, function: str) -> bool:
    relative = _relative(filename)
    return any(relative == tool_file and tool_function in (None, function) for tool_file, tool_function in JOB_TOOLS)


@functools.lru_cache(maxsize=None)
def _relative(filename: str) -> Optional[str]:
    """``filename`` relative to the repository (POSIX form), or None outside it."""
    try:
        return Path(filename).resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return None


def _classify(filename: str) -> Optional[str]:
    """The origin of code in ``filename``: one of ORIGINS' values, "test" for the tests, None for anything else
    (the standard library, site-packages, this recorder)."""
    relative = _relative(filename)
    if relative is None:
        return None
    if relative.startswith(".venv/") or relative == Path(__file__).resolve().relative_to(REPO_ROOT).as_posix():
        return None
    for prefix, origin in ORIGINS.items():
        if relative.startswith(prefix):
            return origin
    return "test" if relative.startswith("tests/") else None


def snapshot(value: Any) -> Any:
    """``value`` as plain data: dicts, lists, strings, numbers; anything else (bytes, streams) as ``<type name>``."""
    if isinstance(value, dict):
        return {str(key): snapshot(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [snapshot(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"<{type(value).__name__}>"


RECORDER = Recorder()
_installed = False


def install() -> None:
    """Record from every botocore session created from now on, and from boto3's default session if it exists."""
    global _installed
    if _installed:
        return
    import boto3
    from botocore import handlers

    handlers.BUILTIN_HANDLERS.append((HOOK, RECORDER))
    if boto3.DEFAULT_SESSION is not None:
        boto3.DEFAULT_SESSION.events.register(HOOK, RECORDER)
    _installed = True


def installed() -> bool:
    return _installed
