"""app.py run the way `cdk synth` runs it (a subprocess given the CLI's environment variables), cdk-nag plugin included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from infra_helpers import REPO_ROOT, cdk_json_context

from infra.settings import CONTEXT_KEY, DEFAULT_STACK_NAME


def run_app(tmp_path, context: dict) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path / "cdk.out"),
        "CDK_CONTEXT_JSON": json.dumps(context),
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    }
    return subprocess.run(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_app_synthesizes_the_cdk_json_settings_and_passes_cdk_nag(tmp_path):
    result = run_app(tmp_path, cdk_json_context())
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "cdk.out" / "validation-report.json").read_text())
    # A plugin that found anything would list it here (and fail the synth); none did.
    assert report["pluginReports"] == []
    assert [p.name for p in (tmp_path / "cdk.out").glob("*.template.json")] == ["MxnetSparkInference.template.json"]


def test_app_stops_with_the_settings_errors(tmp_path):
    context = {**cdk_json_context(), CONTEXT_KEY: {"compute": "tpu", "job_top_k": 0}}
    result = run_app(tmp_path, context)
    assert result.returncode == 1
    assert "compute: 'tpu' is not allowed; allowed: cpu, gpu" in result.stderr
    assert "job_top_k: 0 is not allowed" in result.stderr


def test_a_second_deployment_with_its_own_stack_name_shares_no_physical_name_with_the_default(tmp_path):
    """Issue 19: `cdk synth -c compute=gpu -c stack_name=dev` (the CLI passes each -c as a top-level context string)
    makes a second, independent stack: its own template, and every name that must be unique in an account and region
    derived from "dev", none from the default stack's name. (That CloudFormation deploys both side by side needs an
    account; the names it would collide on are what is checked.)"""
    result = run_app(tmp_path, {**cdk_json_context(), "compute": "gpu", "stack_name": "dev"})
    assert result.returncode == 0, result.stderr[-2000:]
    templates = [p.name for p in (tmp_path / "cdk.out").glob("*.template.json")]
    assert templates == ["dev.template.json"]
    text = (tmp_path / "cdk.out" / "dev.template.json").read_text()
    assert DEFAULT_STACK_NAME not in text and DEFAULT_STACK_NAME.lower() not in text
    resources = json.loads(text)["Resources"]

    def names(resource_type: str, *path: str) -> list[str]:
        found = []
        for body in resources.values():
            if body["Type"] == resource_type:
                value = body["Properties"]
                for key in path:
                    value = value[key]
                found.append(value)
        return found

    assert [n.startswith("dev-") for n in names("AWS::EMR::SecurityConfiguration", "Name")] == [True]
    assert names("AWS::Glue::Database", "DatabaseInput", "Name") == ["dev_results"]
    assert names("AWS::Athena::WorkGroup", "Name") == ["dev-results"]
    alarms = names("AWS::CloudWatch::Alarm", "AlarmName")
    assert alarms and all(name.startswith("dev-") for name in alarms)
    (function,) = [
        body for body in resources.values()
        if body["Type"] == "AWS::Lambda::Function" and "STEP_NAME_PREFIX" in json.dumps(body)
    ]  # fmt: skip
    variables = function["Properties"]["Environment"]["Variables"]
    assert (variables["STEP_NAME_PREFIX"], variables["CLUSTER_TAG_VALUE"]) == ("dev-batch-", "dev")


def test_a_stack_name_outside_cloudformations_rule_is_refused(tmp_path):
    result = run_app(tmp_path, {**cdk_json_context(), "stack_name": "dev_1"})
    assert result.returncode == 1
    assert "stack_name: 'dev_1' is not allowed; allowed: 1-64 characters" in result.stderr
