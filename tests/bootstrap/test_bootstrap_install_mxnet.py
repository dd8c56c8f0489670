"""install-mxnet.sh run for real (real bash, real pip, real MXNet forward pass) against a throw-away runtime.

The runtime sees the project's installed packages except one pinned package (see bootstrap_helpers), so the first
run installs exactly that one from a local wheelhouse (`--no-index --find-links`, no network) and the second run has
nothing to install. Not covered here: the gpu build (no GPU and no CUDA wheels on this machine), sudo (tests run as
root), and downloads from PyPI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from bootstrap_helpers import (
    INSTALL_SCRIPT,
    LEFT_OUT_DISTRIBUTION,
    MACHINE,
    ThrowAwayRuntime,
    base_interpreter,
    make_throw_away_runtime,
    run_install_script,
    wheel_from_installed,
)

TIMESTAMPED_LOG_LINE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z install-mxnet\.sh: (?P<message>.*)$")
STEPS_WHEN_INSTALLING = (
    "step: checking the interpreter",
    "step: choosing the build for this node",
    "step: checking for the other compute's builds",
    "step: comparing installed packages with the pins",
    "step: using local wheelhouse",
    "step: installing with pip",
    "step: verifying imports and one forward pass",
)


@dataclass(frozen=True)
class TwoRuns:
    runtime: ThrowAwayRuntime
    wheelhouse: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    site_packages_before_second: dict[str, int]
    site_packages_after_second: dict[str, int]


def snapshot(directory: Path) -> dict[str, int]:
    """Every file under `directory` with its modification time in nanoseconds."""
    return {str(path.relative_to(directory)): path.stat().st_mtime_ns for path in directory.rglob("*")}


def log_messages(stderr: str) -> list[str]:
    return [match["message"] for line in stderr.splitlines() if (match := TIMESTAMPED_LOG_LINE.match(line))]


def pinned_version(name: str) -> str:
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-requirements", "cpu"], capture_output=True, text=True, check=True
    ).stdout.split()
    return next(line.split("==")[1] for line in listed if line.split("==")[0] == name)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> TwoRuns:
    root = tmp_path_factory.mktemp("install-mxnet")
    runtime = make_throw_away_runtime(root)
    wheelhouse = root / "wheelhouse"
    (wheelhouse / MACHINE).mkdir(parents=True)
    wheel_from_installed(LEFT_OUT_DISTRIBUTION, wheelhouse / MACHINE)
    first = run_install_script("cpu", str(wheelhouse), python=runtime.python)
    before = snapshot(runtime.own_site_packages)
    second = run_install_script("cpu", str(wheelhouse), python=runtime.python)
    after = snapshot(runtime.own_site_packages)
    return TwoRuns(runtime, wheelhouse, first, second, before, after)


@pytest.fixture
def fresh_runtime(tmp_path: Path) -> ThrowAwayRuntime:
    return make_throw_away_runtime(tmp_path)


def test_first_run_exits_zero(two_runs: TwoRuns) -> None:
    assert two_runs.first.returncode == 0, two_runs.first.stderr


def test_first_run_installs_the_missing_pin_into_the_runtime(two_runs: TwoRuns) -> None:
    dist_info = f"{LEFT_OUT_DISTRIBUTION}-{pinned_version(LEFT_OUT_DISTRIBUTION)}.dist-info"
    assert (two_runs.runtime.own_site_packages / dist_info).is_dir()


def test_first_run_installs_only_from_the_wheelhouse(two_runs: TwoRuns) -> None:
    # --no-index: pip reads no package index, only the --find-links directory.
    assert f"Looking in links: {two_runs.wheelhouse}" in two_runs.first.stdout
    assert "Looking in indexes" not in two_runs.first.stdout


def test_first_run_logs_what_it_installed(two_runs: TwoRuns) -> None:
    requirement = f"{LEFT_OUT_DISTRIBUTION}=={pinned_version(LEFT_OUT_DISTRIBUTION)}"
    assert f"installed 1 packages: {requirement}" in log_messages(two_runs.first.stderr)


def test_first_run_logs_every_step_with_a_timestamp(two_runs: TwoRuns) -> None:
    messages = log_messages(two_runs.first.stderr)
    missing_steps = [step for step in STEPS_WHEN_INSTALLING if not any(m.startswith(step) for m in messages)]
    assert missing_steps == []


def test_first_run_ends_with_a_forward_pass_on_cpu(two_runs: TwoRuns) -> None:
    assert "forward pass on cpu(0) ok: output shape (1, 4, 6, 6)" in two_runs.first.stderr


def test_second_run_exits_zero(two_runs: TwoRuns) -> None:
    assert two_runs.second.returncode == 0, two_runs.second.stderr


def test_second_run_reports_nothing_to_install(two_runs: TwoRuns) -> None:
    messages = log_messages(two_runs.second.stderr)
    assert any(message.endswith("already installed; nothing to install") for message in messages)
    assert not any(message.startswith("step: installing with pip") for message in messages)


def test_second_run_leaves_the_runtime_unchanged(two_runs: TwoRuns) -> None:
    assert two_runs.site_packages_after_second == two_runs.site_packages_before_second


def test_second_run_still_verifies_with_a_forward_pass(two_runs: TwoRuns) -> None:
    assert "forward pass on cpu(0) ok" in two_runs.second.stderr


@pytest.mark.parametrize("arguments", [("tpu",), ("--print-requirements", "tpu")], ids=["install", "print"])
def test_unknown_compute_is_rejected_naming_the_allowed_values(arguments: tuple[str, ...]) -> None:
    result = run_install_script(*arguments, python=Path(sys.executable))
    assert result.returncode == 2
    assert "compute must be 'cpu' or 'gpu', got 'tpu'" in result.stderr


def test_missing_compute_prints_the_usage() -> None:
    result = run_install_script(python=Path(sys.executable))
    assert result.returncode == 2
    assert "usage: install-mxnet.sh cpu|gpu [WHEELHOUSE]" in result.stderr


def test_missing_local_wheelhouse_is_rejected_naming_it(tmp_path: Path) -> None:
    absent = tmp_path / "no-such-wheelhouse"
    result = run_install_script("cpu", str(absent), python=Path(sys.executable))
    assert result.returncode == 2
    assert f"wheelhouse '{absent}' is neither an s3:// URI nor an existing directory" in result.stderr


def runnable_python_other_than_3_11() -> str | None:
    names = ("python3.12", "python3.10", "python3.13", "python3.9")
    on_path = [found for name in names if (found := shutil.which(name))]
    # Installations beside the base interpreter's (pyenv keeps one folder per version).
    beside_base = [str(path) for name in names for path in Path(sys.base_prefix).parent.glob(f"*/bin/{name}")]
    for candidate in on_path + beside_base:
        # pyenv's shims on PATH exit 127 for versions that are not selected.
        if subprocess.run([candidate, "-c", "pass"], capture_output=True, check=False).returncode == 0:
            return candidate
    return None


def test_interpreter_other_than_python_3_11_is_rejected() -> None:
    other = runnable_python_other_than_3_11()
    if other is None:
        pytest.skip("no Python other than 3.11 on this machine")
    result = run_install_script("cpu", python=Path(other))
    assert result.returncode == 1
    assert "need Python 3.11 (set MXNET_BOOTSTRAP_PYTHON)" in result.stderr


def test_empty_wheelhouse_fails_with_how_to_build_one(fresh_runtime: ThrowAwayRuntime, tmp_path: Path) -> None:
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    result = run_install_script("cpu", str(empty), python=fresh_runtime.python)
    assert result.returncode == 1
    assert (
        f"holds no .whl files for this {MACHINE} node; fill one with: install-mxnet.sh --build-wheelhouse cpu|gpu "
        f"DIRECTORY {MACHINE} (it writes DIRECTORY/{MACHINE}/)"
    ) in result.stderr


def system_libraries(machine: str) -> dict[str, str]:
    """{soname: dnf package ('' when none)} that install-mxnet.sh ensures on ``machine``, in its order (held to the
    recorded closures by test_bootstrap_system_libraries.py); an optional library's third field is not kept."""
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-system-libraries", machine], capture_output=True, text=True, check=True
    ).stdout.split()
    return dict(line.split(":")[:2] for line in listed)


def system_sonames(machine: str) -> list[str]:
    return list(system_libraries(machine))


def fake_ldconfig(directory: Path, cache_architecture: str, sonames: list[str]) -> Path:
    """An ldconfig whose -p lists ``sonames`` for one architecture, as the real one prints them."""
    script = directory / "ldconfig"
    entries = "".join(f"\\t{soname} (libc6,{cache_architecture}) => /usr/lib64/{soname}\\n" for soname in sonames)
    script.write_text(f"#!/bin/sh\nprintf '{len(sonames)} libs found in cache\\n{entries}'\n")
    script.chmod(0o755)
    return script


def failing_dnf(directory: Path) -> tuple[dict[str, str], Path]:
    """A `dnf` first on PATH that records its arguments, one call per line, and fails as dnf does for a package the
    repositories lack. What it cannot prove: which packages Amazon Linux 2023's repositories really hold."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    calls = directory / "dnf-calls"
    (bin_dir / "dnf").write_text(f'#!/bin/sh\necho "$*" >> {calls}\necho "Error: Unable to find a match" >&2\nexit 1\n')
    (bin_dir / "dnf").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS": "0"}, calls


ARMPL = ("libarmpl_lp64_mp.so", "libamath.so", "libastring.so")
MXNET_REFUSED_LINE = (
    "MXNet packages will be refused on this node: it lacks libarmpl_lp64_mp.so libamath.so libastring.so (Arm "
    "Performance Libraries), which MXNet's aarch64 wheel links but does not ship (apache/mxnet#20294) and no Amazon "
    "Linux 2023 package provides; installing everything but MXNet, for ONNX packages (for MXNet packages, use an EMR "
    "custom AMI with ArmPL known to the loader, or x86_64 instance types)"
)


def graviton_node_run(tmp_path: Path, loader_knows: list[str]) -> tuple[ThrowAwayRuntime, subprocess.CompletedProcess]:
    """install-mxnet.sh cpu as on an aarch64 node whose loader knows ``loader_knows``, into a runtime that lacks
    both mxnet and the one small pin, from a wheelhouse whose aarch64 folder holds only that small pin's wheel.
    What the stand-ins cannot prove: that the aarch64 wheels of ONNX Runtime, numpy, pyarrow... load on a Graviton
    node (they are this machine's x86_64 ones; `make arch-check` reads the aarch64 ones' ELF needs offline)."""
    (tmp_path / "runtime-root").mkdir()
    runtime = make_throw_away_runtime(tmp_path / "runtime-root", left_out=(LEFT_OUT_DISTRIBUTION, "mxnet"))
    wheelhouse = tmp_path / "wheelhouse"
    (wheelhouse / "aarch64").mkdir(parents=True)
    wheel_from_installed(LEFT_OUT_DISTRIBUTION, wheelhouse / "aarch64")
    result = run_install_script(
        "cpu", str(wheelhouse), python=runtime.python, MXNET_BOOTSTRAP_MACHINE="aarch64",
        MXNET_BOOTSTRAP_LDCONFIG=str(fake_ldconfig(tmp_path, "AArch64", loader_knows)),
        MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS="0",
    )
    return runtime, result


def test_a_stock_graviton_node_installs_everything_but_mxnet_and_checks_what_it_installed(tmp_path: Path) -> None:
    """MXNet's aarch64 wheel links ArmPL, which no Amazon Linux 2023 package provides, so a stock node stopped with
    nothing installed. ONNX Runtime needs none of it: the node now installs every other pin, says once that MXNet
    packages will be refused, and its final check imports what it installed and runs ONNX Runtime, not MXNet."""
    runtime, result = graviton_node_run(tmp_path, ["libgomp.so.1", "libz.so.1"])
    assert result.returncode == 0, result.stderr
    messages = log_messages(result.stderr)
    assert [message for message in messages if message.startswith("MXNet packages")] == [MXNET_REFUSED_LINE]
    requirement = f"{LEFT_OUT_DISTRIBUTION}=={pinned_version(LEFT_OUT_DISTRIBUTION)}"
    assert f"installed 1 packages: {requirement}" in messages
    assert not list(runtime.own_site_packages.glob("mxnet*"))
    hidden = subprocess.run([str(runtime.python), "-c", "import importlib.util; print(importlib.util.find_spec("
                             "'mxnet') is None)"], capture_output=True, text=True, check=True).stdout.strip()
    assert hidden == "True"
    assert "imports ok: no mxnet (ONNX packages only), numpy " in result.stderr
    assert "forward pass with ONNX Runtime on CPUExecutionProvider ok: output shape (3, 4, 5)" in result.stderr
    assert "done: the cpu runtime without MXNet (ONNX packages only) is installed and works" in messages


def test_a_graviton_node_with_arm_performance_libraries_installs_mxnet_as_before(tmp_path: Path) -> None:
    """The same node and wheelhouse, but its loader knows ArmPL (an EMR custom AMI): mxnet is among the pins to
    install, so this wheelhouse, which lacks its wheel, fails the install (pip, retried)."""
    _, result = graviton_node_run(tmp_path, ["libgomp.so.1", "libz.so.1", *ARMPL])
    assert result.returncode == 1
    messages = log_messages(result.stderr)
    assert not any(message.startswith("MXNet packages") for message in messages)
    requirement = f"{LEFT_OUT_DISTRIBUTION}=={pinned_version(LEFT_OUT_DISTRIBUTION)}"
    assert any(re.fullmatch(rf"2 of \d+ pinned packages to install: {requirement} mxnet==1\.9\.1", message)
               for message in messages), messages
    assert "No matching distribution found for mxnet==1.9.1" in result.stderr + result.stdout


def test_the_loader_cache_of_an_x86_64_machine_does_not_count_on_an_aarch64_node(
    fresh_runtime: ThrowAwayRuntime, tmp_path: Path
) -> None:
    """Every soname of both machines, listed as x86-64: the aarch64 node still lacks ArmPL (so refuses MXNet) and
    asks dnf for its own packages."""
    environment, calls = failing_dnf(tmp_path)
    ldconfig = fake_ldconfig(tmp_path, "x86-64", system_sonames("x86_64") + system_sonames("aarch64"))
    result = run_install_script(
        "cpu", python=fresh_runtime.python, MXNET_BOOTSTRAP_MACHINE="aarch64", MXNET_BOOTSTRAP_LDCONFIG=str(ldconfig),
        **environment,
    )
    assert result.returncode == 1
    assert MXNET_REFUSED_LINE in log_messages(result.stderr)
    assert calls.read_text().splitlines() == ["install -y libgomp zlib"] * 3


@pytest.mark.parametrize(
    ("machine", "cache_architecture", "packages"),
    [("aarch64", "AArch64", "libgomp zlib"), ("x86_64", "x86-64", "libgomp libquadmath zlib")],
)
def test_dnf_is_asked_for_the_machines_own_packages(
    fresh_runtime: ThrowAwayRuntime, tmp_path: Path, machine: str, cache_architecture: str, packages: str
) -> None:
    """Review finding 2: an aarch64 node asked dnf for libquadmath, which exists only where GCC has __float128 (x86,
    ia64, ppc64le), and so failed its bootstrap. Here the cache holds only what no package provides (ArmPL)."""
    environment, calls = failing_dnf(tmp_path)
    without_packages = [soname for soname, package in system_libraries(machine).items() if not package]
    result = run_install_script(
        "cpu",
        python=fresh_runtime.python,
        MXNET_BOOTSTRAP_MACHINE=machine,
        MXNET_BOOTSTRAP_LDCONFIG=str(fake_ldconfig(tmp_path, cache_architecture, without_packages)),
        **environment,
    )
    assert result.returncode == 1
    assert calls.read_text().splitlines() == [f"install -y {packages}"] * 3  # retried, then given up
    assert "giving up after 3 attempts" in result.stderr


def test_a_node_of_another_machine_is_refused_naming_it(fresh_runtime: ThrowAwayRuntime) -> None:
    result = run_install_script("cpu", python=fresh_runtime.python, MXNET_BOOTSTRAP_MACHINE="armv7l")
    assert result.returncode == 1
    assert "this node's machine is 'armv7l'; EMR 7 nodes are one of x86_64 aarch64" in result.stderr


def test_a_node_installs_from_its_own_machines_folder_only(fresh_runtime: ThrowAwayRuntime, tmp_path: Path) -> None:
    """A Graviton node (aarch64) must not take the x86_64 folder's wheels. Its loader's cache holds what an aarch64
    node can have: no libquadmath (the old fake listed one, so the test could not see finding 2)."""
    wheelhouse = tmp_path / "wheelhouse"
    (wheelhouse / "x86_64").mkdir(parents=True)
    wheel_from_installed(LEFT_OUT_DISTRIBUTION, wheelhouse / "x86_64")
    result = run_install_script(
        "cpu",
        str(wheelhouse),
        python=fresh_runtime.python,
        MXNET_BOOTSTRAP_MACHINE="aarch64",
        MXNET_BOOTSTRAP_LDCONFIG=str(fake_ldconfig(tmp_path, "AArch64", system_sonames("aarch64"))),
    )
    assert result.returncode == 1
    assert (
        "system libraries present: libgomp.so.1 libz.so.1 libarmpl_lp64_mp.so libamath.so libastring.so"
    ) in result.stderr
    assert f"wheelhouse '{wheelhouse}/aarch64' holds no .whl files for this aarch64 node" in result.stderr


def test_gpu_is_refused_on_an_aarch64_node_with_an_nvidia_device(
    fresh_runtime: ThrowAwayRuntime, tmp_path: Path
) -> None:
    pci = tmp_path / "pci"
    (pci / "0000:00:1e.0").mkdir(parents=True)
    (pci / "0000:00:1e.0" / "vendor").write_text("0x10de\n")
    result = run_install_script(
        "gpu", python=fresh_runtime.python, MXNET_BOOTSTRAP_MACHINE="aarch64", MXNET_BOOTSTRAP_PCI_DEVICES_DIR=str(pci)
    )
    assert result.returncode == 1
    assert "compute=gpu needs an x86_64 node: mxnet-cu117 and NVIDIA's CUDA library wheels have no aarch64 build" in (
        result.stderr
    )


def test_cpu_over_a_cuda_build_is_refused_naming_it(fresh_runtime: ThrowAwayRuntime) -> None:
    # Installed-distribution metadata is all the check reads; the CUDA wheel itself is far too large to carry here.
    dist_info = fresh_runtime.own_site_packages / "mxnet_cu117-1.9.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: mxnet-cu117\nVersion: 1.9.1\n")
    result = run_install_script("cpu", python=fresh_runtime.python)
    assert result.returncode == 1
    assert "already has mxnet-cu117, which provide the same modules; uninstall them first" in result.stderr


def has_nvidia_device() -> bool:
    return any(vendor.read_text().strip() == "0x10de" for vendor in Path("/sys/bus/pci/devices").glob("*/vendor"))


@pytest.mark.skipif(has_nvidia_device(), reason="this machine has an NVIDIA device: gpu would install the CUDA build")
def test_gpu_on_a_node_without_nvidia_device_installs_the_cpu_build(
    fresh_runtime: ThrowAwayRuntime, tmp_path: Path
) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    (wheelhouse / MACHINE).mkdir(parents=True)
    wheel_from_installed(LEFT_OUT_DISTRIBUTION, wheelhouse / MACHINE)
    result = run_install_script("gpu", str(wheelhouse), python=fresh_runtime.python)
    assert result.returncode == 0, result.stderr
    assert "installing the cpu build" in log_messages(result.stderr)


@pytest.mark.skipif(shutil.which("dnf") is not None, reason="dnf would install pip here")
def test_interpreter_without_pip_and_without_dnf_is_rejected_naming_the_package(tmp_path: Path) -> None:
    bare = tmp_path / "bare-venv"
    subprocess.run([str(base_interpreter()), "-m", "venv", "--without-pip", str(bare)], check=True)
    result = run_install_script("cpu", python=bare / "bin" / "python")
    assert result.returncode == 1
    assert "has no pip, and there is no dnf to install python3.11-pip with" in result.stderr


def test_first_run_checks_the_system_libraries_the_runtime_links(two_runs: TwoRuns) -> None:
    """Review finding 7: libgomp and libquadmath (and zlib for cuDNN) must be on the node; here they are, so the
    script finds them in the loader cache and needs no dnf. Not provable here: the dnf install when they are missing
    (this machine has no dnf and has the libraries)."""
    assert "system libraries present: libgomp.so.1 libquadmath.so.0 libz.so.1" in log_messages(two_runs.first.stderr)


@pytest.mark.skipif(shutil.which("dnf") is not None, reason="dnf would install the interpreter here")
def test_missing_interpreter_without_dnf_is_rejected_naming_the_package() -> None:
    result = run_install_script("cpu", python=Path("python3.99"))
    assert result.returncode == 1
    assert "interpreter 'python3.99' not found, and there is no dnf to install python3.99 with" in result.stderr


@pytest.mark.parametrize("variable", ["MXNET_BOOTSTRAP_DEADLINE_SECONDS", "MXNET_BOOTSTRAP_RETRY_DELAY_SECONDS"])
@pytest.mark.parametrize("value", ["soon", "08"])  # 08: bash arithmetic would read it as a bad octal number
def test_time_settings_must_be_whole_seconds(variable: str, value: str) -> None:
    result = run_install_script("cpu", python=Path(sys.executable), **{variable: value})
    assert result.returncode == 2
    assert f"{variable} must be a whole number of seconds without leading zeros, got '{value}'" in result.stderr


def fake_gpu_node(root: Path, driver_line: str | None) -> dict[str, str]:
    """Environment for a node whose PCI bus has an NVIDIA device, with the driver's version file if `driver_line`.
    Stand-ins for /sys/bus/pci/devices and /proc/driver/nvidia/version: what they cannot prove is when EMR's GPU AMI
    really loads its driver."""
    device = root / "pci" / "0000:00:1e.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x10de\n")
    driver_file = root / "nvidia-version"
    if driver_line is not None:
        driver_file.write_text(driver_line + "\nGCC version:  gcc version 11.4.1\n")
    return {"MXNET_BOOTSTRAP_PCI_DEVICES_DIR": str(root / "pci"), "MXNET_BOOTSTRAP_NVIDIA_DRIVER_FILE": str(driver_file)}


# The gpu tests below run the script against a throw-away venv that sees the project's packages but has no pip: were
# the conflict check ever to let the gpu install through, it could not put CUDA builds into the project's .venv.
def test_gpu_node_whose_driver_never_loads_fails_after_a_bounded_wait(
    tmp_path: Path, fresh_runtime: ThrowAwayRuntime
) -> None:
    environment = fake_gpu_node(tmp_path, driver_line=None)
    result = run_install_script(
        "gpu", python=fresh_runtime.python, MXNET_BOOTSTRAP_DEADLINE_SECONDS="3", **environment
    )
    assert result.returncode == 1
    messages = log_messages(result.stderr)
    waits = [int(found.group(1)) for found in map(re.compile(r"waiting up to (\d+)s").match, messages) if found]
    assert waits and waits[0] <= 3  # the deadline bounds the wait (the script may already have used a second of it)
    assert "has an NVIDIA device but no NVIDIA driver was loaded after waiting" in result.stderr


def test_gpu_node_with_a_driver_older_than_cuda_12_needs_is_rejected(
    tmp_path: Path, fresh_runtime: ThrowAwayRuntime
) -> None:
    line = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82.01  Wed Oct 27 04:37:29 UTC 2021"
    result = run_install_script("gpu", python=fresh_runtime.python, **fake_gpu_node(tmp_path, line))
    assert result.returncode == 1
    assert "NVIDIA driver 470.82.01 is older than 525.60.13" in result.stderr


def test_gpu_node_with_a_loaded_driver_goes_on_to_install_the_cuda_build(
    tmp_path: Path, fresh_runtime: ThrowAwayRuntime
) -> None:
    """It then stops at the conflict check: this environment has the cpu builds, which must never be mixed with the
    CUDA ones (so nothing is installed here)."""
    line = "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.127.05  Release Build  (dvs-builder@U16)"
    before = snapshot(fresh_runtime.own_site_packages)
    result = run_install_script("gpu", python=fresh_runtime.python, **fake_gpu_node(tmp_path, line))
    assert snapshot(fresh_runtime.own_site_packages) == before
    assert "NVIDIA driver 550.127.05 loaded (waited 0s; 525.60.13 or newer is needed)" in log_messages(result.stderr)
    assert "installing the gpu build" in log_messages(result.stderr)
    assert "already has mxnet,onnxruntime, which provide the same modules" in result.stderr
