"""Settings validation: every setting's wrong values fail with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest
from infra_helpers import REPO_ROOT, cdk_json_context

from infra.settings import (
    CONTEXT_KEY,
    DEFAULT_CPU_WORKER_INSTANCE_TYPE,
    DEFAULT_GPU_WORKER_INSTANCE_TYPE,
    Settings,
    SettingsError,
)


def test_cdk_json_lists_every_setting_with_its_default():
    documented = cdk_json_context()[CONTEXT_KEY]
    defaults = {field.name: field.default for field in fields(Settings)}
    assert documented == defaults


def test_empty_context_gives_the_defaults():
    assert Settings.from_context(None) == Settings()


def test_json_string_from_the_command_line_is_parsed():
    assert Settings.from_context('{"compute": "gpu"}').compute == "gpu"


def test_context_that_is_not_an_object_is_rejected():
    with pytest.raises(SettingsError, match=r"context 'inference': expected an object of settings, got list"):
        Settings.from_context(["cpu"])


def test_context_that_is_not_json_is_rejected():
    with pytest.raises(SettingsError, match=r"context 'inference': not valid JSON"):
        Settings.from_context("{compute: gpu")


def test_unknown_key_is_rejected_with_the_known_keys():
    with pytest.raises(SettingsError, match=r"compte: unknown setting \(value 'gpu'\); known settings: .*compute"):
        Settings.from_context({"compte": "gpu"})


def test_every_problem_is_reported_at_once():
    with pytest.raises(SettingsError, match=r"\(3 problem\(s\)\)") as raised:
        Settings.from_context({"compute": "tpu", "cluster_mode": "forever", "job_top_k": 0})
    message = str(raised.value)
    assert "compute: 'tpu'" in message and "cluster_mode: 'forever'" in message and "job_top_k: 0" in message


@pytest.mark.parametrize(
    "overrides, expected_message",
    [
        ({"compute": "tpu"}, r"compute: 'tpu' is not allowed; allowed: cpu, gpu"),
        ({"cluster_mode": "forever"}, r"cluster_mode: 'forever' is not allowed; allowed: persistent, transient"),
        ({"release_label": "emr-6.15.0"}, r"release_label: 'emr-6.15.0' is not allowed; allowed: emr-7.X.Y"),
        ({"release_label": "emr-7.0.0"}, r"release_label: 'emr-7.0.0' is not allowed; allowed: emr-7.1.0 or later"),
        ({"primary_instance_type": "m5 xlarge"}, r"primary_instance_type: 'm5 xlarge' is not allowed; allowed: an EC2"),
        ({"core_instance_type": 42}, r"core_instance_type: 42 is not allowed"),
        ({"compute": "gpu", "core_instance_type": "c5.2xlarge"}, r"core_instance_type: 'c5.2xlarge' has no GPU"),
        ({"compute": "cpu", "core_instance_type": "g5.xlarge"}, r"core_instance_type: 'g5.xlarge' is a GPU type"),
        ({"core_instance_count": 0}, r"core_instance_count: 0 is not allowed; allowed: an integer from 1 to 100"),
        ({"core_instance_count": "2"}, r"core_instance_count: '2' is not allowed"),
        ({"core_instance_count": True}, r"core_instance_count: True is not allowed"),
        (
            {"compute": "gpu", "task_instance_count": 1, "task_instance_type": "m5.xlarge"},
            r"task_instance_type: 'm5.xlarge' has no GPU",
        ),
        ({"task_instance_type": "bad"}, r"task_instance_type: 'bad' is not allowed"),
        ({"task_instance_count": -1}, r"task_instance_count: -1 is not allowed; allowed: an integer from 0 to 100"),
        (
            {"step_concurrency_level": 257},
            r"step_concurrency_level: 257 is not allowed; allowed: an integer from 1 to 256",
        ),
        ({"max_active_steps": 0}, r"max_active_steps: 0 is not allowed; allowed: an integer from 1 to 256"),
        (
            {"step_concurrency_level": 10, "max_active_steps": 5},
            r"max_active_steps: 5 is below step_concurrency_level 10",
        ),
        ({"vpc_id": "vpc-xyz", "subnet_id": "subnet-0123abcd"}, r"vpc_id: 'vpc-xyz' is not allowed"),
        ({"vpc_id": "vpc-0123abcd"}, r"vpc_id/subnet_id: got vpc_id='vpc-0123abcd', subnet_id=None"),
        ({"vpc_id": "vpc-0123abcd", "subnet_id": "sn-1"}, r"subnet_id: 'sn-1' is not allowed"),
        ({"nat_gateways": 4}, r"nat_gateways: 4 is not allowed; allowed: an integer from 0 to 3"),
        ({"nat_gateways": 0}, r"nat_gateways: 0 is not allowed with offline_wheelhouse false"),
        ({"offline_wheelhouse": "yes"}, r"offline_wheelhouse: 'yes' is not allowed; allowed: true or false"),
        ({"retain_data_on_destroy": "true"}, r"retain_data_on_destroy: 'true' is not allowed; allowed: true or false"),
        ({"log_retention_days": 0}, r"log_retention_days: 0 is not allowed; allowed: an integer from 1 to 3650"),
        ({"notification_email": "ops-at-example"}, r"notification_email: 'ops-at-example' is not allowed"),
        ({"model_name": "a/b"}, r"model_name: 'a/b' is not allowed; allowed: 1-128 characters"),
        ({"job_device": "tpu"}, r"job_device: 'tpu' is not allowed; allowed: cpu, gpu, auto"),
        ({"compute": "cpu", "job_device": "gpu"}, r"job_device: 'gpu' is not allowed when compute is 'cpu'"),
        ({"job_batch_size": 0}, r"job_batch_size: 0 is not allowed; allowed: an integer from 1 to 65536"),
        ({"job_top_k": 0}, r"job_top_k: 0 is not allowed; allowed: an integer from 1 to 1000"),
        (
            {"job_max_failure_ratio": 1.5},
            r"job_max_failure_ratio: 1.5 is not allowed; allowed: a number from 0.0 to 1.0",
        ),
        (
            {"step_timeout_minutes": 1},
            r"step_timeout_minutes: 1 is not allowed; allowed: an integer from 5 to 10080",
        ),
        (
            {"core_instance_type": "c5.metal"},
            r"core_instance_type: 'c5.metal': the size 'metal' does not tell its vCPUs",
        ),
        (
            {"task_instance_count": 1, "task_instance_type": "m5.huge"},
            r"task_instance_type: 'm5.huge': the size 'huge' does not tell its vCPUs",
        ),
        (
            {"trigger_batch_size": 10_001},
            r"trigger_batch_size: 10001 is not allowed; allowed: an integer from 1 to 10000",
        ),
        (
            {"trigger_batching_window_seconds": 301},
            r"trigger_batching_window_seconds: 301 is not allowed; allowed: an integer from 0 to 300",
        ),
        (
            {"trigger_batch_size": 100, "trigger_batching_window_seconds": 0},
            r"trigger_batching_window_seconds: 0 is not allowed with trigger_batch_size 100",
        ),
    ],
)
def test_invalid_setting_is_rejected_naming_key_value_and_allowed(overrides, expected_message):
    with pytest.raises(SettingsError, match=expected_message):
        Settings.from_context(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"compute": "gpu", "core_instance_type": "g5.xlarge", "job_device": "gpu"},
        {"release_label": "emr-7.1.0"},
        {"vpc_id": "vpc-0123456789abcdef0", "subnet_id": "subnet-0123456789abcdef0", "nat_gateways": 0},
        {"nat_gateways": 0, "offline_wheelhouse": True},
        {"notification_email": "ops@example.com", "retain_data_on_destroy": True},
        {"trigger_batch_size": 10, "trigger_batching_window_seconds": 0},
        {"job_max_failure_ratio": 0},
    ],
)
def test_valid_setting_is_accepted(overrides):
    settings = Settings.from_context(overrides)
    assert all(getattr(settings, key) == value for key, value in overrides.items())


@pytest.mark.parametrize(
    "compute, expected", [("cpu", DEFAULT_CPU_WORKER_INSTANCE_TYPE), ("gpu", DEFAULT_GPU_WORKER_INSTANCE_TYPE)]
)
def test_worker_instance_type_defaults_to_the_compute_kind(compute, expected):
    settings = Settings.from_context({"compute": compute, "task_instance_count": 1})
    assert (settings.worker_instance_type, settings.resolved_task_instance_type) == (expected, expected)


def test_infra_readme_documents_every_setting_with_its_default():
    readme = (REPO_ROOT / "infra" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    defaults = {field.name: json.dumps(field.default).strip('"') for field in fields(Settings)}
    assert rows == defaults
