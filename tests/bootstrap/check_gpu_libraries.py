"""Prove offline that every shared library the GPU runtime loads resolves on an EMR GPU node (`make gpu-check`).

What it does, with the real wheels (about 3.9 GB, cached under build/gpu-check/):
1. downloads the gpu wheelhouse for EMR 7 nodes with the bootstrap's own `install-mxnet.sh --build-wheelhouse gpu`;
2. installs requirements-gpu.txt's wheels from it with pip (`--target`, the node's platform, `--require-hashes`) into
   one site-packages tree, as the bootstrap installs them into python3.11's, so files that two wheels share (the
   cuRAND path) end up exactly as on a node;
3. asks bootstrap/install-mxnet.sh itself (`--print-cuda-library-dirs`) which directories it writes into the node's
   loader configuration for that tree;
4. reads the dynamic section of libmxnet.so (mxnet-cu117) and libonnxruntime_providers_cuda.so (onnxruntime-gpu) with
   pyelftools and follows every DT_NEEDED entry recursively, searching as glibc's loader does: the DT_RPATH of the
   requesting object and of the objects that loaded it (when the requester has no DT_RUNPATH), else its DT_RUNPATH,
   then the loader configuration's directories; a name found nowhere must be one every Amazon Linux 2023 node has
   (AL2023_BASE), the driver's libcuda.so.1, or one of the system libraries the bootstrap ensures on x86_64
   (`install-mxnet.sh --print-system-libraries x86_64`); the names of that last kind are written, with the files that
   need them and the two runtimes' wheel hashes, to tests/bootstrap/fixtures/closure-x86_64-gpu.json, against which
   `make test` checks the bootstrap's x86_64 list;
5. does the same for every other library in those directories, since cuDNN and NVRTC load their sub-libraries with
   dlopen by name (no DT_NEEDED entry leads to them);
6. fails, with a list, on any unresolved name, on a soname that resolves to two different files (a CUDA 11 library
   shadowing a CUDA 12 one, or the reverse), on a wheel none of whose libraries the two runtimes need, on a symbol
   version newer than Amazon Linux 2023's glibc or libstdc++ provide, and on a Python dependency of a GPU wheel that
   the bootstrap's pins do not satisfy.

What it cannot prove: that the NVIDIA driver on the node is new enough (the bootstrap checks that on the node), that
the libraries work on a GPU, and libraries loaded with dlopen by names outside the wheelhouse (the driver's own, such
as libnvidia-ml.so.1, which the driver installs together with libcuda.so.1). Run on a GPU node, README "GPU path".

The resolver functions are tested in `make test` on the CPU builds' real libraries (test_bootstrap_gpu_libraries.py).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO_ROOT / "bootstrap" / "install-mxnet.sh"
GPU_REQUIREMENTS_FILE = REPO_ROOT / "requirements-gpu.txt"
DEFAULT_CACHE = REPO_ROOT / "build" / "gpu-check"
FIXTURES = REPO_ROOT / "tests" / "bootstrap" / "fixtures"


def emr_node_platform_options(machine: str) -> tuple[str, ...]:
    """pip's options for EMR 7 nodes of ``machine`` (Amazon Linux 2023, CPython 3.11), as install-mxnet.sh's
    `emr_node_platform_options` (pip also accepts the older manylinux tags, such as cuDNN 8.7's manylinux1)."""
    return (
        "--platform", f"manylinux2014_{machine}", "--platform", f"manylinux_2_28_{machine}",
        "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
    )


EMR_NODE_PLATFORM_OPTIONS = emr_node_platform_options("x86_64")

# What every Amazon Linux 2023 node has before any bootstrap action, per machine (`uname -m`), by soname: glibc and
# the GCC runtime, which dnf and rpm themselves need. A library the runtime needs that is neither here nor in the
# wheels is one the bootstrap must ensure (install-mxnet.sh --print-system-libraries).
GLIBC = "glibc 2.34 (Amazon Linux 2023)"
_GLIBC_SONAMES = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1")
_GCC_RUNTIME = {
    "libgcc_s.so.1": "libgcc (GCC 11 runtime, Amazon Linux 2023 base)",
    "libstdc++.so.6": "libstdc++ (GCC 11 runtime, Amazon Linux 2023 base)",
}
AL2023_BASE: Mapping[str, Mapping[str, str]] = {
    machine: {loader: GLIBC, **{name: GLIBC for name in _GLIBC_SONAMES}, **_GCC_RUNTIME}
    for machine, loader in (("x86_64", "ld-linux-x86-64.so.2"), ("aarch64", "ld-linux-aarch64.so.1"))
}
# What an EMR 7 GPU node provides besides the base: the driver's library.
NVIDIA_DRIVER = {"libcuda.so.1": "the NVIDIA driver (EMR's GPU AMI)"}
NODE_PROVIDED: Mapping[str, str] = {**AL2023_BASE["x86_64"], **NVIDIA_DRIVER}
# The ELF e_machine of each node machine: the loader skips a file built for another.
ELF_MACHINES = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}
# The newest symbol version Amazon Linux 2023 provides per version family: glibc 2.34 and GCC 11's libstdc++
# (GLIBCXX_3.4.29, CXXABI_1.3.13). A library asking for a newer one would fail to load there.
NODE_SYMBOL_VERSION_LIMITS: Mapping[str, tuple[int, ...]] = {
    "GLIBC": (2, 34),
    "GLIBCXX": (3, 4, 29),
    "CXXABI": (1, 3, 13),
}
FRAMEWORK_LIBRARIES = ("mxnet/libmxnet.so", "onnxruntime/capi/libonnxruntime_providers_cuda.so")
SHARED_LIBRARY_NAME = re.compile(r"\.so(\.\d+)*$")


@dataclass(frozen=True)
class DynamicInfo:
    """What the loader reads from one shared object's dynamic section."""

    needed: tuple[str, ...]
    rpath: tuple[Path, ...]  # DT_RPATH with $ORIGIN expanded; ignored by the loader when DT_RUNPATH exists
    runpath: Optional[tuple[Path, ...]]  # DT_RUNPATH with $ORIGIN expanded; None when absent
    required_versions: Mapping[str, frozenset[str]]  # needed file -> symbol versions asked of it (DT_VERNEED)


@dataclass
class Closure:
    """The result of following DT_NEEDED from some root libraries."""

    resolved: dict[str, set[Path]] = field(default_factory=lambda: defaultdict(set))  # name -> files it resolved to
    provided: dict[str, str] = field(default_factory=dict)  # name -> what on the node provides it
    unresolved: dict[str, set[Path]] = field(default_factory=lambda: defaultdict(set))  # name -> who needs it
    # provided name -> the symbol versions asked of it
    required_versions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    loaded: set[Path] = field(default_factory=set)  # every file in the closure, roots included

    @property
    def conflicts(self) -> dict[str, set[Path]]:
        """Names that resolve to different files depending on who asks: one would shadow the other in a process."""
        # The loader knows a file by its device and inode, so two paths to one file are one library.
        return {name: files for name, files in self.resolved.items() if len({f.resolve() for f in files}) > 1}


def _expand_origin(entries: str, origin: Path) -> tuple[Path, ...]:
    directories = []
    for entry in entries.split(":"):
        if not entry:
            continue  # an empty element (a trailing ':') is ignored here; glibc would read it as the working directory
        if "$LIB" in entry or "${LIB}" in entry or "$PLATFORM" in entry or "${PLATFORM}" in entry:
            raise ValueError(f"unsupported dynamic string token in search path entry {entry!r}")
        expanded = entry.replace("${ORIGIN}", str(origin)).replace("$ORIGIN", str(origin))
        directories.append(Path(os.path.normpath(expanded)))  # "lib/../../cublas/lib" names the same directory
    return tuple(directories)


def read_dynamic_info(path: Path) -> DynamicInfo:
    """DT_NEEDED, DT_RPATH, DT_RUNPATH and DT_VERNEED of the shared object at ``path``."""
    needed: list[str] = []
    rpath: tuple[Path, ...] = ()
    runpath: Optional[tuple[Path, ...]] = None
    required_versions: dict[str, set[str]] = defaultdict(set)
    with path.open("rb") as stream:
        elf = ELFFile(stream)
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                for tag in section.iter_tags():
                    if tag.entry.d_tag == "DT_NEEDED":
                        needed.append(tag.needed)
                    elif tag.entry.d_tag == "DT_RPATH":
                        rpath = _expand_origin(tag.rpath, path.parent)
                    elif tag.entry.d_tag == "DT_RUNPATH":
                        runpath = _expand_origin(tag.runpath, path.parent)
            elif isinstance(section, GNUVerNeedSection):
                for verneed, auxiliaries in section.iter_versions():
                    required_versions[verneed.name].update(auxiliary.name for auxiliary in auxiliaries)
    return DynamicInfo(
        needed=tuple(needed),
        # glibc drops DT_RPATH of an object that also has DT_RUNPATH.
        rpath=() if runpath is not None else rpath,
        runpath=runpath,
        required_versions={name: frozenset(versions) for name, versions in required_versions.items()},
    )


def is_loadable(path: Path, machine: str = "x86_64") -> bool:
    """Whether the loader would accept ``path`` for a 64-bit process of ``machine`` (x86_64 | aarch64); it skips
    other ELF classes and machines."""
    try:
        with path.open("rb") as stream:
            header = ELFFile(stream).header
    except Exception:  # not an ELF file: the loader skips it and keeps searching
        return False
    return header["e_ident"]["EI_CLASS"] == "ELFCLASS64" and header["e_machine"] == ELF_MACHINES[machine]


def _find(name: str, directories: Iterable[Path], machine: str) -> Optional[Path]:
    for directory in directories:
        candidate = directory / name
        if candidate.is_file() and is_loadable(candidate, machine):
            return candidate
    return None


def resolve_closure(
    roots: Sequence[Path],
    library_dirs: Sequence[Path],
    node_provided: Mapping[str, str] = NODE_PROVIDED,
    machine: str = "x86_64",
) -> Closure:
    """Follow DT_NEEDED from ``roots`` (loaded by absolute path, as Python's ctypes loads them).

    ``library_dirs`` stand for the loader configuration (ld.so.conf.d) the bootstrap writes. Per requested name the
    search is glibc's: if the requesting object has no DT_RUNPATH, the DT_RPATH of that object and then of each
    object up the chain that loaded it; otherwise its own DT_RUNPATH only; then ``library_dirs``. No LD_LIBRARY_PATH
    is set on the nodes. A name found nowhere is resolved by ``node_provided`` or recorded as unresolved. Only files
    built for ``machine`` (x86_64 | aarch64) are taken, as the loader of such a node does.
    """
    closure = Closure()
    info_cache: dict[Path, DynamicInfo] = {}
    pending: list[tuple[Path, tuple[Path, ...]]] = [(Path(root), ()) for root in roots]
    seen: set[tuple[Path, tuple[Path, ...]]] = set()
    while pending:
        library, loader_rpaths = pending.pop()
        if (library, loader_rpaths) in seen:
            continue
        seen.add((library, loader_rpaths))
        closure.loaded.add(library)
        info = info_cache.setdefault(library, read_dynamic_info(library))
        # Inherited by what this library loads: its own DT_RPATH, then its loaders'.
        rpath_chain = info.rpath + loader_rpaths
        own_search = info.runpath if info.runpath is not None else rpath_chain
        for name in info.needed:
            found = _find(name, (*own_search, *library_dirs), machine)
            if found is not None:
                closure.resolved[name].add(found)
                pending.append((found, rpath_chain))
            elif name in node_provided:
                closure.provided[name] = node_provided[name]
                closure.required_versions[name].update(info.required_versions.get(name, ()))
            else:
                closure.unresolved[name].add(library)
    return closure


def versions_beyond_node(required_versions: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Symbol versions asked of node libraries that are newer than NODE_SYMBOL_VERSION_LIMITS allows."""
    too_new: dict[str, list[str]] = {}
    for name, versions in required_versions.items():
        for version in versions:
            family, _, number = version.partition("_")
            limit = NODE_SYMBOL_VERSION_LIMITS.get(family)
            if limit is None or not re.fullmatch(r"\d+(\.\d+)*", number):
                continue
            if tuple(int(part) for part in number.split(".")) > limit:
                too_new.setdefault(name, []).append(version)
    return {name: sorted(versions) for name, versions in too_new.items()}


def libraries_in(directories: Iterable[Path]) -> list[Path]:
    return sorted(
        path for directory in directories for path in directory.iterdir()
        if path.is_file() and SHARED_LIBRARY_NAME.search(path.name)
    )


def newest_versions(required_versions: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """The newest symbol version asked of each node library (GLIBC_2.27 over GLIBC_2.17)."""
    return {
        name: max(versions, key=lambda v: [int(x) if x.isdigit() else 0 for x in re.split(r"[._]", v)])
        for name, versions in sorted(required_versions.items()) if versions
    }


# --- the recorded closures: what each machine's bootstrap must ensure ---------------------------------------------

def bootstrap_system_libraries(machine: str) -> dict[str, str]:
    """install-mxnet.sh's system libraries for ``machine``: {soname: dnf package, or '' when there is none} (a line's
    third field, the one framework that links an optional library, is not read here)."""
    listed = run([str(INSTALL_SCRIPT), "--print-system-libraries", machine], capture_output=True).stdout.split()
    return dict(line.split(":")[:2] for line in listed)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def closure_record(
    *, machine: str, compute: str, wheels: Sequence[Path], roots: Sequence[Path], closures: Sequence[Closure],
    tree: Path,
) -> dict:
    """What a fixture records of ``closures`` (run with node_provided = AL2023_BASE[machine], plus the driver for
    gpu): the wheels (file name -> sha256) and roots it came from, and ``system_libraries``, each soname that neither
    the wheels nor the base provide, with the files (relative to ``tree``) that need it. The bootstrap's list for
    ``machine`` must hold exactly the union of these over its records (test_bootstrap_system_libraries.py)."""
    needers: dict[str, set[str]] = defaultdict(set)
    required_versions: dict[str, set[str]] = defaultdict(set)
    for closure in closures:
        for name, files in closure.unresolved.items():
            needers[name].update(str(file.relative_to(tree)) for file in files)
        for name, versions in closure.required_versions.items():
            required_versions[name].update(versions)
    return {
        "machine": machine,
        "compute": compute,
        "date": datetime.date.today().isoformat(),
        "wheels": {wheel.name: sha256_of(wheel) for wheel in sorted(wheels)},
        "roots": [str(root.relative_to(tree)) for root in roots],
        "base_set": sorted(AL2023_BASE[machine]),
        "resolved_from_wheels": sorted({name for closure in closures for name in closure.resolved}),
        "provided_by_the_node": sorted({name for closure in closures for name in closure.provided}),
        "system_libraries": {name: sorted(files) for name, files in sorted(needers.items())},
        "newest_symbol_versions_asked_of_the_node": newest_versions(required_versions),
        "symbol_versions_newer_than_the_node": versions_beyond_node(required_versions),
    }


def write_closure_record(record: Mapping) -> Path:
    """Writes ``record`` to tests/bootstrap/fixtures/closure-<machine>-<compute>.json; returns the path."""
    path = FIXTURES / f"closure-{record['machine']}-{record['compute']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path



# --- the real GPU wheelhouse ------------------------------------------------------------------------------------------

def gpu_pins() -> dict[str, str]:
    """requirements-gpu.txt as {canonical name: version}."""
    pins = {}
    for line in GPU_REQUIREMENTS_FILE.read_text().splitlines():
        requirement_text = line.split("#", 1)[0].split(" --hash", 1)[0].strip()
        if requirement_text:
            name, version = requirement_text.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess[str]:
    print("+ " + " ".join(command), file=sys.stderr)
    return subprocess.run(command, check=True, text=True, **kwargs)


def download_wheels(wheel_dir: Path) -> None:
    """The bootstrap's own `--build-wheelhouse gpu` (what users upload for nodes without internet); pip skips files
    already downloaded. The hashes are checked when the tree is installed from these files."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    run([str(INSTALL_SCRIPT), "--build-wheelhouse", "gpu", str(wheel_dir.parent), wheel_dir.name],
        env={**os.environ, "MXNET_BOOTSTRAP_PYTHON": sys.executable})


def install_tree(wheel_dir: Path, site_dir: Path) -> None:
    """pip-install the wheels into ``site_dir`` once per content of requirements-gpu.txt."""
    stamp = site_dir / ".requirements-gpu.sha256"
    wanted = hashlib.sha256(GPU_REQUIREMENTS_FILE.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == wanted:
        print(f"{site_dir} is up to date with requirements-gpu.txt", file=sys.stderr)
        return
    if site_dir.exists():
        run(["rm", "-rf", str(site_dir)])
    run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--no-deps",
         "--no-index", "--find-links", str(wheel_dir), "--only-binary=:all:", *EMR_NODE_PLATFORM_OPTIONS,
         "--target", str(site_dir), "--require-hashes", "-r", str(GPU_REQUIREMENTS_FILE)])
    stamp.write_text(wanted)


def bootstrap_library_dirs(site_dir: Path) -> list[Path]:
    """The directories install-mxnet.sh writes into the loader configuration, computed by the script for this tree."""
    result = run(
        [str(INSTALL_SCRIPT), "--print-cuda-library-dirs"],
        env={**os.environ, "MXNET_BOOTSTRAP_PYTHON": sys.executable, "PYTHONPATH": str(site_dir)},
        capture_output=True,
    )
    return [Path(line) for line in result.stdout.splitlines() if line]


def owners(site_dir: Path) -> dict[Path, str]:
    """Every installed file of the tree -> the distribution that installed it (the last one, if two did)."""
    owner = {}
    for distribution in importlib.metadata.distributions(path=[str(site_dir)]):
        for file in distribution.files or []:
            owner[Path(distribution.locate_file(file)).resolve()] = canonicalize_name(distribution.metadata["Name"])
    return owner


def bootstrap_gpu_pins() -> dict[str, str]:
    listed = run([str(INSTALL_SCRIPT), "--print-requirements", "gpu"], capture_output=True).stdout.split()
    return {canonicalize_name(line.split("==")[0]): line.split("==")[1] for line in listed}


def unmet_python_dependencies(site_dir: Path, node_pins: Mapping[str, str]) -> list[str]:
    """Requirements of the GPU wheels (for CPython 3.11 on Linux x86_64) that the bootstrap's gpu pins do not meet."""
    node_environment = {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
                        "platform_machine": "x86_64", "implementation_name": "cpython", "extra": ""}
    unmet = []
    for distribution in importlib.metadata.distributions(path=[str(site_dir)]):
        for requirement_text in distribution.requires or []:
            requirement = Requirement(requirement_text)
            if requirement.marker is not None and not requirement.marker.evaluate(node_environment):
                continue
            pinned = node_pins.get(canonicalize_name(requirement.name))
            if pinned is None or not requirement.specifier.contains(pinned, prereleases=True):
                unmet.append(f"{distribution.metadata['Name']} needs {requirement} (pinned: {pinned or 'nothing'})")
    return sorted(unmet)


def check(cache: Path) -> dict:
    # --build-wheelhouse writes one folder per machine; GPU nodes are x86_64.
    wheel_dir, site_dir = cache / "wheels" / "x86_64", cache / "site-packages"
    download_wheels(wheel_dir)
    install_tree(wheel_dir, site_dir)
    library_dirs = bootstrap_library_dirs(site_dir)
    framework_roots = [site_dir / relative for relative in FRAMEWORK_LIBRARIES]
    from_frameworks = resolve_closure(framework_roots, library_dirs)
    every_library = resolve_closure(libraries_in(library_dirs), library_dirs)
    file_owner = owners(site_dir)

    names_in_dirs: dict[str, list[Path]] = defaultdict(list)
    for library in libraries_in(library_dirs):
        names_in_dirs[library.name].append(library)
    used_wheels = {file_owner.get(path.resolve()) for path in from_frameworks.loaded}
    record = closure_record(
        machine="x86_64", compute="gpu", wheels=framework_wheels(wheel_dir), roots=framework_roots,
        closures=(from_frameworks, every_library), tree=site_dir,
    )
    # What neither the wheels nor the base provide is the bootstrap's to ensure; anything else is unresolved.
    ensured = bootstrap_system_libraries("x86_64")
    unresolved = {
        name: needers for name, needers in {**every_library.unresolved, **from_frameworks.unresolved}.items()
        if name not in ensured
    }
    conflicts = {**every_library.conflicts, **from_frameworks.conflicts}
    required_versions: dict[str, set[str]] = defaultdict(set)
    for closure in (from_frameworks, every_library):
        for name, versions in closure.required_versions.items():
            required_versions[name].update(versions)
    problems = {
        "unresolved": {name: sorted(map(str, needers)) for name, needers in sorted(unresolved.items())},
        "sonames_in_two_files": {
            **{name: sorted(map(str, files)) for name, files in conflicts.items()},
            **{name: sorted(map(str, files)) for name, files in names_in_dirs.items() if len(files) > 1},
        },
        "wheels_no_runtime_needs": sorted(
            name for name in gpu_pins() if name not in used_wheels and name.startswith("nvidia-")),
        "symbol_versions_newer_than_the_node": versions_beyond_node(required_versions),
        "unmet_python_dependencies": unmet_python_dependencies(site_dir, bootstrap_gpu_pins()),
    }
    resolved_from_wheels = {}
    for name, files in sorted(from_frameworks.resolved.items()):
        file = sorted(files)[0]  # one file per name, or a problem reported above
        resolved_from_wheels[name] = {"file": str(file.relative_to(site_dir)), "wheel": file_owner.get(file.resolve())}
    return {
        "date": datetime.date.today().isoformat(),
        "wheels": len(gpu_pins()),
        "installed_megabytes": round(sum(p.stat().st_size for p in site_dir.rglob("*") if p.is_file()) / 1e6),
        "library_dirs": [str(directory.relative_to(site_dir)) for directory in library_dirs],
        "framework_libraries": list(FRAMEWORK_LIBRARIES),
        "resolved_from_wheelhouse": resolved_from_wheels,
        "provided_by_node": dict(sorted({**every_library.provided, **from_frameworks.provided}.items())),
        "ensured_by_the_bootstrap": {name: ensured[name] for name in record["system_libraries"] if name in ensured},
        "newest_symbol_versions_asked_of_the_node": newest_versions(required_versions),
        "other_libraries_checked": len(every_library.loaded - from_frameworks.loaded),
        "problems": problems,
        "ok": not any(problems.values()),
        "closure_record": record,
    }


def framework_wheels(wheel_dir: Path) -> list[Path]:
    """The wheels of the two gpu runtimes (mxnet-cu117, onnxruntime-gpu) at requirements-gpu.txt's versions."""
    pins = gpu_pins()
    return sorted(
        wheel for wheel in wheel_dir.glob("*.whl")
        if (name := canonicalize_name(wheel.name.split("-")[0])) in ("mxnet-cu117", "onnxruntime-gpu")
        and wheel.name.split("-")[1] == pins[name]
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where wheels and the tree are kept")
    arguments = parser.parse_args(argv)
    report = check(arguments.cache.resolve())
    record_path = write_closure_record(report.pop("closure_record"))
    print(f"wrote {record_path.relative_to(REPO_ROOT)}", file=sys.stderr)
    report_path = arguments.cache / "result.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    resolved = report["resolved_from_wheelhouse"]
    print(
        f"\n{report['date']}: {report['wheels']} wheels; {len(resolved)} libraries the two runtimes need resolve to "
        f"the wheelhouse, {len(report['provided_by_node'])} to the node ({', '.join(report['provided_by_node'])}), "
        f"{len(report['ensured_by_the_bootstrap'])} to the bootstrap's system libraries "
        f"({', '.join(report['ensured_by_the_bootstrap'])}); "
        f"{report['other_libraries_checked']} more libraries in the loader path checked; "
        f"{'no problems' if report['ok'] else 'PROBLEMS: see problems above'} (written to {report_path})",
        file=sys.stderr,
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
