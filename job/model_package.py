"""The model package format (documented in README.md, "Model package") and the commands that write packages.

A package is a directory or S3 prefix holding ``model.json`` and the model files it names::

    {
      "format_version": 1,
      "name": "resnet18_v1-digits",
      "format": "mxnet",                      # or "onnx" (run by ONNX Runtime)
      "files": {"symbol": "model-symbol.json", "params": "model-0000.params"},   # onnx: {"onnx": "model.onnx"}
      "input_name": "data",
      "input_shape": [3, 32, 32],             # one image as the model takes it: [3, H, W] (NCHW) or [H, W, 3] (NHWC)
      "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],   # per model channel, on pixels scaled to [0, 1]
      "preprocessing": {                      # optional; every key optional, defaults as shown (the original format)
        "resize": "stretch",                  # or "center_crop" (with "crop_fraction", default 0.875) or "pad"
        "interpolation": "bilinear",          # or "bicubic", "nearest"
        "channel_order": "RGB",               # or "BGR"
        "layout": "NCHW",                     # or "NHWC"
        "input_dtype": "float32"              # or "uint8": pixels 0-255 as they are, no mean and std (onnx only)
      },
      "labels": ["0", "1", ...],              # class names; their count is the model's number of outputs
      "output": "logits",                     # or "probabilities"
      "trained": true,                        # false: random weights, labels are meaningless
      "provenance": {...}                     # free-form: data set, held-out accuracy, command that made it
    }

Reading and validating a package imports no framework, so the driver can check it before any Spark work. A package
is code-equivalent (it decides what every node computes), so it is held to limits: file names are plain relative names
inside the package (at most ``MAX_FILES``); an ONNX model's external data may only be files ``files`` names;
height and width at most ``MAX_INPUT_SIDE``; at most ``MAX_LABELS`` labels of ``MAX_LABEL_CHARS``; ``model.json`` at
most ``MAX_MANIFEST_BYTES``. Workers copy only the named files, at the ETags the driver recorded.

Commands::

    python -m job.model_package export-zoo --out DIR [--input-size 32] [--classes 10]   # untrained model-zoo ResNet-18
    python -m job.model_package to-onnx --package DIR --out DIR                         # same model, ONNX format
    python -m job.model_package quantize --package URI --calibration URI --out DIR      # calibrated INT8, gated
    python -m job.model_package inspect --package URI    # the operators the job's session runs here, and how fast
    python -m job.model_package init --onnx model.onnx --labels labels.txt --preset imagenet-torchvision --out DIR
    python -m job.model_package validate --package URI --images PATH [PATH ...]   # what the job does to an image

``init`` and ``validate`` are in :mod:`job.package_init`. ``quantize`` is in :mod:`job.quantize`; it exits 3 without
writing anything when the INT8 model's top-1 agreement with the FP32 package is below ``--min-agreement``, and 2 on
bad arguments.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import posixpath
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Optional

from job.storage import (ObjectChanged, ObjectNotFound, ObjectTooLarge, Storage, is_s3, join, local_path,
                         safe_relative_name)

MANIFEST_NAME = "model.json"
FORMAT_VERSION = 1
FORMATS = {"mxnet": ("symbol", "params"), "onnx": ("onnx",)}
OUTPUTS = ("logits", "probabilities")
DEFAULT_INPUT_NAME = "data"
ONNX_OPSET = 13
# Limits a package must keep, so that a malformed or hostile one is refused at job start instead of exhausting the
# workers. A 4096x4096 input is 16.8 megapixels, above any classifier's; 100,000 labels cover ImageNet-21k (21,843).
MAX_INPUT_SIDE = 4096
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 16
# A subgraph nested deeper than this (If/Loop bodies inside each other) is refused rather than walked.
MAX_ONNX_NESTING = 64
# Preprocessing (docs/model-packages.md, "Preprocessing"): the first value of each is the default, today's behaviour
# for every package written before these fields existed.
RESIZE_MODES = ("stretch", "center_crop", "pad")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
INPUT_DTYPES = ("float32", "uint8")
# torchvision's and timm's ImageNet evaluation: resize to 256, cut the centre 224 (224 / 256).
DEFAULT_CROP_FRACTION = 0.875


class ModelPackageError(ValueError):
    """The package is missing or malformed; the message lists every problem. ``reason`` starts the error of every
    row whose input could not be classified because of it."""

    reason = "model_refused"


class ModelChanged(ModelPackageError):
    """A package file is no longer the version the driver checked: the package was replaced during the run."""

    reason = "model_changed"


class ModelOutputError(ModelPackageError):
    """The model's output does not have one score per label for each image."""

    reason = "bad_output_shape"


@dataclass(frozen=True)
class Preprocessing:
    """What the job does to a decoded image before the model sees it; the defaults are the original format's.

    - ``resize``: ``stretch`` to the input size (aspect not kept); ``center_crop``: scale, keeping the aspect, to the
      smallest size that covers ``floor(H / crop_fraction)`` x ``floor(W / crop_fraction)``, then cut the centre
      H x W (torchvision's ``Resize(256)`` + ``CenterCrop(224)`` for 224 and 0.875); ``pad``: scale, keeping the
      aspect, to fit inside H x W and fill the rest with black (value 0), the picture centred.
    - ``interpolation`` of that scaling; ``channel_order`` and ``layout`` of the model's input;
    - ``input_dtype``: ``float32`` gets ``(pixel / 255 - mean) / std`` per model channel; ``uint8`` gets the pixels
      0-255 unchanged (the model normalises them itself), and the package then has no ``mean`` or ``std``.
    """

    resize: str = RESIZE_MODES[0]
    crop_fraction: float = DEFAULT_CROP_FRACTION
    interpolation: str = INTERPOLATIONS[0]
    channel_order: str = CHANNEL_ORDERS[0]
    layout: str = LAYOUTS[0]
    input_dtype: str = INPUT_DTYPES[0]

    def manifest(self) -> dict:
        """The ``preprocessing`` object of ``model.json``: only what differs from the defaults."""
        default = Preprocessing()
        fields = {key: getattr(self, key) for key in ("resize", "interpolation", "channel_order", "layout",
                                                         "input_dtype") if getattr(self, key) != getattr(default, key)}
        if self.resize == "center_crop":
            fields["crop_fraction"] = self.crop_fraction
        return fields


@dataclass(frozen=True)
class ModelPackage:
    uri: str
    name: str
    format: str
    files: dict
    input_name: str
    input_shape: tuple[int, int, int]  # one image as the model takes it: (3, H, W) for NCHW, (H, W, 3) for NHWC
    mean: Optional[tuple[float, float, float]]  # None for input_dtype uint8
    std: Optional[tuple[float, float, float]]
    labels: tuple[str, ...]
    output: str
    trained: bool
    provenance: dict
    # File name -> the S3 ETag it had when the driver checked the package; workers download exactly those versions.
    file_etags: dict = field(default_factory=dict)
    preprocessing: Preprocessing = Preprocessing()

    @property
    def height(self) -> int:
        return self.input_shape[1 if self.preprocessing.layout == "NCHW" else 0]

    @property
    def width(self) -> int:
        return self.input_shape[2 if self.preprocessing.layout == "NCHW" else 1]

    def manifest_fields(self) -> dict:
        """The ``model.json`` fields that describe the model's input and output, for a tool that writes a package of
        the same model (``to-onnx``, ``quantize``)."""
        fields: dict = {"input_shape": list(self.input_shape)}
        if self.mean is not None:
            fields.update(mean=list(self.mean), std=list(self.std))
        fields.update(labels=list(self.labels), output=self.output, trained=self.trained)
        if self.preprocessing.manifest():
            fields["preprocessing"] = self.preprocessing.manifest()
        return fields


def _number_triple(document: dict, key: str, problems: list[str], positive: bool = False) -> tuple:
    value = document.get(key)
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or (positive and not all(v > 0 for v in value))):
        problems.append(f"{key!r} must be a list of 3 {'positive ' if positive else ''}numbers (one per channel); got {value!r}")
        return (0.0, 0.0, 1.0)
    return tuple(float(v) for v in value)


def _choice(section: dict, key: str, allowed: tuple, problems: list[str]) -> str:
    value = section.get(key, allowed[0])
    if value not in allowed:
        problems.append(f"'preprocessing.{key}' must be one of {list(allowed)}; got {_abridged(value)}")
        return allowed[0]
    return value


def _parse_preprocessing(section: object, problems: list[str]) -> Preprocessing:
    """The ``preprocessing`` object; every problem appended to ``problems``."""
    if section is None:
        return Preprocessing()
    if not isinstance(section, dict):
        problems.append(f"'preprocessing' must be an object; got {_abridged(section)}")
        return Preprocessing()
    known = ("resize", "crop_fraction", "interpolation", "channel_order", "layout", "input_dtype")
    unknown = sorted(set(section) - set(known))
    if unknown:
        problems.append(f"unknown keys in 'preprocessing' {_abridged(unknown)}; allowed: {sorted(known)}")
    resize = _choice(section, "resize", RESIZE_MODES, problems)
    crop_fraction = section.get("crop_fraction", DEFAULT_CROP_FRACTION)
    if "crop_fraction" in section and resize != "center_crop":
        problems.append(f"'preprocessing.crop_fraction' applies only to resize 'center_crop'; resize is {resize!r}")
    elif (not isinstance(crop_fraction, (int, float)) or isinstance(crop_fraction, bool)
          or not 0.05 <= crop_fraction <= 1):
        problems.append(f"'preprocessing.crop_fraction' must be a number from 0.05 to 1 (the centre's share of the "
                        f"scaled image; 0.875 cuts 224 out of 256); got {_abridged(crop_fraction)}")
        crop_fraction = DEFAULT_CROP_FRACTION
    return Preprocessing(
        resize=resize, crop_fraction=float(crop_fraction),
        interpolation=_choice(section, "interpolation", INTERPOLATIONS, problems),
        channel_order=_choice(section, "channel_order", CHANNEL_ORDERS, problems),
        layout=_choice(section, "layout", LAYOUTS, problems),
        input_dtype=_choice(section, "input_dtype", INPUT_DTYPES, problems))


def _abridged(value: object, limit: int = 200) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message must not carry a million labels."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def parse_manifest(document: object, uri: str) -> ModelPackage:
    """Validate a parsed model.json; raise :class:`ModelPackageError` naming every problem at once."""
    if not isinstance(document, dict):
        raise ModelPackageError(f"{join(uri, MANIFEST_NAME)}: expected a JSON object; got {type(document).__name__}")
    problems: list[str] = []
    known = {"format_version", "name", "format", "files", "input_name", "input_shape", "mean", "std", "labels", "output",
             "trained", "provenance", "preprocessing"}
    unknown = sorted(set(document) - known)
    if unknown:
        problems.append(f"unknown keys {unknown}; allowed: {sorted(known)}")
    if document.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        problems.append(f"'format_version' must be {FORMAT_VERSION}; got {document.get('format_version')!r}")
    model_format = document.get("format")
    if model_format not in FORMATS:
        problems.append(f"'format' must be one of {sorted(FORMATS)}; got {model_format!r}")
    files = document.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and v for v in files.values()):
        problems.append(f"'files' must map roles to file names; got {files!r}")
        files = {}
    else:
        unsafe = [name for name in files.values() if not safe_relative_name(name)]
        if unsafe:
            problems.append(f"'files' names must be plain relative names inside the package ('/'-separated, no "
                            f"absolute path, no empty, '.' or '..' segment, no backslash); got {unsafe!r}")
        if len(files) > MAX_FILES:
            problems.append(f"'files' may name at most {MAX_FILES} files; got {len(files)}")
        if model_format in FORMATS:
            missing = [role for role in FORMATS[model_format] if role not in files]
            if missing:
                problems.append(
                    f"'files' needs {list(FORMATS[model_format])} for format {model_format!r}; missing {missing}")
    preprocessing = _parse_preprocessing(document.get("preprocessing"), problems)
    channels_first = preprocessing.layout == "NCHW"
    shape = document.get("input_shape")
    if (not isinstance(shape, list) or len(shape) != 3 or shape[0 if channels_first else 2] != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_INPUT_SIDE for v in shape)):
        problems.append(f"'input_shape' must be {'[3, height, width]' if channels_first else '[height, width, 3]'} "
                        f"with height and width integers from 1 to {MAX_INPUT_SIDE} (layout {preprocessing.layout}); "
                        f"got {_abridged(shape)}")
        shape = [3, 1, 1] if channels_first else [1, 1, 3]
    if preprocessing.input_dtype == "uint8":
        mean = std = None
        given = [key for key in ("mean", "std") if key in document]
        if given:
            problems.append(f"{given} must be left out with 'preprocessing.input_dtype' 'uint8': the model gets the "
                            "pixels 0-255 unchanged and normalises them itself")
        if model_format == "mxnet":
            problems.append("'preprocessing.input_dtype' 'uint8' needs format 'onnx'; mxnet packages take float32")
    else:
        mean = _number_triple(document, "mean", problems)
        std = _number_triple(document, "std", problems, positive=True)
    labels = document.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(v, str) for v in labels):
        problems.append(f"'labels' must be a non-empty list of class names; got {_abridged(labels)}")
        labels = []
    elif len(labels) > MAX_LABELS:
        problems.append(f"'labels' may hold at most {MAX_LABELS} class names; got {len(labels)}")
        labels = []
    elif any(len(label) > MAX_LABEL_CHARS for label in labels):
        problems.append(f"'labels' entries may be at most {MAX_LABEL_CHARS} characters; the longest is "
                        f"{max(len(label) for label in labels)}")
        labels = []
    output = document.get("output", "logits")
    if output not in OUTPUTS:
        problems.append(f"'output' must be one of {list(OUTPUTS)}; got {output!r}")
    trained = document.get("trained", False)
    if not isinstance(trained, bool):
        problems.append(f"'trained' must be true or false; got {trained!r}")
    if problems:
        raise ModelPackageError(f"model package {uri} is malformed:\n  - " + "\n  - ".join(problems))
    return ModelPackage(
        uri=uri,
        name=str(document.get("name", os.path.basename(uri.rstrip("/")))),
        format=model_format,
        files=dict(files),
        input_name=str(document.get("input_name", DEFAULT_INPUT_NAME)),
        input_shape=tuple(shape),
        mean=mean,
        std=std,
        labels=tuple(labels),
        output=output,
        trained=trained,
        provenance=dict(document.get("provenance") or {}),
        preprocessing=preprocessing,
    )


def read_package(uri: str, storage: Storage, check_files: bool = True) -> ModelPackage:
    """Read and validate ``model.json`` at ``uri``.

    With ``check_files``, also that every file it names exists, recording each one's ETag (s3://) so that workers
    download exactly those versions, and that an ONNX model reads no data from outside the package
    (:func:`check_onnx_file`).
    """
    manifest_uri = join(uri, MANIFEST_NAME)
    try:
        document = json.loads(storage.read(manifest_uri, max_bytes=MAX_MANIFEST_BYTES))
    except ObjectNotFound as error:
        raise ModelPackageError(f"--model {uri}: no {MANIFEST_NAME} there ({error}); see README, 'Model package'") from error
    except ObjectTooLarge as error:
        raise ModelPackageError(f"{manifest_uri} is larger than {MAX_MANIFEST_BYTES} bytes: {error}") from error
    except ValueError as error:
        raise ModelPackageError(f"{manifest_uri} is not valid JSON: {error}") from error
    package = parse_manifest(document, uri)
    if not check_files:
        return package
    missing, etags = [], {}
    for file_name in package.files.values():
        try:
            etags[file_name] = storage.stat(join(uri, file_name)).etag
        except ObjectNotFound:
            missing.append(file_name)
    if missing:
        raise ModelPackageError(f"model package {uri} names files that do not exist: {missing}")
    package = ModelPackage(**{**package.__dict__, "file_etags": etags})
    if package.format == "onnx":
        if is_s3(uri):
            with tempfile.TemporaryDirectory(prefix="model-check-") as scratch:
                onnx_name = package.files["onnx"]
                storage.download_files(uri, {onnx_name: etags[onnx_name]}, scratch)
                check_onnx_file(package, os.path.join(scratch, *onnx_name.split("/")))
        else:
            check_onnx_file(package, os.path.join(local_path(uri), package.files["onnx"]))
    return package


def download_package(package: ModelPackage, storage: Storage, directory: str) -> None:
    """Copy exactly the files ``model.json`` names (at the ETags the driver recorded) into ``directory``.

    Raises :class:`ModelPackageError` when a file changed since the driver checked the package, and re-checks an ONNX
    model's external data references on the copy.
    """
    try:
        storage.download_files(package.uri, {name: package.file_etags.get(name) for name in package.files.values()},
                               directory)
    except ObjectChanged as error:
        raise ModelChanged(str(error)) from error
    if package.format == "onnx":
        check_onnx_file(package, os.path.join(directory, *package.files["onnx"].split("/")))


# ONNX's protobuf field numbers (onnx/onnx.proto, IR version 10) on the way from a model to every TensorProto: the
# graph's initializers, tensors in node attributes, subgraphs (If, Loop, Scan bodies), sparse tensors, functions
# and training graphs. Read without the `onnx` package, which the nodes do not install.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _SPARSE, _TRAINING, _FUNCTION, _TENSOR, _ENTRY = range(9)
_ONNX_CHILDREN = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTRIBUTE},
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},
    _TENSOR: {13: _ENTRY},
    _ENTRY: {},
}
_TENSOR_DATA_LOCATION = 14
_DATA_LOCATION_EXTERNAL = 1


class _Malformed(ValueError):
    pass


def _varint(buffer, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise _Malformed("a varint runs past its message")
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position


def _fields(buffer, start: int, end: int):
    """``(field number, wire type, value)`` of one protobuf message; a length-delimited value is ``(start, end)``."""
    position = start
    while position < end:
        tag, position = _varint(buffer, position, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, position = _varint(buffer, position, end)
        elif wire_type == 1 or wire_type == 5:
            value, position = None, position + (8 if wire_type == 1 else 4)
        elif wire_type == 2:
            length, position = _varint(buffer, position, end)
            value, position = (position, position + length), position + length
        else:
            raise _Malformed(f"wire type {wire_type} (groups) does not occur in ONNX")
        if position > end:
            raise _Malformed("a field runs past its message")
        yield number, wire_type, value


def onnx_external_locations(buffer) -> list[str]:
    """The ``location`` of every tensor of an ONNX model (bytes or an mmap) whose data lives in another file.

    A tensor marked external without a location is reported as ``""``. Raises ValueError on data that is not a
    protobuf message.
    """
    found: list[str] = []

    def walk(kind: int, start: int, end: int, depth: int) -> None:
        if depth > MAX_ONNX_NESTING:
            raise _Malformed(f"subgraphs nested more than {MAX_ONNX_NESTING} deep")
        external = False
        entries: dict[str, str] = {}
        for number, wire_type, value in _fields(buffer, start, end):
            child = _ONNX_CHILDREN[kind].get(number)
            if kind == _TENSOR and number == _TENSOR_DATA_LOCATION and wire_type == 0:
                external = value == _DATA_LOCATION_EXTERNAL
            elif child == _ENTRY and wire_type == 2:
                key, text = None, ""
                for entry_number, entry_type, (entry_start, entry_end) in (
                        item for item in _fields(buffer, *value) if item[1] == 2):
                    decoded = bytes(buffer[entry_start:entry_end]).decode("utf-8", "replace")
                    if entry_number == 1:
                        key = decoded
                    elif entry_number == 2:
                        text = decoded
                entries[key] = text
            elif child is not None and wire_type == 2:
                walk(child, *value, depth + 1)
        if kind == _TENSOR and (external or entries):
            found.append(entries.get("location", ""))

    walk(_MODEL, 0, len(buffer), 0)
    return found


def check_onnx_file(package: ModelPackage, path: str) -> None:
    """Refuse an ONNX model whose tensors read data from a file that is not one of the package's own files.

    ONNX Runtime follows a tensor's external data ``location`` to an absolute path or out of the package with
    ``../``; such a model would turn any file of the node into its weights, and from there into results. A location
    must be a plain relative name that, next to the model file, is a file ``model.json`` names in ``files``.
    """
    onnx_name = package.files["onnx"]
    allowed = set(package.files.values())
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            with (mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else memoryview(b"")) as buffer:
                locations = onnx_external_locations(buffer)
    except _Malformed as error:
        raise ModelPackageError(f"model package {package.uri}: {onnx_name} is not an ONNX model: {error}") from error
    refused = sorted({location for location in locations
                      if not safe_relative_name(location)
                      or posixpath.join(posixpath.dirname(onnx_name), location) not in allowed})
    if refused:
        raise ModelPackageError(
            f"model package {package.uri}: {onnx_name} reads external data from {refused!r}; an ONNX model's external "
            f"data must be plain relative file names inside the package that 'files' in model.json also names "
            f"(it names {sorted(allowed)})")


def write_manifest(directory: str, **fields) -> str:
    document = {"format_version": FORMAT_VERSION, **fields}
    parse_manifest(document, directory)  # never write a package the job would refuse
    path = os.path.join(directory, MANIFEST_NAME)
    with open(path, "w") as file:
        json.dump(document, file, indent=2)
        file.write("\n")
    return path


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
    # The exporter targets the newest opset the installed onnx knows (22 for onnx 1.17), which ONNX Runtime 1.20 refuses;
    # it reads that number from onnx.defs at call time and has no parameter for it.
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


def _add_quantize_parser(commands) -> None:
    from job.quantize import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_HELD_OUT_IMAGES, DEFAULT_MIN_AGREEMENT,
                              MIN_HELD_OUT_IMAGES)

    quantize = commands.add_parser(
        "quantize", help="calibrated INT8 onnx package of an FP32 package, written only if it agrees with it")
    quantize.add_argument("--package", required=True, metavar="URI", help="the FP32 package (mxnet or onnx)")
    images = quantize.add_mutually_exclusive_group(required=True)
    images.add_argument("--calibration", action="append", default=[], metavar="URI",
                        help="real images like the job's inputs: directory, S3 prefix or object; repeatable")
    images.add_argument("--calibration-manifest", metavar="URI", help="a manifest of such images, as the job's")
    quantize.add_argument("--out", required=True, metavar="DIR", help="local directory for the INT8 package")
    quantize.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                          help=f"images that set the activation ranges (default {DEFAULT_CALIBRATION_IMAGES})")
    quantize.add_argument("--held-out-images", type=int, default=DEFAULT_HELD_OUT_IMAGES, metavar="N",
                          help=f"at most this many other images measure the agreement (default "
                               f"{DEFAULT_HELD_OUT_IMAGES}, at least {MIN_HELD_OUT_IMAGES})")
    quantize.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT, metavar="F",
                          help=f"least top-1 agreement with the FP32 package on the held-out images, 0 to 1 "
                               f"(default {DEFAULT_MIN_AGREEMENT})")
    quantize.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")


def _refuse_used_out(out: str, package: str) -> Optional[str]:
    """Why ``--out`` cannot take the INT8 package, or ``None``: it must be a new or empty directory, so that no other
    package's files are overwritten or mixed with it (the FP32 package's own directory is refused by quantize)."""
    if "://" in out or not os.path.lexists(out):
        return None
    if not os.path.isdir(out):
        return f"--out {out} is a file; give a new or empty directory for the INT8 package"
    if os.listdir(out) and os.path.realpath(out) != os.path.realpath(local_path(package)):
        return (f"--out {out} already holds files ({', '.join(sorted(os.listdir(out))[:3])}...): the INT8 package's "
                "model.json and model.onnx would be written among them; give a new or empty directory")
    return None


def _quantize(args) -> int:
    from job.quantize import AgreementTooLow, quantize_package

    refusal = _refuse_used_out(args.out, args.package)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        result = quantize_package(
            args.package, args.out, calibration_inputs=args.calibration, calibration_manifest=args.calibration_manifest,
            calibration_images=args.calibration_images, held_out_images=args.held_out_images,
            min_agreement=args.min_agreement, s3_endpoint_url=args.s3_endpoint_url)
    except AgreementTooLow as error:
        print(f"refused: {error}", file=sys.stderr)
        return 3  # not 1: a script must tell the gate's refusal from a crash
    except (ValueError, ObjectNotFound) as error:  # ModelPackageError and NoInputError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = ""
    if result.skipped_inputs:
        skipped = (f"; skipped {result.skipped_inputs} input{'s' if result.skipped_inputs > 1 else ''} that "
                   f"{'are not decodable images' if result.skipped_inputs > 1 else 'is not a decodable image'}")
    print(f"calibrated on {result.calibration_images} images{skipped}; {result.agreement.describe()}")
    print(f"wrote {os.path.join(result.package_dir, MANIFEST_NAME)}")
    return 0


def _positive(kind):
    """An argparse type: a number of ``kind`` above 0 (argparse names the option and exits 2 otherwise)."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's message for a non-number: "invalid int value: 'x'"
    return parse


def _inspect(args) -> int:
    from job.quantize import inspect_session, local_copy

    storage = Storage(args.s3_endpoint_url)
    try:
        package = read_package(args.package, storage)
        with tempfile.TemporaryDirectory(prefix="inspect-") as scratch:
            report = inspect_session(package, local_copy(package, storage, scratch), threads=args.threads,
                                     batch_size=args.batch_size, seconds=args.seconds)
    except (ValueError, ObjectNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.describe(package))
    return 0


def _add_byo_parsers(commands) -> None:
    from job.package_init import PRESETS

    init = commands.add_parser(
        "init", help="an onnx package from any ONNX file: input name, shape, layout and dtype read from the graph",
        epilog="example: python -m job.model_package init --onnx resnet50.onnx --labels imagenet.txt "
               "--preset imagenet-torchvision --out build/resnet50")
    init.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX model (local file)")
    init.add_argument("--labels", required=True, metavar="FILE",
                      help="class names, one a line, in the order of the model's outputs")
    init.add_argument("--out", required=True, metavar="DIR", help="new or empty local directory for the package")
    init.add_argument("--preset", choices=sorted(PRESETS),
                      help="the preprocessing the model was trained with (docs/bring-your-own-model.md)")
    init.add_argument("--input-size", type=_positive(int), metavar="N",
                      help="height and width when the graph leaves them free (default: the preset's)")
    init.add_argument("--mean", type=float, nargs=3, metavar="M", help="per model channel, on pixels / 255")
    init.add_argument("--std", type=float, nargs=3, metavar="S", help="per model channel, on pixels / 255")
    init.add_argument("--resize", choices=RESIZE_MODES, help="overrides the preset's (default stretch)")
    init.add_argument("--crop-fraction", type=float, metavar="F",
                      help=f"with --resize center_crop: the centre's share (default {DEFAULT_CROP_FRACTION})")
    init.add_argument("--interpolation", choices=INTERPOLATIONS, help="overrides the preset's (default bilinear)")
    init.add_argument("--channel-order", choices=CHANNEL_ORDERS, help="overrides the preset's (default RGB)")
    init.add_argument("--output", choices=OUTPUTS, help="what the model returns (default: the preset's, else logits)")
    init.add_argument("--name", help="the package's name (default: the ONNX file's name)")
    validate = commands.add_parser(
        "validate", help="run a package once on a few images and print what it does to each, and the top labels",
        epilog="example: python -m job.model_package validate --package build/resnet50 --images cat.jpg dog.png")
    validate.add_argument("--package", required=True, metavar="URI", help="the package: directory or S3 prefix")
    validate.add_argument("--images", required=True, nargs="+", metavar="URI", help="image files or S3 objects")
    validate.add_argument("--top-k", type=_positive(int), default=5, metavar="K",
                          help="labels shown per image (default 5)")
    validate.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")


def _init(args) -> int:
    from job.package_init import init_package

    try:
        package = init_package(
            args.onnx, args.labels, args.out, preset=args.preset, input_size=args.input_size, mean=args.mean,
            std=args.std, resize=args.resize, crop_fraction=args.crop_fraction, interpolation=args.interpolation,
            channel_order=args.channel_order, output=args.output, name=args.name)
    except (ValueError, OSError) as error:  # ModelPackageError is a ValueError; OSError: a missing --onnx or --labels
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(args.out, MANIFEST_NAME)}: input {package.input_name!r} "
          f"{package.preprocessing.input_dtype} {package.preprocessing.layout} {list(package.input_shape)}, "
          f"{len(package.labels)} labels; check it with: python -m job.model_package validate --package {args.out} "
          "--images IMAGE ...")
    return 0


def _validate(args) -> int:
    from job.package_init import validate_package

    try:
        report, failed = validate_package(args.package, args.images, top_k=args.top_k,
                                          s3_endpoint_url=args.s3_endpoint_url)
    except (ValueError, ObjectNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 2 if failed else 0


EPILOG = """exit codes: 0 done; 2 bad arguments, a missing or malformed package, an image validate could not classify,
or an AWS error on an s3:// argument (no credentials, access denied, no such bucket, wrong region); 3 quantize
refused: the INT8 package agreed too little with the FP32 one (nothing written). Package format and examples:
docs/model-packages.md; your own model: docs/bring-your-own-model.md."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m job.model_package", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    zoo = commands.add_parser("export-zoo", help="untrained Gluon model-zoo ResNet-18 as an mxnet package",
                              epilog="example: python -m job.model_package export-zoo --out build/zoo --input-size 224")
    zoo.add_argument("--out", required=True, metavar="DIR", help="local directory for the package (created)")
    zoo.add_argument("--input-size", type=int, default=32, help="height and width of the model input (default 32)")
    zoo.add_argument("--classes", type=int, default=10, metavar="N",
                     help="outputs of the model, labelled class_0 ... (default 10)")
    zoo.add_argument("--seed", type=int, default=0, help="seed of the random (Xavier) weights (default 0)")
    to_onnx = commands.add_parser(
        "to-onnx", help="convert a local mxnet package to an onnx package",
        epilog="example: python -m job.model_package to-onnx --package build/demo/model --out build/demo/model-onnx")
    to_onnx.add_argument("--package", required=True, metavar="URI", help="the mxnet package: directory or S3 prefix")
    to_onnx.add_argument("--out", required=True, metavar="DIR", help="local directory for the onnx package")
    _add_quantize_parser(commands)
    inspect = commands.add_parser("inspect", help="which operators the job's ONNX Runtime session runs for an onnx "
                                                  "package on this CPU (integer or float convolutions), and how fast")
    inspect.add_argument("--package", required=True, metavar="URI", help="an onnx package: directory or S3 prefix")
    inspect.add_argument("--threads", type=_positive(int), default=1,
                         help="threads of the session, at least 1 (default 1: a Spark task's)")
    inspect.add_argument("--batch-size", type=_positive(int), default=32,
                         help="images per timed batch, at least 1 (default 32)")
    inspect.add_argument("--seconds", type=_positive(float), default=5.0,
                         help="how long to time batches, more than 0 (default 5)")
    inspect.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")
    _add_byo_parsers(commands)
    return parser


def _named_uris(args) -> list[tuple[str, str]]:
    """The sub-command's (option, URI) pairs, for naming the one an AWS error is about."""
    pairs = [("--package", getattr(args, "package", None)),
             ("--calibration-manifest", getattr(args, "calibration_manifest", None))]
    pairs += [("--calibration", uri) for uri in getattr(args, "calibration", None) or []]
    pairs += [("--images", uri) for uri in getattr(args, "images", None) or []]
    return [(flag, uri) for flag, uri in pairs if uri]


def _run(args) -> int:
    if args.command == "quantize":
        return _quantize(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "init":
        return _init(args)
    if args.command == "validate":
        return _validate(args)
    if args.command == "export-zoo":
        path = export_gluon(
            zoo_resnet18(args.classes, args.seed), args.out, name="resnet18_v1-untrained",
            input_shape=(3, args.input_size, args.input_size), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            labels=[f"class_{index}" for index in range(args.classes)], trained=False,
            provenance={"source": "gluon model zoo resnet18_v1", "weights": f"random (Xavier, seed {args.seed})"},
        )
    else:
        try:
            path = export_onnx(read_package(args.package, Storage()), args.out)
        except (ModelPackageError, ObjectNotFound) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    arguments = _named_uris(args)
    requests = None
    if any(uri.startswith("s3://") for _, uri in arguments):
        from job import aws_errors
        from job.storage import s3_client

        requests = aws_errors.watch(s3_client(getattr(args, "s3_endpoint_url", None)))
    try:
        return _run(args)
    except Exception as error:
        from job import aws_errors

        message = aws_errors.describe(error, requests, arguments)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
