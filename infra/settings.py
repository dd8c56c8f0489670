"""The stack's settings: ``cdk.json`` context -> one frozen, validated object.

Every setting is read here and nowhere else; constructs receive plain keyword arguments. Validation collects every
problem before failing, so a user fixes all typos in one round: each message names the key, the value received and
what is allowed.

Settings come from the ``inference`` context object (``cdk.json``, or ``-c 'inference={...}'`` for a whole object), and
any one of them can also be given on its own the CDK way, ``cdk synth -c compute=gpu``: such a top-level context key
overrides the object's key. The CDK CLI passes every ``-c`` value as a string, so each is read as its setting's type
(``-c core_instance_count=3``, ``-c offline_wheelhouse=true``, ``-c core_instance_types=c5.2xlarge,c6i.2xlarge``,
``-c idle_timeout_minutes=null``). A top-level key that looks like a setting but is none fails, like a typo in the
object.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Optional, get_type_hints

from infra.instance_types import (
    ARCHITECTURES,
    ARM64,
    GPU_FAMILIES,
    X86_64,
    UnknownArchitecture,
    UnknownInstanceSize,
    architecture,
    gpus,
    vcpus,
)

# The cdk.json context key that holds every setting below (one key, so CDK's own feature flags never collide).
CONTEXT_KEY = "inference"

COMPUTE_CHOICES = ("cpu", "gpu")
CLUSTER_MODES = ("persistent", "transient")
JOB_DEVICES = ("cpu", "gpu", "auto")

# emr-7.13.0 is the newest 7.x release (first released 2026-04-21); its Spark is 3.5.6-amzn-2, the same Spark as the
# job's pinned pyspark==3.5.6, and it ships Python 3.9 and 3.11 (3.11 from emr-7.1.0 on). Sources: the EMR Release
# Guide pages "Spark release history" and "Application versions in Amazon EMR 7.x releases".
DEFAULT_RELEASE_LABEL = "emr-7.13.0"
# emr-7.2.0 and later: PYSPARK_PYTHON=python3.11 needs 7.1, and Spot task nodes need 7.2's "application master label
# awareness", which keeps Spark's YARN ApplicationMaster on on-demand nodes (cluster_definition.SPOT_SAFE_YARN_SITE).
MIN_RELEASE_MINOR = 2
RELEASE_LABEL_PATTERN = re.compile(r"^emr-7\.(\d+)\.(\d+)$")

# Instance types per fleet. Each list holds types of a similar shape (as much memory and as many vCPUs per task slot or
# more), so the executors sized in cluster_definition.py fit each; the first is the reference: instance counts are in
# nodes of its size (other sizes count by their task slots), and the
# cost model (infra/cost.py) prices it. EMR picks among the others by price (on-demand) or by price and spare capacity
# (Spot), in any of the cluster's subnets: the more types and subnets, the less often a launch finds no capacity.
# Every one is an EMR-supported type in emr-7.2.0 to emr-7.13.0 (a test checks moto's copy of
# ListSupportedInstanceTypes) and in the regions cfn-lint checks the template for (us-east-1, eu-west-1); other
# regions may lack some: set the lists there.
DEFAULT_PRIMARY_INSTANCE_TYPES = {
    # 4 vCPU / 16 GiB general purpose: the driver (client mode) plans tasks and writes the summary; it loads no model.
    X86_64: ("m5.xlarge", "m5a.xlarge", "m6i.xlarge", "m6a.xlarge"),
    ARM64: ("m7g.xlarge", "m6g.xlarge"),
}
DEFAULT_WORKER_INSTANCE_TYPES = {
    # 8 vCPU / 16 GiB compute-optimised, for the CPU-bound forward pass and image decoding: Intel and AMD generations.
    ("cpu", X86_64): ("c5.2xlarge", "c5a.2xlarge", "c6i.2xlarge", "c6a.2xlarge", "c7i.2xlarge"),
    # The same shape on Graviton 2 and 3.
    ("cpu", ARM64): ("c7g.2xlarge", "c6g.2xlarge", "c6gd.2xlarge", "c7gd.2xlarge"),
    # One GPU per node: T4 (the cheapest GPU EMR supports) and A10G, at 4 vCPU / 16 GiB and, as further Spot pools,
    # 8 vCPU / 32 GiB (one executor per GPU either way; the larger ones cost more and are chosen only for capacity).
    # Not g6 (L4): EMR does not offer it in every region (e.g. eu-west-1 in cfn-lint's data of supported types).
    ("gpu", X86_64): ("g4dn.xlarge", "g5.xlarge", "g4dn.2xlarge", "g5.2xlarge"),
}
# EMR accepts at most 30 instance types per fleet with an allocation strategy (API reference: InstanceTypeConfig).
MAX_INSTANCE_TYPES_PER_FLEET = 30
# A Spot provisioning timeout is 5 to 1440 minutes (SpotProvisioningSpecification); after it the task fleet launches
# on-demand instead. Ten minutes: about one cluster boot, after which waiting longer for Spot costs more in delay than
# the discount saves on a small cluster.
DEFAULT_SPOT_TIMEOUT_MINUTES = 10
MIN_SPOT_TIMEOUT_MINUTES = 5
MAX_SPOT_TIMEOUT_MINUTES = 1440
# EMR's auto-termination idle timeout is 60 s to 7 days (AutoTerminationPolicy). A transient cluster is kept alive
# between batches and ends after this long without work: about the cluster's boot time (the ski-rental rule: wait as
# long as a restart costs, and never pay more than twice the best choice made in hindsight). README, "Idle clusters".
DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES = 10
MAX_IDLE_TIMEOUT_MINUTES = 7 * 24 * 60
MAX_INSTANCE_COUNT = 100
MAX_SCALING_INSTANCE_COUNT = 1000

INSTANCE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
VPC_ID_PATTERN = re.compile(r"^vpc-[0-9a-f]{8}([0-9a-f]{9})?$")
SUBNET_ID_PATTERN = re.compile(r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_STACK_NAME = "MxnetSparkInference"
# CloudFormation's stack-name rule (a letter, then letters, digits and hyphens), at most 64 characters: the Athena
# workgroup "<stack>-results" and the step names "<stack>-batch-<batch id>-<n>" must stay within their limits.
STACK_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
# Top-level context keys of this shape are taken for settings given with -c; CDK's own keys never have it (feature
# flags start with '@', its internal keys with 'aws:', lookups hold ':' or '=', and its other keys use '-').
SETTING_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")

# EMR refuses more than 256 pending + running steps per cluster; StepConcurrencyLevel is limited to 1..256.
EMR_MAX_ACTIVE_STEPS = 256
# An SQS event source with a batching window accepts up to 10,000 messages per invocation; the window is 0..300 s.
SQS_MAX_BATCH_SIZE = 10_000
SQS_MAX_BATCHING_WINDOW_SECONDS = 300
SQS_MAX_BATCH_WITHOUT_WINDOW = 10
# One per availability zone of the new VPC (infra/network.py MAX_AZS, tested equal): CDK builds no more than that.
MAX_NAT_GATEWAYS = 2
# The same default as the step builder's (emr_step.DEFAULT_STEP_TIMEOUT_MINUTES, tested equal); at most a week.
DEFAULT_STEP_TIMEOUT_MINUTES = 240
MAX_STEP_TIMEOUT_MINUTES = 7 * 24 * 60
# A model's input size in pixels: at most 1,024 (a 1,024 x 1,024 float batch of one image is 12 MiB, within a batch's
# byte limit on every compute).
MIN_MODEL_INPUT_SIZE = 8
MAX_MODEL_INPUT_SIZE = 1024
# Athena cancels a query of the stack's workgroup once it has scanned this much (GB = 10^9 bytes; Athena bills $5 per TB
# scanned in us-east-1, so the default caps a query at $0.05). Predictions take about 40 bytes per image in Parquet
# (README, "Querying results"), so 10 GB is every column of some 250 million images; Athena reads only the columns a
# query uses, of the runs it names. Athena's own minimum is 10 MB.
DEFAULT_ATHENA_SCAN_LIMIT_GB = 10
MAX_ATHENA_SCAN_LIMIT_GB = 10_000
# Read-only input locations (issue 18, "images where they are"): "s3://<bucket>/<prefix>/". The bucket name follows
# S3's rules for new buckets (3-63 characters: lowercase letters, digits, '.', '-'); the prefix is whole path segments
# ending with '/' (or empty: the whole bucket). IAM reads '*', '?' and '${' in a resource ARN as wildcards and policy
# variables, so a location holding one would grant more than it names: they are refused.
INPUT_LOCATION_PATTERN = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.*)$")
INPUT_LOCATION_FORBIDDEN = ("*", "?", "$")
MAX_INPUT_LOCATIONS = 20
MAX_INPUT_LOCATION_CHARS = 512


class SettingsError(ValueError):
    """One or more settings are wrong; the message lists every problem, one per line."""


@dataclass(frozen=True)
class Settings:
    """Everything a user can set in ``cdk.json`` under the ``inference`` context key; defaults are the field defaults."""

    # The CloudFormation stack's name, from which every physical name of the deployment is derived (security
    # configuration, clusters and their tags, step names, Glue database, Athena workgroup, alarms; CDK derives the
    # buckets', roles' and functions' names from it): deployments with different names live side by side in one account
    # and region (dev, prod, a second model). Changing it on a deployed stack deploys a second stack beside the first.
    stack_name: str = DEFAULT_STACK_NAME
    compute: str = "cpu"
    cluster_mode: str = "transient"
    release_label: str = DEFAULT_RELEASE_LABEL
    # x86_64, or arm64 (Graviton; compute cpu only): every instance type of the cluster must be of this architecture.
    architecture: str = X86_64
    # None: the defaults above for `architecture` (and `compute`). Lists of types of one shape, the first the reference.
    primary_instance_types: Optional[tuple[str, ...]] = None
    core_instance_types: Optional[tuple[str, ...]] = None
    # On-demand core nodes, counted in nodes of the first core type (the fleet's capacity counts task slots).
    core_instance_count: int = 1
    # None: the core types.
    task_instance_types: Optional[tuple[str, ...]] = None
    # Spot task nodes (on-demand after spot_timeout_minutes without Spot capacity), in nodes of the first task type.
    task_instance_count: int = 2
    spot_timeout_minutes: int = DEFAULT_SPOT_TIMEOUT_MINUTES
    # EMR managed scaling: None = off; otherwise the most worker nodes (core + task, in nodes of the first core and task
    # types) the cluster may grow to. Only Spot task nodes are added.
    managed_scaling_max_instance_count: Optional[int] = None
    # The fewest worker nodes managed scaling shrinks to; None: core_instance_count (only task nodes come and go).
    # Below core_instance_count, scale-in removes core nodes too (slower: EMR first moves their HDFS blocks).
    managed_scaling_min_instance_count: Optional[int] = None
    # EMR auto-termination after this many idle minutes; None: DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES in transient mode,
    # never in persistent mode.
    idle_timeout_minutes: Optional[int] = None
    step_concurrency_level: int = 1
    max_active_steps: int = 200
    # None: a new VPC (private subnets, S3 gateway endpoint). Otherwise an existing VPC and one or more of its private
    # subnets: EMR launches the cluster in whichever of them has capacity for the fleets.
    vpc_id: Optional[str] = None
    subnet_ids: Optional[tuple[str, ...]] = None
    nat_gateways: int = 1
    # True: nodes install MXNet from a wheelhouse the stack uploads (build/wheelhouse/<compute>/<machine>/, built by
    # `bootstrap/install-mxnet.sh --build-wheelhouse`), so they need no internet; False: from PyPI, through the NAT.
    offline_wheelhouse: bool = False
    retain_data_on_destroy: bool = False
    log_retention_days: int = 30
    notification_email: Optional[str] = None
    model_name: str = "default"
    job_device: str = "auto"
    job_batch_size: int = 256
    # The model's input height and width in pixels (a package's input_shape[-1]): the executors are sized for batches
    # of this size, and job_batch_size is lowered to fit them (cluster_definition.MAX_BATCH_BYTES). 224 (ImageNet
    # models) is the safe default; 32 for CIFAR-size models keeps batches of job_batch_size.
    model_input_size: int = 224
    job_top_k: int = 5
    job_max_failure_ratio: float = 0.01
    # Wall-clock limit of one EMR step (spark-submit runs under `timeout`); a hung step cannot keep a cluster billing.
    step_timeout_minutes: int = DEFAULT_STEP_TIMEOUT_MINUTES
    trigger_batch_size: int = 1000
    trigger_batching_window_seconds: int = 60
    # The bytes one Athena query of the stack's workgroup may scan before Athena cancels it.
    athena_scan_limit_gb: int = DEFAULT_ATHENA_SCAN_LIMIT_GB
    # Buckets and prefixes ("s3://bucket/prefix/") the nodes may read inputs from where they are, and manifests may
    # list; None: only the stack's own incoming/ and staged/.
    input_locations: Optional[tuple[str, ...]] = None
    # IAM principals (role or user ARNs, "*" wildcards allowed as IAM's ArnLike allows them) that may publish model
    # packages under models/ without the model-publisher tag: e.g. an IAM Identity Center role, which cannot be tagged.
    model_publisher_arns: Optional[tuple[str, ...]] = None

    @property
    def resolved_primary_instance_types(self) -> tuple[str, ...]:
        return self.primary_instance_types or DEFAULT_PRIMARY_INSTANCE_TYPES[self.architecture]

    @property
    def resolved_core_instance_types(self) -> tuple[str, ...]:
        if self.core_instance_types:
            return self.core_instance_types
        # An arm64 gpu cluster is refused by validation; its defaults fall back so that validation can name the problem.
        return DEFAULT_WORKER_INSTANCE_TYPES.get(
            (self.compute, self.architecture), DEFAULT_WORKER_INSTANCE_TYPES[(self.compute, X86_64)]
        )

    @property
    def resolved_task_instance_types(self) -> tuple[str, ...]:
        return self.task_instance_types or self.resolved_core_instance_types

    @property
    def resolved_idle_timeout_minutes(self) -> Optional[int]:
        if self.idle_timeout_minutes is not None:
            return self.idle_timeout_minutes
        return DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES if self.cluster_mode == "transient" else None

    @property
    def managed_scaling(self) -> bool:
        return self.managed_scaling_max_instance_count is not None

    @property
    def has_task_fleet(self) -> bool:
        return self.task_instance_count > 0

    @property
    def uses_new_vpc(self) -> bool:
        return self.vpc_id is None

    @property
    def finds_clusters_by_tag(self) -> bool:
        """Whether the trigger finds the cluster for a batch by the stack's tags (and launches one when none accepts
        steps): always in transient mode, and in persistent mode when the stack's cluster can end by itself
        (auto-termination). Otherwise it sends steps to the persistent cluster by its id, and launches a cluster from
        the same definition only when that one no longer accepts steps."""
        return self.cluster_mode == "transient" or self.resolved_idle_timeout_minutes is not None

    @classmethod
    def from_context(cls, raw: Any) -> "Settings":
        """Build settings from the ``inference`` context value (a dict, or a JSON string as given by ``cdk -c``)."""
        return _validate(_context_object(raw), [])

    @classmethod
    def from_cdk_context(cls, context: Mapping[str, Any]) -> "Settings":
        """Build settings from the app's whole context: the ``inference`` object, with each setting given as its own
        top-level key (``cdk synth -c compute=gpu``) replacing the object's value."""
        raw = dict(_context_object(context.get(CONTEXT_KEY)))
        problems: list[str] = []
        types = _setting_types()
        for key, value in context.items():
            if key in types:
                raw[key] = _from_command_line(value, types[key]) if isinstance(value, str) else value
            elif key != CONTEXT_KEY and SETTING_NAME_PATTERN.match(key):
                problems.append(_unknown_setting(key, "given on its own, as with -c {key}=...".format(key=key), types))
        return _validate(raw, problems)


def _context_object(raw: Any) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as error:
            raise SettingsError(
                f"context {CONTEXT_KEY!r}: not valid JSON ({error}); expected a JSON object, such as "
                f"-c '{CONTEXT_KEY}={{\"compute\": \"gpu\"}}', or give one setting the CDK way: -c compute=gpu"
            ) from None
    if not isinstance(raw, Mapping):
        raise SettingsError(f"context {CONTEXT_KEY!r}: expected an object of settings, got {type(raw).__name__}")
    return raw


def _setting_types() -> dict[str, Any]:
    hints = get_type_hints(Settings)
    return {field.name: hints[field.name] for field in fields(Settings)}


def _from_command_line(text: str, setting_type: Any) -> Any:
    """A ``-c KEY=VALUE`` string as the setting's type. Text that does not convert is passed on as it is, so that
    validation reports it with the setting's allowed values."""
    optional = setting_type in (Optional[str], Optional[int], Optional[tuple[str, ...]])
    if optional and text == "null":
        return None
    if setting_type in (int, Optional[int]):
        try:
            return int(text)
        except ValueError:
            return text
    if setting_type is float:
        try:
            return float(text)
        except ValueError:
            return text
    if setting_type is bool:
        return {"true": True, "false": False}.get(text.lower(), text)
    if setting_type == Optional[tuple[str, ...]]:
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return [item.strip() for item in text.split(",")]
    return text


def _unknown_setting(key: str, given: str, known: Iterable[str]) -> str:
    """An unknown key's problem: the closest known names first (a typo, or a setting renamed since, such as
    core_instance_type -> core_instance_types), then every known name."""
    known = sorted(known)
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(name) for name in close)}? " if close else ""
    return f"{key}: unknown setting ({given}); {hint}known settings: {', '.join(known)}"


def _validate(raw: Mapping[str, Any], problems: list[str]) -> Settings:
    problems = list(problems)
    known = {field.name for field in fields(Settings)}
    for key in sorted(set(raw) - set(known)):
        problems.append(_unknown_setting(key, f"value {raw[key]!r}", known))
    values = {key: value for key, value in raw.items() if key in known}
    checked: dict[str, Any] = {}

    def choice(key: str, allowed: tuple[str, ...]) -> None:
        if key in values:
            if values[key] not in allowed:
                problems.append(f"{key}: {values[key]!r} is not allowed; allowed: {', '.join(allowed)}")
            else:
                checked[key] = values[key]

    def integer(key: str, low: int, high: int, optional: bool = False) -> None:
        if key in values:
            value = values[key]
            if value is None and optional:
                checked[key] = None
            elif isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                allowed = f"an integer from {low} to {high}" + (" (or null)" if optional else "")
                problems.append(f"{key}: {value!r} is not allowed; allowed: {allowed}")
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

    def string_list(key: str, regex: re.Pattern[str], allowed: str, most: int) -> None:
        """null, or a list of 1 to `most` distinct strings matching `regex` (a tuple once checked)."""
        if key in values:
            value = values[key]
            if value is None:
                checked[key] = None
                return
            text = f"null or a list of 1 to {most} distinct {allowed}"
            if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= most:
                problems.append(f"{key}: {value!r} is not allowed; allowed: {text}")
            elif bad := [item for item in value if not isinstance(item, str) or not regex.match(item)]:
                problems.append(f"{key}: {bad[0]!r} (in {list(value)!r}) is not allowed; allowed: {text}")
            elif len(set(value)) != len(value):
                problems.append(f"{key}: {list(value)!r} names an entry twice; allowed: {text}")
            else:
                checked[key] = tuple(value)

    pattern(
        "stack_name",
        STACK_NAME_PATTERN,
        "1-64 characters: a letter, then letters, digits and '-' (CloudFormation's stack-name rule)",
    )
    choice("compute", COMPUTE_CHOICES)
    choice("cluster_mode", CLUSTER_MODES)
    choice("architecture", ARCHITECTURES)
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
                "later (the job runs on Python 3.11, which EMR ships from emr-7.1.0, and Spot task nodes need "
                "emr-7.2.0's ApplicationMaster placement on on-demand nodes)"
            )
    instance_types_text = "EC2 instance types such as c5.2xlarge"
    for key in ("primary_instance_types", "core_instance_types", "task_instance_types"):
        string_list(key, INSTANCE_TYPE_PATTERN, instance_types_text, MAX_INSTANCE_TYPES_PER_FLEET)
    integer("core_instance_count", 1, MAX_INSTANCE_COUNT)
    integer("task_instance_count", 0, MAX_INSTANCE_COUNT)
    integer("spot_timeout_minutes", MIN_SPOT_TIMEOUT_MINUTES, MAX_SPOT_TIMEOUT_MINUTES)
    integer("managed_scaling_max_instance_count", 1, MAX_SCALING_INSTANCE_COUNT, optional=True)
    integer("managed_scaling_min_instance_count", 1, MAX_SCALING_INSTANCE_COUNT, optional=True)
    integer("idle_timeout_minutes", 1, MAX_IDLE_TIMEOUT_MINUTES, optional=True)
    integer("step_concurrency_level", 1, EMR_MAX_ACTIVE_STEPS)
    integer("max_active_steps", 1, EMR_MAX_ACTIVE_STEPS)
    pattern("vpc_id", VPC_ID_PATTERN, "null (a new VPC) or an id such as vpc-0123456789abcdef0", optional=True)
    string_list("subnet_ids", SUBNET_ID_PATTERN, "private subnet ids such as subnet-0123456789abcdef0", 16)
    integer("nat_gateways", 0, MAX_NAT_GATEWAYS)
    boolean("retain_data_on_destroy")
    boolean("offline_wheelhouse")
    integer("log_retention_days", 1, 3650)
    pattern("notification_email", EMAIL_PATTERN, "null or an e-mail address", optional=True)
    pattern("model_name", MODEL_NAME_PATTERN, "1-128 characters: letters, digits, '.', '_', '-' (no '/')")
    integer("job_batch_size", 1, 65_536)
    integer("model_input_size", MIN_MODEL_INPUT_SIZE, MAX_MODEL_INPUT_SIZE)
    integer("job_top_k", 1, 1000)
    number("job_max_failure_ratio", 0.0, 1.0)
    integer("step_timeout_minutes", 5, MAX_STEP_TIMEOUT_MINUTES)
    integer("trigger_batch_size", 1, SQS_MAX_BATCH_SIZE)
    integer("trigger_batching_window_seconds", 0, SQS_MAX_BATCHING_WINDOW_SECONDS)
    integer("athena_scan_limit_gb", 1, MAX_ATHENA_SCAN_LIMIT_GB)
    if "input_locations" in values:
        locations = values["input_locations"]
        location_problems = input_location_problems(locations)
        problems.extend(location_problems)
        if not location_problems:
            checked["input_locations"] = None if locations is None else tuple(locations)

    if "model_publisher_arns" in values:
        arns = values["model_publisher_arns"]
        allowed = ("null or a list of 1 to 20 IAM principal ARNs 'arn:<partition>:iam::<12-digit account>:role/...' or "
                   "':user/...' (IAM's ArnLike '*' and '?' wildcards allowed)")
        if arns is None:
            checked["model_publisher_arns"] = None
        elif not isinstance(arns, (list, tuple)) or not 1 <= len(arns) <= 20:
            problems.append(f"model_publisher_arns: {arns!r} is not allowed; allowed: {allowed}")
        else:
            bad = [arn for arn in arns if not (isinstance(arn, str) and MODEL_PUBLISHER_ARN_PATTERN.match(arn))]
            problems.extend(f"model_publisher_arns: {arn!r} is not an IAM principal ARN; allowed: {allowed}"
                            for arn in bad)
            if not bad:
                checked["model_publisher_arns"] = tuple(arns)

    merged = Settings(**{**{f.name: f.default for f in fields(Settings)}, **checked})
    problems.extend(_cross_checks(merged))
    if problems:
        raise SettingsError(
            f"invalid settings (cdk.json context {CONTEXT_KEY!r}, and -c options) ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
        )
    return merged


MODEL_PUBLISHER_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|\*):(role|user)/[\w+=,.@/*?-]+$")


def input_location_problems(locations: Any) -> list[str]:
    """Every problem of an ``input_locations`` value (null, or a list of "s3://bucket/prefix/"), one per entry."""
    allowed = (
        f"null or a list of 1 to {MAX_INPUT_LOCATIONS} distinct locations 's3://<bucket>/<prefix>/' (a bucket name of "
        "3-63 lowercase letters, digits, '.' and '-'; a prefix of whole segments ending with '/', or none for the "
        f"whole bucket; no wildcards {' '.join(INPUT_LOCATION_FORBIDDEN)}; at most {MAX_INPUT_LOCATION_CHARS} "
        "characters)"
    )
    if locations is None:
        return []
    if not isinstance(locations, (list, tuple)) or not 1 <= len(locations) <= MAX_INPUT_LOCATIONS:
        return [f"input_locations: {locations!r} is not allowed; allowed: {allowed}"]
    problems = []
    for location in locations:
        why = _input_location_problem(location)
        if why:
            problems.append(f"input_locations: {location!r} {why}; allowed: {allowed}")
    if not problems and len(set(locations)) != len(locations):
        problems.append(f"input_locations: {list(locations)!r} names a location twice; allowed: {allowed}")
    return problems


def _input_location_problem(location: Any) -> str:
    """Why one input location is refused, or "" when it is a valid "s3://bucket/prefix/"."""
    if not isinstance(location, str):
        return f"is a {type(location).__name__}, not a string"
    if len(location) > MAX_INPUT_LOCATION_CHARS:
        return f"is longer than {MAX_INPUT_LOCATION_CHARS} characters"
    if any(ord(character) < 32 or ord(character) == 127 for character in location):
        return "holds a control character"
    match = INPUT_LOCATION_PATTERN.match(location)
    if not match:
        return "is not an s3://<bucket>/ URI with a valid bucket name"
    prefix = match.group(2)
    if any(mark in location for mark in INPUT_LOCATION_FORBIDDEN):
        return "holds an IAM wildcard or policy variable character"
    if prefix and not prefix.endswith("/"):
        return "does not end with '/' (a prefix is whole path segments)"
    if any(segment in ("", ".", "..") for segment in prefix.split("/")[:-1]):
        return "has an empty, '.' or '..' path segment"
    return ""


def _cross_checks(settings: Settings) -> list[str]:
    """Checks between settings, run only on values that passed their own check."""
    problems = []
    if settings.compute == "gpu" and settings.architecture == ARM64:
        problems.append(
            "architecture: 'arm64' is not allowed when compute is 'gpu': MXNet's CUDA build (mxnet-cu117) has x86_64 "
            "wheels only; allowed: x86_64, or compute 'cpu'"
        )
    fleets = [("primary_instance_types", settings.resolved_primary_instance_types, False)]
    fleets.append(("core_instance_types", settings.resolved_core_instance_types, True))
    if settings.has_task_fleet:
        fleets.append(("task_instance_types", settings.resolved_task_instance_types, True))
    for key, instance_types, runs_tasks in fleets:
        for instance_type in instance_types:
            problems.extend(_instance_type_problems(settings, key, instance_type, runs_tasks))
    problems.extend(_capacity_problems(settings))
    if settings.compute == "cpu" and settings.job_device == "gpu":
        problems.append("job_device: 'gpu' is not allowed when compute is 'cpu'; allowed: cpu, auto")
    if (settings.vpc_id is None) != (settings.subnet_ids is None):
        problems.append(
            f"vpc_id/subnet_ids: got vpc_id={settings.vpc_id!r}, subnet_ids={settings.subnet_ids!r}; allowed: both "
            "null (a new VPC) or both set (an existing VPC and one or more of its private subnets)"
        )
    if not settings.uses_new_vpc and settings.nat_gateways != Settings.nat_gateways:
        problems.append(
            f"nat_gateways: {settings.nat_gateways} has no effect with an existing VPC (vpc_id {settings.vpc_id!r}); "
            f"allowed: the default {Settings.nat_gateways}, or vpc_id null for a new VPC with NAT gateways"
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


def _instance_type_problems(settings: Settings, key: str, instance_type: str, runs_tasks: bool) -> list[str]:
    problems = []
    try:
        type_architecture = architecture(instance_type)
    except UnknownArchitecture as error:
        return [f"{key}: {error}"]
    if type_architecture != settings.architecture:
        example = DEFAULT_WORKER_INSTANCE_TYPES[("cpu", settings.architecture)][0]
        problems.append(
            f"{key}: {instance_type!r} is an {type_architecture} type but architecture is {settings.architecture!r}; "
            f"allowed: {settings.architecture} types such as {example}, or set architecture to {type_architecture!r} "
            "for every type of the cluster"
        )
    if not runs_tasks:
        return problems
    try:
        # The fleet's capacity and the cluster's task slots (spark.default.parallelism) count the workers' vCPUs.
        vcpus(instance_type)
    except UnknownInstanceSize as error:
        problems.append(f"{key}: {error}")
    if settings.compute == "gpu" and not gpus(instance_type):
        problems.append(
            f"{key}: {instance_type!r} has no GPU but compute is 'gpu'; allowed: types of the families "
            f"{', '.join(GPU_FAMILIES)} (e.g. g4dn.xlarge, g5.xlarge)"
        )
    if settings.compute == "cpu" and gpus(instance_type):
        problems.append(
            f"{key}: {instance_type!r} is a GPU type but compute is 'cpu' (the GPU would sit idle); "
            "allowed: a CPU type such as c5.2xlarge, or set compute to 'gpu'"
        )
    return problems


def _capacity_problems(settings: Settings) -> list[str]:
    """Task fleet, Spot and managed-scaling settings that contradict each other or would have no effect."""
    problems = []
    if not settings.has_task_fleet:
        # A value that cannot apply is an error, not a silent no-op (a default value is harmless and allowed).
        if settings.task_instance_types is not None:
            problems.append(
                f"task_instance_types: {list(settings.task_instance_types)!r} has no effect with task_instance_count "
                "0; allowed: null, or a task_instance_count of 1 or more"
            )
        if settings.spot_timeout_minutes != DEFAULT_SPOT_TIMEOUT_MINUTES:
            problems.append(
                f"spot_timeout_minutes: {settings.spot_timeout_minutes} has no effect with task_instance_count 0 "
                f"(only task nodes run on Spot); allowed: the default {DEFAULT_SPOT_TIMEOUT_MINUTES}, or a "
                "task_instance_count of 1 or more"
            )
    maximum = settings.managed_scaling_max_instance_count
    minimum = settings.managed_scaling_min_instance_count
    if maximum is None:
        if minimum is not None:
            problems.append(
                f"managed_scaling_min_instance_count: {minimum} has no effect while managed_scaling_max_instance_count "
                "is null (managed scaling off); allowed: null, or set managed_scaling_max_instance_count too"
            )
        return problems
    workers = settings.core_instance_count + settings.task_instance_count
    if not settings.has_task_fleet:
        problems.append(
            f"managed_scaling_max_instance_count: {maximum} needs a task fleet to scale (managed scaling adds Spot "
            "task nodes only, never core nodes); allowed: null, or a task_instance_count of 1 or more"
        )
    if maximum < workers:
        problems.append(
            f"managed_scaling_max_instance_count: {maximum} is below the {workers} worker nodes the cluster starts "
            f"with (core_instance_count {settings.core_instance_count} + task_instance_count "
            f"{settings.task_instance_count}); allowed: at least {workers}"
        )
    if minimum is not None and minimum > settings.core_instance_count:
        problems.append(
            f"managed_scaling_min_instance_count: {minimum} is above core_instance_count "
            f"{settings.core_instance_count}; allowed: 1 to {settings.core_instance_count} (scaling never adds core "
            "nodes, so the floor is at most the core)"
        )
    return problems
