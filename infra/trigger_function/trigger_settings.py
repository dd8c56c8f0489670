"""The trigger Lambda's settings: its environment variables, read and validated once when the function starts.

The stack sets these variables (the interface between the stack and this function). Every problem is collected first and
reported in one error, each naming the variable, the value received and what is allowed, so a wiring mistake shows up in the
function's first log line instead of in a half-submitted batch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from emr_step import JobArtifacts, JobOptions

# EMR's own limit on PENDING + RUNNING steps per cluster; the setting can only lower it.
EMR_MAX_ACTIVE_STEPS = 256
# EMR step names are at most 256 characters; the batch id appended to the prefix has BATCH_ID_LENGTH characters.
EMR_MAX_STEP_NAME_CHARS = 256
BATCH_ID_LENGTH = 20
JOB_DEVICES = ("cpu", "gpu", "auto")
# A retried attempt's step name ends with "-<attempt>" (runs.py); the stack allows at most this many attempts per batch.
MAX_STEP_ATTEMPTS_LIMIT = 9
ATTEMPT_SUFFIX_CHARS = len(f"-{MAX_STEP_ATTEMPTS_LIMIT}")
# Claims must outlive every message that could repeat an upload (see infra/trigger.py, CLAIM_RETENTION).
MAX_CLAIM_RETENTION_DAYS = 365
# Where manifest-listed inputs live when they are not uploads: a prefix that does not notify (reliability review #4).
# The stack may name another one with STAGED_PREFIX; unset, this one is meant (the stack's own default).
DEFAULT_STAGED_PREFIX = "staged/"
# Where each step's job writes its run's one-line record (the runs table, infra/catalog.py): RUNS_PREFIX names another.
DEFAULT_RUNS_PREFIX = "runs/"
# A claim's lease must outlive the invocation that holds it: at most Lambda's maximum run time (900 s) plus a minute.
MAX_CLAIM_LEASE_SECONDS = 900 + 60


class ClusterMode(str, Enum):
    PERSISTENT = "persistent"  # the stack runs one long-lived cluster: steps go to CLUSTER_ID
    # Steps go to a running cluster of this stack (found by tag), else to a new one launched from the stack's
    # definition, which ends by itself (idle timeout). Also a persistent stack's mode when its cluster can end idle.
    TRANSIENT = "transient"


class SettingsError(ValueError):
    """The function's environment is not what the stack should have set; the message lists every problem."""


@dataclass(frozen=True)
class TriggerSettings:
    data_bucket: str
    incoming_prefix: str
    staged_prefix: str  # inputs that manifests may list and that never start a run themselves
    manifests_prefix: str
    results_prefix: str
    model_uri: str
    artifacts: JobArtifacts
    job_options: JobOptions
    step_name_prefix: str
    cluster_mode: ClusterMode
    cluster_id: str | None  # persistent mode only
    # Transient mode; optional in persistent mode: a cluster is launched from it when CLUSTER_ID accepts no steps.
    job_flow_definition_key: str | None
    cluster_tag_key: str | None  # the tag that marks this stack's clusters (required when clusters may be launched)
    cluster_tag_value: str | None
    # The tag of the clusters launched from the current definition; only those get new batches.
    cluster_definition_tag_key: str | None
    cluster_definition_tag_value: str | None
    # The stack's clusters are named "<stack>-<compute>": ListClusters returns names, so only clusters whose name starts
    # with this are described (reliability review #18). None when the stack's tag is unknown (persistent, no launches).
    cluster_name_prefix: str | None
    max_active_steps: int
    claims_table: str  # DynamoDB table of upload claims and batch records (claims.py)
    claim_retention_days: int
    notification_topic_arn: str  # where a batch whose step was cancelled MAX_STEP_ATTEMPTS times is reported
    max_step_attempts: int
    claim_lease_seconds: int  # the function's timeout plus a margin (infra/trigger.py)
    upload_queue_url: str  # the queue the function reads: records to retry soon get a shorter visibility timeout
    # Read-only input locations ("s3://bucket/prefix/") that manifests may list besides incoming/ and staged/.
    input_locations: tuple[str, ...] = ()
    runs_prefix: str = DEFAULT_RUNS_PREFIX  # the job's --run-record is s3://DATA_BUCKET/<runs_prefix><run id>.json

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> TriggerSettings:
        """Read every variable, collect every problem, and raise one :class:`SettingsError` listing them all."""
        problems: list[str] = []

        def required(name: str) -> str:
            value = environ.get(name, "").strip()
            if not value:
                problems.append(f"{name} is missing or empty: the stack must set it")
            return value

        def prefix(name: str) -> str:
            value = required(name)
            if value and (not value.endswith("/") or value.startswith("/")):
                problems.append(
                    f"{name}={value!r}: expected a key prefix like 'incoming/' (ends with '/', no leading '/')"
                )
            return value

        def s3_uri(name: str) -> str:
            value = required(name)
            if value and not (value.startswith("s3://") and len(value) > len("s3://")):
                problems.append(f"{name}={value!r}: expected an s3:// URI")
            return value

        data_bucket = required("DATA_BUCKET")
        incoming_prefix = prefix("INCOMING_PREFIX")
        staged_prefix = DEFAULT_STAGED_PREFIX
        if environ.get("STAGED_PREFIX", "").strip():
            staged_prefix = prefix("STAGED_PREFIX")
        manifests_prefix = prefix("MANIFESTS_PREFIX")
        results_prefix = prefix("RESULTS_PREFIX")
        runs_prefix = DEFAULT_RUNS_PREFIX
        if environ.get("RUNS_PREFIX", "").strip():
            runs_prefix = prefix("RUNS_PREFIX")
        # Objects this function or the job writes must never count as uploads, or a run would trigger the next one; and
        # staged inputs must never be uploads, or a manifest's images would run twice.
        named_prefixes = [
            ("INCOMING_PREFIX", incoming_prefix),
            ("STAGED_PREFIX", staged_prefix),
            ("MANIFESTS_PREFIX", manifests_prefix),
            ("RESULTS_PREFIX", results_prefix),
            ("RUNS_PREFIX", runs_prefix),
        ]
        for index, (name, value) in enumerate(named_prefixes):
            for other_name, other_value in named_prefixes[index + 1 :]:
                if value and other_value and (value.startswith(other_value) or other_value.startswith(value)):
                    problems.append(
                        f"{name}={value!r} and {other_name}={other_value!r} overlap: they must be separate prefixes"
                    )

        model_uri = s3_uri("MODEL_URI")
        artifacts = JobArtifacts(py_files_uri=s3_uri("JOB_PY_FILES_URI"), entry_point_uri=s3_uri("JOB_ENTRY_POINT_URI"))
        job_options = _job_options(required("JOB_OPTIONS"), problems)

        step_name_prefix = required("STEP_NAME_PREFIX")
        run_id_chars = BATCH_ID_LENGTH + ATTEMPT_SUFFIX_CHARS
        if len(step_name_prefix) + run_id_chars > EMR_MAX_STEP_NAME_CHARS:
            problems.append(
                f"STEP_NAME_PREFIX has {len(step_name_prefix)} characters: at most "
                f"{EMR_MAX_STEP_NAME_CHARS - run_id_chars} leave room for the batch id and attempt in EMR's "
                "256-character step name"
            )

        mode_value = required("CLUSTER_MODE")
        allowed_modes = [mode.value for mode in ClusterMode]
        cluster_mode = ClusterMode.PERSISTENT
        if mode_value:
            if mode_value in allowed_modes:
                cluster_mode = ClusterMode(mode_value)
            else:
                problems.append(f"CLUSTER_MODE={mode_value!r}: expected one of {allowed_modes}")

        cluster_id = job_flow_definition_key = cluster_tag_key = cluster_tag_value = None
        cluster_definition_tag_key = cluster_definition_tag_value = None
        if cluster_mode is ClusterMode.PERSISTENT:
            cluster_id = required("CLUSTER_ID")
            if cluster_id and not cluster_id.startswith("j-"):
                problems.append(f"CLUSTER_ID={cluster_id!r}: expected an EMR cluster id like 'j-2AXXXXXXGAPLF'")
            # A persistent stack may ship a definition: a cluster is launched from it when CLUSTER_ID no longer
            # accepts steps (it died; an unchanged deploy would not bring it back). Every launch variable is needed.
            launches = bool(environ.get("JOB_FLOW_DEFINITION_KEY", "").strip())
            mode_only_names: tuple[str, ...] = ()
        else:
            launches = True
            mode_only_names = ("CLUSTER_ID",)
        if launches:
            job_flow_definition_key = required("JOB_FLOW_DEFINITION_KEY")
            cluster_tag_key = required("CLUSTER_TAG_KEY")
            cluster_tag_value = required("CLUSTER_TAG_VALUE")
            cluster_definition_tag_key = required("CLUSTER_DEFINITION_TAG_KEY")
            cluster_definition_tag_value = required("CLUSTER_DEFINITION_TAG_VALUE")
        else:
            cluster_tag_key = environ.get("CLUSTER_TAG_KEY", "").strip() or None
            cluster_tag_value = environ.get("CLUSTER_TAG_VALUE", "").strip() or None
            mode_only_names = ("CLUSTER_DEFINITION_TAG_KEY", "CLUSTER_DEFINITION_TAG_VALUE")
        # A variable of the other mode means the stack and the function disagree about the mode: say so rather than guess.
        for name in mode_only_names:
            if environ.get(name, "").strip():
                problems.append(f"{name} is set but CLUSTER_MODE={cluster_mode.value!r} does not use it")
        cluster_name_prefix = environ.get("CLUSTER_NAME_PREFIX", "").strip() or None
        if cluster_name_prefix is None and cluster_tag_value:
            # The stack names its clusters "<stack>-<compute>" and tags them with the stack's name (infra/stack.py).
            cluster_name_prefix = f"{cluster_tag_value}-"

        max_active_text = required("MAX_ACTIVE_STEPS")
        max_active_steps = EMR_MAX_ACTIVE_STEPS
        if max_active_text:
            try:
                max_active_steps = _positive_int(
                    problems, "MAX_ACTIVE_STEPS", int(max_active_text), upper=EMR_MAX_ACTIVE_STEPS
                )
            except ValueError:
                problems.append(
                    f"MAX_ACTIVE_STEPS={max_active_text!r}: expected an integer from 1 to {EMR_MAX_ACTIVE_STEPS}"
                )

        claims_table = required("CLAIMS_TABLE")
        notification_topic_arn = required("NOTIFICATION_TOPIC_ARN")
        if notification_topic_arn and not notification_topic_arn.startswith("arn:"):
            problems.append(f"NOTIFICATION_TOPIC_ARN={notification_topic_arn!r}: expected an SNS topic ARN")
        claim_retention_days = _integer_variable(
            problems, "CLAIM_RETENTION_DAYS", upper=MAX_CLAIM_RETENTION_DAYS, required=required
        )
        max_step_attempts = _integer_variable(
            problems, "MAX_STEP_ATTEMPTS", upper=MAX_STEP_ATTEMPTS_LIMIT, required=required
        )
        claim_lease_seconds = _integer_variable(
            problems, "CLAIM_LEASE_SECONDS", upper=MAX_CLAIM_LEASE_SECONDS, required=required
        )
        upload_queue_url = required("UPLOAD_QUEUE_URL")
        if upload_queue_url and not upload_queue_url.startswith(("https://", "http://")):
            problems.append(f"UPLOAD_QUEUE_URL={upload_queue_url!r}: expected the SQS queue's URL")

        input_locations = _input_locations(environ.get("INPUT_LOCATIONS", "").strip(), problems)

        if problems:
            raise SettingsError("Invalid trigger function environment:\n- " + "\n- ".join(problems))
        return cls(
            data_bucket=data_bucket,
            incoming_prefix=incoming_prefix,
            staged_prefix=staged_prefix,
            manifests_prefix=manifests_prefix,
            results_prefix=results_prefix,
            runs_prefix=runs_prefix,
            model_uri=model_uri,
            artifacts=artifacts,
            job_options=job_options,
            step_name_prefix=step_name_prefix,
            cluster_mode=cluster_mode,
            cluster_id=cluster_id,
            job_flow_definition_key=job_flow_definition_key,
            cluster_tag_key=cluster_tag_key,
            cluster_tag_value=cluster_tag_value,
            cluster_definition_tag_key=cluster_definition_tag_key,
            cluster_definition_tag_value=cluster_definition_tag_value,
            cluster_name_prefix=cluster_name_prefix,
            max_active_steps=max_active_steps,
            claims_table=claims_table,
            claim_retention_days=claim_retention_days,
            notification_topic_arn=notification_topic_arn,
            max_step_attempts=max_step_attempts,
            claim_lease_seconds=claim_lease_seconds,
            upload_queue_url=upload_queue_url,
            input_locations=input_locations,
        )


def _integer_variable(problems: list[str], name: str, *, upper: int, required) -> int:
    """An integer variable from 1 to ``upper``; ``required`` reads it (and records it missing)."""
    text = required(name)
    if not text:
        return 1
    try:
        return _positive_int(problems, name, int(text), upper=upper)
    except ValueError:
        problems.append(f"{name}={text!r}: expected an integer from 1 to {upper}")
        return 1


def _input_locations(text: str, problems: list[str]) -> tuple[str, ...]:
    """Parse INPUT_LOCATIONS: unset, or a JSON list of "s3://bucket/prefix/" strings (the stack validated each)."""
    if not text:
        return ()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"INPUT_LOCATIONS is not valid JSON ({error.msg} at character {error.pos})")
        return ()
    # Each must name a bucket and end with '/': "s3://" alone, or a prefix cut mid-name, would admit other objects.
    def usable(item: object) -> bool:
        return isinstance(item, str) and item.startswith("s3://") and item.endswith("/") and item[5:].find("/") > 0

    if not isinstance(raw, list) or not raw or not all(usable(item) for item in raw):
        problems.append(f"INPUT_LOCATIONS={text[:200]!r}: expected a non-empty JSON list of 's3://bucket/prefix/'")
        return ()
    return tuple(raw)


def _job_options(text: str, problems: list[str]) -> JobOptions:
    """Parse JOB_OPTIONS, a JSON object with exactly the keys of :class:`emr_step.JobOptions` (its fields: the stack
    writes it with ``dataclasses.asdict``, so both sides follow the one definition)."""
    defaults = JobOptions()
    if not text:
        return defaults
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        problems.append(f"JOB_OPTIONS is not valid JSON ({error.msg} at character {error.pos})")
        return defaults
    expected_keys = {option.name for option in dataclasses.fields(JobOptions)}
    if not isinstance(raw, dict) or set(raw) != expected_keys:
        received = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        problems.append(f"JOB_OPTIONS has keys {received}: expected exactly {sorted(expected_keys)}")
        return defaults
    device = raw["device"]
    if device not in JOB_DEVICES:
        problems.append(f"JOB_OPTIONS.device={device!r}: expected one of {list(JOB_DEVICES)}")
    ratio = raw["max_failure_ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        problems.append(f"JOB_OPTIONS.max_failure_ratio={ratio!r}: expected a number from 0 to 1")
        ratio = defaults.max_failure_ratio

    def optional_positive_int(name: str) -> int | None:
        """null (Spark's or the job's own default) or a positive integer."""
        if raw[name] is None:
            return None
        return _positive_int(problems, f"JOB_OPTIONS.{name}", raw[name], allowed_suffix=" or null")

    return JobOptions(
        device=device,
        batch_size=_positive_int(problems, "JOB_OPTIONS.batch_size", raw["batch_size"]),
        top_k=_positive_int(problems, "JOB_OPTIONS.top_k", raw["top_k"]),
        max_failure_ratio=float(ratio),
        timeout_minutes=_positive_int(problems, "JOB_OPTIONS.timeout_minutes", raw["timeout_minutes"]),
        default_parallelism=optional_positive_int("default_parallelism"),
        executor_task_slots=_positive_int(problems, "JOB_OPTIONS.executor_task_slots", raw["executor_task_slots"]),
        max_batch_bytes=optional_positive_int("max_batch_bytes"),
    )


def _positive_int(
    problems: list[str], name: str, value: object, upper: int | None = None, allowed_suffix: str = ""
) -> int:
    # bool is an int subclass: reject it so JSON `true` is not read as 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (upper is not None and value > upper):
        allowed = f"an integer from 1 to {upper}" if upper is not None else "a positive integer"
        problems.append(f"{name}={value!r}: expected {allowed}{allowed_suffix}")
        return 1
    return value
