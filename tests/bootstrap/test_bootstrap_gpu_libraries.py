"""The resolver of `make gpu-check` (check_gpu_libraries.py) on real shared libraries: the CPU builds of MXNet and
ONNX Runtime in this environment, whose dynamic sections have the same shape as the CUDA builds' (DT_RPATH ${ORIGIN}
in libmxnet.so, DT_RUNPATH $ORIGIN in ONNX Runtime's, system libraries from the node). What it cannot prove: the
CUDA wheels themselves, which are 3.9 GB; `make gpu-check` runs the same functions on them (README, "GPU path").
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from bootstrap_helpers import INSTALL_SCRIPT, script_environment
from check_gpu_libraries import (
    AL2023_BASE,
    NODE_PROVIDED,
    is_loadable,
    read_dynamic_info,
    resolve_closure,
    versions_beyond_node,
)

SITE_PACKAGES = Path(sysconfig.get_paths()["platlib"])
MXNET_DIR = SITE_PACKAGES / "mxnet"
LIBMXNET = MXNET_DIR / "libmxnet.so"
ONNXRUNTIME_CAPI = SITE_PACKAGES / "onnxruntime" / "capi"


def onnxruntime_extension() -> Path:
    return next(ONNXRUNTIME_CAPI.glob("onnxruntime_pybind11_state*.so"))


def link_or_copy(source: Path, directory: Path) -> Path:
    """A file of the same content at another place (a hard link: instant, and the loader sees a real file there)."""
    target = directory / source.name
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())
    return target


def test_reads_the_dynamic_section_of_libmxnet():
    info = read_dynamic_info(LIBMXNET)
    assert {"libopenblas.so.0", "libgfortran.so.3", "libgomp.so.1", "libc.so.6"} <= set(info.needed)
    # DT_RPATH ${ORIGIN}, expanded to the library's own directory; no DT_RUNPATH.
    assert (info.rpath, info.runpath) == ((MXNET_DIR,), None)


def test_reads_runpath_and_symbol_versions_of_onnxruntime():
    info = read_dynamic_info(onnxruntime_extension())
    assert (info.rpath, info.runpath) == ((), (ONNXRUNTIME_CAPI,))
    assert any(version.startswith("GLIBC_") for version in info.required_versions["libc.so.6"])


def test_cpu_runtimes_resolve_through_rpath_and_leave_the_bootstraps_libraries():
    closure = resolve_closure([LIBMXNET, onnxruntime_extension()], library_dirs=[], node_provided=AL2023_BASE["x86_64"])
    assert closure.conflicts == {}
    # Bundled in the wheel, found through libmxnet.so's DT_RPATH (and libopenblas.so.0's own for libgfortran).
    assert closure.resolved["libopenblas.so.0"] == {MXNET_DIR / "libopenblas.so.0"}
    assert closure.resolved["libgfortran.so.3"] == {MXNET_DIR / "libgfortran.so.3"}
    # Neither in the wheel nor on every node: what the bootstrap ensures with dnf (review finding 7), with who needs it.
    assert dict(closure.unresolved) == {
        "libquadmath.so.0": {MXNET_DIR / "libgfortran.so.3"},
        "libgomp.so.1": {LIBMXNET, MXNET_DIR / "libopenblas.so.0"},
    }
    assert closure.provided["libc.so.6"] == NODE_PROVIDED["libc.so.6"]


def test_only_files_of_the_nodes_machine_resolve():
    """The loader of an aarch64 node skips x86_64 files: the x86_64 OpenBLAS beside libmxnet.so does not count."""
    assert is_loadable(LIBMXNET, "x86_64") and not is_loadable(LIBMXNET, "aarch64")
    closure = resolve_closure([LIBMXNET], library_dirs=[], node_provided=AL2023_BASE["aarch64"], machine="aarch64")
    assert {"libopenblas.so.0", "libgfortran.so.3"} <= set(closure.unresolved) and not closure.resolved


def test_library_dirs_stand_for_the_loader_configuration(tmp_path):
    """libmxnet.so alone in a directory: its ${ORIGIN} no longer holds OpenBLAS, so only the loader configuration's
    directories (what the bootstrap writes to ld.so.conf.d) can resolve it."""
    alone = link_or_copy(LIBMXNET, tmp_path)
    system_libraries = {"libgomp.so.1", "libquadmath.so.0"}  # the bootstrap's to ensure, not the wheel's
    without = resolve_closure([alone], library_dirs=[])
    # libquadmath is libgfortran's need, and libgfortran is not found here.
    assert set(without.unresolved) == {"libopenblas.so.0", "libgfortran.so.3", "libgomp.so.1"}
    with_dirs = resolve_closure([alone], library_dirs=[MXNET_DIR])
    assert set(with_dirs.unresolved) == system_libraries
    assert with_dirs.resolved["libopenblas.so.0"] == {MXNET_DIR / "libopenblas.so.0"}


def test_a_soname_that_resolves_to_two_files_is_a_conflict(tmp_path):
    """Two copies of libopenblas.so.0: libmxnet.so finds its own through DT_RPATH, a second root through the loader
    configuration finds the other, so in one process whichever loads first would serve both."""
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    link_or_copy(MXNET_DIR / "libopenblas.so.0", other_dir)
    link_or_copy(MXNET_DIR / "libgfortran.so.3", other_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    second_root = link_or_copy(LIBMXNET, elsewhere)
    closure = resolve_closure([LIBMXNET, second_root], library_dirs=[other_dir])
    assert closure.conflicts["libopenblas.so.0"] == {MXNET_DIR / "libopenblas.so.0", other_dir / "libopenblas.so.0"}


def test_symbol_versions_newer_than_amazon_linux_2023_are_reported():
    asked = {"libc.so.6": ["GLIBC_2.17", "GLIBC_2.34", "GLIBC_2.38"], "libstdc++.so.6": ["GLIBCXX_3.4.30"]}
    assert versions_beyond_node(asked) == {"libc.so.6": ["GLIBC_2.38"], "libstdc++.so.6": ["GLIBCXX_3.4.30"]}


def test_cpu_runtimes_ask_nothing_newer_of_the_node():
    closure = resolve_closure([LIBMXNET, onnxruntime_extension()], library_dirs=[])
    assert versions_beyond_node(closure.required_versions) == {}


@pytest.fixture
def fake_cuda_wheel_tree(tmp_path: Path) -> Path:
    """A site-packages tree with one nvidia-* distribution shipping one real shared library, and one other
    distribution that also ships one (which must not count)."""
    for project, library_dir, library in [
        ("nvidia_fake_cu12", "nvidia/fake/lib", MXNET_DIR / "libgfortran.so.3"),
        ("other_project", "other/lib", MXNET_DIR / "libopenblas.so.0"),
    ]:
        (tmp_path / library_dir).mkdir(parents=True)
        link_or_copy(library, tmp_path / library_dir)
        dist_info = tmp_path / f"{project}-1.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project.replace('_', '-')}\nVersion: 1.0\n")
        (dist_info / "RECORD").write_text(f"{library_dir}/{library.name},,\n{dist_info.name}/METADATA,,\n")
    return tmp_path


def test_bootstrap_prints_the_library_dirs_of_the_nvidia_wheels(fake_cuda_wheel_tree: Path):
    """The directories the bootstrap writes into the loader configuration, computed by the script itself."""
    result = subprocess.run(
        [str(INSTALL_SCRIPT), "--print-cuda-library-dirs"],
        env=script_environment(MXNET_BOOTSTRAP_PYTHON=sys.executable, PYTHONPATH=str(fake_cuda_wheel_tree)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str((fake_cuda_wheel_tree / "nvidia/fake/lib").resolve())]
