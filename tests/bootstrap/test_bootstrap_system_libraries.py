"""The system libraries install-mxnet.sh ensures per machine, against the recorded ELF closures of the pinned wheels.

`make arch-check` follows the DT_NEEDED entries of the cpu runtimes' native libraries (libmxnet.so and ONNX Runtime's
.so files) from the aarch64 and x86_64 wheels, and `make gpu-check` those of the gpu build, with one resolver
(check_gpu_libraries.resolve_closure). What neither the wheels nor every Amazon Linux 2023 node provides is recorded in
tests/bootstrap/fixtures/closure-<machine>-<compute>.json with the date and the wheels' hashes. These tests hold the
bootstrap's per-machine list (`--print-system-libraries`) to exactly the union of its machine's records, and the
records to the pinned wheels, so a pin bump without a new closure fails here. A library is optional (a third field
naming the framework, `soname::mxnet`: a node without it installs all but MXNet) exactly when no dnf package provides
it and only MXNet's files need it; every other one is required. Not proved: that dnf on a real node
installs these packages, and that the libraries then load (no arm64 machine, no dnf here).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from bootstrap_helpers import INSTALL_SCRIPT, REPO_ROOT
from packaging.utils import canonicalize_name, parse_wheel_filename

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MACHINES = ("x86_64", "aarch64")
# Which check writes each record.
WRITERS = {
    ("x86_64", "cpu"): "make arch-check",
    ("aarch64", "cpu"): "make arch-check",
    ("x86_64", "gpu"): "make gpu-check",
}
FRAMEWORKS = {"cpu": ("mxnet", "onnxruntime"), "gpu": ("mxnet-cu117", "onnxruntime-gpu")}


def records() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(FIXTURES.glob("closure-*.json")):
        record = json.loads(path.read_text())
        found[(record["machine"], record["compute"])] = record
    return found


def bootstrap_lines(machine: str) -> list[list[str]]:
    """install-mxnet.sh's lines for ``machine``, each [soname, dnf package ('' when none)] or, for an optional
    library, [soname, package, the one framework that links it]."""
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-system-libraries", machine], capture_output=True, text=True, check=True
    ).stdout.split()
    return [line.split(":") for line in listed]


def bootstrap_list(machine: str) -> dict[str, str]:
    """{soname: dnf package ('' when none)} as install-mxnet.sh prints it for ``machine``."""
    return {fields[0]: fields[1] for fields in bootstrap_lines(machine)}


def pinned_hashes(requirements_file: Path, names: tuple[str, ...]) -> dict[str, str]:
    """{canonical name: sha256} of ``names`` in a requirements file with `--hash=sha256:` pins."""
    hashes = {}
    for line in requirements_file.read_text().splitlines():
        match = re.match(r"^([^=\s]+)==\S+ --hash=sha256:([0-9a-f]{64})", line)
        if match and canonicalize_name(match[1]) in names:
            hashes[canonicalize_name(match[1])] = match[2]
    return hashes


def script_pins(compute: str) -> dict[str, str]:
    listed = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-requirements", compute], capture_output=True, text=True, check=True
    ).stdout.split()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in listed}


def test_every_machine_and_build_has_a_closure_record() -> None:
    assert set(records()) == set(WRITERS)


@pytest.mark.parametrize("machine", MACHINES)
def test_the_bootstraps_list_is_exactly_what_the_recorded_closures_need(machine: str) -> None:
    """Review finding 2: the list was one for both machines, with libquadmath, which aarch64 has no package for."""
    mine = {key: record for key, record in records().items() if key[0] == machine}
    needed = {name for record in mine.values() for name in record["system_libraries"]}
    provenance = ", ".join(f"{key[1]} on {record['date']} ({WRITERS[key]})" for key, record in sorted(mine.items()))
    assert sorted(bootstrap_list(machine)) == sorted(needed), (
        f"install-mxnet.sh's {machine} system libraries differ from the closure recorded for {provenance}"
    )


@pytest.mark.parametrize("machine", MACHINES)
def test_a_library_is_optional_exactly_when_only_mxnet_links_it_and_no_package_provides_it(machine: str) -> None:
    """Graviton: ArmPL, which MXNet's aarch64 wheel links and no Amazon Linux 2023 package provides, was required, so
    a stock node installed nothing. ONNX Runtime needs none of it: a node without it now installs all but MXNet."""
    needers: dict[str, set[str]] = {}
    for (record_machine, _), record in records().items():
        if record_machine == machine:
            for name, files in record["system_libraries"].items():
                needers.setdefault(name, set()).update(files)
    lines = bootstrap_lines(machine)
    assert all(len(fields) == 2 or (len(fields) == 3 and fields[2] == "mxnet") for fields in lines), lines
    optional = {fields[0] for fields in lines if len(fields) == 3}
    packages = {fields[0]: fields[1] for fields in lines}
    only_mxnet_without_package = {
        name for name, files in needers.items()
        if not packages.get(name) and all(file.startswith("mxnet/") for file in files)
    }
    assert optional == only_mxnet_without_package


def test_arm_performance_libraries_are_optional_on_aarch64_only() -> None:
    armpl = {"libarmpl_lp64_mp.so", "libamath.so", "libastring.so"}
    optional = {machine: {fields[0] for fields in bootstrap_lines(machine) if len(fields) == 3} for machine in MACHINES}
    assert optional == {"aarch64": armpl, "x86_64": set()}


@pytest.mark.parametrize("machine", MACHINES)
def test_no_ensured_library_is_one_every_node_has(machine: str) -> None:
    base = {name for (record_machine, _), record in records().items() if record_machine == machine
            for name in record["base_set"]}
    assert base and not base & set(bootstrap_list(machine))


def test_the_aarch64_record_is_of_the_wheels_in_requirements_aarch64() -> None:
    record = records()[("aarch64", "cpu")]
    recorded_files = {
        canonicalize_name(match[1]): (match[3], match[2])
        for line in (REPO_ROOT / "requirements-aarch64.txt").read_text().splitlines()
        if (match := re.match(r"^([^=\s]+)==\S+ --hash=sha256:([0-9a-f]{64})  # (\S+\.whl)$", line))
    }
    assert record["wheels"] == dict(recorded_files[name] for name in FRAMEWORKS["cpu"]), (
        "the aarch64 runtime wheels changed since their closure was recorded: run `make arch-check`"
    )


def test_the_x86_64_cpu_record_is_of_the_pinned_versions() -> None:
    record = records()[("x86_64", "cpu")]
    versions = {parse_wheel_filename(name)[0]: str(parse_wheel_filename(name)[1]) for name in record["wheels"]}
    pins = script_pins("cpu")
    assert versions == {name: pins[name] for name in FRAMEWORKS["cpu"]}, "run `make arch-check`"


def test_the_gpu_record_is_of_the_wheels_in_requirements_gpu() -> None:
    record = records()[("x86_64", "gpu")]
    expected = pinned_hashes(REPO_ROOT / "requirements-gpu.txt", FRAMEWORKS["gpu"])
    assert len(expected) == 2 and sorted(record["wheels"].values()) == sorted(expected.values()), (
        "the gpu runtime wheels changed since their closure was recorded: run `make gpu-check`"
    )


@pytest.mark.parametrize("key", sorted(WRITERS), ids=lambda key: "-".join(key))
def test_no_recorded_library_asks_for_symbols_newer_than_amazon_linux_2023(key: tuple[str, str]) -> None:
    assert records()[key]["symbol_versions_newer_than_the_node"] == {}
