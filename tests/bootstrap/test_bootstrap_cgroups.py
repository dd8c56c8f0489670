"""configure-gpu-cgroups.sh: what can run here without mounting anything on this machine.

The mount itself needs root on an EMR 7 node and would change this machine's cgroups, so it is not run; shellcheck
covers the whole script (test_bootstrap_shellcheck.py). That YARN's cgroup mount-path and container-executor root
name the same /spark-rapids-cgroup is for the stack's configuration tests.
"""

from __future__ import annotations

import subprocess

from bootstrap_helpers import CGROUP_SCRIPT, script_environment


def test_arguments_are_refused_before_anything_is_mounted() -> None:
    result = subprocess.run(
        [str(CGROUP_SCRIPT), "unexpected"], env=script_environment(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "expected no arguments, got 1: unexpected" in result.stderr
