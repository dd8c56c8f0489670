"""INT8 model packages: calibrate an FP32 package on real images, quantize it with ONNX Runtime, and gate the result.

    python -m job.model_package quantize --package P --calibration URI [--calibration URI ...] --out Q
    python -m job.model_package quantize --package P --calibration-manifest URI --out Q
    python -m job.model_package inspect --package Q     # on a node: which kernels (job/inspect_package.py), how fast

The images (a directory, an S3 prefix, single objects or a manifest, exactly as the job's ``--input``/``--manifest``)
are listed, shuffled with a fixed seed and split in two disjoint sets: ``--calibration-images`` of them set the
activation ranges, up to ``--held-out-images`` others measure how often the INT8 model's top-1 label equals the FP32
package's. Both sets are fetched, decoded and normalised by the job's own code (:class:`job.worker.BatchPreparer`), so
calibration sees exactly what inference sees, and both models run through the job's own predictor
(:func:`job.predictor.load_predictor`), with the session options the job uses. Below ``--min-agreement`` nothing is
written and the command says what it measured.

The method (ONNX Runtime static quantization, QDQ format):

- weights int8, one scale per output channel, symmetric, in the 7-bit range -64..64 (``reduce_range``). CPUs without
  VNNI (Skylake-era c5, AMD before Zen 4: c6a, m6a) multiply uint8 by int8 with VPMADDUBSW, which adds pairs of
  products in 16 bits and saturates with 8-bit weights (255 * 127 * 2 > 32767): measured on such a CPU, full-range
  weights changed the top-1 label of 1.4 % of held-out digits, 7-bit weights of 0.3 %. With 7-bit weights every
  integer sum is exact on every x86 kernel, so the agreement measured here holds on every CPU the job runs on, and
  the fast kernel is kept (ONNX Runtime's other remedy, ``session.x64quantprecision``, switches to a slower kernel);
- activations uint8, one scale per tensor, asymmetric, ranges from the calibration images' minimum and maximum
  (MinMax: entropy and percentile calibration did no better in the probe of ``shared/reviews/int8-probe-notes.md``);
- the final classifier (the Gemm or MatMul that produces the scores) stays float32: quantizing it cost a further
  half point of agreement in that probe, for no measurable speed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from job.convert import export_onnx
from job.package_format import ModelPackage, ModelPackageError, write_manifest
from job.package_store import local_copy, read_package
from job.predictor import Device, Predict, int8_instructions, load_predictor
from job.quantize_defaults import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_HELD_OUT_IMAGES, DEFAULT_MIN_AGREEMENT,
                                   MIN_HELD_OUT_IMAGES)
from job.sources import KIND_CIFAR, KIND_IMAGE, WorkItem, list_inputs
from job.storage import Storage, is_s3, local_path
from job.worker import BatchPreparer, PreparedBatch, WorkerSettings, batch_units

SPLIT_SEED = 0
DECODE_BATCH = 64
FETCH_THREADS = 16
# Operators between the classifier and the graph's output that compute nothing worth quantizing.
PASS_THROUGH_OPS = ("Softmax", "Flatten", "Reshape", "Identity")
CLASSIFIER_OPS = ("Gemm", "MatMul")
METHOD = ("ONNX Runtime static quantization, QDQ format: int8 weights per output channel, symmetric, 7-bit range "
          "(reduce_range); uint8 activations per tensor, asymmetric, MinMax calibration")


class AgreementTooLow(RuntimeError):
    """The INT8 model disagrees with the FP32 package too often; nothing was written."""


@dataclass(frozen=True)
class Agreement:
    """How the INT8 model's outputs compare with the FP32 package's on the held-out images."""

    images: int
    agreeing: int
    max_probability_difference: float  # largest |p_int8 - p_fp32| over images and classes
    mean_probability_difference: float  # mean over images of the largest difference per image
    disagreement_max_fp32_margin: Optional[float]  # FP32's top-1 minus top-2 probability, largest among disagreements
    labelled: int = 0  # held-out images with a true label (CIFAR-10 records)
    fp32_correct: int = 0
    int8_correct: int = 0

    @property
    def top1(self) -> float:
        return self.agreeing / self.images

    def as_provenance(self, threshold: float) -> dict:
        measured = {
            "held_out_images": self.images,
            "top1_agreement": self.top1,
            "max_probability_difference": self.max_probability_difference,
            "mean_max_probability_difference": self.mean_probability_difference,
            "min_agreement": threshold,
        }
        if self.labelled:
            measured["labelled_images"] = self.labelled
            measured["fp32_accuracy"] = self.fp32_correct / self.labelled
            measured["int8_accuracy"] = self.int8_correct / self.labelled
        return measured

    def describe(self) -> str:
        text = (f"top-1 agreement with FP32 {self.top1:.2%} ({self.agreeing}/{self.images} held-out images); "
                f"probabilities differ by at most {self.max_probability_difference:.3f} "
                f"(mean of the per-image maximum {self.mean_probability_difference:.4f})")
        if self.disagreement_max_fp32_margin is not None:
            text += (f"; where they disagree, FP32's own top-2 margin was at most "
                     f"{self.disagreement_max_fp32_margin:.3f}")
        if self.labelled:
            text += (f"; accuracy on {self.labelled} labelled images: FP32 {self.fp32_correct / self.labelled:.2%}, "
                     f"INT8 {self.int8_correct / self.labelled:.2%}")
        return text


@dataclass
class AgreementCounter:
    """Adds up how two models' probabilities (``float32[N, classes]`` per batch) compare: the INT8 gate's, and the
    ONNX twin's (:mod:`job.onnx_twin`, reference MXNet in place of FP32)."""

    images: int = 0
    agreeing: int = 0
    max_difference: float = 0.0
    sum_of_max_differences: float = 0.0
    disagreement_margins: list = field(default_factory=list)
    labelled: int = 0
    fp32_correct: int = 0
    int8_correct: int = 0

    def add(self, fp32: np.ndarray, int8: np.ndarray, true_labels: Sequence[Optional[int]]) -> None:
        fp32_top1, int8_top1 = fp32.argmax(axis=1), int8.argmax(axis=1)
        differences = np.abs(int8 - fp32).max(axis=1)
        self.images += len(fp32)
        self.agreeing += int((fp32_top1 == int8_top1).sum())
        self.max_difference = max(self.max_difference, float(differences.max(initial=0.0)))
        self.sum_of_max_differences += float(differences.sum())
        top_two = np.sort(fp32, axis=1)[:, -2:]
        self.disagreement_margins += (top_two[:, 1] - top_two[:, 0])[fp32_top1 != int8_top1].tolist()
        for row, label in enumerate(true_labels):
            if label is not None:
                self.labelled += 1
                self.fp32_correct += int(fp32_top1[row] == label)
                self.int8_correct += int(int8_top1[row] == label)

    def result(self) -> Agreement:
        return Agreement(
            images=self.images, agreeing=self.agreeing, max_probability_difference=self.max_difference,
            mean_probability_difference=self.sum_of_max_differences / max(1, self.images),
            disagreement_max_fp32_margin=max(self.disagreement_margins) if self.disagreement_margins else None,
            labelled=self.labelled, fp32_correct=self.fp32_correct, int8_correct=self.int8_correct)


@dataclass(frozen=True)
class QuantizeResult:
    package_dir: str
    agreement: Agreement
    calibration_images: int
    skipped_inputs: int  # listed inputs that could not be decoded (or were not images) and were passed over


def split_images(items: Sequence[WorkItem], calibration_images: int, held_out_images: int,
                 seed: int = SPLIT_SEED) -> tuple[list[WorkItem], list[WorkItem]]:
    """Two disjoint sets of single images: a calibration set and a held-out set, drawn after a seeded shuffle."""
    images = [item for item in items if item.kind in (KIND_IMAGE, KIND_CIFAR)]
    order = np.random.default_rng(seed).permutation(len(images))
    shuffled = [images[index] for index in order]
    calibration = shuffled[:calibration_images]
    return calibration, shuffled[calibration_images:calibration_images + held_out_images]


def decoded_batches(items: Sequence[WorkItem], package: ModelPackage, s3_endpoint_url: Optional[str]
                    ) -> Iterator[PreparedBatch]:
    """The job's fetch, decode and normalisation of ``items``: ``batch.pixels`` is the model's input (e.g.
    ``float32[N, 3, H, W]``) for the rows whose ``batch.errors`` entry is None."""
    settings = WorkerSettings(package=package, device="cpu", batch_size=DECODE_BATCH, top_k=1,
                              fetch_threads=FETCH_THREADS, s3_endpoint_url=s3_endpoint_url)
    preparer = BatchPreparer(settings)
    for units in batch_units(items, DECODE_BATCH):
        yield preparer.prepare(units)


def decoded_rows(batch: PreparedBatch) -> list[Optional[int]]:
    """True labels of the rows that decoded, in the order of ``batch.pixels``."""
    return [label for label, error in zip(batch.true_labels, batch.errors) if error is None]


def compare_on_held_out(reference: Predict, candidate: Predict, items: Sequence[WorkItem], package: ModelPackage,
                        s3_endpoint_url: Optional[str]) -> tuple[Agreement, int]:
    """Both predictors on ``items`` decoded as the job decodes them for ``package``: their :class:`Agreement` and how
    many of the items could not be decoded (passed over). Used by ``quantize`` (FP32 against INT8) and ``add-onnx``
    (MXNet against its ONNX twin)."""
    counter = AgreementCounter()
    skipped = 0
    for batch in decoded_batches(items, package, s3_endpoint_url):
        skipped += sum(error is not None for error in batch.errors)
        if len(batch.pixels):
            counter.add(reference(batch.pixels), candidate(batch.pixels), decoded_rows(batch))
    return counter.result(), skipped


def _classifier_nodes(model) -> list[str]:
    """Names of the Gemm/MatMul nodes that produce the graph's outputs (through Softmax, Flatten, Reshape)."""
    producers = {output: node for node in model.graph.node for output in node.output}
    found = []
    for graph_output in model.graph.output:
        node = producers.get(graph_output.name)
        while node is not None and node.op_type in PASS_THROUGH_OPS:
            node = producers.get(node.input[0])
        if node is not None and node.op_type in CLASSIFIER_OPS:
            found.append(node.name)
    return found


def quantize_onnx(fp32_path: str, int8_path: str, calibration: np.ndarray, input_name: str) -> list[str]:
    """Write the static INT8 (QDQ) model of ``fp32_path`` calibrated on ``calibration`` (the model's input, e.g.
    ``float32[N, 3, H, W]``); return the names of the nodes kept in float32."""
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Calibration(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(calibration), DECODE_BATCH))

        def get_next(self):
            first = next(self.batches, None)
            return None if first is None else {input_name: calibration[first:first + DECODE_BATCH]}

    scratch = os.path.dirname(int8_path)
    model = onnx.load(fp32_path)
    # MXNet's exporter leaves convolution and pooling nodes unnamed; the quantizer addresses nodes by name.
    for position, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type.lower()}_{position}"
    named_path = os.path.join(scratch, "named.onnx")
    onnx.save(model, named_path)
    # Shape inference and ONNX Runtime's basic optimisations (batch norms folded into convolutions) first, as ONNX
    # Runtime's documentation asks: the quantizer then sees the graph the runtime will run.
    prepared_path = os.path.join(scratch, "prepared.onnx")
    quant_pre_process(named_path, prepared_path)
    kept_in_float32 = _classifier_nodes(onnx.load(prepared_path))
    quantize_static(
        prepared_path, int8_path, Calibration(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=kept_in_float32)
    return kept_in_float32


def quantize_package(package_uri: str, out_dir: str, *, calibration_inputs: Sequence[str] = (),
                     calibration_manifest: Optional[str] = None,
                     calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                     held_out_images: int = DEFAULT_HELD_OUT_IMAGES,
                     min_agreement: float = DEFAULT_MIN_AGREEMENT,
                     s3_endpoint_url: Optional[str] = None) -> QuantizeResult:
    """Make the INT8 ``onnx`` package of the FP32 package at ``package_uri`` in the local directory ``out_dir``.

    Raises :class:`AgreementTooLow` (nothing written) when the top-1 agreement on the held-out images is below
    ``min_agreement``; ``ValueError`` (or its subclass :class:`ModelPackageError`) for bad arguments or too few images.
    """
    problems = []
    if calibration_images < 1:
        problems.append(f"--calibration-images must be a positive integer; got {calibration_images}")
    if held_out_images < MIN_HELD_OUT_IMAGES:
        problems.append(f"--held-out-images must be at least {MIN_HELD_OUT_IMAGES} (one disagreement must not weigh "
                        f"more than a percentage point); got {held_out_images}")
    if not 0.0 <= min_agreement <= 1.0:
        problems.append(f"--min-agreement must be between 0 and 1; got {min_agreement}")
    if bool(calibration_inputs) == bool(calibration_manifest):
        problems.append("give the calibration images as --calibration URI (repeatable) or as --calibration-manifest "
                        "URI, not both and not neither")
    if "://" in out_dir:
        problems.append(f"--out must be a local directory path (upload the package afterwards); got {out_dir}")
    elif not is_s3(package_uri) and os.path.realpath(local_path(package_uri)) == os.path.realpath(out_dir):
        problems.append(f"--out must not be the FP32 package's own directory ({package_uri}): the INT8 package's "
                        "model.json would replace its")
    if problems:
        raise ValueError("invalid arguments:\n  - " + "\n  - ".join(problems))
    storage = Storage(s3_endpoint_url)
    source = read_package(package_uri, storage)
    if source.provenance.get("quantization"):
        made_from = source.provenance["quantization"].get("source_package", {}).get("uri", "its source")
        raise ModelPackageError(f"--package {package_uri} is already an INT8 package; give the FP32 package it was "
                                f"made from ({made_from})")
    listing = list_inputs(inputs=calibration_inputs, manifest=calibration_manifest, storage=storage,
                          records_per_item=1)
    calibration_items, held_out_items = split_images(listing.items, calibration_images, held_out_images)
    available = len(calibration_items) + len(held_out_items)
    if len(held_out_items) < MIN_HELD_OUT_IMAGES:
        raise ValueError(
            f"the calibration inputs hold {available} images; {calibration_images} calibrate and at least "
            f"{MIN_HELD_OUT_IMAGES} others must measure the agreement: give more images or fewer "
            f"--calibration-images")

    skipped = listing.skipped + sum(item.kind not in (KIND_IMAGE, KIND_CIFAR) for item in listing.items)
    calibration_batches = list(decoded_batches(calibration_items, source, s3_endpoint_url))
    skipped += sum(error is not None for batch in calibration_batches for error in batch.errors)
    calibration = np.concatenate([batch.pixels for batch in calibration_batches])
    if not len(calibration):
        raise ValueError("none of the calibration images could be decoded")

    scratch = tempfile.mkdtemp(prefix="quantize-")
    try:
        source_dir = local_copy(source, storage, scratch)
        local_source = ModelPackage(**{**source.__dict__, "uri": source_dir})  # MXNet and ORT open local paths only
        if source.format == "mxnet":
            fp32_package = read_package(
                os.path.dirname(export_onnx(local_source, os.path.join(scratch, "fp32-onnx"))), Storage())
        else:
            fp32_package = local_source
        int8_dir = os.path.join(scratch, "int8")
        os.makedirs(int8_dir)
        kept_in_float32 = quantize_onnx(os.path.join(fp32_package.uri, fp32_package.files["onnx"]),
                                        os.path.join(int8_dir, "model.onnx"), calibration, fp32_package.input_name)
        int8_package = ModelPackage(**{**fp32_package.__dict__, "uri": int8_dir, "files": {"onnx": "model.onnx"}})

        # The reference is the package as the user has it (MXNet runs an mxnet package), through the job's predictor.
        fp32_predict = load_predictor(source, source_dir, Device("cpu"))
        int8_predict = load_predictor(int8_package, int8_dir, Device("cpu"))
        agreement, passed_over = compare_on_held_out(fp32_predict, int8_predict, held_out_items, source,
                                                     s3_endpoint_url)
        skipped += passed_over
        if agreement.images < MIN_HELD_OUT_IMAGES:
            raise ValueError(f"only {agreement.images} held-out images could be decoded; at least "
                             f"{MIN_HELD_OUT_IMAGES} must measure the agreement")
        if agreement.top1 < min_agreement:
            raise AgreementTooLow(
                f"the INT8 model was not written to {out_dir}: {agreement.describe()}, below --min-agreement "
                f"{min_agreement:.2%}. More calibration images that look like the inputs the job will classify "
                f"(--calibration-images, now {len(calibration)}) can help; or keep the FP32 package")

        os.makedirs(out_dir, exist_ok=True)
        shutil.copyfile(os.path.join(int8_dir, "model.onnx"), os.path.join(out_dir, "model.onnx"))
        calibration_source = ({"manifest": calibration_manifest} if calibration_manifest
                              else {"inputs": list(calibration_inputs)})
        from onnxruntime import __version__ as onnxruntime_version

        write_manifest(
            out_dir, name=f"{source.name}-int8", format="onnx", files={"onnx": "model.onnx"},
            input_name=fp32_package.input_name, **source.manifest_fields(),
            provenance={
                **source.provenance,
                "quantization": {
                    "source_package": {"uri": package_uri, "name": source.name, "format": source.format},
                    "method": METHOD + ("; the final classifier in float32" if kept_in_float32 else
                                        "; every layer quantized (no final Gemm or MatMul classifier was found)"),
                    "kept_in_float32": kept_in_float32,
                    "onnxruntime": onnxruntime_version,
                    "calibration": {**calibration_source, "images": int(len(calibration)), "split_seed": SPLIT_SEED},
                    "agreement": {**agreement.as_provenance(min_agreement),
                                  "measured_on_cpu_int8_instructions": int8_instructions()},
                },
            },
        )
        return QuantizeResult(out_dir, agreement, int(len(calibration)), skipped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
