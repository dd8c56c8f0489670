"""Turning ``--input``/``--manifest`` into work items, once, on the driver.

A work item is one image file, a range of records of a CIFAR-10 binary batch file, or an input already known to be bad
(kept so that it appears in the output as a failed row instead of disappearing). Items are then planned into Spark tasks
of balanced size.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Optional

from job.storage import ObjectNotFound, Storage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CIFAR_SUFFIX = ".bin"
CIFAR_LABEL_BYTES = 1
CIFAR_PIXEL_BYTES = 3 * 32 * 32
CIFAR_RECORD_BYTES = CIFAR_LABEL_BYTES + CIFAR_PIXEL_BYTES  # 3,073

KIND_IMAGE = "image"
KIND_CIFAR = "cifar"
KIND_INVALID = "invalid"
# A task of fewer images costs more in scheduling and a Python worker's start than its images take, and makes dynamic
# allocation ask for executors (and managed scaling for nodes) that arrive after the work is done: a 150-image batch
# is 2 tasks, not 150 on a cluster of 150 slots. The per-task cap (--max-images-per-task) still wins over this.
MIN_IMAGES_PER_TASK = 64
# Concurrent HEADs for the sizes of CIFAR-10 batches a manifest lists (one after another, 100,000 took tens of minutes).
MANIFEST_HEAD_THREADS = 16
# A manifest's "source" (what the run came from) is copied into summary.json only up to this size (JSON characters).
MAX_SOURCE_CHARS = 4096


@dataclass(frozen=True)
class WorkItem:
    """One unit of input. ``start``/``count`` are record numbers for CIFAR ranges, ``0``/``1`` otherwise.

    ``etag``/``version_id`` pin the version a manifest entry names: another version is an error row, never read.
    """

    source: str
    kind: str
    start: int = 0
    count: int = 1
    error: Optional[str] = None
    etag: Optional[str] = None
    version_id: Optional[str] = None


@dataclass(frozen=True)
class ManifestEntry:
    """One object a manifest lists, with the version it must still be (S3's ETag and/or version id), when given."""

    uri: str
    etag: Optional[str] = None
    version_id: Optional[str] = None


@dataclass(frozen=True)
class Listing:
    items: list[WorkItem]
    skipped: int  # objects under an --input prefix that are neither images nor CIFAR batches (e.g. _SUCCESS, README)
    # What the run came from, as its manifest's "source" object says (the trigger writes one); None without one.
    source: Optional[dict] = None

    @property
    def image_count(self) -> int:
        return sum(item.count for item in self.items)


class NoInputError(ValueError):
    """Nothing to classify: the job stops before any Spark work."""


def is_image(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)


def is_cifar_batch(uri: str) -> bool:
    return uri.lower().endswith(CIFAR_SUFFIX)


def cifar_items(uri: str, size: int, records_per_item: int, etag: Optional[str] = None,
                version_id: Optional[str] = None) -> list[WorkItem]:
    """Split a CIFAR-10 binary batch into record ranges, or one invalid item when its size is not whole records."""
    if size == 0 or size % CIFAR_RECORD_BYTES:
        return [WorkItem(uri, KIND_INVALID, error=(
            f"bad_cifar_size: {size} bytes is not a positive multiple of the {CIFAR_RECORD_BYTES}-byte CIFAR-10 record"))]
    records = size // CIFAR_RECORD_BYTES
    return [
        WorkItem(uri, KIND_CIFAR, start, min(records_per_item, records - start), etag=etag, version_id=version_id)
        for start in range(0, records, records_per_item)
    ]


def _unsupported(uri: str) -> WorkItem:
    return WorkItem(uri, KIND_INVALID, error=(
        f"unsupported_type: {uri} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a CIFAR-10 batch "
        f"({CIFAR_SUFFIX})"))


def _manifest_entry(entry: object) -> Optional[ManifestEntry]:
    """A manifest entry is a URI string, or ``{"uri": str, "etag": str, "version_id": str}`` (the last two optional);
    None when it is neither."""
    if isinstance(entry, str):
        return ManifestEntry(entry) if entry else None
    if not isinstance(entry, dict) or not set(entry) <= {"uri", "etag", "version_id"}:
        return None
    uri, etag, version_id = entry.get("uri"), entry.get("etag"), entry.get("version_id")
    if not isinstance(uri, str) or not uri or not all(value is None or (isinstance(value, str) and value)
                                                       for value in (etag, version_id)):
        return None
    if etag is not None and not etag.startswith('"'):
        etag = f'"{etag}"'  # S3 sends ETags quoted and compares IfMatch either way; one form for the output
    return ManifestEntry(uri, etag, version_id)


def read_manifest(uri: str, storage: Storage) -> list[ManifestEntry]:
    """A manifest's entries (see :func:`read_manifest_and_source`)."""
    return read_manifest_and_source(uri, storage)[0]


def read_manifest_and_source(uri: str, storage: Storage) -> tuple[list[ManifestEntry], Optional[dict]]:
    """A manifest is a JSON list of entries, or an object whose ``objects`` key holds that list (and may hold a
    ``source`` object: what the run came from, kept as it is when it is a JSON object of at most
    MAX_SOURCE_CHARS characters); an entry is an object URI, or ``{"uri": ..., "etag": ..., "version_id": ...}``
    pinning the version to read."""
    try:
        document = json.loads(storage.read(uri))
    except ObjectNotFound as error:
        raise NoInputError(f"--manifest {uri}: no such object") from error
    except ValueError as error:
        raise NoInputError(f"--manifest {uri} is not valid JSON: {error}") from error
    entries = document.get("objects") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise NoInputError(f'--manifest {uri}: expected a JSON list of object URIs or {{"objects": [...]}}; got '
                           f"{type(entries).__name__}")
    parsed = [_manifest_entry(entry) for entry in entries]
    bad = [position for position, entry in enumerate(parsed) if entry is None]
    if bad:
        raise NoInputError(
            f"--manifest {uri}: entries {bad[:10]}{' ...' if len(bad) > 10 else ''} are neither an object URI nor "
            f'{{"uri": str, "etag": str, "version_id": str}} (etag and version_id optional); '
            f"e.g. {entries[bad[0]]!r:.200}")
    source = document.get("source") if isinstance(document, dict) else None
    if not isinstance(source, dict) or len(json.dumps(source)) > MAX_SOURCE_CHARS:
        source = None
    return parsed, source


def _manifest_items(entries: list[ManifestEntry], storage: Storage, records_per_item: int) -> list[WorkItem]:
    """Work items for a manifest's entries, in order; the sizes of its CIFAR-10 batches come from concurrent HEADs."""
    def cifar_size(entry: ManifestEntry) -> Optional[int]:
        try:
            return storage.size(entry.uri)
        except ObjectNotFound:
            return None

    cifar = [entry for entry in entries if not is_image(entry.uri) and is_cifar_batch(entry.uri)]
    with ThreadPoolExecutor(max_workers=MANIFEST_HEAD_THREADS, thread_name_prefix="manifest-head") as pool:
        sizes = dict(zip((entry.uri for entry in cifar), pool.map(cifar_size, cifar)))
    items: list[WorkItem] = []
    for entry in entries:
        if is_image(entry.uri):
            items.append(WorkItem(entry.uri, KIND_IMAGE, etag=entry.etag, version_id=entry.version_id))
        elif is_cifar_batch(entry.uri):
            size = sizes[entry.uri]
            if size is None:
                items.append(WorkItem(entry.uri, KIND_INVALID, error=f"not_found: {entry.uri} does not exist"))
            else:
                items.extend(cifar_items(entry.uri, size, records_per_item, entry.etag, entry.version_id))
        else:
            items.append(_unsupported(entry.uri))
    return items


def _items_for_object(uri: str, size: int, records_per_item: int, etag: Optional[str] = None) -> list[WorkItem]:
    if is_image(uri):
        return [WorkItem(uri, KIND_IMAGE)]
    if is_cifar_batch(uri):
        # Pinned to the listed ETag: a batch overwritten between listing and reading is not read as the listed one.
        return cifar_items(uri, size, records_per_item, etag)
    return [_unsupported(uri)]


def list_inputs(
    *, inputs: Iterable[str], manifest: Optional[str], storage: Storage, records_per_item: int
) -> Listing:
    """Expand the job's inputs into work items; raise :class:`NoInputError` when there is nothing to classify."""
    items: list[WorkItem] = []
    skipped = 0
    if manifest is not None:
        entries, source = read_manifest_and_source(manifest, storage)
        items = _manifest_items(entries, storage, records_per_item)
        if not items:
            raise NoInputError(f"--manifest {manifest} lists no objects")
        return Listing(items, skipped, source)
    for input_uri in inputs:
        try:
            objects = storage.list_objects(input_uri)
        except ObjectNotFound as error:
            raise NoInputError(f"--input {error}") from error
        for info in objects:
            named_directly = info.uri == input_uri  # a single object asked for by name is never skipped
            if not named_directly and not (is_image(info.uri) or is_cifar_batch(info.uri)):
                skipped += 1
                continue
            items.extend(_items_for_object(info.uri, info.size, records_per_item, info.etag))
    if not items:
        raise NoInputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) or CIFAR-10 batches ({CIFAR_SUFFIX}) found under "
            f"{', '.join(inputs)} ({skipped} other objects skipped)")
    return Listing(items, skipped)


def plan_tasks(items: list[WorkItem], *, slots: int, max_images_per_task: int,
               min_images_per_task: int = MIN_IMAGES_PER_TASK) -> list[list[WorkItem]]:
    """Group items into Spark tasks: a multiple of ``slots`` tasks of about equal image counts, order kept.

    A multiple of the slot count keeps every core busy until the end (no lone last task), and the per-task cap bounds
    what a retry has to redo. Fewer tasks than slots are planned when each would hold less than
    ``min_images_per_task`` images (see :data:`MIN_IMAGES_PER_TASK`).
    """
    total = sum(item.count for item in items)
    rounds = max(1, math.ceil(total / (slots * max_images_per_task)))
    task_count = min(len(items), slots * rounds)
    if rounds == 1:
        task_count = max(1, min(task_count, total // min_images_per_task))
    target = total / task_count
    tasks: list[list[WorkItem]] = [[] for _ in range(task_count)]
    done = 0
    for item in items:
        # The task whose share of the running total this item's midpoint falls into.
        index = min(task_count - 1, int((done + item.count / 2) / target))
        tasks[index].append(item)
        done += item.count
    return [task for task in tasks if task]
