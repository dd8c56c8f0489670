"""What runs inside a Python worker for one Spark task: fetch, decode, predict, and Arrow output. No driver code here.

Per task: the task's work items arrive as Arrow rows; they are cut into batches of ``batch_size`` images; a producer
thread fetches each batch's objects concurrently (a thread pool and an S3 client shared by the whole worker process)
and decodes them into one ``float32[N, 3, H, W]`` array while the main thread runs the model on the previous batch.
Every input yields exactly one output row; an input that cannot be read or decoded yields a row with ``status = error``.
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa

from job.decode import DecodeError, Normalizer, decode_cifar_records, decode_image
from job.model_package import ModelPackage
from job.predictor import cached_predictor
from job.sources import CIFAR_RECORD_BYTES, KIND_CIFAR, KIND_IMAGE, WorkItem
from job.storage import ObjectNotFound, Storage

STATUS_OK = "ok"
STATUS_ERROR = "error"
TOP_K_TYPE = pa.list_(pa.struct([("label", pa.int32()), ("probability", pa.float32())]))
OUTPUT_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("index", pa.int64()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("label", pa.int32()),
    ("label_name", pa.string()),
    ("probability", pa.float32()),
    ("top_k", TOP_K_TYPE),
    ("true_label", pa.int32()),
])
SPARK_OUTPUT_SCHEMA = (
    "source string, index bigint, status string, error string, label int, label_name string, probability float, "
    "top_k array<struct<label:int,probability:float>>, true_label int"
)
# Batches prepared ahead of the model: two keep the model busy while bounding memory to three batches per worker.
PREFETCH_BATCHES = 2


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a task needs besides its items; built once on the driver and shipped with the function."""

    package: ModelPackage
    device: str
    batch_size: int
    top_k: int
    fetch_threads: int
    s3_endpoint_url: Optional[str]
    kill_worker_once_marker: Optional[str] = None
    kill_worker_after_images: int = 0


@dataclass
class PreparedBatch:
    """One batch's rows: ``pixels`` holds the images of the rows whose ``errors`` entry is None, in row order."""

    sources: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    true_labels: list[Optional[int]] = field(default_factory=list)
    errors: list[Optional[str]] = field(default_factory=list)
    pixels: Optional[np.ndarray] = None

    def add(self, source: str, indices: range, *, error: Optional[str] = None,
            true_labels: Optional[list[int]] = None) -> None:
        """Rows for ``indices`` of ``source``: failed with ``error``, or to be filled by the model in order."""
        self.sources.extend([source] * len(indices))
        self.indices.extend(indices)
        self.true_labels.extend(true_labels if true_labels is not None else [None] * len(indices))
        self.errors.extend([error] * len(indices))


@dataclass(frozen=True)
class _Unit:
    """A slice of a work item that falls into one batch."""

    item: WorkItem
    start: int
    count: int


_fetch_pool: Optional[ThreadPoolExecutor] = None
_fetch_pool_lock = threading.Lock()


def fetch_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per worker process, reused by every task the worker runs."""
    global _fetch_pool
    with _fetch_pool_lock:
        if _fetch_pool is None:
            _fetch_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch")
        return _fetch_pool


def batch_units(items: Iterable[WorkItem], batch_size: int) -> Iterator[list[_Unit]]:
    """Cut items into batches of ``batch_size`` images; CIFAR ranges are split where a batch ends. No padding."""
    batch: list[_Unit] = []
    filled = 0
    for item in items:
        start, remaining = item.start, item.count
        while remaining:
            take = min(remaining, batch_size - filled)
            batch.append(_Unit(item, start, take))
            filled += take
            start += take
            remaining -= take
            if filled == batch_size:
                yield batch
                batch, filled = [], 0
    if batch:
        yield batch


def _fetch(unit: _Unit, storage: Storage) -> bytes | Exception:
    try:
        if unit.item.kind == KIND_CIFAR:
            return storage.read(unit.item.source, unit.start * CIFAR_RECORD_BYTES, unit.count * CIFAR_RECORD_BYTES)
        return storage.read(unit.item.source)
    except Exception as error:  # recorded on the input's row; the rest of the batch goes on
        return error


def _fetch_error_message(error: Exception) -> str:
    if isinstance(error, ObjectNotFound):
        return f"not_found: {error}"
    return f"fetch_failed: {type(error).__name__}: {error}"


class BatchPreparer:
    """Fetch and decode batches; timings accumulate in ``seconds``."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.storage = Storage(settings.s3_endpoint_url)
        self.pool = fetch_pool(settings.fetch_threads)
        self.normalize = Normalizer(settings.package.mean, settings.package.std)
        self.seconds = {"fetch": 0.0, "decode": 0.0}

    def prepare(self, units: list[_Unit]) -> PreparedBatch:
        started = time.perf_counter()
        payloads = list(self.pool.map(lambda unit: _fetch(unit, self.storage), units))
        decoding = time.perf_counter()
        self.seconds["fetch"] += decoding - started
        height, width = self.settings.package.height, self.settings.package.width
        image_count = sum(unit.count for unit in units)
        images = np.empty((image_count, height, width, 3), dtype=np.uint8)
        batch = PreparedBatch()
        filled = 0
        for unit, payload in zip(units, payloads):
            item = unit.item
            records = range(unit.start, unit.start + unit.count)  # (0,) for anything but a CIFAR range
            if item.kind not in (KIND_IMAGE, KIND_CIFAR):
                batch.add(item.source, records, error=item.error)
            elif isinstance(payload, Exception):
                batch.add(item.source, records, error=_fetch_error_message(payload))
            elif item.kind == KIND_CIFAR:
                if len(payload) != unit.count * CIFAR_RECORD_BYTES:
                    batch.add(item.source, records, error=(
                        f"fetch_failed: records {unit.start}-{unit.start + unit.count - 1} should be "
                        f"{unit.count * CIFAR_RECORD_BYTES} bytes, got {len(payload)}: the object changed after listing"))
                    continue
                pixels, labels = decode_cifar_records(payload, height, width)
                images[filled:filled + len(pixels)] = pixels
                filled += len(pixels)
                batch.add(item.source, records, true_labels=labels.tolist())
            else:
                try:
                    images[filled] = decode_image(payload, height, width)
                except DecodeError as error:
                    batch.add(item.source, records, error=str(error))
                    continue
                except Exception as error:  # a decoder fault on one input must not fail the task's other inputs
                    batch.add(item.source, records, error=f"corrupt_image: {type(error).__name__}: {error}")
                    continue
                filled += 1
                batch.add(item.source, records)
        batch.pixels = self.normalize(images[:filled])
        self.seconds["decode"] += time.perf_counter() - decoding
        return batch


def prefetched(batches: Iterator[list[_Unit]], preparer: BatchPreparer) -> Iterator[PreparedBatch]:
    """Prepare batches in a background thread, ``PREFETCH_BATCHES`` ahead of the consumer.

    OpenCV, zlib, socket reads and the model all release the GIL, so preparing the next batch overlaps prediction.
    """
    ready: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
    finished = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for units in batches:
                if stop.is_set():
                    return
                ready.put(preparer.prepare(units))
            ready.put(finished)
        except BaseException as error:  # handed to the consumer, which re-raises it in the task
            ready.put(error)

    producer = threading.Thread(target=produce, name="prepare-batches", daemon=True)
    producer.start()
    try:
        while True:
            batch = ready.get()
            if batch is finished:
                return
            if isinstance(batch, BaseException):
                raise batch
            yield batch
    finally:
        stop.set()
        while producer.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                producer.join(timeout=0.05)


def to_record_batch(batch: PreparedBatch, probabilities: Optional[np.ndarray], labels: tuple[str, ...],
                    top_k: int) -> pa.RecordBatch:
    """Arrow rows for one batch; ``probabilities`` is ``float32[images, classes]`` for the rows without error."""
    rows = len(batch.sources)
    ok = np.array([error is None for error in batch.errors], dtype=bool)
    k = min(top_k, len(labels))
    best_labels = np.zeros((rows, k), dtype=np.int32)
    best_probabilities = np.zeros((rows, k), dtype=np.float32)
    if probabilities is not None and len(probabilities):
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].astype(np.int32)
        best_labels[ok] = order
        best_probabilities[ok] = np.take_along_axis(probabilities, order, axis=1)
    label_names = np.asarray(labels, dtype=object)
    offsets = np.arange(0, (rows + 1) * k, k, dtype=np.int32)
    top_k_values = pa.StructArray.from_arrays(
        [pa.array(best_labels.ravel()), pa.array(best_probabilities.ravel())], names=["label", "probability"])
    missing = pa.array(~ok)
    return pa.RecordBatch.from_arrays([
        pa.array(batch.sources, pa.string()),
        pa.array(batch.indices, pa.int64()),
        pa.array(np.where(ok, STATUS_OK, STATUS_ERROR).tolist(), pa.string()),
        pa.array(batch.errors, pa.string()),
        pa.array(best_labels[:, 0], pa.int32(), mask=~ok),
        pa.array(label_names[best_labels[:, 0]].tolist(), pa.string(), mask=~ok),
        pa.array(best_probabilities[:, 0], pa.float32(), mask=~ok),
        pa.ListArray.from_arrays(pa.array(offsets), top_k_values, type=TOP_K_TYPE, mask=missing),
        pa.array(batch.true_labels, pa.int32()),
    ], schema=OUTPUT_SCHEMA)


def _kill_worker_once(settings: WorkerSettings, images_done: int) -> None:
    """Test-only fault injection: the first worker past the threshold dies as a crashed Python worker would."""
    if not settings.kill_worker_once_marker or images_done < settings.kill_worker_after_images:
        return
    try:
        descriptor = os.open(settings.kill_worker_once_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(descriptor)
    os._exit(17)


def classify_items(items: list[WorkItem], settings: WorkerSettings, stats: dict) -> Iterator[pa.RecordBatch]:
    """Classify one task's items; ``stats`` receives seconds and counts for the run summary."""
    started = time.perf_counter()
    predict, device, loaded_now = cached_predictor(settings.package, settings.device, Storage(settings.s3_endpoint_url))
    stats["model_load_s"] = time.perf_counter() - started if loaded_now else 0.0
    stats[f"images_on_{device.kind}"] = 0
    if device.note:
        stats["device_notes"] = {device.note: 1}
    preparer = BatchPreparer(settings)
    predict_seconds = output_seconds = 0.0
    images_done = 0
    for batch in prefetched(batch_units(items, settings.batch_size), preparer):
        predicting = time.perf_counter()
        probabilities = predict(batch.pixels) if len(batch.pixels) else None
        converting = time.perf_counter()
        record_batch = to_record_batch(batch, probabilities, settings.package.labels, settings.top_k)
        output_seconds += time.perf_counter() - converting
        predict_seconds += converting - predicting
        stats[f"images_on_{device.kind}"] += len(batch.pixels)
        images_done += len(batch.sources)
        yield record_batch
        _kill_worker_once(settings, images_done)
    stats.update(fetch_s=preparer.seconds["fetch"], decode_s=preparer.seconds["decode"], predict_s=predict_seconds,
                 output_s=output_seconds,
                 # ru_maxrss is in KiB on Linux: the largest this worker process has been, model included.
                 peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def items_from_arrow(record_batches: Iterable[pa.RecordBatch]) -> list[WorkItem]:
    return [WorkItem(**row) for record_batch in record_batches for row in record_batch.to_pylist()]
