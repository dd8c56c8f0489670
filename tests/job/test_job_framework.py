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
    """{format: directory} of a tiny mxnet package (Gluon: global average pool, dense 3), a tiny onnx one, and the
    mxnet one with its ONNX twin (add-onnx, checked on 100 real digits)."""
    import mxnet as mx

    from hostile_packages import write_package
    from job.model_package import export_gluon
    from job.model_package import main as package_main
    from job.package_format import MIN_HELD_OUT_IMAGES
    from job.sample_data import cifar_batch_bytes, digits_32x32

    root = tmp_path_factory.mktemp("framework-packages")
    net = mx.gluon.nn.HybridSequential()
    net.add(mx.gluon.nn.GlobalAvgPool2D(), mx.gluon.nn.Dense(3, in_units=3))
    net.initialize()
    mxnet_dir = str(root / "mxnet-package")
    export_gluon(net, mxnet_dir, name="tiny", input_shape=(3, 8, 8), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                 labels=["a", "b", "c"], trained=False)
    onnx_dir = str(root / "onnx-package")
    write_package(onnx_dir)
    images, labels = digits_32x32()
    held_out = root / "held_out.bin"
    held_out.write_bytes(cifar_batch_bytes(images[:MIN_HELD_OUT_IMAGES], labels[:MIN_HELD_OUT_IMAGES]))
    twin_dir = str(root / "mxnet-with-twin")
    assert package_main(["add-onnx", "--package", mxnet_dir, "--held-out", str(held_out), "--out", twin_dir]) == 0
    return {"mxnet": mxnet_dir, "onnx": onnx_dir, "mxnet-with-twin": twin_dir}


def run_job(tmp_path: Path, package: str, *, hide_mxnet: bool, options: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[str]:
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
        [sys.executable, "-m", "job", "--model", package, "--input", str(inputs), "--output", str(tmp_path / "out"),
         *options],
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
        "has no mxnet (a Graviton node without Arm Performance Libraries runs ONNX packages only): give it a checked "
        f"ONNX twin with `python -m job.model_package add-onnx --package {packages['mxnet']} --held-out-manifest URI` "
        "and run it with --runtime auto, or convert it with "
        f"`python -m job.model_package to-onnx --package {packages['mxnet']} --out DIR` and pass the onnx package, "
        "or run on x86_64 nodes"
    ) in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("package_format", "hide_mxnet"), [("mxnet", False), ("onnx", True),
                                                              ("mxnet-with-twin", True)])
def test_a_runnable_package_gets_past_the_check(
    tmp_path: Path, packages: dict[str, str], package_format: str, hide_mxnet: bool
) -> None:
    """The same command goes on to list the inputs (and stops there: the folder is empty) with an mxnet package
    when mxnet is there, and with an onnx package, or an mxnet package with an ONNX twin (--runtime auto runs it with
    ONNX Runtime), when it is not. Before the twin, an mxnet package was refused on such a node whatever it carried."""
    result = run_job(tmp_path, packages[package_format], hide_mxnet=hide_mxnet)
    assert result.returncode == 2, result.stderr
    assert "is an mxnet package" not in result.stderr
    assert result.stderr.startswith("error: no images (.png, .jpg, .jpeg) or CIFAR-10 batches (.bin) found under ")


def test_an_mxnet_package_with_a_twin_forced_to_mxnet_is_refused_without_mxnet(
    tmp_path: Path, packages: dict[str, str]
) -> None:
    result = run_job(tmp_path, packages["mxnet-with-twin"], hide_mxnet=True, options=("--runtime", "mxnet"))
    assert result.returncode == 2, result.stderr
    assert f"error: --model {packages['mxnet-with-twin']} is an mxnet package, but this " in result.stderr
