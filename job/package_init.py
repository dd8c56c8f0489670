"""Bring your own model: ``init`` makes a package from any ONNX file, ``validate`` shows what the job will do with it.

    python -m job.model_package init --onnx model.onnx --labels labels.txt --preset imagenet-torchvision --out DIR
    python -m job.model_package validate --package DIR --images cat.jpg dog.png

``init`` reads the input's name, shape, layout (NCHW or NHWC) and dtype (float32 or uint8) from the ONNX graph with
ONNX Runtime, takes the preprocessing from a preset (each names the library code it follows) or from options, writes
``model.json`` beside a copy of the model, and runs the package once on a blank image, so that a model whose outputs
do not match the labels is refused before anything is uploaded. ``validate`` runs a package once on a few images and
prints, for each, what the decoder and the model input will be (sizes, crop box or padding, dtype, layout, channel
order, mean and std) and the top labels.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from job.package_format import (INPUT_DTYPES, RUNTIME_OF_FORMAT, TWIN_ROLE, ModelPackage, ModelPackageError,
                                Preprocessing, onnx_external_locations, safe_relative_name, twin_package,
                                write_manifest)
from job.package_store import local_copy, read_package
from job.storage import Storage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preset:
    """The preprocessing a family of models was trained with, and where that is written down."""

    source: str  # the library's transform code or documentation
    size: int  # input height and width when the graph leaves them free
    mean: tuple
    std: tuple
    output: str
    preprocessing: Preprocessing = field(default_factory=Preprocessing)


PRESETS = {
    # torchvision's weights transforms (ImageClassification): Resize(256, bilinear, antialias) + CenterCrop(224),
    # then ToTensor and Normalize with ImageNet's mean and std.
    "imagenet-torchvision": Preset(
        "https://github.com/pytorch/vision/blob/main/torchvision/transforms/_presets.py", 224, IMAGENET_MEAN,
        IMAGENET_STD, "logits", Preprocessing(resize="center_crop", crop_fraction=0.875, interpolation="bilinear")),
    # timm's default data config (timm/data/config.py resolve_data_config: bicubic, DEFAULT_CROP_PCT 0.875,
    # IMAGENET_DEFAULT_MEAN/STD) through transforms_imagenet_eval: Resize(floor(224 / 0.875)) + CenterCrop(224).
    # A model's own pretrained_cfg may differ (crop_pct 0.9, 0.95 or 1.0; mean 0.5): check it and pass
    # --crop-fraction, --interpolation, --mean and --std.
    "imagenet-timm": Preset(
        "https://github.com/huggingface/pytorch-image-models/blob/main/timm/data/transforms_factory.py", 224,
        IMAGENET_MEAN, IMAGENET_STD, "logits",
        Preprocessing(resize="center_crop", crop_fraction=0.875, interpolation="bicubic")),
    # Keras applications' preprocess_input mode "caffe" (ResNet50, VGG16/19): RGB to BGR, then the ImageNet mean
    # [103.939, 116.779, 123.68] (B, G, R) subtracted from pixels 0-255, no scaling; written here on pixels / 255.
    # Images as keras.utils.load_img(target_size=...) gives them: stretched, nearest (its default interpolation).
    # The models end in a softmax.
    "imagenet-keras-caffe": Preset(
        "https://github.com/keras-team/keras/blob/master/keras/src/applications/imagenet_utils.py", 224,
        (103.939 / 255, 116.779 / 255, 123.68 / 255), (1 / 255, 1 / 255, 1 / 255), "probabilities",
        Preprocessing(interpolation="nearest", channel_order="BGR")),
    # Keras applications' mode "tf" (MobileNet, MobileNetV2, Xception, InceptionV3, EfficientNetV2 without its own
    # preprocessing layer): pixels / 127.5 - 1, in [-1, 1], RGB. Same image loading and softmax as above.
    "imagenet-keras-tf": Preset(
        "https://github.com/keras-team/keras/blob/master/keras/src/applications/imagenet_utils.py", 224,
        (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "probabilities", Preprocessing(interpolation="nearest")),
    # The CIFAR-10 models most code starts from (kuangliu/pytorch-cifar, main.py): 32x32 as they are, ToTensor,
    # Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)).
    "cifar": Preset(
        "https://github.com/kuangliu/pytorch-cifar/blob/master/main.py", 32, (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010), "logits"),
}
ONNX_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


def _out_problem(out: str) -> Optional[str]:
    if "://" in out:
        return f"--out must be a local directory path (upload the package afterwards); got {out}"
    if os.path.lexists(out) and not os.path.isdir(out):
        return f"--out {out} is a file; give a new or empty directory for the package"
    if os.path.isdir(out) and os.listdir(out):
        return (f"--out {out} already holds files ({', '.join(sorted(os.listdir(out))[:3])}...): the package's "
                "model.json and model.onnx would be written among them; give a new or empty directory")
    return None


def read_labels(path: str) -> list[str]:
    """One class name a line (UTF-8), in the order of the model's outputs; trailing blank lines are dropped."""
    with open(path, encoding="utf-8") as file:
        labels = [line.rstrip("\r\n") for line in file]
    while labels and not labels[-1].strip():
        labels.pop()
    return labels


def describe_input(onnx_path: str, input_size: Optional[int]) -> dict:
    """The ONNX graph's one input as ONNX Runtime reads it: ``{"name", "layout", "dtype", "shape", "free_sides",
    "outputs"}``; ``shape`` is one image's (no batch), ``free_sides`` how many of its height and width the graph
    leaves free. Raises :class:`ModelPackageError` naming what does not fit."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    except Exception as error:  # ONNX Runtime raises its own exception types for a file it cannot load
        raise ModelPackageError(f"--onnx {onnx_path}: ONNX Runtime cannot load it: {error}") from error
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelPackageError(f"--onnx {onnx_path}: the job feeds one image batch; the graph has "
                                f"{len(inputs)} inputs {[item.name for item in inputs]}")
    graph_input, problems = inputs[0], []
    dtype = ONNX_DTYPES.get(graph_input.type)
    if dtype is None:
        problems.append(f"input {graph_input.name!r} is {graph_input.type}; the job feeds {sorted(ONNX_DTYPES)}")
    shape = list(graph_input.shape)
    if len(shape) != 4 or 3 not in (shape[1], shape[3]):
        problems.append(f"input {graph_input.name!r} has shape {shape}; the job feeds [N, 3, H, W] (NCHW) or "
                        "[N, H, W, 3] (NHWC)")
        layout, sides = "NCHW", [None, None]
    else:
        layout = "NCHW" if shape[1] == 3 else "NHWC"
        sides = shape[2:4] if layout == "NCHW" else shape[1:3]
    height, width = [side if isinstance(side, int) and side > 0 else input_size for side in sides]
    free_sides = sum(not (isinstance(side, int) and side > 0) for side in sides)
    if not problems and (height is None or width is None):
        problems.append(f"input {graph_input.name!r} has shape {shape} with a free height or width: give "
                        "--input-size (or a --preset, which has one)")
    if problems:
        raise ModelPackageError(f"--onnx {onnx_path}: " + "; ".join(problems))
    return {"name": graph_input.name, "layout": layout, "dtype": dtype, "free_sides": free_sides,
            "shape": [3, height, width] if layout == "NCHW" else [height, width, 3],
            "outputs": [list(output.shape) for output in session.get_outputs()]}


def init_package(onnx_path: str, labels_path: str, out: str, *, preset: Optional[str] = None,
                 input_size: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, resize: Optional[str] = None,
                 crop_fraction: Optional[float] = None, interpolation: Optional[str] = None,
                 channel_order: Optional[str] = None, output: Optional[str] = None,
                 name: Optional[str] = None) -> ModelPackage:
    """Write an ``onnx`` package of ``onnx_path`` in ``out`` (new or empty) and return it, checked by one forward
    pass. Options override the preset; raises :class:`ModelPackageError` (nothing left in ``out``) or ``ValueError``
    for bad arguments."""
    problem = _out_problem(out)
    if problem:
        raise ValueError(problem)
    chosen = PRESETS[preset] if preset else None
    # Before ONNX Runtime opens the model: it would follow a tensor's external data to any path of this machine.
    locations = _external_locations(onnx_path)
    unsafe = [location for location in locations if not safe_relative_name(location)]
    if unsafe:
        raise ModelPackageError(f"--onnx {onnx_path} reads external data from {unsafe}: only plain relative file "
                                "names beside the model can be copied into a package")
    graph = describe_input(onnx_path, input_size or (chosen.size if chosen else None))
    fixed = graph["shape"][1:] if graph["layout"] == "NCHW" else graph["shape"][:2]
    if input_size is not None and fixed != [input_size, input_size] and graph["free_sides"] == 0:
        raise ValueError(f"--input-size {input_size}: the graph's input is fixed at {fixed[0]}x{fixed[1]}")
    labels = read_labels(labels_path)
    classes = {shape[1] for shape in graph["outputs"][:1] if len(shape) == 2 and isinstance(shape[1], int)}
    if classes and classes != {len(labels)}:
        raise ModelPackageError(f"--labels {labels_path} has {len(labels)} class names; the model's output "
                                f"has {classes.pop()} scores per image")
    base = chosen.preprocessing if chosen else Preprocessing()
    resize = resize or base.resize
    if crop_fraction is not None and resize != "center_crop":
        raise ValueError(f"--crop-fraction applies only to --resize center_crop; the resize is {resize}")
    preprocessing = Preprocessing(
        resize=resize, crop_fraction=crop_fraction or base.crop_fraction,
        interpolation=interpolation or base.interpolation, channel_order=channel_order or base.channel_order,
        layout=graph["layout"], input_dtype=graph["dtype"])
    fields: dict = {"input_shape": graph["shape"]}
    if graph["dtype"] == INPUT_DTYPES[0]:
        mean, std = mean or (chosen.mean if chosen else None), std or (chosen.std if chosen else None)
        if mean is None or std is None:
            raise ValueError("a float32 model needs --mean and --std (3 numbers each, on pixels / 255, in the "
                             "model's channel order) or a --preset")
        fields.update(mean=[float(value) for value in mean], std=[float(value) for value in std])
    elif mean is not None or std is not None:
        raise ValueError(f"--mean and --std do not apply: the model's input {graph['name']!r} is uint8, so it gets "
                         "the pixels 0-255 unchanged and normalises them itself")
    files = {"onnx": "model.onnx", **{f"data_{index}": location for index, location in enumerate(locations)}}
    if preprocessing.manifest():
        fields["preprocessing"] = preprocessing.manifest()
    provenance = {"made_by": "python -m job.model_package init", "onnx": os.path.basename(onnx_path)}
    if chosen:
        provenance.update(preset=preset, preset_source=chosen.source)
    created = not os.path.exists(out)
    os.makedirs(out, exist_ok=True)
    try:
        shutil.copyfile(onnx_path, os.path.join(out, "model.onnx"))
        for location in locations:
            os.makedirs(os.path.dirname(os.path.join(out, location)), exist_ok=True)
            shutil.copyfile(os.path.join(os.path.dirname(onnx_path), location), os.path.join(out, location))
        write_manifest(out, name=name or os.path.splitext(os.path.basename(onnx_path))[0], format="onnx",
                       files=files, input_name=graph["name"], **fields, labels=labels,
                       output=output or (chosen.output if chosen else "logits"), trained=True, provenance=provenance)
        package = read_package(out, Storage())
        try:
            _predict_once(package, out)
        except ModelPackageError:
            raise
        except Exception as error:  # ONNX Runtime's own exception types: the graph cannot take the job's input
            raise ModelPackageError(f"--onnx {onnx_path}: the model failed on one blank {preprocessing.input_dtype} "
                                    f"image of shape {graph['shape']}: {error}") from error
    except BaseException:
        # Nothing half-made is left: the directory was new or empty.
        if created:
            shutil.rmtree(out)
        else:
            for entry in os.listdir(out):
                path = os.path.join(out, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        raise
    return package


def _external_locations(onnx_path: str) -> list[str]:
    """The files the model's tensors read their data from, read without ONNX Runtime or the onnx package."""
    with open(onnx_path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        try:
            with (mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else memoryview(b"")) as buffer:
                return sorted(set(onnx_external_locations(buffer)))
        except ValueError as error:
            raise ModelPackageError(f"--onnx {onnx_path} is not an ONNX model: {error}") from error


def _predict_once(package: ModelPackage, directory: str):
    from job.predictor import Device, load_predictor

    return load_predictor(package, directory, Device("cpu"))


def validate_package(package_uri: str, images: Sequence[str], *, top_k: int = 5,
                     s3_endpoint_url: Optional[str] = None) -> tuple[str, int]:
    """Run the package once on ``images`` as the job would; return the report and how many images failed."""
    from job.config import DEFAULT_MAX_OBJECT_BYTES
    from job.decode import DecodeError, decode_image, describe_decoding
    from job.worker import model_input, top_k_labels

    storage = Storage(s3_endpoint_url)
    package = read_package(package_uri, storage)
    preprocessing = package.preprocessing
    lines = [f"package {package.name} ({package.format}), input {package.input_name!r}: {preprocessing.input_dtype} "
             f"{preprocessing.layout} [N, {', '.join(map(str, package.input_shape))}], channels "
             f"{preprocessing.channel_order}"]
    if package.mean is not None:
        lines.append(f"normalised per model channel: (pixel / 255 - mean) / std, mean {list(package.mean)}, std "
                     f"{list(package.std)}")
    else:
        lines.append("pixels 0-255 unchanged (uint8: the model normalises them itself)")
    lines.append(f"resize {preprocessing.resize}"
                 + (f" (crop fraction {preprocessing.crop_fraction})" if preprocessing.resize == "center_crop" else "")
                 + f", interpolation {preprocessing.interpolation}; output {package.output}"
                 + (" (softmax applied)" if package.output == "logits" else ""))
    twin = package.onnx_twin
    if twin is not None:
        lines.append(f"runtime onnxruntime (the job's --runtime auto): the ONNX twin {package.files[TWIN_ROLE]}, "
                     f"checked on {twin['held_out_images']} held-out images: top-1 agreement with MXNet "
                     f"{twin['top1_agreement']:.0%}, probabilities within {twin['max_probability_difference']:.1e}, "
                     "files unchanged since (SHA-256); --runtime mxnet runs MXNet instead")
        package = twin_package(package)
    else:
        lines.append(f"runtime {RUNTIME_OF_FORMAT[package.format]}")
    decoded, names, failed = [], [], 0
    resize = (preprocessing.resize, preprocessing.crop_fraction, preprocessing.interpolation)
    for source in images:
        try:
            data = storage.read(source, max_bytes=DEFAULT_MAX_OBJECT_BYTES)
            lines.append(f"{source}: {describe_decoding(data, package.height, package.width, *resize[:2])}")
            decoded.append(decode_image(data, package.height, package.width, *resize))
            names.append(source)
        except (DecodeError, OSError, ValueError) as error:
            failed += 1
            lines.append(f"{source}: not classified: {error}")
    if not decoded:
        return "\n".join(lines), failed
    batch = model_input(package)(np.stack(decoded))
    lines.append(f"model input: {batch.dtype} {list(batch.shape)}, values {batch.min():.4g} to {batch.max():.4g}")
    with tempfile.TemporaryDirectory(prefix="validate-") as scratch:
        probabilities = _predict_once(package, local_copy(package, storage, scratch))(batch)
    best = top_k_labels(probabilities, min(top_k, len(package.labels)))
    for source, row, scores in zip(names, best, probabilities):
        lines.append(f"{source}: top-{len(row)} " + ", ".join(
            f"{package.labels[label]} {scores[label]:.3f}" for label in row))
    return "\n".join(lines), failed

