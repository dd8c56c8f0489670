"""The CPU runtime's pins for Graviton (aarch64) nodes, checked offline against requirements-aarch64.txt.

`make arch-check` downloads from PyPI, with the bootstrap's own `--build-wheelhouse cpu DIR aarch64`, a wheel for every
pin and records each file's name and hash (tests/bootstrap/check_aarch64_wheels.py). These tests prove, without
network: the record covers exactly the script's pins (so a pin changed without a new check fails here); every recorded
file is one an aarch64 Amazon Linux 2023 node with CPython 3.11 can install; and the script's aarch64 options select
exactly those files from an index holding them (pip download copies wheels without opening them, so metadata-only
stand-ins named as the real files are enough). Not proved here: that the files still are on PyPI (make arch-check), and
that MXNet runs on Graviton (no arm64 machine here).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bootstrap_helpers import INSTALL_SCRIPT, REPO_ROOT, SCRIPT_TIMEOUT_SECONDS, script_environment, stand_in_wheel
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

RECORD = REPO_ROOT / "requirements-aarch64.txt"
RECORD_LINE = re.compile(r"^(?P<name>[^=\s]+)==(?P<version>\S+) --hash=sha256:[0-9a-f]{64}  # (?P<wheel>\S+\.whl)$")
# Amazon Linux 2023 has glibc 2.34: manylinux_2_17 (manylinux2014) up to manylinux_2_34 install on it.
AL2023_AARCH64_PLATFORMS = [f"manylinux_2_{minor}_aarch64" for minor in range(34, 16, -1)] + ["manylinux2014_aarch64"]


def recorded() -> dict[str, tuple[str, str]]:
    """{name: (version, wheel file name)} from the record."""
    entries = {}
    for line in RECORD.read_text().splitlines():
        if line and not line.startswith("#"):
            match = RECORD_LINE.match(line)
            assert match, f"requirements-aarch64.txt: unexpected line {line!r}"
            entries[canonicalize_name(match["name"])] = (match["version"], match["wheel"])
    return entries


def script_pins(compute: str = "cpu") -> dict[str, str]:
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-requirements", compute], capture_output=True, text=True, check=True
    ).stdout.split()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in listed}


def test_the_record_covers_exactly_the_scripts_cpu_pins() -> None:
    assert {name: version for name, (version, _) in recorded().items()} == script_pins(), (
        "the pins changed since the aarch64 wheels were checked: run `make arch-check`"
    )


def test_every_recorded_wheel_installs_on_an_aarch64_node_with_python_3_11() -> None:
    accepted = set(cpython_tags((3, 11), abis=["cp311", "abi3", "none"], platforms=AL2023_AARCH64_PLATFORMS))
    accepted |= set(compatible_tags((3, 11), interpreter="cp311", platforms=AL2023_AARCH64_PLATFORMS))
    unusable = [wheel for _, wheel in recorded().values() if not parse_wheel_filename(wheel)[3] & accepted]
    assert unusable == []


def test_native_wheels_are_aarch64_builds() -> None:
    """A wheel that is not pure Python must be built for aarch64 (an x86_64 one would install and fail to load)."""
    platforms = {tag.platform for _, wheel in recorded().values() for tag in parse_wheel_filename(wheel)[3]}
    assert platforms - {"any"} and all(platform.endswith("_aarch64") for platform in platforms - {"any"})


@pytest.fixture(scope="module")
def aarch64_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("aarch64-wheelhouse")
    index = root / "find-links"
    index.mkdir()
    for _, wheel in recorded().values():
        stand_in_wheel(wheel, index)
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--build-wheelhouse", "cpu", str(root / "wheelhouse"), "aarch64"],
        env=script_environment(MXNET_BOOTSTRAP_PYTHON=sys.executable, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(index)),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )
    return result, root / "wheelhouse"


def test_the_scripts_aarch64_options_select_the_recorded_wheels(aarch64_build) -> None:
    result, wheelhouse = aarch64_build
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (wheelhouse / "aarch64").glob("*.whl")) == sorted(
        wheel for _, wheel in recorded().values()
    )


def test_the_gpu_build_is_refused_for_aarch64(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--build-wheelhouse", "gpu", str(tmp_path), "aarch64"],
        env=script_environment(MXNET_BOOTSTRAP_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "compute=gpu needs an x86_64 node" in result.stderr
    assert not (tmp_path / "aarch64").exists()
