"""The stack's settings: ``cdk.json`` context -> one frozen, validated object.

Every setting is read here and nowhere else; constructs receive plain keyword arguments. Validation collects every
problem before failing, so a user fixes all typos in one round: each message names the key, the value received and
what is allowed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from infra.instance_types import GPU_FAMILIES, UnknownInstanceSize, gpus, vcpus

# The cdk.json context key that holds every setting below (one key, so CDK's own feature flags never collide).
CONTEXT_KEY = "inference"

COMPUTE_CHOICES = ("cpu", "gpu")
CLUSTER_MODES = ("persistent", "transient")
JOB_DEVICES = ("cpu", "gpu", "auto")

# emr-7.13.0 is the newest 7.x release (first released 2026-04-21); its Spark is 3.5.6-amzn-2, the same Spark as the
# job's pinned pyspark==3.5.6, and it ships Python 3.9 and 3.11 (3.11 from emr-7.1.0 on). Sources: the EMR Release
# Guide pages "Spark release history" and "Application versions in Amazon EMR 7.x releases".
DEFAULT_RELEASE_LABEL = "emr-7.13.0"
# PYSPARK_PYTHON=python3.11 needs a release that ships Python 3.11: emr-7.1.0 and later.
MIN_RELEASE_MINOR = 1
RELEASE_LABEL_PATTERN = re.compile(r"^emr-7\.(\d+)\.(\d+)$")

DEFAULT_PRIMARY_INSTANCE_TYPE = "m5.xlarge"
# c5.2xlarge: 8 vCPU / 16 GiB, compute-optimised for the CPU-bound MXNet forward pass and JPEG/PNG decoding.
DEFAULT_CPU_WORKER_INSTANCE_TYPE = "c5.2xlarge"
# g4dn.xlarge: one NVIDIA T4 (16 GiB), 4 vCPU / 16 GiB: the cheapest GPU instance EMR supports.
DEFAULT_GPU_WORKER_INSTANCE_TYPE = "g4dn.xlarge"
INSTANCE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
VPC_ID_PATTERN = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
SUBNET_ID_PATTERN = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# EMR refuses more than 256 pending + running steps per cluster; StepConcurrencyLevel is limited to 1..256.
EMR_MAX_ACTIVE_STEPS = 256
# An SQS event source with a batching window accepts up to 10,000 messages per invocation; the window is 0..300 s.
SQS_MAX_BATCH_SIZE = 10_000
SQS_MAX_BATCHING_WINDOW_SECONDS = 300
SQS_MAX_BATCH_WITHOUT_WINDOW = 10
MAX_NAT_GATEWAYS = 3
# The same default as the step builder's (emr_step.DEFAULT_STEP_TIMEOUT_MINUTES, tested equal); at most a week.
DEFAULT_STEP_TIMEOUT_MINUTES = 240
MAX_STEP_TIMEOUT_MINUTES = 7 * 24 * 60


class SettingsError(ValueError):
    """One or more settings are wrong; the message lists every problem, one per line."""


@dataclass(frozen=True)
class Settings:
    """Everything a user can set in ``cdk.json`` under the ``inference`` context key; defaults are the field defaults."""

    compute: str = "cpu"
    cluster_mode: str = "transient"
    release_label: str = DEFAULT_RELEASE_LABEL
    primary_instance_type: str = DEFAULT_PRIMARY_INSTANCE_TYPE
    # None: the default worker type for `compute` (DEFAULT_CPU_WORKER_INSTANCE_TYPE / DEFAULT_GPU_WORKER_INSTANCE_TYPE).
    core_instance_type: Optional[str] = None
    core_instance_count: int = 2
    task_instance_type: Optional[str] = None
    task_instance_count: int = 0
    step_concurrency_level: int = 1
    max_active_steps: int = 200
    # None: a new VPC (private subnets, S3 gateway endpoint). Otherwise both ids of an existing VPC and private subnet.
    vpc_id: Optional[str] = None
    subnet_id: Optional[str] = None
    nat_gateways: int = 1
    # True: nodes install MXNet from a wheelhouse the stack uploads (build/wheelhouse/<compute>/, built by
    # `bootstrap/install-mxnet.sh --build-wheelhouse`), so they need no internet; False: from PyPI, through the NAT.
    offline_wheelhouse: bool = False
    retain_data_on_destroy: bool = False
    log_retention_days: int = 30
    notification_email: Optional[str] = None
    model_name: str = "default"
    job_device: str = "auto"
    job_batch_size: int = 256
    job_top_k: int = 5
    job_max_failure_ratio: float = 0.01
    # Wall-clock limit of one EMR step (spark-submit runs under `timeout`); a hung step cannot keep a cluster billing.
    step_timeout_minutes: int = DEFAULT_STEP_TIMEOUT_MINUTES
    trigger_batch_size: int = 1000
    trigger_batching_window_seconds: int = 60

    @property
    def worker_instance_type(self) -> str:
        """The core group's instance type, resolved from `compute` when not set."""
        if self.core_instance_type is not None:
            return self.core_instance_type
        return DEFAULT_GPU_WORKER_INSTANCE_TYPE if self.compute == "gpu" else DEFAULT_CPU_WORKER_INSTANCE_TYPE

    @property
    def resolved_task_instance_type(self) -> str:
        """The task group's instance type: the core type unless set."""
        return self.task_instance_type or self.worker_instance_type

    @property
    def uses_new_vpc(self) -> bool:
        return self.vpc_id is None

    @classmethod
    def from_context(cls, raw: Any) -> "Settings":
        """Build settings from the ``inference`` context value (a dict, or a JSON string as given by ``cdk -c``)."""
        if raw is None:
            raw = {}
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as error:
                raise SettingsError(
                    f"context {CONTEXT_KEY!r}: not valid JSON ({error}); expected a JSON object"
                ) from None
        if not isinstance(raw, Mapping):
            raise SettingsError(f"context {CONTEXT_KEY!r}: expected an object of settings, got {type(raw).__name__}")
        return _validate(raw)


def _validate(raw: Mapping[str, Any]) -> Settings:
    problems: list[str] = []
    known = {field.name for field in fields(Settings)}
    for key in sorted(set(raw) - set(known)):
        problems.append(f"{key}: unknown setting (value {raw[key]!r}); known settings: {', '.join(sorted(known))}")
    values = {key: value for key, value in raw.items() if key in known}
    checked: dict[str, Any] = {}

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if key in values:
            if values[key] not in allowed:
                problems.append(f"{key}: {values[key]!r} is not allowed; allowed: {', '.join(allowed)}")
            else:
                checked[key] = values[key]

    def integer(key: str, low: int, high: int) -> None:
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                problems.append(f"{key}: {value!r} is not allowed; allowed: an integer from {low} to {high}")
            else:
                checked[key] = value

    def number(key: str, low: float, high: float) -> None:
        if key in values:
            value = values[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                problems.append(f"{key}: {value!r} is not allowed; allowed: a number from {low} to {high}")
            else:
                checked[key] = float(value)

    def boolean(key: str) -> None:
        if key in values:
            if not isinstance(values[key], bool):
                problems.append(f"{key}: {values[key]!r} is not allowed; allowed: true or false")
            else:
                checked[key] = values[key]

    def pattern(key: str, regex: re.Pattern[str], allowed: str, optional: bool = False) -> None:
        if key in values:
            value = values[key]
            if value is None and optional:
                checked[key] = None
            elif not isinstance(value, str) or not regex.match(value):
                problems.append(f"{key}: {value!r} is not allowed; allowed: {allowed}")
            else:
                checked[key] = value

    choice("compute", COMPUTE_CHOICES)
    choice("cluster_mode", CLUSTER_MODES)
    choice("job_device", JOB_DEVICES)
    pattern(
        "release_label",
        RELEASE_LABEL_PATTERN,
        f"emr-7.X.Y with X >= {MIN_RELEASE_MINOR} (e.g. {DEFAULT_RELEASE_LABEL})",
    )
    if "release_label" in checked:
        minor = int(RELEASE_LABEL_PATTERN.match(checked["release_label"]).group(1))
        if minor < MIN_RELEASE_MINOR:
            problems.append(
                f"release_label: {checked['release_label']!r} is not allowed; allowed: emr-7.{MIN_RELEASE_MINOR}.0 or "
                "later (the job runs on Python 3.11, which EMR ships from emr-7.1.0)"
            )
    instance_type_text = "an EC2 instance type such as m5.xlarge"
    pattern("primary_instance_type", INSTANCE_TYPE_PATTERN, instance_type_text)
    pattern(
        "core_instance_type", INSTANCE_TYPE_PATTERN, instance_type_text + " (or null for the default)", optional=True
    )
    pattern(
        "task_instance_type", INSTANCE_TYPE_PATTERN, instance_type_text + " (or null for the core type)", optional=True
    )
    integer("core_instance_count", 1, 100)
    integer("task_instance_count", 0, 100)
    integer("step_concurrency_level", 1, EMR_MAX_ACTIVE_STEPS)
    integer("max_active_steps", 1, EMR_MAX_ACTIVE_STEPS)
    pattern("vpc_id", VPC_ID_PATTERN, "null (a new VPC) or an id such as vpc-0123456789abcdef0", optional=True)
    pattern(
        "subnet_id", SUBNET_ID_PATTERN, "null or a private subnet id such as subnet-0123456789abcdef0", optional=True
    )
    integer("nat_gateways", 0, MAX_NAT_GATEWAYS)
    boolean("retain_data_on_destroy")
    boolean("offline_wheelhouse")
    integer("log_retention_days", 1, 3650)
    pattern("notification_email", EMAIL_PATTERN, "null or an e-mail address", optional=True)
    pattern("model_name", MODEL_NAME_PATTERN, "1-128 characters: letters, digits, '.', '_', '-' (no '/')")
    integer("job_batch_size", 1, 65_536)
    integer("job_top_k", 1, 1000)
    number("job_max_failure_ratio", 0.0, 1.0)
    integer("step_timeout_minutes", 5, MAX_STEP_TIMEOUT_MINUTES)
    integer("trigger_batch_size", 1, SQS_MAX_BATCH_SIZE)
    integer("trigger_batching_window_seconds", 0, SQS_MAX_BATCHING_WINDOW_SECONDS)

    merged = Settings(**{**{f.name: f.default for f in fields(Settings)}, **checked})
    problems.extend(_cross_checks(merged))
    if problems:
        raise SettingsError(
            f"invalid settings in cdk.json context {CONTEXT_KEY!r} ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )
    return merged


def _cross_checks(settings: Settings) -> list[str]:
    """Checks between settings, run only on values that passed their own check."""
    problems = []
    worker_groups = [("core_instance_type", settings.worker_instance_type)]
    if settings.task_instance_count > 0:
        worker_groups.append(("task_instance_type", settings.resolved_task_instance_type))
    for key, instance_type in worker_groups:
        try:
            # The cluster's task slots (spark.default.parallelism) are counted from the workers' vCPUs.
            vcpus(instance_type)
        except UnknownInstanceSize as error:
            problems.append(f"{key}: {error}")
        if settings.compute == "gpu" and not gpus(instance_type):
            problems.append(
                f"{key}: {instance_type!r} has no GPU but compute is 'gpu'; allowed: a type of the families "
                f"{', '.join(GPU_FAMILIES)} (e.g. {DEFAULT_GPU_WORKER_INSTANCE_TYPE}, g5.xlarge)"
            )
        if settings.compute == "cpu" and gpus(instance_type):
            problems.append(
                f"{key}: {instance_type!r} is a GPU type but compute is 'cpu' (the GPU would sit idle); "
                "allowed: a CPU type such as c5.2xlarge, or set compute to 'gpu'"
            )
    if settings.compute == "cpu" and settings.job_device == "gpu":
        problems.append("job_device: 'gpu' is not allowed when compute is 'cpu'; allowed: cpu, auto")
    if (settings.vpc_id is None) != (settings.subnet_id is None):
        problems.append(
            f"vpc_id/subnet_id: got vpc_id={settings.vpc_id!r}, subnet_id={settings.subnet_id!r}; allowed: both null "
            "(a new VPC) or both set (an existing VPC and one of its private subnets)"
        )
    if settings.max_active_steps < settings.step_concurrency_level:
        problems.append(
            f"max_active_steps: {settings.max_active_steps} is below step_concurrency_level "
            f"{settings.step_concurrency_level}; allowed: at least step_concurrency_level"
        )
    if settings.uses_new_vpc and settings.nat_gateways == 0 and not settings.offline_wheelhouse:
        problems.append(
            "nat_gateways: 0 is not allowed with offline_wheelhouse false: the nodes of a new VPC without NAT cannot "
            "reach PyPI to install MXNet; allowed: nat_gateways 1 or more, or offline_wheelhouse true"
        )
    if settings.trigger_batch_size > SQS_MAX_BATCH_WITHOUT_WINDOW and settings.trigger_batching_window_seconds < 1:
        problems.append(
            f"trigger_batching_window_seconds: 0 is not allowed with trigger_batch_size {settings.trigger_batch_size}; "
            f"allowed: at least 1 second (SQS event sources need a batching window above {SQS_MAX_BATCH_WITHOUT_WINDOW} "
            "messages per batch), or a trigger_batch_size of at most 10"
        )
    return problems
