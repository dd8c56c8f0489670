"""Package tools that write packages with MXNet: a Gluon network as an ``mxnet`` package, and ``mxnet`` to ``onnx``.

``python -m job.model_package export-zoo`` and ``to-onnx``. These need MXNet and, for ``to-onnx``, the ``onnx``
package: development tools, not shipped to the nodes.
"""

from __future__ import annotations

import os
from typing import Optional

from job.package_format import DEFAULT_INPUT_NAME, ModelPackage, ModelPackageError, write_manifest

ONNX_OPSET = 13


def export_gluon(net, directory: str, *, name: str, input_shape, mean, std, labels, trained: bool,
                 provenance: Optional[dict] = None) -> str:
    """Write a hybridized Gluon network as an ``mxnet`` package in ``directory``."""
    import mxnet as mx

    os.makedirs(directory, exist_ok=True)
    net.hybridize()
    net(mx.nd.zeros((1, *input_shape)))  # export needs one forward pass to have the graph
    net.export(os.path.join(directory, "model"), epoch=0)
    return write_manifest(
        directory, name=name, format="mxnet",
        files={"symbol": "model-symbol.json", "params": "model-0000.params"},
        input_name=DEFAULT_INPUT_NAME, input_shape=list(input_shape), mean=list(mean), std=list(std),
        labels=list(labels), output="logits", trained=trained, provenance=provenance or {},
    )


def export_onnx(package: ModelPackage, directory: str) -> str:
    """Convert a local ``mxnet`` package into an ``onnx`` package of the same model in ``directory``."""
    import mxnet as mx
    import numpy as np
    import onnx

    if package.format != "mxnet":
        raise ModelPackageError(f"to-onnx converts mxnet packages; {package.uri} is {package.format!r}")
    os.makedirs(directory, exist_ok=True)
    onnx_path = os.path.join(directory, "model.onnx")
    # The exporter targets the newest opset the installed onnx knows (22 for onnx 1.17), which ONNX Runtime 1.20
    # refuses; it reads that number from onnx.defs at call time and has no parameter for it.
    newest_opset = onnx.defs.onnx_opset_version
    onnx.defs.onnx_opset_version = lambda: ONNX_OPSET
    try:
        mx.onnx.export_model(
            sym=os.path.join(package.uri, package.files["symbol"]),
            params=os.path.join(package.uri, package.files["params"]),
            in_shapes=[(1, *package.input_shape)],
            in_types=[np.float32],
            onnx_file_path=onnx_path,
            dynamic=True,
            dynamic_input_shapes=[(None, *package.input_shape)],
        )
    finally:
        onnx.defs.onnx_opset_version = newest_opset
    # MXNet lists every weight as a graph input too; ONNX Runtime then cannot constant-fold them and runs ~3x slower.
    model = onnx.load(onnx_path)
    initializer_names = {initializer.name for initializer in model.graph.initializer}
    graph_inputs = [graph_input for graph_input in model.graph.input if graph_input.name not in initializer_names]
    del model.graph.input[:]
    model.graph.input.extend(graph_inputs)
    onnx.checker.check_model(model)
    onnx.save(model, onnx_path)
    return write_manifest(
        directory, name=package.name, format="onnx", files={"onnx": "model.onnx"}, input_name=graph_inputs[0].name,
        **package.manifest_fields(), provenance={**package.provenance, "converted_from": package.uri},
    )


def zoo_resnet18(classes: int, seed: int):
    """Gluon model-zoo ResNet-18 (v1) with ``classes`` outputs and seeded random weights."""
    import mxnet as mx
    from mxnet.gluon.model_zoo import vision

    mx.random.seed(seed)
    net = vision.resnet18_v1(classes=classes)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    return net


