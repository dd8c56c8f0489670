"""The model package format: ``model.json`` parsed and validated, and an ONNX model's external data checked.

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
      "provenance": {...},                    # free-form: data set, held-out accuracy, command that made it
      "onnx_twin": {...}                      # mxnet only, with files.onnx: the ONNX conversion's check (below)
    }

An ``mxnet`` package may carry its own ONNX conversion, its *twin* (``files.onnx``, written by ``python -m
job.model_package add-onnx``), which the job runs through ONNX Runtime instead of MXNet (``--runtime``). It must carry
``onnx_twin``, the record of the check that made it: at least ``MIN_HELD_OUT_IMAGES`` held-out images, top-1 agreement
1 (every image), the largest probability difference at most ``MAX_TWIN_PROBABILITY_DIFFERENCE``, and the SHA-256 of
every file of the package, so that a twin of another model, or a model changed after the check, is refused
(:func:`check_twin_files`).

Reading and validating a package imports no framework, so the driver can check it before any Spark work. A package
is code-equivalent (it decides what every node computes), so it is held to limits: file names are plain relative names
inside the package (at most ``MAX_FILES``); an ONNX model's external data may only be files ``files`` names;
height and width at most ``MAX_INPUT_SIDE``; at most ``MAX_LABELS`` labels of ``MAX_LABEL_CHARS``; ``model.json`` at
most ``MAX_MANIFEST_BYTES``. Workers copy only the named files, at the ETags the driver recorded.

A package is code-equivalent (it decides what every node computes), so it is held to limits: file names are plain
relative names inside the package (at most ``MAX_FILES``); an ONNX model's external data may only be files ``files``
names; height and width at most ``MAX_INPUT_SIDE``; at most ``MAX_LABELS`` labels of ``MAX_LABEL_CHARS``;
``model.json`` at most ``MAX_MANIFEST_BYTES``.

This module is the package format's leaf: it imports nothing else of the job and no framework (only the standard
library), so that the driver validates a package before any Spark work and every other module, from the run path to
the package tools, can depend on it (tests/job/test_job_rooms.py). Reading a package from storage is
:mod:`job.package_store`; the tools that write packages are behind ``python -m job.model_package``.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import posixpath
from dataclasses import dataclass, field
from typing import Optional

MANIFEST_NAME = "model.json"
FORMAT_VERSION = 1
FORMATS = {"mxnet": ("symbol", "params"), "onnx": ("onnx",)}
OUTPUTS = ("logits", "probabilities")
DEFAULT_INPUT_NAME = "data"
# Limits a package must keep, so that a malformed or hostile one is refused at job start instead of exhausting the
# workers. A 4096x4096 input is 16.8 megapixels, above any classifier's; 100,000 labels cover ImageNet-21k (21,843).
MAX_INPUT_SIDE = 4096
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 16
# A subgraph nested deeper than this (If/Loop bodies inside each other) is refused rather than walked.
MAX_ONNX_NESTING = 64
# An mxnet package's ONNX twin (docs/model-packages.md, "ONNX twin"): the check that admits it compared both runtimes
# on at least this many held-out images (so that one disagreement would weigh at most a percentage point), on every
# one of them the top-1 label agreed, and no probability differed by more than this (float32 rounding between two
# runtimes is about 1e-6; a different model or a wrong conversion is orders of magnitude off).
MIN_HELD_OUT_IMAGES = 100
MAX_TWIN_PROBABILITY_DIFFERENCE = 1e-3
TWIN_ROLE = "onnx"
# The runtime that runs each format (the summary's "runtime").
RUNTIME_OF_FORMAT = {"mxnet": "mxnet", "onnx": "onnxruntime"}
# Preprocessing (docs/model-packages.md, "Preprocessing"): the first value of each is the default, today's behaviour
# for every package written before these fields existed.
RESIZE_MODES = ("stretch", "center_crop", "pad")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CHANNEL_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
INPUT_DTYPES = ("float32", "uint8")
# torchvision's and timm's ImageNet evaluation: resize to 256, cut the centre 224 (224 / 256).
DEFAULT_CROP_FRACTION = 0.875


def safe_relative_name(name: str) -> bool:
    """Whether ``name`` is a plain relative file name: ``/``-separated, with no empty, ``.`` or ``..`` segment, no
    backslash and no NUL, so that joining it to a directory can only name a file inside that directory."""
    return (isinstance(name, str) and bool(name) and "\\" not in name and "\0" not in name
            and all(segment not in ("", ".", "..") for segment in name.split("/")))


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
    # An mxnet package's ONNX twin: the check record of model.json's "onnx_twin" (None: no twin).
    onnx_twin: Optional[dict] = None

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


def twin_package(package: ModelPackage) -> ModelPackage:
    """The ``onnx`` package an mxnet package's twin is: only its ONNX file (at the ETag the driver recorded), run by
    ONNX Runtime with the mxnet package's preprocessing, labels and output. The workers load and pin nothing else."""
    if package.onnx_twin is None:
        raise ModelPackageError(f"model package {package.uri} has no ONNX twin")
    name = package.files[TWIN_ROLE]
    return ModelPackage(**{**package.__dict__, "format": "onnx", "files": {TWIN_ROLE: name},
                           "file_etags": {key: value for key, value in package.file_etags.items() if key == name}})


def runtime_package(package: ModelPackage, runtime: str) -> ModelPackage:
    """The package the workers load for ``runtime`` (``mxnet`` or ``onnxruntime``): an mxnet package's twin for ONNX
    Runtime (:func:`twin_package`), its MXNet files alone for MXNet, else ``package`` itself."""
    if package.onnx_twin is None:
        return package
    if runtime == "onnxruntime":
        return twin_package(package)
    name = package.files[TWIN_ROLE]
    return ModelPackage(**{**package.__dict__, "onnx_twin": None,
                           "files": {role: file for role, file in package.files.items() if role != TWIN_ROLE},
                           "file_etags": {key: value for key, value in package.file_etags.items() if key != name}})


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _twin_problems(record: object, files: dict) -> list[str]:
    """What is wrong with an ``onnx_twin`` record for a package whose ``files`` are these."""
    if not isinstance(record, dict):
        return [f"'onnx_twin' must be an object (the check add-onnx records); got {_abridged(record)}"]
    problems = []
    known = ("held_out_images", "top1_agreement", "max_probability_difference", "sha256", "held_out", "versions")
    unknown = sorted(set(record) - set(known))
    if unknown:
        problems.append(f"unknown keys in 'onnx_twin' {_abridged(unknown)}; allowed: {sorted(known)}")
    images = record.get("held_out_images")
    if not isinstance(images, int) or isinstance(images, bool) or images < MIN_HELD_OUT_IMAGES:
        problems.append(f"'onnx_twin.held_out_images' must be an integer of at least {MIN_HELD_OUT_IMAGES}; got "
                        f"{_abridged(images)}")
    agreement = record.get("top1_agreement")
    if not _is_number(agreement) or agreement != 1:
        problems.append(f"'onnx_twin.top1_agreement' must be 1 (the twin's top-1 label equal to MXNet's on every "
                        f"held-out image); got {_abridged(agreement)}")
    difference = record.get("max_probability_difference")
    if not _is_number(difference) or not 0 <= difference <= MAX_TWIN_PROBABILITY_DIFFERENCE:
        problems.append(f"'onnx_twin.max_probability_difference' must be a number from 0 to "
                        f"{MAX_TWIN_PROBABILITY_DIFFERENCE}; got {_abridged(difference)}")
    digests = record.get("sha256")
    names = sorted(set(files.values()))
    if (not isinstance(digests, dict) or sorted(digests) != names
            or not all(isinstance(value, str) and len(value) == 64 and set(value) <= set("0123456789abcdef")
                       for value in digests.values())):
        problems.append(f"'onnx_twin.sha256' must map each package file {names} to its SHA-256 (64 lowercase hex "
                        f"digits); got {_abridged(digests)}")
    return problems


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, as 64 lowercase hex digits, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def check_twin_files(package: ModelPackage, directory: str) -> None:
    """Refuse a twin whose package files (in ``directory``) are not the ones its check compared: an ONNX file of
    another model, or an mxnet model changed after the check. Reads every file of the package once."""
    changed = [name for name, expected in sorted(package.onnx_twin["sha256"].items())
               if file_sha256(os.path.join(directory, *name.split("/"))) != expected]
    if changed:
        raise ModelPackageError(
            f"model package {package.uri}: {changed} differ from the files its ONNX twin was checked against "
            f"('onnx_twin.sha256' in model.json): the twin may be another model's. Check the twin again with "
            f"`python -m job.model_package add-onnx --package {package.uri} --held-out-manifest URI`")


def _number_triple(document: dict, key: str, problems: list[str], positive: bool = False) -> tuple:
    value = document.get(key)
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            or (positive and not all(v > 0 for v in value))):
        problems.append(f"{key!r} must be a list of 3 {'positive ' if positive else ''}numbers (one per model "
                        f"channel); got {_abridged(value)}")
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
        raise ModelPackageError(
            f"{uri.rstrip('/')}/{MANIFEST_NAME}: expected a JSON object; got {type(document).__name__}")
    problems: list[str] = []
    known = {"format_version", "name", "format", "files", "input_name", "input_shape", "mean", "std", "labels",
             "output", "trained", "provenance", "preprocessing", "onnx_twin"}
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
    twin = document.get("onnx_twin")
    if model_format == "mxnet" and TWIN_ROLE in files:
        if twin is None:
            problems.append(f"'files.{TWIN_ROLE}' of an mxnet package is its ONNX twin and needs 'onnx_twin', the "
                            "record of the check that it agrees with MXNet (python -m job.model_package add-onnx)")
        else:
            problems += _twin_problems(twin, files)
    elif twin is not None:
        problems.append(f"'onnx_twin' belongs to an mxnet package whose 'files' name its ONNX twin as "
                        f"'{TWIN_ROLE}'; this package is format {model_format!r} with files {sorted(files)}")
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
        onnx_twin=dict(twin) if model_format == "mxnet" and TWIN_ROLE in files else None,
    )




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


