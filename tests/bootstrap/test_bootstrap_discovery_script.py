"""bootstrap/getGpusResources.sh: Spark's GPU discovery script, and its --install mode (the EMR bootstrap action).

There is no GPU here: `nvidia-smi` is a stand-in on PATH that prints what the real one prints for
`--query-gpu=index --format=csv,noheader` (one index per line). What that cannot prove: which GPUs the real
nvidia-smi lists inside a YARN container with cgroup device isolation (checked on the first GPU cluster).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from bootstrap_helpers import BOOTSTRAP_DIR, script_environment

DISCOVERY_SCRIPT = BOOTSTRAP_DIR / "getGpusResources.sh"


def run_discovery(*arguments: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = script_environment()
    if path_prefix is not None:
        environment["PATH"] = f"{path_prefix}{os.pathsep}{environment['PATH']}"
    return subprocess.run(
        [str(DISCOVERY_SCRIPT), *arguments], env=environment, capture_output=True, text=True, timeout=30, check=False
    )


def stand_in_nvidia_smi(directory: Path, output: str, exit_code: int = 0) -> Path:
    directory.mkdir(exist_ok=True)
    script = directory / "nvidia-smi"
    script.write_text(f"#!/usr/bin/env bash\nprintf '%s' '{output}'\nexit {exit_code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return directory


@pytest.mark.parametrize(
    "listing, addresses",
    [("0\n", ["0"]), ("0\n1\n2\n3\n", ["0", "1", "2", "3"]), ("", [])],
    ids=["one", "four", "none"],
)
def test_prints_spark_resource_json_for_the_listed_gpus(tmp_path: Path, listing: str, addresses: list[str]) -> None:
    result = run_discovery(path_prefix=stand_in_nvidia_smi(tmp_path / "bin", listing))
    assert result.returncode == 0, result.stderr
    # The shape Spark's ResourceInformation parses: {"name": ..., "addresses": [...]}.
    assert json.loads(result.stdout) == {"name": "gpu", "addresses": addresses}


def test_fails_when_nvidia_smi_fails(tmp_path: Path) -> None:
    result = run_discovery(path_prefix=stand_in_nvidia_smi(tmp_path / "bin", "", exit_code=9))
    assert result.returncode != 0
    assert result.stdout == ""


def test_install_copies_itself_executable_to_the_given_path(tmp_path: Path) -> None:
    destination = tmp_path / "usr" / "local" / "bin" / "getGpusResources.sh"
    result = run_discovery("--install", str(destination))
    assert result.returncode == 0, result.stderr
    assert destination.read_bytes() == DISCOVERY_SCRIPT.read_bytes()
    assert os.access(destination, os.X_OK)


def test_install_needs_an_absolute_path() -> None:
    result = run_discovery("--install", "relative/getGpusResources.sh")
    assert result.returncode == 2
    assert "--install needs an absolute path, got 'relative/getGpusResources.sh'" in result.stderr
