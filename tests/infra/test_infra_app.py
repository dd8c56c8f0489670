"""app.py run the way `cdk synth` runs it (a subprocess given the CLI's environment variables), cdk-nag plugin included."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from infra_helpers import REPO_ROOT, cdk_json_context

from infra.settings import CONTEXT_KEY


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
