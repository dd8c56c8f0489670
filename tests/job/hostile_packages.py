"""Small real ONNX model packages for the hostile-input tests, built with the `onnx` package (development only).

The model: ``float32[N, 3, H, W]`` -> global average pool -> ``float32[N, 3]`` -> MatMul with ``W: float32[3, C]``
-> ``float32[N, C]`` logits. ONNX Runtime runs it at any H, W.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _external(tensor: TensorProto, location: str) -> TensorProto:
    """Mark ``tensor`` as reading its data from ``location`` (as onnx.external_data_helper would), data removed."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(tensor.dims))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def onnx_model(classes: int = 3, *, weights: Optional[np.ndarray] = None, external: Optional[str] = None,
               where: str = "initializer") -> onnx.ModelProto:
    """The model; with ``external``, its weight tensor reads from that location, placed ``where``: as an
    ``initializer``, a ``constant`` node's attribute, or an initializer of an ``if`` node's subgraph."""
    if weights is None:
        weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    weight = numpy_helper.from_array(weights.astype(np.float32), "W")
    if external:
        _external(weight, external)
    pooled = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["flat"])]
    initializers = []
    if where == "initializer":
        initializers = [weight]
        nodes = pooled + [helper.make_node("MatMul", ["flat", "W"], ["scores"])]
    elif where == "constant":
        nodes = pooled + [helper.make_node("Constant", [], ["W"], value=weight),
                          helper.make_node("MatMul", ["flat", "W"], ["scores"])]
    else:  # a subgraph: If(cond) then W else W
        branch = helper.make_graph([helper.make_node("Identity", ["W"], ["branch_w"])], "branch", [],
                                   [helper.make_tensor_value_info("branch_w", TensorProto.FLOAT, [3, classes])],
                                   initializer=[weight])
        condition = numpy_helper.from_array(np.array(True), "cond")
        nodes = pooled + [helper.make_node("If", ["cond"], ["W_if"], then_branch=branch, else_branch=branch),
                          helper.make_node("MatMul", ["flat", "W_if"], ["scores"])]
        initializers = [condition]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # ONNX Runtime 1.20 reads IR versions up to 10; 8 is what opset 13 came with
    return model


def write_package(directory: str, model: Optional[onnx.ModelProto] = None, *, labels=None,
                  input_shape=(3, 8, 8), extra_files: Optional[dict] = None, **manifest) -> str:
    """An onnx package in ``directory``: model.onnx, model.json, and ``extra_files`` (name -> bytes)."""
    os.makedirs(directory, exist_ok=True)
    model = model if model is not None else onnx_model()
    with open(os.path.join(directory, "model.onnx"), "wb") as file:
        file.write(model.SerializeToString())
    files = {"onnx": "model.onnx"}
    for position, (name, data) in enumerate((extra_files or {}).items()):
        path = os.path.join(directory, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as file:
            file.write(data)
        files[f"data_{position}"] = name
    document = {"format_version": 1, "name": "tiny", "format": "onnx", "files": files, "input_name": "data",
                "input_shape": list(input_shape), "mean": [0.5] * 3, "std": [0.25] * 3,
                "labels": labels if labels is not None else ["a", "b", "c"], "output": "logits", "trained": False}
    document.update(manifest)
    with open(os.path.join(directory, "model.json"), "w") as file:
        json.dump(document, file)
    return directory


def upload_package(s3, bucket: str, prefix: str, directory: str) -> str:
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            s3.upload_file(path, bucket, prefix + os.path.relpath(path, directory).replace(os.sep, "/"))
    return f"s3://{bucket}/{prefix}"


def tree_state(root: str) -> dict:
    """Every file below ``root`` with its size and modification time: to show nothing outside scratch changed."""
    state = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            state[path] = (info.st_size, info.st_mtime_ns)
    return state


def position_model(classes: int = 3, side: int = 8, seed: int = 0) -> onnx.ModelProto:
    """A model that sees where pixels are (so a turned image gets other scores) and gives non-finite scores for an
    all-black image: ``scores = (flat @ W) / (sum(flat) + 2 * 3 * side * side)``, where ``flat`` is the normalised
    input (mean 0.5, std 0.25: black is -2 everywhere, so the divisor is 0 exactly for black)."""
    pixels = 3 * side * side
    weights = np.random.default_rng(seed).normal(size=(pixels, classes)).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["data"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["raw"]),
        # Per image: in opset 13 the axes are an input, and without them every axis is summed.
        helper.make_node("ReduceSum", ["flat", "axes"], ["total"], keepdims=1),
        helper.make_node("Add", ["total", "offset"], ["divisor"]),
        helper.make_node("Div", ["raw", "divisor"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "position",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, side, side])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", classes])],
        initializer=[numpy_helper.from_array(weights, "W"),
                     numpy_helper.from_array(np.array([2.0 * pixels], np.float32), "offset"),
                     numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model
