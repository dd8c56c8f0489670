"""The pins in install-mxnet.sh cannot drift from requirements.lock and requirements-gpu.txt.

requirements.lock is the lock of everything the dev environment installs, the job's runtime included;
requirements-gpu.txt is the hash-pinned list of what a GPU node installs in place of or on top of it (the CUDA builds
and NVIDIA's CUDA library wheels, several GB that no dev environment installs). The script keeps a copy because an
EMR bootstrap action is one file fetched on its own; these tests derive the lists the script must hold from
requirements.in (the job section names the runtime), requirements.lock (the versions, following dependencies through
the installed packages' metadata) and requirements-gpu.txt, and fail on any difference. The lists are read by running
the real script (`--print-requirements`). That requirements-gpu.txt is a closed set whose libraries all resolve is
`make gpu-check`'s job (it downloads the wheels).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess

import pytest
from bootstrap_helpers import INSTALL_SCRIPT, REPO_ROOT, script_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

JOB_SECTION_HEADER = "# --- the job"
# EMR ships Spark with its own pyspark on the node; installing the PyPI one would shadow it.
PROVIDED_BY_EMR = {"pyspark"}
# The CUDA builds the gpu list uses in place of the lock's CPU builds.
CPU_TO_GPU_BUILD = {"mxnet": "mxnet-cu117", "onnxruntime": "onnxruntime-gpu"}


def job_runtime_names() -> set[str]:
    """Names in requirements.in's job section (up to the next `# ---` header), less what EMR provides."""
    names: set[str] = set()
    in_job_section = False
    for line in (REPO_ROOT / "requirements.in").read_text().splitlines():
        if line.startswith("# ---"):
            in_job_section = line.startswith(JOB_SECTION_HEADER)
            continue
        requirement_text = line.split("#", 1)[0].strip()
        if in_job_section and requirement_text:
            names.add(canonicalize_name(Requirement(requirement_text).name))
    assert names, f"requirements.in has no requirements under a '{JOB_SECTION_HEADER}' header"
    return names - PROVIDED_BY_EMR


def locked_versions() -> dict[str, str]:
    versions = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            versions[canonicalize_name(name)] = version.strip()
    return versions


def dependency_closure(names: set[str]) -> set[str]:
    """`names` and everything they require (no extras), as the installed metadata declares it."""
    closure: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name in closure:
            continue
        closure.add(name)
        for requirement_text in importlib.metadata.distribution(name).requires or []:
            requirement = Requirement(requirement_text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(requirement.name))
    return closure


def script_requirements(compute: str) -> dict[str, str]:
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-requirements", compute],
        env=script_environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    pins = {}
    for line in result.stdout.splitlines():
        name, version = line.split("==")
        pins[canonicalize_name(name)] = version
    return pins


@pytest.fixture(scope="module")
def locked_runtime() -> dict[str, str]:
    versions = locked_versions()
    closure = dependency_closure(job_runtime_names())
    unlocked = sorted(closure - versions.keys())
    assert not unlocked, f"the job's runtime needs {unlocked}, which requirements.lock does not pin: run `make lock`"
    return {name: versions[name] for name in closure}


def test_cpu_pins_equal_the_locked_runtime_closure(locked_runtime: dict[str, str]) -> None:
    assert script_requirements("cpu") == locked_runtime


def gpu_requirements_file() -> dict[str, tuple[str, str]]:
    """requirements-gpu.txt as {name: (version, the rest of the line)}."""
    pins = {}
    for line in (REPO_ROOT / "requirements-gpu.txt").read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            requirement, _, options = text.partition(" ")
            name, version = requirement.split("==")
            pins[canonicalize_name(name)] = (version, options.strip())
    return pins


def test_gpu_pins_are_the_cpu_pins_with_requirements_gpu_in_place_of_the_cpu_builds() -> None:
    cpu, gpu = script_requirements("cpu"), script_requirements("gpu")
    shared_cpu = {name: version for name, version in cpu.items() if name not in CPU_TO_GPU_BUILD}
    gpu_only = {name: version for name, (version, _) in gpu_requirements_file().items()}
    assert gpu == {**shared_cpu, **gpu_only}


def test_requirements_gpu_pins_nothing_the_lock_pins() -> None:
    assert set(gpu_requirements_file()) & set(locked_versions()) == set()


def test_every_gpu_pin_carries_a_sha256_hash() -> None:
    unhashed = [name for name, (_, options) in gpu_requirements_file().items()
                if not re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", options)]
    assert unhashed == []


def test_gpu_pins_bring_the_cuda_libraries_both_builds_link() -> None:
    """A CUDA 11 set for mxnet-cu117 (cuDNN 8) and a CUDA 12 set for onnxruntime-gpu (cuDNN 9), by wheel name."""
    names = set(gpu_requirements_file())
    assert {"nvidia-cuda-runtime-cu11", "nvidia-cublas-cu11", "nvidia-cudnn-cu11", "nvidia-nccl-cu11"} <= names
    assert {"nvidia-cuda-runtime-cu12", "nvidia-cublas-cu12", "nvidia-cudnn-cu12"} <= names
    assert gpu_requirements_file()["nvidia-cudnn-cu11"][0].startswith("8.")
    assert gpu_requirements_file()["nvidia-cudnn-cu12"][0].startswith("9.")


def test_gpu_mxnet_build_has_the_locked_mxnet_version() -> None:
    assert script_requirements("gpu")[CPU_TO_GPU_BUILD["mxnet"]] == locked_versions()["mxnet"]


def test_gpu_onnxruntime_is_on_the_locked_release_line() -> None:
    # onnxruntime-gpu has no 1.20.1 on PyPI; a patch release of the same line keeps the same API and numpy support.
    def release_line(version: str) -> str:
        return ".".join(re.split(r"[.+]", version)[:2])

    gpu_version = script_requirements("gpu")[CPU_TO_GPU_BUILD["onnxruntime"]]
    assert release_line(gpu_version) == release_line(locked_versions()["onnxruntime"])
