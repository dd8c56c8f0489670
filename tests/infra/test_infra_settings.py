"""Settings validation: every setting's wrong values fail with a message naming the key, the value and what is allowed."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest
from infra_helpers import REPO_ROOT, cdk_json_context

from infra.settings import (
    CONTEXT_KEY,
    DEFAULT_PRIMARY_INSTANCE_TYPES,
    DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES,
    DEFAULT_WORKER_INSTANCE_TYPES,
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
    with pytest.raises(SettingsError, match=r"compte: unknown setting \(value 'gpu'\); did you mean 'compute'\? known settings: .*compute"):
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
        ({"release_label": "emr-7.1.0"}, r"release_label: 'emr-7.1.0' is not allowed; allowed: emr-7.2.0 or later"),
        ({"architecture": "arm"}, r"architecture: 'arm' is not allowed; allowed: x86_64, arm64"),
        (
            {"primary_instance_types": ["m5 xlarge"]},
            r"primary_instance_types: 'm5 xlarge' \(in \['m5 xlarge'\]\) is not allowed; allowed: null or a list of 1 "
            "to 30 distinct EC2 instance types",
        ),
        ({"core_instance_types": 42}, r"core_instance_types: 42 is not allowed; allowed: null or a list of 1 to 30"),
        ({"core_instance_types": []}, r"core_instance_types: \[\] is not allowed"),
        ({"core_instance_types": ["c5.2xlarge"] * 2}, r"core_instance_types: \['c5.2xlarge', 'c5.2xlarge'\] names a"),
        ({"core_instance_types": [f"c5.{n}xlarge" for n in range(2, 33)]}, r"a list of 1 to 30 distinct"),
        (
            {"compute": "gpu", "core_instance_types": ["g4dn.xlarge", "c5.2xlarge"]},
            r"core_instance_types: 'c5.2xlarge' has no GPU but compute is 'gpu'",
        ),
        ({"compute": "cpu", "core_instance_types": ["g5.xlarge"]}, r"core_instance_types: 'g5.xlarge' is a GPU type"),
        ({"core_instance_count": 0}, r"core_instance_count: 0 is not allowed; allowed: an integer from 1 to 100"),
        ({"core_instance_count": "2"}, r"core_instance_count: '2' is not allowed"),
        ({"core_instance_count": True}, r"core_instance_count: True is not allowed"),
        (
            {"compute": "gpu", "task_instance_types": ["m5.xlarge"]},
            r"task_instance_types: 'm5.xlarge' has no GPU",
        ),
        ({"task_instance_types": ["bad"]}, r"task_instance_types: 'bad' \(in \['bad'\]\) is not allowed"),
        ({"task_instance_count": -1}, r"task_instance_count: -1 is not allowed; allowed: an integer from 0 to 100"),
        # Graviton: every type of the cluster must be of the chosen architecture, and the GPU build is x86_64 only.
        (
            {"core_instance_types": ["c5.2xlarge", "c7g.2xlarge"]},
            r"core_instance_types: 'c7g.2xlarge' is an arm64 type but architecture is 'x86_64'; allowed: x86_64 "
            "types such as c5.2xlarge, or set architecture to 'arm64'",
        ),
        (
            {"architecture": "arm64", "primary_instance_types": ["m5.xlarge"]},
            r"primary_instance_types: 'm5.xlarge' is an x86_64 type but architecture is 'arm64'; allowed: arm64 types "
            "such as c7g.2xlarge",
        ),
        (
            {"architecture": "arm64", "task_instance_types": ["c6i.2xlarge"]},
            r"task_instance_types: 'c6i.2xlarge' is an x86_64 type but architecture is 'arm64'",
        ),
        ({"compute": "gpu", "architecture": "arm64"}, r"architecture: 'arm64' is not allowed when compute is 'gpu'"),
        ({"core_instance_types": ["u-6tb1.metal"]}, r"core_instance_types: 'u-6tb1.metal': not an instance type name"),
        # Spot, managed scaling and idle termination.
        ({"spot_timeout_minutes": 4}, r"spot_timeout_minutes: 4 is not allowed; allowed: an integer from 5 to 1440"),
        (
            {"task_instance_count": 0, "spot_timeout_minutes": 30},
            r"spot_timeout_minutes: 30 has no effect with task_instance_count 0",
        ),
        (
            {"task_instance_count": 0, "task_instance_types": ["c5.2xlarge"]},
            r"task_instance_types: \['c5.2xlarge'\] has no effect with task_instance_count 0",
        ),
        (
            {"managed_scaling_max_instance_count": 0},
            r"managed_scaling_max_instance_count: 0 is not allowed; allowed: an integer from 1 to 1000 \(or null\)",
        ),
        (
            {"managed_scaling_max_instance_count": 2},
            r"managed_scaling_max_instance_count: 2 is below the 3 worker nodes the cluster starts with",
        ),
        (
            {"managed_scaling_max_instance_count": 5, "task_instance_count": 0},
            r"managed_scaling_max_instance_count: 5 needs a task fleet to scale",
        ),
        (
            {"managed_scaling_min_instance_count": 1},
            r"managed_scaling_min_instance_count: 1 has no effect while managed_scaling_max_instance_count is null",
        ),
        (
            {"managed_scaling_max_instance_count": 9, "managed_scaling_min_instance_count": 2},
            r"managed_scaling_min_instance_count: 2 is above core_instance_count 1; allowed: 1 to 1",
        ),
        (
            {"idle_timeout_minutes": 0},
            r"idle_timeout_minutes: 0 is not allowed; allowed: an integer from 1 to 10080 \(or null\)",
        ),
        (
            {"vpc_id": "vpc-0123abcd", "subnet_ids": ["subnet-0123abcd"], "nat_gateways": 2},
            r"nat_gateways: 2 has no effect with an existing VPC",
        ),
        (
            {"step_concurrency_level": 257},
            r"step_concurrency_level: 257 is not allowed; allowed: an integer from 1 to 256",
        ),
        ({"max_active_steps": 0}, r"max_active_steps: 0 is not allowed; allowed: an integer from 1 to 256"),
        (
            {"step_concurrency_level": 10, "max_active_steps": 5},
            r"max_active_steps: 5 is below step_concurrency_level 10",
        ),
        ({"vpc_id": "vpc-xyz", "subnet_ids": ["subnet-0123abcd"]}, r"vpc_id: 'vpc-xyz' is not allowed"),
        ({"vpc_id": "vpc-0123abcd"}, r"vpc_id/subnet_ids: got vpc_id='vpc-0123abcd', subnet_ids=None"),
        ({"vpc_id": "vpc-0123abcd", "subnet_ids": ["sn-1"]}, r"subnet_ids: 'sn-1' \(in \['sn-1'\]\) is not allowed"),
        ({"vpc_id": "vpc-0123abcd", "subnet_ids": "subnet-0123abcd"}, r"subnet_ids: 'subnet-0123abcd' is not allowed"),
        ({"nat_gateways": 3}, r"nat_gateways: 3 is not allowed; allowed: an integer from 0 to 2"),
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
            {"core_instance_types": ["c5.metal"]},
            r"core_instance_types: 'c5.metal': the size 'metal' does not tell its vCPUs",
        ),
        (
            {"task_instance_count": 1, "task_instance_types": ["m5.huge"]},
            r"task_instance_types: 'm5.huge': the size 'huge' does not tell its vCPUs",
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
        (
            {"athena_scan_limit_gb": 0},
            r"athena_scan_limit_gb: 0 is not allowed; allowed: an integer from 1 to 10000",
        ),
        (
            {"athena_scan_limit_gb": 0.5},
            r"athena_scan_limit_gb: 0.5 is not allowed; allowed: an integer from 1 to 10000",
        ),
        (
            {"stack_name": "1st-stack"},
            r"stack_name: '1st-stack' is not allowed; allowed: 1-64 characters: a letter, then letters, digits and '-'",
        ),
        (
            {"stack_name": "a" * 65},
            r"stack_name: 'a{65}' is not allowed; allowed: 1-64 characters",
        ),
        (
            {"model_input_size": 4},
            r"model_input_size: 4 is not allowed; allowed: an integer from 8 to 1024",
        ),
        (
            {"model_input_size": "224px"},
            r"model_input_size: '224px' is not allowed; allowed: an integer from 8 to 1024",
        ),
    ],
)
def test_invalid_setting_is_rejected_naming_key_value_and_allowed(overrides, expected_message):
    with pytest.raises(SettingsError, match=expected_message):
        Settings.from_context(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"compute": "gpu", "core_instance_types": ("g5.xlarge",), "job_device": "gpu"},
        {"release_label": "emr-7.2.0"},
        {"vpc_id": "vpc-0123456789abcdef0", "subnet_ids": ("subnet-0123456789abcdef0",)},
        {"architecture": "arm64"},
        {"architecture": "arm64", "primary_instance_types": ("m7g.xlarge",), "core_instance_types": ("c7g.4xlarge",)},
        {"task_instance_count": 0, "core_instance_count": 4},
        {"managed_scaling_max_instance_count": 3},
        {"core_instance_count": 2, "managed_scaling_max_instance_count": 10, "managed_scaling_min_instance_count": 1},
        {"cluster_mode": "persistent", "idle_timeout_minutes": 120},
        {"spot_timeout_minutes": 5},
        {"nat_gateways": 0, "offline_wheelhouse": True},
        {"notification_email": "ops@example.com", "retain_data_on_destroy": True},
        {"trigger_batch_size": 10, "trigger_batching_window_seconds": 0},
        {"job_max_failure_ratio": 0},
        {"athena_scan_limit_gb": 10_000},
        {"model_input_size": 32},
        {"model_input_size": 1024},
        {"stack_name": "dev"},
        {"stack_name": "Prod-Inference-2"},
    ],
)
def test_valid_setting_is_accepted(overrides):
    settings = Settings.from_context(overrides)
    assert all(getattr(settings, key) == value for key, value in overrides.items())


@pytest.mark.parametrize(
    "compute, architecture", [("cpu", "x86_64"), ("cpu", "arm64"), ("gpu", "x86_64")]
)
def test_instance_types_default_to_the_compute_kind_and_architecture(compute, architecture):
    settings = Settings.from_context({"compute": compute, "architecture": architecture})
    assert settings.resolved_primary_instance_types == DEFAULT_PRIMARY_INSTANCE_TYPES[architecture]
    workers = DEFAULT_WORKER_INSTANCE_TYPES[(compute, architecture)]
    assert (settings.resolved_core_instance_types, settings.resolved_task_instance_types) == (workers, workers)


def test_task_types_follow_the_core_types_unless_set():
    settings = Settings.from_context({"core_instance_types": ["c6i.2xlarge"]})
    assert settings.resolved_task_instance_types == ("c6i.2xlarge",)
    settings = Settings.from_context({"task_instance_types": ["c5.4xlarge"]})
    assert settings.resolved_task_instance_types == ("c5.4xlarge",)


@pytest.mark.parametrize(
    "overrides, idle_minutes, launches",
    [
        ({"cluster_mode": "transient"}, DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES, True),
        ({"cluster_mode": "transient", "idle_timeout_minutes": 60}, 60, True),
        ({"cluster_mode": "persistent"}, None, False),
        ({"cluster_mode": "persistent", "idle_timeout_minutes": 240}, 240, True),
    ],
)
def test_idle_timeout_defaults_per_mode_and_decides_whether_the_trigger_finds_clusters_by_tag(
    overrides, idle_minutes, launches
):
    settings = Settings.from_context(overrides)
    assert (settings.resolved_idle_timeout_minutes, settings.finds_clusters_by_tag) == (idle_minutes, launches)


# --- settings given the CDK way: -c KEY=VALUE -------------------------------------------------------------------------


def cli_context(**values: str) -> dict:
    """The app's context as the CDK CLI builds it: cdk.json's context, then each -c KEY=VALUE as a string (the CLI's
    parseStringContextListToObject splits on the first '=' and keeps the rest as text)."""
    return {**cdk_json_context(), **values}


def test_a_setting_given_alone_overrides_the_objects_key():
    settings = Settings.from_cdk_context(cli_context(compute="gpu"))
    assert settings.compute == "gpu"
    assert settings.resolved_core_instance_types == DEFAULT_WORKER_INSTANCE_TYPES[("gpu", "x86_64")]


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("core_instance_count", "3", 3),
        ("job_max_failure_ratio", "0.5", 0.5),
        ("offline_wheelhouse", "true", True),
        ("retain_data_on_destroy", "False", False),
        ("notification_email", "ops@example.com", "ops@example.com"),
        ("idle_timeout_minutes", "45", 45),
        ("managed_scaling_max_instance_count", "null", None),
        ("core_instance_types", "c5.2xlarge, c6i.2xlarge", ("c5.2xlarge", "c6i.2xlarge")),
        ("core_instance_types", '["c5.2xlarge"]', ("c5.2xlarge",)),
        ("model_name", "123", "123"),
    ],
)
def test_command_line_text_is_read_as_the_settings_type(key, text, expected):
    extra = {"nat_gateways": "0"} if key == "offline_wheelhouse" else {}
    assert getattr(Settings.from_cdk_context(cli_context(**{key: text}, **extra)), key) == expected


def test_command_line_text_that_is_not_the_settings_type_fails_with_the_allowed_values():
    with pytest.raises(SettingsError, match=r"core_instance_count: 'three' is not allowed; allowed: an integer from 1"):
        Settings.from_cdk_context(cli_context(core_instance_count="three"))


def test_a_setting_given_alone_with_a_typo_fails_naming_the_known_settings():
    with pytest.raises(SettingsError, match=r"compte: unknown setting \(given on its own, as with -c compte=...\)"):
        Settings.from_cdk_context(cli_context(compte="gpu"))


def test_cdks_own_context_keys_are_not_taken_for_settings():
    context = {
        **cdk_json_context(),
        "aws:cdk:enable-path-metadata": True,
        "acknowledged-issue-numbers": [1],
        "availability-zones:account=123456789012:region=eu-west-1": ["eu-west-1a"],
    }
    assert Settings.from_cdk_context(context) == Settings()


def test_a_whole_object_given_on_the_command_line_that_is_not_json_says_how_to_give_one_setting():
    with pytest.raises(SettingsError, match=r"give one setting the CDK way: -c compute=gpu"):
        Settings.from_cdk_context({CONTEXT_KEY: "compute=gpu"})


def test_the_deploy_page_documents_every_setting_with_its_default():
    readme = (REPO_ROOT / "docs" / "deploy.md").read_text()
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", readme, re.MULTILINE))
    defaults = {field.name: json.dumps(field.default).strip('"') for field in fields(Settings)}
    assert rows == defaults


def test_no_more_nat_gateways_are_allowed_than_the_vpc_has_availability_zones():
    """CDK places at most one NAT gateway per public subnet, one per zone: a larger count would silently build fewer."""
    from infra.network import MAX_AZS
    from infra.settings import MAX_NAT_GATEWAYS

    assert MAX_NAT_GATEWAYS == MAX_AZS


@pytest.mark.parametrize(
    ("context", "hint"),
    [
        ({"inference": {"core_instance_type": "c5.2xlarge"}}, "did you mean 'core_instance_types'"),
        ({"computee": "gpu"}, "did you mean 'compute'"),
    ],
)
def test_an_unknown_key_names_the_closest_known_ones(context, hint):
    """A renamed setting (core_instance_type became core_instance_types) or a typo is answered with the closest known
    names before the full list, whether it came from cdk.json or from -c; the header names both sources."""
    with pytest.raises(SettingsError) as raised:
        Settings.from_cdk_context(context)
    message = str(raised.value)
    assert hint in message and message.index(hint) < message.index("known settings:")
    assert message.startswith("invalid settings (cdk.json context 'inference', and -c options)")


@pytest.mark.parametrize(
    "arns",
    [["arn:aws:iam::123456789012:group/admins"], ["not-an-arn"], [], "arn:aws:iam::123456789012:role/x",
     ["arn:aws:s3:::bucket"]],
)  # fmt: skip
def test_model_publisher_arns_must_be_iam_principals(arns):
    with pytest.raises(SettingsError, match=r"model_publisher_arns: .* allowed: null or a list of 1 to 20 IAM"):
        Settings.from_cdk_context({"inference": {"model_publisher_arns": arns}})


def test_model_publisher_arns_may_name_roles_and_users_with_wildcards():
    arns = ["arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_*",
            "arn:aws-us-gov:iam::123456789012:user/publisher"]
    assert Settings.from_cdk_context({"model_publisher_arns": json.dumps(arns)}).model_publisher_arns == tuple(arns)
