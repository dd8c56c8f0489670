"""The function's environment: read once, every problem reported at once, each naming the variable."""

from __future__ import annotations

import dataclasses
import json

import pytest
from trigger_helpers import base_environment

from emr_step import JobArtifacts, JobOptions
from trigger_settings import EMR_MAX_ACTIVE_STEPS, ClusterMode, SettingsError, TriggerSettings
from trigger_helpers import BUCKET, CLAIM_LEASE_SECONDS, CLAIMS_TABLE, MAX_STEP_ATTEMPTS, QUEUE_URL, TOPIC_ARN



def job_options_json(**changes) -> str:
    """JOB_OPTIONS as the stack writes it (every field of JobOptions), with ``changes``."""
    return json.dumps({**dataclasses.asdict(JobOptions()), **changes})


PERSISTENT = base_environment(CLUSTER_ID="j-2AXXXXXXGAPLF")
TRANSIENT = base_environment(
    CLUSTER_MODE="transient",
    JOB_FLOW_DEFINITION_KEY="artifacts/cluster/run-job-flow.json",
    CLUSTER_TAG_KEY="stack",
    CLUSTER_TAG_VALUE="inference",
    CLUSTER_DEFINITION_TAG_KEY="stack:definition",
    CLUSTER_DEFINITION_TAG_VALUE="0123456789ab",
)


def test_persistent_environment_is_read_into_typed_settings():
    settings = TriggerSettings.from_environment(PERSISTENT)

    assert settings == TriggerSettings(
        data_bucket=BUCKET,
        incoming_prefix="incoming/",
        staged_prefix="staged/",
        manifests_prefix="manifests/",
        results_prefix="results/",
        model_uri=f"s3://{BUCKET}/models/resnet18/",
        artifacts=JobArtifacts(
            py_files_uri=f"s3://{BUCKET}/artifacts/job.zip", entry_point_uri=f"s3://{BUCKET}/artifacts/spark_entry.py"
        ),
        job_options=JobOptions(
            device="cpu", batch_size=128, top_k=3, max_failure_ratio=0.05, timeout_minutes=60,
            default_parallelism=24, executor_task_slots=4, max_batch_bytes=20 * 2**20,
        ),  # fmt: skip
        step_name_prefix="mxnet-inference-",
        cluster_mode=ClusterMode.PERSISTENT,
        cluster_id="j-2AXXXXXXGAPLF",
        job_flow_definition_key=None,
        cluster_tag_key=None,
        cluster_tag_value=None,
        cluster_definition_tag_key=None,
        cluster_definition_tag_value=None,
        cluster_name_prefix=None,
        max_active_steps=EMR_MAX_ACTIVE_STEPS,
        claims_table=CLAIMS_TABLE,
        claim_retention_days=30,
        notification_topic_arn=TOPIC_ARN,
        max_step_attempts=MAX_STEP_ATTEMPTS,
        claim_lease_seconds=CLAIM_LEASE_SECONDS,
        upload_queue_url=QUEUE_URL,
    )


def test_the_runs_prefix_defaults_to_runs_and_may_be_named_but_not_inside_another():
    assert TriggerSettings.from_environment(PERSISTENT).runs_prefix == "runs/"
    assert TriggerSettings.from_environment({**PERSISTENT, "RUNS_PREFIX": "records/"}).runs_prefix == "records/"
    with pytest.raises(SettingsError, match=r"RESULTS_PREFIX='results/' and RUNS_PREFIX='results/runs/' overlap"):
        TriggerSettings.from_environment({**PERSISTENT, "RUNS_PREFIX": "results/runs/"})


def test_the_staged_prefix_defaults_to_staged_and_may_be_named():
    assert TriggerSettings.from_environment(PERSISTENT).staged_prefix == "staged/"
    assert TriggerSettings.from_environment({**PERSISTENT, "STAGED_PREFIX": "lists/"}).staged_prefix == "lists/"


def test_a_persistent_stack_with_a_definition_may_launch_a_replacement_cluster():
    settings = TriggerSettings.from_environment(
        {**TRANSIENT, "CLUSTER_MODE": "persistent", "CLUSTER_ID": "j-2AXXXXXXGAPLF"}
    )

    assert (settings.cluster_mode, settings.cluster_id) == (ClusterMode.PERSISTENT, "j-2AXXXXXXGAPLF")
    assert settings.job_flow_definition_key == "artifacts/cluster/run-job-flow.json"
    assert settings.cluster_definition_tag_value == "0123456789ab"


def test_the_cluster_name_prefix_is_the_stack_tag_unless_named():
    """The stack names its clusters "<stack>-<compute>" and tags them "<stack>": only those names are described."""
    assert TriggerSettings.from_environment(TRANSIENT).cluster_name_prefix == "inference-"
    assert TriggerSettings.from_environment({**TRANSIENT, "CLUSTER_NAME_PREFIX": "x-"}).cluster_name_prefix == "x-"


def test_transient_environment_keeps_the_definition_and_tag():
    settings = TriggerSettings.from_environment(TRANSIENT)

    assert (settings.cluster_mode, settings.cluster_id) == (ClusterMode.TRANSIENT, None)
    assert (settings.job_flow_definition_key, settings.cluster_tag_key, settings.cluster_tag_value) == (
        "artifacts/cluster/run-job-flow.json",
        "stack",
        "inference",
    )
    assert (settings.cluster_definition_tag_key, settings.cluster_definition_tag_value) == (
        "stack:definition",
        "0123456789ab",
    )


def test_every_missing_variable_is_named_in_one_error():
    with pytest.raises(SettingsError) as raised:
        TriggerSettings.from_environment({})

    for name in ("DATA_BUCKET", "INCOMING_PREFIX", "MANIFESTS_PREFIX", "RESULTS_PREFIX", "MODEL_URI", "JOB_PY_FILES_URI",
                 "JOB_ENTRY_POINT_URI", "JOB_OPTIONS", "STEP_NAME_PREFIX", "CLUSTER_MODE", "MAX_ACTIVE_STEPS", "CLAIMS_TABLE", "CLAIM_RETENTION_DAYS",
                 "NOTIFICATION_TOPIC_ARN", "MAX_STEP_ATTEMPTS", "CLAIM_LEASE_SECONDS", "UPLOAD_QUEUE_URL"):  # fmt: skip
        assert f"{name} is missing" in str(raised.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"INCOMING_PREFIX": "incoming"}, r"INCOMING_PREFIX='incoming': expected a key prefix"),
        ({"RESULTS_PREFIX": "/results/"}, r"RESULTS_PREFIX='/results/': expected a key prefix"),
        (
            {"MANIFESTS_PREFIX": "incoming/manifests/"},
            r"INCOMING_PREFIX='incoming/' and MANIFESTS_PREFIX='incoming/manifests/' overlap",
        ),
        ({"MODEL_URI": "models/resnet18/"}, r"MODEL_URI='models/resnet18/': expected an s3:// URI"),
        ({"JOB_OPTIONS": "{device: cpu}"}, r"JOB_OPTIONS is not valid JSON"),
        ({"JOB_OPTIONS": '{"device": "cpu"}'}, r"JOB_OPTIONS has keys \['device'\]: expected exactly"),
        (
            {"JOB_OPTIONS": job_options_json(device="tpu")},
            r"JOB_OPTIONS.device='tpu': expected one of",
        ),
        (
            {"JOB_OPTIONS": job_options_json(batch_size=0)},
            r"JOB_OPTIONS.batch_size=0: expected a positive integer",
        ),
        (
            {"JOB_OPTIONS": job_options_json(top_k=True)},
            r"JOB_OPTIONS.top_k=True: expected a positive integer",
        ),
        (
            {"JOB_OPTIONS": job_options_json(max_failure_ratio=1.5)},
            r"JOB_OPTIONS.max_failure_ratio=1.5: expected a number from 0 to 1",
        ),
        (
            {"JOB_OPTIONS": job_options_json(timeout_minutes=0)},
            r"JOB_OPTIONS.timeout_minutes=0: expected a positive integer",
        ),
        (
            {"JOB_OPTIONS": job_options_json(default_parallelism=0)},
            r"JOB_OPTIONS.default_parallelism=0: expected a positive integer or null",
        ),
        (
            {"JOB_OPTIONS": job_options_json(executor_task_slots=None)},
            r"JOB_OPTIONS.executor_task_slots=None: expected a positive integer",
        ),
        (
            {"JOB_OPTIONS": job_options_json(max_batch_bytes="16MiB")},
            r"JOB_OPTIONS.max_batch_bytes='16MiB': expected a positive integer or null",
        ),
        ({"STEP_NAME_PREFIX": "x" * 235}, r"STEP_NAME_PREFIX has 235 characters: at most 234 leave room for the batch id and"),
        ({"CLUSTER_MODE": "serverless"}, r"CLUSTER_MODE='serverless': expected one of \['persistent', 'transient'\]"),
        ({"CLUSTER_ID": "cluster-1"}, r"CLUSTER_ID='cluster-1': expected an EMR cluster id"),
        ({"CLUSTER_ID": ""}, r"CLUSTER_ID is missing or empty"),
        (
            {"CLUSTER_DEFINITION_TAG_VALUE": "0123456789ab"},
            r"CLUSTER_DEFINITION_TAG_VALUE is set but CLUSTER_MODE='persistent' does not use it",
        ),
        # A persistent stack that ships a definition (to replace a dead cluster) needs every launch variable.
        ({"JOB_FLOW_DEFINITION_KEY": "x.json"}, r"CLUSTER_TAG_KEY is missing or empty"),
        ({"STAGED_PREFIX": "staged"}, r"STAGED_PREFIX='staged': expected a key prefix"),
        (
            {"STAGED_PREFIX": "incoming/staged/"},
            r"INCOMING_PREFIX='incoming/' and STAGED_PREFIX='incoming/staged/' overlap",
        ),
        ({"CLAIM_LEASE_SECONDS": "0"}, r"CLAIM_LEASE_SECONDS=0: expected an integer from 1 to 960"),
        ({"CLAIM_LEASE_SECONDS": "3600"}, r"CLAIM_LEASE_SECONDS=3600: expected an integer from 1 to 960"),
        ({"UPLOAD_QUEUE_URL": "trigger-uploads"}, r"UPLOAD_QUEUE_URL='trigger-uploads': expected the SQS queue's URL"),
        ({"MAX_ACTIVE_STEPS": "0"}, r"MAX_ACTIVE_STEPS=0: expected an integer from 1 to 256"),
        ({"MAX_ACTIVE_STEPS": "257"}, r"MAX_ACTIVE_STEPS=257: expected an integer from 1 to 256"),
        ({"MAX_ACTIVE_STEPS": "many"}, r"MAX_ACTIVE_STEPS='many': expected an integer from 1 to 256"),
        ({"CLAIMS_TABLE": ""}, r"CLAIMS_TABLE is missing or empty"),
        ({"NOTIFICATION_TOPIC_ARN": "step-notifications"}, r"NOTIFICATION_TOPIC_ARN='step-notifications': expected an SNS"),
        ({"MAX_STEP_ATTEMPTS": "10"}, r"MAX_STEP_ATTEMPTS=10: expected an integer from 1 to 9"),
        ({"MAX_STEP_ATTEMPTS": "twice"}, r"MAX_STEP_ATTEMPTS='twice': expected an integer from 1 to 9"),
        ({"CLAIM_RETENTION_DAYS": "0"}, r"CLAIM_RETENTION_DAYS=0: expected an integer from 1 to 365"),
        ({"CLAIM_RETENTION_DAYS": "a month"}, r"CLAIM_RETENTION_DAYS='a month': expected an integer from 1 to 365"),
    ],
)
def test_invalid_persistent_setting_is_named_with_what_is_allowed(overrides, message):
    with pytest.raises(SettingsError, match=message):
        TriggerSettings.from_environment({**PERSISTENT, **overrides})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"JOB_FLOW_DEFINITION_KEY": ""}, r"JOB_FLOW_DEFINITION_KEY is missing or empty"),
        ({"CLUSTER_TAG_KEY": ""}, r"CLUSTER_TAG_KEY is missing or empty"),
        ({"CLUSTER_TAG_VALUE": ""}, r"CLUSTER_TAG_VALUE is missing or empty"),
        ({"CLUSTER_DEFINITION_TAG_VALUE": ""}, r"CLUSTER_DEFINITION_TAG_VALUE is missing or empty"),
        ({"CLUSTER_ID": "j-2AXXXXXXGAPLF"}, r"CLUSTER_ID is set but CLUSTER_MODE='transient' does not use it"),
    ],
)
def test_invalid_transient_setting_is_named_with_what_is_allowed(overrides, message):
    with pytest.raises(SettingsError, match=message):
        TriggerSettings.from_environment({**TRANSIENT, **overrides})


def test_job_options_take_every_field_of_the_step_builders_options_and_null_for_the_jobs_defaults():
    """The stack writes JOB_OPTIONS with dataclasses.asdict(JobOptions(...)): every field, None as null."""
    defaults = TriggerSettings.from_environment({**PERSISTENT, "JOB_OPTIONS": job_options_json()}).job_options
    assert defaults == JobOptions() and defaults.default_parallelism is None and defaults.max_batch_bytes is None
    missing = {name: value for name, value in dataclasses.asdict(JobOptions()).items() if name != "max_batch_bytes"}
    with pytest.raises(SettingsError, match=r"JOB_OPTIONS has keys \[.*\]: expected exactly \[.*'max_batch_bytes'"):
        TriggerSettings.from_environment({**PERSISTENT, "JOB_OPTIONS": json.dumps(missing)})
