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


@pytest.mark.parametrize("change, message", [
    ({"input_shape": [3, 40000, 40000]}, r"'input_shape' must be \[3, height, width\] with height and width integers "
                                         r"from 1 to 4096 \(layout NCHW\); got \[3, 40000, 40000\]"),
    ({"input_shape": [3, 4097, 32]}, "from 1 to 4096"),
    ({"labels": [str(n) for n in range(100_001)]}, "'labels' may hold at most 100000 class names; got 100001"),
    ({"labels": ["x" * 257]}, "'labels' entries may be at most 256 characters"),
    ({"files": {"symbol": "../../home/hadoop/.bashrc", "params": "p.params"}}, "plain relative names"),
    ({"files": {"symbol": "/etc/passwd", "params": "p.params"}}, "plain relative names"),
    ({"files": {"symbol": "a//s.json", "params": "p.params"}}, "plain relative names"),
])
def test_bounds_and_file_names_are_refused_naming_the_field(change, message):
    """Found by the reliability review (#7, #14): all of these passed, then crashed or wrote outside the package."""
    with pytest.raises(ModelPackageError, match=message):
        parse_manifest({**VALID, **change}, "/models/m")


def test_the_largest_allowed_package_parses():
    package = parse_manifest({**VALID, "input_shape": [3, 4096, 4096], "labels": [str(n) for n in range(100_000)]},
                             "/models/m")
    assert (package.height, len(package.labels)) == (4096, 100_000)


def test_a_huge_label_list_is_not_copied_into_the_message():
    with pytest.raises(ModelPackageError) as raised:
        parse_manifest({**VALID, "labels": [str(n) for n in range(200_000)] + [7]}, "/models/m")
    assert len(str(raised.value)) < 1000


def test_a_model_json_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    import job.package_store

    monkeypatch.setattr(job.package_store, "MAX_MANIFEST_BYTES", 100)
    (tmp_path / "model.json").write_text(json.dumps({**VALID, "labels": ["x" * 50] * 3}))
    with pytest.raises(ModelPackageError, match="larger than 100 bytes"):
        read_package(str(tmp_path), Storage())


# --- ONNX external data (reliability review #8) ----------------------------------------------------------------------

@pytest.mark.parametrize("where", ["initializer", "constant", "subgraph"])
@pytest.mark.parametrize("location", ["/etc/hostname", "../outside.bin", "weights.bin"])
def test_onnx_external_data_outside_the_named_files_is_refused(tmp_path, where, location):
    """``weights.bin`` exists in the package but model.json does not name it: it would not be downloaded, and a
    package may not read files it does not declare. The walk finds tensors in initializers, in node attributes and in
    subgraphs (If/Loop bodies)."""
    from hostile_packages import onnx_model, write_package

    (tmp_path / "outside.bin").write_bytes(b"\0" * 36)
    package_dir = write_package(str(tmp_path / "pkg"), onnx_model(external=location, where=where))
    (tmp_path / "pkg" / "weights.bin").write_bytes(b"\0" * 36)
    with pytest.raises(ModelPackageError, match=f"reads external data from \\['{location}'\\]"):
        read_package(package_dir, Storage())


def test_onnx_external_data_named_in_files_is_allowed_and_runs(tmp_path):
    """The rule does not forbid external data: a file inside the package that model.json names is read."""
    import numpy as np
    from hostile_packages import onnx_model, write_package

    from job.predictor import Device, load_predictor

    weights = np.eye(3, dtype=np.float32) * 5
    package_dir = write_package(str(tmp_path / "pkg"), onnx_model(external="weights.bin"),
                                extra_files={"weights.bin": weights.tobytes()})
    package = read_package(package_dir, Storage())
    image = np.zeros((1, 3, 8, 8), np.float32)
    image[0, 2] = 1.0  # channel 2 brightest: label 2 wins with these weights
    assert load_predictor(package, package_dir, Device("cpu"))(image).argmax() == 2


def test_a_file_that_is_not_an_onnx_model_is_refused_clearly(tmp_path):
    from hostile_packages import write_package

    package_dir = write_package(str(tmp_path / "pkg"))
    (tmp_path / "pkg" / "model.onnx").write_bytes(b"\x0f" * 100)  # wire type 7: not protobuf
    with pytest.raises(ModelPackageError, match="model.onnx is not an ONNX model"):
        read_package(package_dir, Storage())


def test_the_walk_agrees_with_onnx_on_a_real_exported_package(digits_onnx_package):
    """A real MXNet export (no external data): the walk finds nothing, as onnx itself says."""
    import os

    import onnx

    from job.model_package import onnx_external_locations

    path = os.path.join(digits_onnx_package, "model.onnx")
    model = onnx.load(path, load_external_data=False)
    expected = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    with open(path, "rb") as file:
        assert onnx_external_locations(file.read()) == expected == []
