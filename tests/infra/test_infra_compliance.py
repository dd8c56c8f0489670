"""cdk-nag (AwsSolutions) and cfn-lint over every synthesized variant: zero unacknowledged findings, zero lint errors."""

from __future__ import annotations

import json

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks
from cfnlint.api import ManualArgs, lint

# Settings that add or remove resources, beyond the four main variants (which the `variant` fixture covers).
EXTRA_VARIANTS = {
    "retained-data-with-email": {"retain_data_on_destroy": True, "notification_email": "ops@example.com"},
    "existing-vpc-persistent": {
        "cluster_mode": "persistent",
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_ids": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    },
    "gpu-persistent-scaling-idle": {
        "compute": "gpu", "cluster_mode": "persistent", "managed_scaling_max_instance_count": 8,
        "idle_timeout_minutes": 120,
    },
    "graviton-persistent": {"architecture": "arm64", "cluster_mode": "persistent"},
    "graviton-transient-scaling": {"architecture": "arm64", "managed_scaling_max_instance_count": 6},
    "on-demand-only-persistent": {"cluster_mode": "persistent", "task_instance_count": 0, "core_instance_count": 3},
}
# Regions whose resource specifications cfn-lint checks the template against.
LINT_REGIONS = ["us-east-1", "eu-west-1"]


def unacknowledged_findings(app: cdk.App, stack: cdk.Stack) -> list[str]:
    report = AwsSolutionsChecks(app).validate_scope(stack)
    return [
        f"{violation.rule_name} at {resource.construct_path}"
        for violation in report.violations
        for resource in violation.violating_resources
    ]


def lint_errors(synthesized) -> list[str]:
    template = json.dumps(synthesized.template.to_json())
    matches = lint(template, config=ManualArgs(regions=LINT_REGIONS))
    # W-level matches (W3005 "dependency already enforced", W3045...) are what CDK output always has; errors fail.
    return [f"{m.rule.id} {m.message}" for m in matches if m.rule.id.startswith("E")]


def test_nag_has_no_unacknowledged_finding(variant):
    assert unacknowledged_findings(variant.app, variant.stack) == []


@pytest.mark.parametrize("name", sorted(EXTRA_VARIANTS))
def test_nag_has_no_unacknowledged_finding_in_extra_variant(synth, name):
    synthesized = synth(**EXTRA_VARIANTS[name])
    assert unacknowledged_findings(synthesized.app, synthesized.stack) == []


def test_nag_has_no_unacknowledged_finding_with_an_offline_wheelhouse(offline_wheelhouse_variant):
    assert unacknowledged_findings(offline_wheelhouse_variant.app, offline_wheelhouse_variant.stack) == []


def test_cfn_lint_finds_no_error_with_an_offline_wheelhouse(offline_wheelhouse_variant):
    assert lint_errors(offline_wheelhouse_variant) == []


def test_nag_harness_reports_a_finding_it_should():
    """The harness itself works: an unencrypted-in-transit, unlogged bucket is reported."""
    app = cdk.App()
    stack = cdk.Stack(app, "Canary")
    s3.Bucket(stack, "Bucket")
    assert "AwsSolutions-S10 at Canary/Bucket/Resource" in unacknowledged_findings(app, stack)


def test_cfn_lint_finds_no_error(variant):
    assert lint_errors(variant) == []


@pytest.mark.parametrize("name", sorted(EXTRA_VARIANTS))
def test_cfn_lint_finds_no_error_in_extra_variant(synth, name):
    assert lint_errors(synth(**EXTRA_VARIANTS[name])) == []
