"""Turning ``--input``/``--manifest`` into work items, once, on the driver.

A work item is one image file, a range of records of a CIFAR-10 binary batch file, or an input already known to be bad
(kept so that it appears in the output as a failed row instead of disappearing). Items are then planned into Spark tasks
of balanced size.
"""

from __future__ import annotations

import json
import math
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


@dataclass(frozen=True)
class WorkItem:
    """One unit of input. ``start``/``count`` are record numbers for CIFAR ranges, ``0``/``1`` otherwise."""

    source: str
    kind: str
    start: int = 0
    count: int = 1
    error: Optional[str] = None


@dataclass(frozen=True)
class Listing:
    items: list[WorkItem]
    skipped: int  # objects under an --input prefix that are neither images nor CIFAR batches (e.g. _SUCCESS, README)

    @property
    def image_count(self) -> int:
        return sum(item.count for item in self.items)


class NoInputError(ValueError):
    """Nothing to classify: the job stops before any Spark work."""


def is_image(uri: str) -> bool:
    return uri.lower().endswith(IMAGE_SUFFIXES)


def is_cifar_batch(uri: str) -> bool:
    return uri.lower().endswith(CIFAR_SUFFIX)


def cifar_items(uri: str, size: int, records_per_item: int) -> list[WorkItem]:
    """Split a CIFAR-10 binary batch into record ranges, or one invalid item when its size is not whole records."""
    if size == 0 or size % CIFAR_RECORD_BYTES:
        return [WorkItem(uri, KIND_INVALID, error=(
            f"bad_cifar_size: {size} bytes is not a positive multiple of the {CIFAR_RECORD_BYTES}-byte CIFAR-10 record"))]
    records = size // CIFAR_RECORD_BYTES
    return [
        WorkItem(uri, KIND_CIFAR, start, min(records_per_item, records - start))
        for start in range(0, records, records_per_item)
    ]


def _items_for_object(uri: str, size: Optional[int], storage: Storage, records_per_item: int) -> list[WorkItem]:
    if is_image(uri):
        return [WorkItem(uri, KIND_IMAGE)]
    if is_cifar_batch(uri):
        if size is None:
            try:
                size = storage.size(uri)
            except ObjectNotFound:
                return [WorkItem(uri, KIND_INVALID, error=f"not_found: {uri} does not exist")]
        return cifar_items(uri, size, records_per_item)
    return [WorkItem(uri, KIND_INVALID, error=(
        f"unsupported_type: {uri} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a CIFAR-10 batch ({CIFAR_SUFFIX})"))]


def read_manifest(uri: str, storage: Storage) -> list[str]:
    """A manifest is a JSON list of object URIs, or an object whose ``objects`` key holds that list."""
    try:
        document = json.loads(storage.read(uri))
    except ObjectNotFound as error:
        raise NoInputError(f"--manifest {uri}: no such object") from error
    except ValueError as error:
        raise NoInputError(f"--manifest {uri} is not valid JSON: {error}") from error
    uris = document.get("objects") if isinstance(document, dict) else document
    if not isinstance(uris, list) or not all(isinstance(entry, str) and entry for entry in uris):
        raise NoInputError(
            f'--manifest {uri}: expected a JSON list of object URIs or {{"objects": [...]}}; got {type(uris).__name__}')
    return uris


def list_inputs(
    *, inputs: Iterable[str], manifest: Optional[str], storage: Storage, records_per_item: int
) -> Listing:
    """Expand the job's inputs into work items; raise :class:`NoInputError` when there is nothing to classify."""
    items: list[WorkItem] = []
    skipped = 0
    if manifest is not None:
        for uri in read_manifest(manifest, storage):
            items.extend(_items_for_object(uri, None, storage, records_per_item))
        if not items:
            raise NoInputError(f"--manifest {manifest} lists no objects")
        return Listing(items, skipped)
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
            items.extend(_items_for_object(info.uri, info.size, storage, records_per_item))
    if not items:
        raise NoInputError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) or CIFAR-10 batches ({CIFAR_SUFFIX}) found under "
            f"{', '.join(inputs)} ({skipped} other objects skipped)")
    return Listing(items, skipped)


def plan_tasks(items: list[WorkItem], *, slots: int, max_images_per_task: int) -> list[list[WorkItem]]:
    """Group items into Spark tasks: a multiple of ``slots`` tasks of about equal image counts, order kept.

    A multiple of the slot count keeps every core busy until the end (no lone last task), and the per-task cap bounds
    what a retry has to redo.
    """
    total = sum(item.count for item in items)
    rounds = max(1, math.ceil(total / (slots * max_images_per_task)))
    task_count = min(len(items), slots * rounds)
    target = total / task_count
    tasks: list[list[WorkItem]] = [[] for _ in range(task_count)]
    done = 0
    for item in items:
        # The task whose share of the running total this item's midpoint falls into.
        index = min(task_count - 1, int((done + item.count / 2) / target))
        tasks[index].append(item)
        done += item.count
    return [task for task in tasks if task]
