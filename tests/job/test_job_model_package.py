"""The model package format: validation names every problem; writing refuses what reading would refuse."""

import json

import pytest

from job.model_package import ModelPackageError, parse_manifest, read_package
from job.storage import Storage

VALID = {"format": "mxnet", "files": {"symbol": "s.json", "params": "p.params"}, "input_shape": [3, 32, 32],
         "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "labels": ["a", "b"]}


def test_valid_manifest_parses_with_defaults():
    package = parse_manifest(VALID, "/models/m")
    assert (package.format, package.height, package.width, package.output, package.trained) == (
        "mxnet", 32, 32, "logits", False)


@pytest.mark.parametrize("change, message", [
    ({"format": "tensorflow"}, "'format' must be one of"),
    ({"files": {"symbol": "s.json"}}, r"missing \['params'\]"),
    ({"input_shape": [1, 32, 32]}, "'input_shape' must be"),
    ({"mean": [0.5, 0.5]}, "'mean' must be a list of 3"),
    ({"std": [0.5, 0, 0.5]}, "'std' must be a list of 3 positive"),
    ({"labels": []}, "'labels' must be a non-empty list"),
    ({"output": "softmax"}, "'output' must be one of"),
    ({"trained": "yes"}, "'trained' must be true or false"),
    ({"inputshape": [3, 32, 32]}, "unknown keys"),
    ({"format_version": 2}, "'format_version' must be 1"),
])
def test_each_problem_is_named(change, message):
    with pytest.raises(ModelPackageError, match=message):
        parse_manifest({**VALID, **change}, "/models/m")


def test_all_problems_reported_at_once():
    with pytest.raises(ModelPackageError) as raised:
        parse_manifest({**VALID, "format": "x", "labels": [], "mean": None}, "/models/m")
    assert all(key in str(raised.value) for key in ("'format'", "'labels'", "'mean'"))


def test_missing_package_and_missing_files(tmp_path):
    with pytest.raises(ModelPackageError, match="no model.json there"):
        read_package(str(tmp_path), Storage())
    (tmp_path / "model.json").write_text(json.dumps(VALID))
    with pytest.raises(ModelPackageError, match=r"names files that do not exist: \['s.json', 'p.params'\]"):
        read_package(str(tmp_path), Storage())
    (tmp_path / "model.json").write_text("{broken")
    with pytest.raises(ModelPackageError, match="not valid JSON"):
        read_package(str(tmp_path), Storage())
