"""The job as a Python package: `pip install .` gives a working `mxnet-infer` without the development environment.

The wheel is built from a copy of the sources (pyproject.toml, README.md, LICENSE, job/) with the locked setuptools,
without build isolation, so no network is needed. The install test puts it into a fresh venv (no system
site-packages) with pip's ``--no-index --find-links build/wheelhouse``: the job's locked dependencies as wheels, which
`make wheelhouse` (part of `make test`) builds once. What it cannot prove: an install from PyPI's index (the resolver
might pick other versions of the unpinned transitive dependencies there), or the console scripts on Windows or macOS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO_ROOT / "build" / "wheelhouse"
DEVELOPMENT_ONLY = ("aws_cdk", "constructs", "cdk_nag", "moto", "playwright", "pytest", "mxnet", "onnx", "sklearn")


def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def locked() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[normalized(name)] = version
    return pins


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[a-z0-9,]+\])?==([^;\s]+)", text)
    assert match, f"pyproject.toml: {text!r} is not an exact pin"
    return normalized(match.group(1)), match.group(2)


def test_every_declared_dependency_is_the_locked_version():
    declared = list(project()["dependencies"])
    for extra in project()["optional-dependencies"].values():
        declared += extra
    pins = locked()
    for text in declared:
        name, version = requirement(text)
        assert pins.get(name) == version, f"pyproject.toml pins {name}=={version}; requirements.lock has {pins.get(name)}"


def test_the_runtime_is_the_job_section_of_requirements_in_less_mxnet():
    """mxnet is an extra: the retired runtime is needed only for mxnet packages, never for onnx ones."""
    section = (REPO_ROOT / "requirements.in").read_text().split("# --- the job")[1].split("# ---")[0]
    job = {requirement(line.split("#")[0].strip())[0] for line in section.splitlines()[1:] if "==" in line}
    runtime = {requirement(text)[0] for text in project()["dependencies"]}
    assert runtime == job - {"mxnet"}
    assert project()["optional-dependencies"]["mxnet"] == ["mxnet==1.9.1"]


def build_wheel(out: Path) -> Path:
    source = out / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "job", source / "job", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                           "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("mxnet_spark_inference-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_the_job_its_page_template_and_the_licence_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.startswith("mxnet_spark_inference-")} == {"job"}
    assert "job/templates/report.html" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "mxnet-infer = job.cli:main" in entry_points
    assert "mxnet-infer-package = job.model_package:main" in entry_points


def tiny_onnx_package(directory: Path) -> None:
    """A 3-class linear model over 3x8x8 inputs, as an onnx package (random weights, so labels mean nothing)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((192, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(weights, "w")])
    directory.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), directory / "model.onnx")
    (directory / "model.json").write_text(json.dumps({
        "format_version": 1, "name": "tiny", "format": "onnx", "files": {"onnx": "model.onnx"}, "input_name": "data",
        "input_shape": [3, 8, 8], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "labels": ["a", "b", "c"],
        "output": "logits", "trained": False}))


@pytest.mark.slow
def test_pip_install_gives_a_job_that_runs_without_the_development_environment(wheel, tmp_path):
    """A fresh venv, the wheel and its locked dependencies only: `mxnet-infer --help` answers, and a run of the job on
    local Spark classifies three PNG files with an onnx package (Spark needs Java 17 here, as for make demo)."""
    if not (WHEELHOUSE / ".complete").exists():
        pytest.fail(f"{WHEELHOUSE} is missing: run `make wheelhouse` (make test does)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
                           "--find-links", str(WHEELHOUSE), str(wheel)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    present = subprocess.run([str(python), "-c", "import importlib.util, sys; print([m for m in sys.argv[1:] "
                              "if importlib.util.find_spec(m)])", *DEVELOPMENT_ONLY],
                             capture_output=True, text=True, timeout=60)
    assert present.stdout.strip() == "[]", present.stdout + present.stderr

    clean = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    clean["PATH"] = f"{venv / 'bin'}{os.pathsep}{clean['PATH']}"
    helped = subprocess.run(["mxnet-infer", "--help"], capture_output=True, text=True, timeout=120, env=clean,
                            cwd=tmp_path)
    assert helped.returncode == 0 and "--model" in helped.stdout, helped.stderr

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for index, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), colour).save(images / f"{index}.png")
    tiny_onnx_package(tmp_path / "model")
    ran = subprocess.run(["mxnet-infer", "--input", str(images), "--model", str(tmp_path / "model"), "--output",
                          str(tmp_path / "output"), "--master", "local[1]", "--report-thumbnails", "0"],
                         capture_output=True, text=True, timeout=600, env=clean, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["status"] == "succeeded" and result["counts"]["ok"] == 3, result
