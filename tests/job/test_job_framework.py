"""An mxnet package on a node whose Python has no mxnet (a stock Graviton node) is refused at job start, exit 2.

The job runs as a user runs it, ``python -m job``, in a subprocess whose Python cannot import mxnet: a
``sitecustomize`` on PYTHONPATH wraps every meta-path finder in one that refuses ``mxnet`` (``find_spec`` answers
None and ``import mxnet`` fails, as on a node where the bootstrap installed everything but MXNet). The packages are
real (a tiny Gluon network exported as an mxnet package, a tiny ONNX model). What the stand-in cannot prove: that a
real Graviton node's Python has no mxnet after its bootstrap (tests/bootstrap prove that the script leaves it out),
nor anything about the workers, which the refusal keeps from starting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_SECONDS = 120
HIDE_MXNET = '''
import sys


class RefuseMxnet:
    """Wraps one meta-path finder: finds nothing named mxnet, as on a Python that does not have it, and delegates
    everything else."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "mxnet" or name.startswith("mxnet."):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [RefuseMxnet(finder) for finder in sys.meta_path]
'''


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, str]:
    """{format: directory} of a tiny mxnet package (Gluon: global average pool, dense 3) and a tiny onnx one."""
    import mxnet as mx

    from hostile_packages import write_package
    from job.model_package import export_gluon

    root = tmp_path_factory.mktemp("framework-packages")
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.GlobalAvgPool2D(), mx.gluon.nn.Dense(3, in_units=3))
    net.initialize()
    mxnet_dir = str(root / "mxnet-package")
    export_gluon(net, mxnet_dir, name="tiny", input_shape=(3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 labels=["a", "b", "c"], trained=False)
    onnx_dir = str(root / "onnx-package")
    write_package(onnx_dir)
    return {"mxnet": mxnet_dir, "onnx": onnx_dir}


def run_job(tmp_path: Path, package: str, *, hide_mxnet: bool) -> subprocess.CompletedProcess[str]:
    """``python -m job`` on an empty input folder (so a run that gets past the model stops at the listing, before
    Spark), with mxnet hidden when ``hide_mxnet``."""
    shim = tmp_path / "shim"
    shim.mkdir()
    if hide_mxnet:
        (shim / "sitecustomize.py").write_text(HIDE_MXNET)
    inputs = tmp_path / "no-images"
    inputs.mkdir()
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["PYTHONPATH"] = os.pathsep.join([str(shim), str(REPO)])
    return subprocess.run(
        [sys.executable, "-m", "job", "--model", package, "--input", str(inputs), "--output", str(tmp_path / "out")],
        env=environment, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS, check=False, cwd=tmp_path,
    )


def test_the_shim_hides_mxnet_from_the_jobs_python(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(HIDE_MXNET)
    environment = dict(os.environ, PYTHONPATH=str(tmp_path))
    probe = ("import importlib.util, sys\nprint(importlib.util.find_spec('mxnet') is None)\ntry:\n    import mxnet\n"
             "except ModuleNotFoundError:\n    print('refused')\nimport numpy\nprint('numpy', numpy.__version__)")
    result = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True,
                            check=True)
    assert result.stdout.split()[:3] == ["True", "refused", "numpy"]


def test_an_mxnet_package_on_a_python_without_mxnet_is_refused_at_start_naming_the_fix(
    tmp_path: Path, packages: dict[str, str]
) -> None:
    """Before: the job went on to Spark, and every worker failed its rows on `import mxnet`."""
    result = run_job(tmp_path, packages["mxnet"], hide_mxnet=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: --model {packages['mxnet']} is an mxnet package, but this ")
    assert (
        "has no mxnet (a Graviton node without Arm Performance Libraries runs ONNX packages only): convert it with "
        f"`python -m job.model_package to-onnx --package {packages['mxnet']} --out DIR` and pass the onnx package, "
        "or run on x86_64 nodes"
    ) in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("package_format", "hide_mxnet"), [("mxnet", False), ("onnx", True)])
def test_a_runnable_package_gets_past_the_check(
    tmp_path: Path, packages: dict[str, str], package_format: str, hide_mxnet: bool
) -> None:
    """The same command goes on to list the inputs (and stops there: the folder is empty) with an mxnet package
    when mxnet is there, and with an onnx package when it is not."""
    result = run_job(tmp_path, packages[package_format], hide_mxnet=hide_mxnet)
    assert result.returncode == 2, result.stderr
    assert "is an mxnet package" not in result.stderr
    assert result.stderr.startswith("error: no images (.png, .jpg, .jpeg) or CIFAR-10 batches (.bin) found under ")
