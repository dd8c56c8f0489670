"""What runs inside a Python worker for one Spark task: fetch, decode, predict, and Arrow output. No driver code here.

Per task: the task's work items arrive as Arrow rows; they are cut into batches of ``batch_size`` images; each batch's
objects are fetched concurrently (a thread pool and an S3 client shared by the whole worker process) and decoded into
one array of the model's input (e.g. ``float32[N, 3, H, W]``). With the model on the CPU, the task's own thread
decodes a batch and then runs the model on it, while the next batch's objects are fetched (:func:`fetched_ahead`:
decoding and the model take turns on the cores they share); with it on a GPU, a producer thread fetches and decodes
ahead while the main thread runs the model (:func:`prefetched`).
Every input yields exactly one output row; an input that cannot be read or decoded yields a row with ``status = error``.

Memory: an object is read only when its size (from the response headers) is at most ``max_object_bytes``; the bytes
of fetched objects that a worker holds at once are at most ``max_bytes_in_flight`` (a byte budget reserved before an
object's body is read and released once it is decoded); the decoded arrays are ``batch_size`` images each, for at
most two batches on the CPU (being predicted, being prepared) and ``PREFETCH_BATCHES + 2`` on a GPU (queued too).
"""

from __future__ import annotations

import os
import queue
import resource
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from job.config import DEFAULT_MAX_BYTES_IN_FLIGHT, DEFAULT_MAX_OBJECT_BYTES
from job.decode import DecodeError, Normalizer, decode_cifar_records, decode_image
from job.package_format import RUNTIME_OF_FORMAT, ModelPackage, ModelPackageError
from job.predictor import cached_predictor
from job.sources import CIFAR_RECORD_BYTES, KIND_CIFAR, KIND_IMAGE, WorkItem
from job.storage import ObjectChanged, ObjectNotFound, ObjectTooLarge, Storage

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
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT
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


@dataclass
class _Fetching:
    """A batch whose objects are being fetched: ``fetched`` receives ``(position, bytes or exception, reserved)`` for
    each unit position in ``readable``."""

    units: list[_Unit]
    readable: list[int]
    fetched: queue.Queue = field(default_factory=queue.Queue)


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


class ByteBudget:
    """Bytes of fetched objects one worker holds at once: ``acquire`` waits until enough has been ``release``d.

    A reservation larger than ``limit`` is granted only when nothing else is held, so it cannot wait for ever. The
    job keeps ``max_object_bytes`` within the limit, so only a CIFAR-10 range of a huge batch size can exceed it.
    ``peak`` is the most ever held, for tests and the run summary.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._changed = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.held == 0 or self.held + size <= self.limit)
            self.held += size
            self.peak = max(self.peak, self.held)

    def release(self, size: int) -> None:
        if size:
            with self._changed:
                self.held -= size
                self._changed.notify_all()


def model_input(package: ModelPackage) -> Normalizer:
    """RGB ``uint8[N, H, W, 3]`` -> ``package``'s input (channel order, layout, dtype, mean and std)."""
    preprocessing = package.preprocessing
    return Normalizer(package.mean, package.std, channel_order=preprocessing.channel_order, layout=preprocessing.layout,
                      input_dtype=preprocessing.input_dtype)


def _fetch_error_message(error: Exception) -> str:
    if isinstance(error, ObjectNotFound):
        return f"not_found: {error}"
    if isinstance(error, ObjectTooLarge):
        return f"too_large: {error}"
    if isinstance(error, ObjectChanged):
        return f"changed_since_upload: {error}"
    return f"fetch_failed: {type(error).__name__}: {error}"


class BatchPreparer:
    """Fetch and decode batches; timings accumulate in ``seconds``."""

    def __init__(self, settings: WorkerSettings):
        self.settings = settings
        self.storage = Storage(settings.s3_endpoint_url)
        self.pool = fetch_pool(settings.fetch_threads)
        self.normalize = model_input(settings.package)
        self.budget = ByteBudget(settings.max_bytes_in_flight)
        preprocessing = settings.package.preprocessing
        self.resize = (preprocessing.resize, preprocessing.crop_fraction, preprocessing.interpolation)
        self.seconds = {"fetch": 0.0, "decode": 0.0}

    def _fetch(self, position: int, unit: _Unit, fetched: queue.Queue) -> None:
        """Read one unit's bytes into ``fetched`` as ``(position, bytes or the exception, bytes reserved)``."""
        reserved = 0

        def reserve(size: int) -> None:
            nonlocal reserved
            self.budget.acquire(size)
            reserved = size

        item = unit.item
        try:
            if item.kind == KIND_CIFAR:
                payload = self.storage.read(
                    item.source, unit.start * CIFAR_RECORD_BYTES, unit.count * CIFAR_RECORD_BYTES,
                    etag=item.etag, version_id=item.version_id, reserve=reserve)
            else:
                payload = self.storage.read(item.source, etag=item.etag, version_id=item.version_id,
                                            max_bytes=self.settings.max_object_bytes, reserve=reserve)
        except Exception as error:  # recorded on the input's row; the rest of the batch goes on
            self.budget.release(reserved)
            fetched.put((position, error, 0))
            return
        fetched.put((position, payload, reserved))

    def _decode_unit(self, unit: _Unit, payload: bytes, images: np.ndarray) -> tuple[Optional[str], Optional[list]]:
        """Decode one unit's bytes into ``images`` (``uint8[unit.count, H, W, 3]``): ``(error, true labels)``."""
        height, width = self.settings.package.height, self.settings.package.width
        if unit.item.kind == KIND_CIFAR:
            if len(payload) != unit.count * CIFAR_RECORD_BYTES:
                return (f"fetch_failed: records {unit.start}-{unit.start + unit.count - 1} should be "
                        f"{unit.count * CIFAR_RECORD_BYTES} bytes, got {len(payload)}: the object changed after "
                        "listing"), None
            # Straight into the batch buffer, as below: no per-unit intermediate array.
            _, labels = decode_cifar_records(payload, height, width, *self.resize, out=images)
            return None, labels.tolist()
        try:
            decode_image(payload, height, width, *self.resize, out=images[0])
        except DecodeError as error:
            return str(error), None
        except Exception as error:  # a decoder fault on one input must not fail the task's other inputs
            return f"corrupt_image: {type(error).__name__}: {error}", None
        return None, None

    def submit(self, units: list[_Unit]) -> _Fetching:
        """Start fetching the units' objects in the worker's fetch pool; :meth:`complete` (or :meth:`discard`) takes
        them."""
        fetching = _Fetching(units, [position for position, unit in enumerate(units)
                                     if unit.item.kind in (KIND_IMAGE, KIND_CIFAR) and unit.item.error is None])
        for position in fetching.readable:
            self.pool.submit(self._fetch, position, units[position], fetching.fetched)
        return fetching

    def discard(self, fetching: _Fetching) -> None:
        """Wait for a submitted batch's objects and drop them undecoded, releasing their bytes (a task that ends
        before the consumer takes the batch leaves no fetch holding the budget)."""
        for _ in fetching.readable:
            _, payload, reserved = fetching.fetched.get()
            payload = None  # noqa: F841 (the bytes go before their budget is released)
            self.budget.release(reserved)

    def prepare(self, units: list[_Unit]) -> PreparedBatch:
        return self.complete(self.submit(units))

    def complete(self, fetching: _Fetching) -> PreparedBatch:
        """Decode each of a submitted batch's objects as soon as it arrives (then drop its bytes), so the bytes held
        never pass the budget; rows keep the units' order."""
        units, fetched, readable = fetching.units, fetching.fetched, fetching.readable
        height, width = self.settings.package.height, self.settings.package.width
        offsets = np.cumsum([0] + [unit.count for unit in units])
        images = np.empty((int(offsets[-1]), height, width, 3), dtype=np.uint8)
        errors: list[Optional[str]] = [unit.item.error for unit in units]
        true_labels: list[Optional[list]] = [None] * len(units)
        for _ in readable:
            waiting = time.perf_counter()
            position, payload, reserved = fetched.get()
            decoding = time.perf_counter()
            self.seconds["fetch"] += decoding - waiting
            try:
                if isinstance(payload, Exception):
                    errors[position] = _fetch_error_message(payload)
                else:
                    errors[position], true_labels[position] = self._decode_unit(
                        units[position], payload, images[offsets[position]:offsets[position + 1]])
            finally:
                payload = None  # the bytes go before their budget is released
                self.budget.release(reserved)
            self.seconds["decode"] += time.perf_counter() - decoding
        normalizing = time.perf_counter()
        batch = PreparedBatch()
        decoded = np.zeros(len(images), dtype=bool)
        for position, unit in enumerate(units):
            batch.add(unit.item.source, range(unit.start, unit.start + unit.count), error=errors[position],
                      true_labels=true_labels[position])
            decoded[offsets[position]:offsets[position + 1]] = errors[position] is None
        batch.pixels = self.normalize(images if decoded.all() else images[decoded])
        self.seconds["decode"] += time.perf_counter() - normalizing
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


def fetched_ahead(batches: Iterator[list[_Unit]], preparer: BatchPreparer) -> Iterator[PreparedBatch]:
    """Prepare batches in the consumer's own thread, the next batch's objects fetched while the consumer works.

    For a model on the CPU. Decoding competes with the model for the same cores: a decoding thread beside the model
    of every worker (:func:`prefetched`) had four busy threads share two cores, and both decoding and the model ran
    slower than they do in turn (``make bench`` measures the job against decoding and the model alone). Fetching
    stays concurrent: it waits on the network, not the CPU. One batch is fetched while the consumer predicts the one
    before, and its objects are decoded as they arrive, so the bytes held stay within the budget, as in
    :meth:`BatchPreparer.prepare`.
    """
    pending = iter(batches)
    fetching = None
    try:
        units = next(pending, None)
        fetching = preparer.submit(units) if units is not None else None
        while fetching is not None:
            # Taken before completing it: a batch whose completion failed part-way is not one to discard.
            current, fetching = fetching, None
            batch = preparer.complete(current)
            # The next batch's fetches start only now that this batch's have all arrived: a reservation of the next
            # batch can then never keep one of this batch's objects waiting for the budget.
            units = next(pending, None)
            fetching = preparer.submit(units) if units is not None else None
            yield batch
    finally:
        if fetching is not None:  # the task ended early: its fetches must not keep the budget
            preparer.discard(fetching)


def top_k_labels(probabilities: np.ndarray, k: int) -> np.ndarray:
    """``int64[N, k]``: the ``k`` best labels of each row, best first, ties by label number.

    ``argpartition`` finds the ``k`` best in linear time; only those are sorted (a full sort of 100,000 scores per
    image made output the bottleneck). Among scores tied at the ``k``-th place, which ones are kept is unspecified.
    """
    classes = probabilities.shape[1]
    if k < classes:
        best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    else:
        best = np.broadcast_to(np.arange(classes), probabilities.shape)
    scores = np.take_along_axis(probabilities, best, axis=1)
    return np.take_along_axis(best, np.lexsort((best, -scores), axis=1), axis=1)


def to_record_batch(batch: PreparedBatch, probabilities: Optional[np.ndarray], labels: tuple[str, ...],
                    top_k: int) -> pa.RecordBatch:
    """Arrow rows for one batch; ``probabilities`` is ``float32[images, classes]`` for the rows without error.

    A row whose scores are not all finite (NaN or infinite: an overflowing or broken model) becomes an error row
    ``bad_scores``, never an ``ok`` row of class 0.
    """
    rows = len(batch.sources)
    errors = list(batch.errors)
    ok = np.array([error is None for error in errors], dtype=bool)
    k = min(top_k, len(labels))
    best_labels = np.zeros((rows, k), dtype=np.int32)
    best_probabilities = np.zeros((rows, k), dtype=np.float32)
    if probabilities is not None and len(probabilities):
        predicted_rows = np.flatnonzero(ok)
        finite = np.isfinite(probabilities).all(axis=1)
        for row, scores in zip(predicted_rows[~finite], probabilities[~finite]):
            errors[row] = (f"bad_scores: the model returned {np.isnan(scores).sum()} NaN and "
                           f"{np.isinf(scores).sum()} infinite scores of {len(scores)}")
        ok[predicted_rows[~finite]] = False
        valid = probabilities[finite]
        order = top_k_labels(valid, k).astype(np.int32)
        best_labels[predicted_rows[finite]] = order
        best_probabilities[predicted_rows[finite]] = np.take_along_axis(valid, order, axis=1)
    label_names = np.asarray(labels, dtype=object)
    offsets = np.arange(0, (rows + 1) * k, k, dtype=np.int32)
    top_k_values = pa.StructArray.from_arrays(
        [pa.array(best_labels.ravel()), pa.array(best_probabilities.ravel())], names=["label", "probability"])
    missing = pa.array(~ok)
    return pa.RecordBatch.from_arrays([
        pa.array(batch.sources, pa.string()),
        pa.array(batch.indices, pa.int64()),
        pa.array(np.where(ok, STATUS_OK, STATUS_ERROR).tolist(), pa.string()),
        pa.array(errors, pa.string()),
        pa.array(best_labels[:, 0], pa.int32(), mask=~ok),
        pa.array(label_names[best_labels[:, 0]].tolist(), pa.string(), mask=~ok),
        pa.array(best_probabilities[:, 0], pa.float32(), mask=~ok),
        pa.ListArray.from_arrays(pa.array(offsets), top_k_values, type=TOP_K_TYPE, mask=missing),
        pa.array(batch.true_labels, pa.int32()),
    ], schema=OUTPUT_SCHEMA)


def _unclassified(items: list[WorkItem], batch_size: int, error: str, labels: tuple[str, ...],
                  top_k: int) -> Iterator[pa.RecordBatch]:
    """One error row per input, for a task whose model could not be used: nothing is lost, the summary counts them."""
    for units in batch_units(items, batch_size):
        batch = PreparedBatch()
        for unit in units:
            batch.add(unit.item.source, range(unit.start, unit.start + unit.count), error=unit.item.error or error)
        yield to_record_batch(batch, None, labels, top_k)


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
    try:
        predict, device, loaded_now = cached_predictor(settings.package, settings.device,
                                                       Storage(settings.s3_endpoint_url))
    except ModelPackageError as error:
        # The same for every task (a package refused, replaced mid-run, or with the wrong output): rows, not a task
        # failure that Spark would retry 4 times and then fail the step without a summary.
        stats["model_errors"] = {f"{error.reason}: {error}": 1}
        yield from _unclassified(items, settings.batch_size, f"{error.reason}: {error}", settings.package.labels,
                                 settings.top_k)
        return
    stats["model_load_s"] = time.perf_counter() - started if loaded_now else 0.0
    if loaded_now:  # per worker process, for the summary's max and median (model_load_s is summed over tasks)
        stats["model_load_by_worker"] = {f"{socket.gethostname()}:{os.getpid()}": stats["model_load_s"]}
    stats[f"images_on_{device.kind}"] = 0
    if device.note:
        stats["device_notes"] = {device.note: 1}
    preparer = BatchPreparer(settings)
    predict_seconds = output_seconds = 0.0
    images_done = 0
    # On a GPU the model leaves the cores free, so decoding runs beside it; on the CPU they take turns.
    ahead = prefetched if device.kind == "gpu" else fetched_ahead
    for batch in ahead(batch_units(items, settings.batch_size), preparer):
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
    # The runtime that ran them: the format of the package this worker loaded (an mxnet package's twin is onnx).
    stats["images_by_runtime"] = {RUNTIME_OF_FORMAT[settings.package.format]: stats[f"images_on_{device.kind}"]}
    stats.update(fetch_s=preparer.seconds["fetch"], decode_s=preparer.seconds["decode"], predict_s=predict_seconds,
                 output_s=output_seconds, peak_fetch_bytes_in_flight=preparer.budget.peak,
                 # ru_maxrss is in KiB on Linux: the largest this worker process has been, model included.
                 peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def count_rows(record_batch: pa.RecordBatch, counts: dict) -> None:
    """Add one output batch (``OUTPUT_SCHEMA``) to ``counts``, what summary.json reports: ``total``, ``ok``,
    ``graded`` (ok rows with a true label), ``correct`` (of those, top-1 equal to it), ``reasons`` (error rows by the
    error's text before its first ``:``) and ``per_class`` (ok rows by ``label_name``). Vectorised: error rows, the
    only ones touched one by one, are the rare ones."""
    ok = pc.fill_null(pc.equal(record_batch.column("status"), STATUS_OK), False)
    ok_rows = pc.sum(ok).as_py() or 0
    graded = pc.and_(ok, pc.is_valid(record_batch.column("true_label")))
    correct = pc.and_(graded, pc.fill_null(pc.equal(record_batch.column("label"), record_batch.column("true_label")),
                                           False))
    counts["total"] = counts.get("total", 0) + record_batch.num_rows
    counts["ok"] = counts.get("ok", 0) + ok_rows
    counts["graded"] = counts.get("graded", 0) + (pc.sum(graded).as_py() or 0)
    counts["correct"] = counts.get("correct", 0) + (pc.sum(correct).as_py() or 0)
    reasons = counts.setdefault("reasons", {})
    if ok_rows < record_batch.num_rows:
        for error in pc.filter(record_batch.column("error"), pc.invert(ok)).to_pylist():
            reason = None if error is None else error.split(":", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + 1
    per_class = counts.setdefault("per_class", {})
    if ok_rows:
        for entry in pc.value_counts(pc.filter(record_batch.column("label_name"), ok)).to_pylist():
            per_class[entry["values"]] = per_class.get(entry["values"], 0) + entry["counts"]


def items_from_arrow(record_batches: Iterable[pa.RecordBatch]) -> list[WorkItem]:
    return [WorkItem(**row) for record_batch in record_batches for row in record_batch.to_pylist()]
