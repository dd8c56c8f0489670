"""The job package's rooms (STYLE.md, "The job package's rooms"), read from the source's imports.

- The model-package format (``job/package_format.py``) is a leaf: it imports nothing else of the job and nothing but
  the standard library, and importing it loads no framework.
- The run path (``python -m job`` and the EMR step's entry) never imports the package tools or the demo.
- No import circle among the job's modules, counting imports inside functions (the circle model_package <->
  quantize was one of those).
- ``python -m job.model_package`` still works, and the names callers import from it still resolve.

Imports are read with ``ast`` (every ``import`` and ``from job... import`` in a module, at any depth), so an import
made only on some branch counts too. What this cannot see: a module named by a string (``importlib``, ``-m``).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

JOB = Path(__file__).resolve().parents[2] / "job"
RUN_PATH_ENTRIES = ("__main__", "cli", "spark_entry")
TOOLS = {"model_package", "convert", "quantize", "onnx_twin", "quantize_defaults", "inspect_package", "package_init"}
DEMO = {"demo", "train_digits", "sample_data"}
FRAMEWORKS = ("numpy", "cv2", "PIL", "mxnet", "onnx", "onnxruntime", "pyspark", "pyarrow", "boto3")


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(job modules, other top-level packages) that ``job/<module>.py`` imports anywhere."""
    tree = ast.parse((JOB / f"{module}.py").read_text())
    job_modules, others = set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module != "__future__":
            names = [node.module] + ([f"{node.module}.{alias.name}" for alias in node.names]
                                     if node.module == "job" else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "job" and len(parts) > 1 and (JOB / f"{parts[1]}.py").exists():
                job_modules.add(parts[1])
            elif parts[0] != "job":
                others.add(parts[0])
    return job_modules - {module}, others


GRAPH = {path.stem: _imports(path.stem)[0] for path in JOB.glob("*.py")}


def _closure(starts) -> set[str]:
    seen, todo = set(), list(starts)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    return seen


def test_the_package_format_is_a_leaf():
    job_modules, others = _imports("package_format")
    assert job_modules == set()
    assert others <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, job.package_format; print(' '.join(sorted(sys.modules)))"],
        cwd=JOB.parent, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(JOB.parent)},
        check=True).stdout.split()
    assert [name for name in loaded if name.startswith("job.")] == ["job.package_format"]
    assert not [name for name in loaded if name.split(".")[0] in FRAMEWORKS]


def test_the_run_path_never_imports_the_package_tools_or_the_demo():
    run_path = _closure(RUN_PATH_ENTRIES)
    assert {"pipeline", "worker", "predictor", "decode", "storage", "package_store", "report"} <= run_path
    assert not run_path & (TOOLS | DEMO), sorted(run_path & (TOOLS | DEMO))


def test_no_import_circle():
    def circle_from(module, path):
        for imported in sorted(GRAPH[module]):
            if imported in path:
                return path[path.index(imported):] + [imported]
            found = circle_from(imported, path + [imported])
            if found:
                return found
        return None

    circles = [circle for circle in (circle_from(module, [module]) for module in sorted(GRAPH)) if circle]
    assert not circles, " ; ".join(" -> ".join(circle) for circle in circles)


def test_the_tools_entry_keeps_its_command_and_names():
    completed = subprocess.run([sys.executable, "-m", "job.model_package", "--help"], cwd=JOB.parent,
                               capture_output=True, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(JOB.parent)})
    assert completed.returncode == 0 and "init" in completed.stdout and "validate" in completed.stdout
    from job.model_package import ModelPackageError, export_gluon, main, parse_manifest, read_package, zoo_resnet18

    assert all(callable(name) for name in (export_gluon, main, parse_manifest, read_package, zoo_resnet18))
    assert issubclass(ModelPackageError, ValueError)


def test_a_tool_left_out_of_an_installation_is_named_with_exit_2(monkeypatch, tmp_path, capsys):
    """As on a node whose job.zip leaves the MXNet/onnx tools out: the sub-command says so, no traceback."""
    from job import model_package

    monkeypatch.setitem(sys.modules, "job.quantize", None)  # `import job.quantize` now fails as a missing module
    assert model_package.main(["quantize", "--package", str(tmp_path), "--calibration", str(tmp_path),
                               "--out", str(tmp_path / "int8")]) == 2
    assert "quantize: its tool (job.quantize) is not installed here" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "job.convert", None)
    assert model_package.main(["export-zoo", "--out", str(tmp_path / "zoo")]) == 2
    assert "export-zoo: its tool (job.convert) is not installed here" in capsys.readouterr().err
    assert not (tmp_path / "zoo").exists() and not (tmp_path / "int8").exists()
