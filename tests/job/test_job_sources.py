"""Listing inputs on the driver and planning them into tasks (no Spark)."""

import json

import pytest

from job.sources import (CIFAR_RECORD_BYTES, KIND_CIFAR, KIND_IMAGE, KIND_INVALID, NoInputError, WorkItem, list_inputs,
                         plan_tasks)
from job.storage import Storage


def _write(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_directory_listing_keeps_images_and_batches_and_skips_the_rest(tmp_path):
    _write(tmp_path / "a.png")
    _write(tmp_path / "sub" / "b.JPG")
    _write(tmp_path / "c.jpeg")
    _write(tmp_path / "batch.bin", b"\0" * CIFAR_RECORD_BYTES * 3)
    _write(tmp_path / "_SUCCESS")
    _write(tmp_path / "README.txt")
    listing = list_inputs(inputs=[str(tmp_path)], manifest=None, storage=Storage(), records_per_item=2)
    kinds = sorted((item.source.rsplit("/", 1)[1], item.kind, item.start, item.count) for item in listing.items)
    assert kinds == [("a.png", KIND_IMAGE, 0, 1), ("b.JPG", KIND_IMAGE, 0, 1), ("batch.bin", KIND_CIFAR, 0, 2),
                     ("batch.bin", KIND_CIFAR, 2, 1), ("c.jpeg", KIND_IMAGE, 0, 1)]
    assert listing.skipped == 2
    assert listing.image_count == 6


@pytest.mark.parametrize("size", [0, 100, CIFAR_RECORD_BYTES * 2 + 1])
def test_cifar_batch_with_partial_records_is_one_invalid_item(tmp_path, size):
    path = _write(tmp_path / "bad.bin", b"\0" * size)
    listing = list_inputs(inputs=[path], manifest=None, storage=Storage(), records_per_item=256)
    assert [(item.kind, item.error.split(":")[0]) for item in listing.items] == [(KIND_INVALID, "bad_cifar_size")]


def test_a_directory_holding_only_other_files_has_no_input(tmp_path):
    _write(tmp_path / "README.txt")
    with pytest.raises(NoInputError, match=r"\(1 other objects skipped\)"):
        list_inputs(inputs=[str(tmp_path)], manifest=None, storage=Storage(), records_per_item=256)


def test_single_unsupported_object_is_an_invalid_item(tmp_path):
    path = _write(tmp_path / "notes.txt")
    [item] = list_inputs(inputs=[path], manifest=None, storage=Storage(), records_per_item=256).items
    assert item.kind == KIND_INVALID and item.error.startswith("unsupported_type:")


@pytest.mark.parametrize("document", [lambda uris: uris, lambda uris: {"batch_id": "b1", "objects": uris}])
def test_manifest_forms(tmp_path, document):
    image = _write(tmp_path / "in" / "a.png")
    batch = _write(tmp_path / "in" / "b.bin", b"\0" * CIFAR_RECORD_BYTES)
    missing_batch = str(tmp_path / "in" / "gone.bin")
    missing_image = str(tmp_path / "in" / "gone.png")
    manifest = _write(tmp_path / "m.json", json.dumps(document([image, batch, missing_batch, missing_image])).encode())
    items = list_inputs(inputs=[], manifest=manifest, storage=Storage(), records_per_item=256).items
    assert [(item.source, item.kind) for item in items] == [
        (image, KIND_IMAGE), (batch, KIND_CIFAR), (missing_batch, KIND_INVALID), (missing_image, KIND_IMAGE)]
    assert items[2].error.startswith("not_found:")


@pytest.mark.parametrize("content, message", [
    (b"{not json", "not valid JSON"),
    (b'{"objects": "a.png"}', "expected a JSON list"),
    (b"[]", "lists no objects"),
    (b'[{"uri": "a.png", "etag": 7}]', r"entries \[0\] are neither an object URI nor"),
    (b'["a.png", {"url": "b.png"}]', r"entries \[1\] are neither"),
    (b'["a.png", ""]', r"entries \[1\] are neither"),
])
def test_bad_manifests_fail_at_start(tmp_path, content, message):
    manifest = _write(tmp_path / "m.json", content)
    with pytest.raises(NoInputError, match=message):
        list_inputs(inputs=[], manifest=manifest, storage=Storage(), records_per_item=256)


def test_empty_or_missing_input_fails_at_start(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputError, match="no images"):
        list_inputs(inputs=[str(tmp_path / "empty")], manifest=None, storage=Storage(), records_per_item=256)
    with pytest.raises(NoInputError, match="no such file or directory"):
        list_inputs(inputs=[str(tmp_path / "nope")], manifest=None, storage=Storage(), records_per_item=256)


def test_plan_tasks_balances_images_over_a_multiple_of_the_slots():
    items = [WorkItem(f"i{n}.png", KIND_IMAGE) for n in range(7)] + [WorkItem("b.bin", KIND_CIFAR, s, 100)
                                                                     for s in range(0, 1000, 100)]
    tasks = plan_tasks(items, slots=2, max_images_per_task=300, min_images_per_task=1)
    assert len(tasks) % 2 == 0 and len(tasks) >= 4
    assert [item for task in tasks for item in task] == items  # every item once, order kept
    sizes = [sum(item.count for item in task) for task in tasks]
    assert max(sizes) <= 300 + 100 and min(sizes) > 0


def test_plan_tasks_never_makes_more_tasks_than_items():
    items = [WorkItem("a.png", KIND_IMAGE)]
    assert plan_tasks(items, slots=8, max_images_per_task=10) == [items]


def test_manifest_entries_may_pin_a_version(tmp_path):
    """The trigger writes {"uri", "etag", "version_id"} entries (reliability review #16); plain URIs still work."""
    image = _write(tmp_path / "a.png")
    batch = _write(tmp_path / "b.bin", b"\0" * CIFAR_RECORD_BYTES * 3)
    manifest = _write(tmp_path / "m.json", json.dumps({"objects": [
        {"uri": image, "etag": "0123abcd"}, {"uri": batch, "etag": '"beef"', "version_id": "v7"}, image]}).encode())
    items = list_inputs(inputs=[], manifest=manifest, storage=Storage(), records_per_item=2).items
    assert [(item.source, item.kind, item.start, item.etag, item.version_id) for item in items] == [
        (image, KIND_IMAGE, 0, '"0123abcd"', None),  # quoted as S3 sends ETags
        (batch, KIND_CIFAR, 0, '"beef"', "v7"), (batch, KIND_CIFAR, 2, '"beef"', "v7"),
        (image, KIND_IMAGE, 0, None, None)]


def test_a_small_batch_is_not_spread_over_every_slot():
    """aws-validity-review-2 #8: 150 images on 160 slots were 150 one-image tasks."""
    from job.sources import MIN_IMAGES_PER_TASK

    items = [WorkItem(f"i{n}.png", KIND_IMAGE) for n in range(150)]
    tasks = plan_tasks(items, slots=160, max_images_per_task=20_000)
    assert len(tasks) == 150 // MIN_IMAGES_PER_TASK
    assert min(len(task) for task in tasks) >= MIN_IMAGES_PER_TASK
    assert [item for task in tasks for item in task] == items
    many = [WorkItem(f"i{n}.png", KIND_IMAGE) for n in range(160 * MIN_IMAGES_PER_TASK)]
    assert len(plan_tasks(many, slots=160, max_images_per_task=20_000)) == 160  # enough for every slot: all used


def test_manifest_cifar_sizes_are_read_concurrently(tmp_path):
    """Reliability review (read-only minor): one HEAD after another made 100,000 listed batches take tens of
    minutes. A storage whose size() takes 20 ms shows how many run at once."""
    import threading
    import time

    class SlowHeads(Storage):
        def __init__(self):
            super().__init__()
            self.running = self.most = 0
            self.lock = threading.Lock()

        def size(self, uri):
            with self.lock:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.02)
            with self.lock:
                self.running -= 1
            return CIFAR_RECORD_BYTES

    storage = SlowHeads()
    uris = [f"s3://b/batches/{n}.bin" for n in range(64)]
    manifest = _write(tmp_path / "m.json", json.dumps(uris).encode())
    items = list_inputs(inputs=[], manifest=manifest, storage=storage, records_per_item=256).items
    assert [item.source for item in items] == uris and all(item.kind == KIND_CIFAR for item in items)
    assert storage.most > 1


SOURCE = {"kind": "run", "manifest": "s3://b/incoming/runs/r/part-00001.json", "input": "s3://their-bucket/photos/"}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"batch_id": "b", "objects": ["IMAGE"], "source": SOURCE}, SOURCE),
        ({"objects": ["IMAGE"]}, None),
        (["IMAGE"], None),
        ({"objects": ["IMAGE"], "source": "s3://not/an/object"}, None),
        ({"objects": ["IMAGE"], "source": {"input": "x" * 5000}}, None),  # larger than MAX_SOURCE_CHARS: dropped
    ],
)
def test_a_manifests_source_object_is_kept_for_the_summary(tmp_path, document, expected):
    """Issue 18 part 3: the trigger's manifest says what the run came from; the listing carries it to summary.json."""
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    text = json.dumps(document).replace('"IMAGE"', json.dumps(str(image)))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(text)

    listing = list_inputs(inputs=[], manifest=str(manifest), storage=Storage(), records_per_item=2)

    assert listing.source == expected
    assert len(listing.items) == 1
