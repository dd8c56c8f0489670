"""An mxnet package's ONNX twin: convert it, check on held-out images that ONNX Runtime gives the same answers as
MXNet, and embed the ONNX file in the package with the record of that check.

    python -m job.model_package add-onnx --package P --held-out-manifest URI [--out DIR]
    python -m job.model_package add-onnx --package P --held-out URI [--held-out URI ...] [--out DIR]

The held-out images (listed exactly as the job's ``--input``/``--manifest``) are fetched, decoded and normalised by
the job's own code, as :mod:`job.quantize` measures an INT8 package (:func:`job.quantize.compare_on_held_out`), and both
models run through the job's own predictor (:func:`job.predictor.load_predictor`). The twin is written only when the
top-1 label of every image agrees and no probability differs by more than
:data:`job.package_format.MAX_TWIN_PROBABILITY_DIFFERENCE`; ``model.json`` then names it as ``files.onnx`` and records
the check under ``onnx_twin`` (images, agreement, largest probability difference, every file's SHA-256). The job runs
such a package through ONNX Runtime (``--runtime``, docs/job.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence

from job.convert import export_onnx
from job.package_format import (MANIFEST_NAME, MAX_MANIFEST_BYTES, MAX_TWIN_PROBABILITY_DIFFERENCE,
                                MIN_HELD_OUT_IMAGES, TWIN_ROLE, ModelPackage, ModelPackageError, file_sha256,
                                write_manifest)
from job.package_store import local_copy, read_package
from job.predictor import Device, load_predictor
from job.quantize import Agreement, compare_on_held_out, split_images
from job.sources import KIND_CIFAR, KIND_IMAGE, list_inputs
from job.storage import Storage, is_s3, join, local_path

TWIN_FILE = "model.onnx"


class TwinDisagrees(RuntimeError):
    """ONNX Runtime's answers differ from MXNet's on a held-out image; nothing was written."""


@dataclass(frozen=True)
class TwinResult:
    package_dir: str
    agreement: Agreement
    skipped_inputs: int  # listed inputs that could not be decoded (or were not images) and were passed over


def describe(agreement: Agreement) -> str:
    return (f"top-1 agreement of ONNX Runtime with MXNet {agreement.top1:.2%} ({agreement.agreeing}/"
            f"{agreement.images} held-out images); probabilities differ by at most "
            f"{agreement.max_probability_difference:.2e} (allowed {MAX_TWIN_PROBABILITY_DIFFERENCE:.0e})")


def refusal(agreement: Agreement) -> Optional[str]:
    """Why a twin that compared as ``agreement`` must not be added, or None: a top-1 label differed on any held-out
    image, or a probability by more than ``MAX_TWIN_PROBABILITY_DIFFERENCE``."""
    if agreement.agreeing == agreement.images and (
            agreement.max_probability_difference <= MAX_TWIN_PROBABILITY_DIFFERENCE):
        return None
    return (f"the ONNX twin was not added: {describe(agreement)}; it must agree on every image. The job keeps "
            "running this package with MXNet")


def add_onnx_twin(package_uri: str, *, held_out_inputs: Sequence[str] = (), held_out_manifest: Optional[str] = None,
                  held_out_images: int, out_dir: Optional[str] = None,
                  s3_endpoint_url: Optional[str] = None) -> TwinResult:
    """Embed the checked ONNX twin of the mxnet package at ``package_uri``; write the package to ``out_dir`` (a new
    or empty local directory: the files copied, model.json extended), or in place when ``out_dir`` is None (a local
    package only).

    Raises :class:`TwinDisagrees` (nothing written) when a top-1 label differs or a probability differs by more
    than ``MAX_TWIN_PROBABILITY_DIFFERENCE``; ``ValueError`` (or :class:`ModelPackageError`) for bad arguments, a
    package that is not mxnet, or fewer than ``MIN_HELD_OUT_IMAGES`` decodable held-out images.
    """
    problems = []
    if held_out_images < MIN_HELD_OUT_IMAGES:
        problems.append(f"--held-out-images must be at least {MIN_HELD_OUT_IMAGES}; got {held_out_images}")
    if bool(held_out_inputs) == bool(held_out_manifest):
        problems.append("give the held-out images as --held-out URI (repeatable) or as --held-out-manifest URI, not "
                        "both and not neither")
    if out_dir is None and is_s3(package_uri):
        problems.append(f"--package {package_uri} is on S3: give --out DIR, a local directory for the package with "
                        "its twin (upload it afterwards)")
    if out_dir is not None and "://" in out_dir:
        problems.append(f"--out must be a local directory path (upload the package afterwards); got {out_dir}")
    if problems:
        raise ValueError("invalid arguments:\n  - " + "\n  - ".join(problems))
    storage = Storage(s3_endpoint_url)
    source = read_package(package_uri, storage, without_twin=True)
    if source.format != "mxnet":
        raise ModelPackageError(f"--package {package_uri} is format {source.format!r}; add-onnx gives an mxnet "
                                "package an ONNX twin (an onnx package already runs with ONNX Runtime)")
    model_files = source.files
    if TWIN_FILE in model_files.values():
        raise ModelPackageError(f"--package {package_uri}: its files {model_files} already use the name {TWIN_FILE}")
    listing = list_inputs(inputs=held_out_inputs, manifest=held_out_manifest, storage=storage, records_per_item=1)
    _, held_out_items = split_images(listing.items, 0, held_out_images)
    skipped = listing.skipped + sum(item.kind not in (KIND_IMAGE, KIND_CIFAR) for item in listing.items)

    scratch = tempfile.mkdtemp(prefix="onnx-twin-")
    try:
        source_dir = local_copy(source, storage, scratch)
        mxnet_package = ModelPackage(**{**source.__dict__, "uri": source_dir})
        twin_dir = os.path.join(scratch, "twin")
        twin = read_package(os.path.dirname(export_onnx(mxnet_package, twin_dir)), Storage())
        mxnet_predict = load_predictor(mxnet_package, source_dir, Device("cpu"))
        twin_predict = load_predictor(twin, twin_dir, Device("cpu"))
        agreement, passed_over = compare_on_held_out(mxnet_predict, twin_predict, held_out_items, source,
                                                     s3_endpoint_url)
        skipped += passed_over
        if agreement.images < MIN_HELD_OUT_IMAGES:
            raise ValueError(f"only {agreement.images} held-out images could be decoded; at least "
                             f"{MIN_HELD_OUT_IMAGES} must compare the two runtimes: give more images")
        why_not = refusal(agreement)
        if why_not:
            raise TwinDisagrees(why_not)

        import mxnet
        import onnxruntime

        destination = local_path(package_uri) if out_dir is None else out_dir
        in_place = not is_s3(package_uri) and os.path.realpath(destination) == os.path.realpath(source_dir)
        os.makedirs(destination, exist_ok=True)
        if not in_place:
            for name in model_files.values():
                target = os.path.join(destination, *name.split("/"))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(os.path.join(source_dir, *name.split("/")), target)
        shutil.copyfile(os.path.join(twin_dir, twin.files["onnx"]), os.path.join(destination, TWIN_FILE))
        document = json.loads(storage.read(join(package_uri, MANIFEST_NAME), max_bytes=MAX_MANIFEST_BYTES))
        document.pop("format_version", None)
        files = {**model_files, TWIN_ROLE: TWIN_FILE}
        document.update(files=files, onnx_twin={
            "held_out_images": agreement.images,
            "top1_agreement": agreement.top1,
            "max_probability_difference": agreement.max_probability_difference,
            "sha256": {name: file_sha256(os.path.join(destination, *name.split("/"))) for name in files.values()},
            "held_out": {"manifest": held_out_manifest} if held_out_manifest else {"inputs": list(held_out_inputs)},
            "versions": {"mxnet": mxnet.__version__, "onnxruntime": onnxruntime.__version__},
        })
        write_manifest(destination, **document)
        return TwinResult(destination, agreement, skipped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
