"""install-mxnet.sh --build-wheelhouse: real pip download, offline, from a local find-links directory.

The find-links directory stands in for PyPI. It holds, for every cpu pin, a wheel named with the platform tags of the
real wheel installed in the project's environment (read from its dist-info/WHEEL) and carrying only its metadata:
pip download copies wheels without opening their payload, so what this proves is that the script asks for exactly
the pinned versions and that its EMR platform options accept the tags the real wheels have. Not proved: that PyPI
serves them (checked by hand with `pip install --dry-run --report` for cpu and gpu when the pins were written).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from bootstrap_helpers import INSTALL_SCRIPT, SCRIPT_TIMEOUT_SECONDS, script_environment, stand_in_wheel
from packaging.utils import canonicalize_name, parse_wheel_filename


def cpu_pins() -> dict[str, str]:
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-requirements", "cpu"], capture_output=True, text=True, check=True
    ).stdout.split()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in listed}


def metadata_only_wheel(name: str, directory: Path) -> Path:
    distribution = importlib.metadata.distribution(name)
    wheel_metadata = distribution.read_text("WHEEL") or ""
    tags = [line.split(":", 1)[1].strip().split("-") for line in wheel_metadata.splitlines() if line.startswith("Tag:")]
    python_tags, abi_tags, platform_tags = (".".join(sorted({tag[i] for tag in tags})) for i in range(3))
    project = re.sub(r"[-_.]+", "_", distribution.metadata["Name"])
    dist_info = f"{project}-{distribution.version}.dist-info"
    path = directory / f"{project}-{distribution.version}-{python_tags}-{abi_tags}-{platform_tags}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{dist_info}/METADATA", distribution.read_text("METADATA") or "")
        wheel.writestr(f"{dist_info}/WHEEL", wheel_metadata)
        wheel.writestr(f"{dist_info}/RECORD", f"{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n{dist_info}/RECORD,,\n")
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = tmp_path_factory.mktemp("build-wheelhouse")
    package_index = root / "find-links"
    package_index.mkdir()
    for name in cpu_pins():
        metadata_only_wheel(name, package_index)
    destination = root / "wheelhouse"
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--build-wheelhouse", "cpu", str(destination)],
        env=script_environment(
            MXNET_BOOTSTRAP_PYTHON=sys.executable, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(package_index)
        ),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )
    return result, destination


def test_build_wheelhouse_exits_zero(built: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = built
    assert result.returncode == 0, result.stdout + result.stderr


def test_wheelhouse_holds_exactly_one_wheel_per_pin(built: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, destination = built
    downloaded = {}
    # Without a machine argument the wheels are for x86_64 nodes, in the wheelhouse's x86_64 folder.
    assert [path.name for path in destination.iterdir()] == ["x86_64"]
    for wheel in (destination / "x86_64").glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(wheel.name)
        downloaded[name] = str(version)
    assert downloaded == cpu_pins()


def test_build_wheelhouse_needs_a_directory() -> None:
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--build-wheelhouse", "cpu"],
        env=script_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    expected = "--build-wheelhouse takes two or three arguments (cpu|gpu DIRECTORY [x86_64|aarch64]), got 1"
    assert expected in result.stderr


def test_build_wheelhouse_refuses_an_unknown_machine(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--build-wheelhouse", "cpu", str(tmp_path), "arm64"],
        env=script_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "machine must be one of x86_64 aarch64, got 'arm64'" in result.stderr


def pins(compute: str) -> dict[str, str]:
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-requirements", compute], capture_output=True, text=True, check=True
    ).stdout.split()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in listed}


def test_a_gpu_wheelhouse_also_holds_the_cpu_build_for_the_primary_node(tmp_path: Path) -> None:
    """Review finding 3: the primary of a gpu cluster has no GPU and installs the cpu build; without internet it has
    only this wheelhouse. Stand-ins for the gpu wheels (3.9 GB for real), metadata-only wheels of the installed ones."""
    package_index = tmp_path / "find-links"
    package_index.mkdir()
    for name in cpu_pins():
        metadata_only_wheel(name, package_index)
    for name, version in pins("gpu").items():
        if name not in cpu_pins():
            stand_in_wheel(f"{re.sub(r'[-_.]+', '_', name)}-{version}-py3-none-manylinux2014_x86_64.whl", package_index)
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--build-wheelhouse", "gpu", str(tmp_path / "wheelhouse")],
        env=script_environment(
            MXNET_BOOTSTRAP_PYTHON=sys.executable, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(package_index)
        ),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    downloaded = {
        parse_wheel_filename(wheel.name)[0]: str(parse_wheel_filename(wheel.name)[1])
        for wheel in (tmp_path / "wheelhouse" / "x86_64").glob("*.whl")
    }
    assert downloaded == {**pins("gpu"), **pins("cpu")}
