"""The worker's pieces without Spark: batching without padding, Arrow rows, the prefetching thread (GPU) and fetching
ahead of a consumer that decodes (CPU)."""

import threading

import numpy as np
import pytest

from job.sources import KIND_CIFAR, KIND_IMAGE, WorkItem
from job.worker import OUTPUT_SCHEMA, PreparedBatch, batch_units, count_rows, prefetched, to_record_batch


def test_batches_are_full_except_the_last_and_never_padded():
    items = [WorkItem("a.png", KIND_IMAGE), WorkItem("b.bin", KIND_CIFAR, 0, 10), WorkItem("c.png", KIND_IMAGE)]
    batches = list(batch_units(items, 4))
    assert [sum(unit.count for unit in batch) for batch in batches] == [4, 4, 4]
    records = [(unit.item.source, unit.start, unit.count) for batch in batches for unit in batch]
    assert records == [("a.png", 0, 1), ("b.bin", 0, 3), ("b.bin", 3, 4), ("b.bin", 7, 3), ("c.png", 0, 1)]
    assert [sum(unit.count for unit in batch) for batch in batch_units(items[:2], 5)] == [5, 5, 1]


def test_record_batch_has_the_output_schema_with_nulls_for_errors():
    batch = PreparedBatch(sources=["a", "b", "c"], indices=[0, 0, 4], true_labels=[None, None, 2],
                          errors=[None, "not_found: gone", None])
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    record_batch = to_record_batch(batch, probabilities, ("x", "y", "z"), top_k=2)
    assert record_batch.schema == OUTPUT_SCHEMA
    rows = record_batch.to_pylist()
    assert rows[0]["label_name"] == "y" and rows[0]["top_k"] == [
        {"label": 1, "probability": pytest.approx(0.7)}, {"label": 2, "probability": pytest.approx(0.2)}]
    assert rows[1] | {"error": None} == {"source": "b", "index": 0, "status": "error", "error": None, "label": None,
                                          "label_name": None, "probability": None, "top_k": None, "true_label": None}
    assert rows[2]["label"] == 0 and rows[2]["true_label"] == 2 and rows[2]["index"] == 4


def test_a_tasks_row_counts_are_those_of_its_rows():
    """count_rows, vectorised, against the same counts taken row by row over batches with every kind of row: ok with
    and without a true label, right and wrong, failed (one with a ``:``-less error), and a NaN row (bad_scores)."""
    batch = PreparedBatch(sources=list("abcdefg"), indices=list(range(7)), true_labels=[1, 0, None, None, 2, None, 1],
                          errors=[None, None, None, "not_found: gone", None, "odd", None])
    probabilities = np.array([[0.1, 0.7, 0.2], [0.1, 0.7, 0.2], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6],
                              [np.nan, 0.5, 0.5]], dtype=np.float32)
    record_batches = [to_record_batch(batch, probabilities, ("x", "y", "z"), top_k=2),
                      to_record_batch(PreparedBatch(["h"], [0], [None], ["not_found: x"]), None, ("x",), top_k=1)]
    counts: dict = {}
    for record_batch in record_batches:
        count_rows(record_batch, counts)
    rows = [row for record_batch in record_batches for row in record_batch.to_pylist()]
    ok = [row for row in rows if row["status"] == "ok"]
    graded = [row for row in ok if row["true_label"] is not None]
    expected_reasons: dict = {}
    for row in rows:
        if row["status"] != "ok":
            reason = row["error"].split(":")[0]
            expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    assert counts == {"total": 8, "ok": len(ok), "graded": len(graded),
                      "correct": sum(row["label"] == row["true_label"] for row in graded),
                      "reasons": expected_reasons,
                      "per_class": {name: sum(row["label_name"] == name for row in ok) for name in "xyz"}}
    assert counts["reasons"] == {"not_found": 2, "odd": 1, "bad_scores": 1} and counts["correct"] == 2


def test_a_batch_of_only_failures_needs_no_model():
    batch = PreparedBatch(sources=["bad"], indices=[0], true_labels=[None], errors=["bad_cifar_size: 3 bytes"],
                          pixels=np.zeros((0, 3, 2, 2), np.float32))
    assert to_record_batch(batch, None, ("x",), top_k=5).column("status").to_pylist() == ["error"]


class _Preparer:
    def __init__(self, fail_at=None):
        self.fail_at = fail_at

    def prepare(self, units):
        if units == self.fail_at:
            raise OSError("disk on fire")
        return units


def test_prefetch_keeps_order_and_hands_producer_errors_to_the_task():
    assert list(prefetched(iter([1, 2, 3, 4]), _Preparer())) == [1, 2, 3, 4]
    with pytest.raises(OSError, match="disk on fire"):
        list(prefetched(iter([1, 2, 3]), _Preparer(fail_at=2)))


def test_prefetch_stops_its_thread_when_the_consumer_stops_early():

    before = threading.active_count()
    iterator = prefetched(iter(range(100)), _Preparer())
    next(iterator)
    iterator.close()
    assert threading.active_count() == before


def _preparer():
    from job.model_package import parse_manifest
    from job.worker import BatchPreparer, WorkerSettings

    package = parse_manifest({"format": "onnx", "files": {"onnx": "m.onnx"}, "input_shape": [3, 32, 32],
                              "mean": [0.5] * 3, "std": [0.25] * 3, "labels": ["a", "b"]}, "/unused")
    return BatchPreparer(WorkerSettings(package=package, device="cpu", batch_size=8, top_k=1, fetch_threads=2,
                                        s3_endpoint_url=None))


def test_a_cifar_batch_that_shrank_after_listing_is_a_failure_not_a_crash(tmp_path, cifar_samples):
    from job.sample_data import cifar_batch_bytes

    shrunk = tmp_path / "shrunk.bin"
    shrunk.write_bytes(cifar_batch_bytes(np.zeros((2, 32, 32, 3), np.uint8), np.array([1, 2])))
    image = tmp_path / "a.png"
    image.write_bytes(cifar_samples[0][1])
    items = [WorkItem(str(shrunk), KIND_CIFAR, 0, 4), WorkItem(str(image), KIND_IMAGE)]
    [units] = list(batch_units(items, 8))
    batch = _preparer().prepare(units)
    assert batch.indices == [0, 1, 2, 3, 0]
    assert all("the object changed after listing" in error for error in batch.errors[:4])
    assert batch.errors[4] is None and batch.pixels.shape == (1, 3, 32, 32)


def test_an_unexpected_decoder_fault_fails_only_that_image(tmp_path, cifar_samples, monkeypatch):
    import job.worker

    real_decode = job.worker.decode_image

    def faulty(data, height, width, *resize, out=None):
        if data == cifar_samples[1][1]:
            raise RuntimeError("decoder bug")
        return real_decode(data, height, width, *resize, out=out)

    monkeypatch.setattr(job.worker, "decode_image", faulty)
    items = []
    for name, data, _ in cifar_samples[:3]:
        (tmp_path / name).write_bytes(data)
        items.append(WorkItem(str(tmp_path / name), KIND_IMAGE))
    [units] = list(batch_units(items, 8))
    batch = _preparer().prepare(units)
    assert batch.errors == [None, "corrupt_image: RuntimeError: decoder bug", None]
    assert batch.pixels.shape == (2, 3, 32, 32)


# --- output: top-k and non-finite scores (reliability review #14, #22) ----------------------------------------------

def test_top_k_is_the_full_sort_cut_to_k():
    from job.worker import top_k_labels

    scores = np.random.default_rng(3).random((50, 1000)).astype(np.float32)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :5]
    assert np.array_equal(top_k_labels(scores, 5), expected)
    assert np.array_equal(top_k_labels(scores[:, :3], 5), np.argsort(-scores[:, :3], axis=1, kind="stable"))
    tied = np.array([[0.25, 0.5, 0.25, 0.0]], np.float32)
    assert top_k_labels(tied, 3).tolist() == [[1, 0, 2]]  # ties by label number


def test_non_finite_scores_are_error_rows_not_class_0():
    batch = PreparedBatch(sources=["a", "b", "c", "d"], indices=[0] * 4, true_labels=[None] * 4,
                          errors=[None, None, "not_found: x", None])
    probabilities = np.array([[np.nan, 0.5, 0.5], [0.2, 0.7, 0.1], [np.inf, 0.0, -np.inf]], np.float32)
    rows = to_record_batch(batch, probabilities, ("x", "y", "z"), top_k=2).to_pylist()
    assert [row["status"] for row in rows] == ["error", "ok", "error", "error"]
    assert rows[0]["error"] == "bad_scores: the model returned 1 NaN and 0 infinite scores of 3"
    assert rows[3]["error"] == "bad_scores: the model returned 0 NaN and 2 infinite scores of 3"
    assert rows[0]["label"] is None and rows[1]["label_name"] == "y" and rows[2]["error"] == "not_found: x"


# --- memory bounds (reliability review #12) --------------------------------------------------------------------------

def _padded_png(cifar_samples, size: int) -> bytes:
    """A real 32x32 PNG followed by zeros to ``size`` bytes: decodes "ok", as the review's 8 MiB objects did."""
    data = cifar_samples[0][1]
    return data + b"\0" * (size - len(data))


def _memory_preparer(**limits):
    from job.model_package import parse_manifest
    from job.worker import BatchPreparer, WorkerSettings

    package = parse_manifest({"format": "onnx", "files": {"onnx": "m.onnx"}, "input_shape": [3, 32, 32],
                              "mean": [0.5] * 3, "std": [0.25] * 3, "labels": ["a", "b"]}, "/unused")
    return BatchPreparer(WorkerSettings(package=package, device="cpu", batch_size=32, top_k=1, fetch_threads=8,
                                        s3_endpoint_url=None, **limits))


def test_fetched_bytes_in_flight_stay_within_the_budget(tmp_path, cifar_samples, monkeypatch):
    """32 objects of 2 MiB in one batch, 8 fetch threads, a decoder slower than the reads: the bytes held stay under
    --max-bytes-in-flight (6 MiB), by the budget's own accounting and by tracemalloc's count of every allocation
    (bytes objects and numpy arrays both), where the old code held the whole batch (64 MiB)."""
    import time
    import tracemalloc

    import job.worker

    real_decode = job.worker.decode_image

    def slow_decode(data, height, width, *resize, out=None):
        time.sleep(0.005)  # lets the fetch threads run ahead, so only the budget holds them back
        return real_decode(data, height, width, *resize, out=out)

    monkeypatch.setattr(job.worker, "decode_image", slow_decode)
    mib = 1024 * 1024
    items = []
    for number in range(32):
        path = tmp_path / f"{number}.png"
        path.write_bytes(_padded_png(cifar_samples, 2 * mib))
        items.append(WorkItem(str(path), KIND_IMAGE))
    preparer = _memory_preparer(max_object_bytes=4 * mib, max_bytes_in_flight=6 * mib)
    [units] = list(batch_units(items, 32))
    tracemalloc.start()
    try:
        batch = preparer.prepare(units)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batch.errors == [None] * 32 and batch.pixels.shape == (32, 3, 32, 32)
    assert 2 * mib <= preparer.budget.peak <= 6 * mib
    decoded_arrays = 2 * 32 * 32 * 32 * 15  # uint8 and float32 copies of the batch, twice over for the masking
    assert peak < 6 * mib + decoded_arrays + mib  # one MiB for the interpreter's own allocations meanwhile


def test_an_object_over_max_object_bytes_is_a_too_large_row(tmp_path, cifar_samples):
    (tmp_path / "big.png").write_bytes(_padded_png(cifar_samples, 5000))
    (tmp_path / "small.png").write_bytes(cifar_samples[1][1])
    items = [WorkItem(str(tmp_path / "big.png"), KIND_IMAGE), WorkItem(str(tmp_path / "small.png"), KIND_IMAGE)]
    [units] = list(batch_units(items, 8))
    batch = _memory_preparer(max_object_bytes=4000, max_bytes_in_flight=8000).prepare(units)
    assert batch.errors[0].startswith("too_large: ") and "5000 bytes; at most 4000" in batch.errors[0]
    assert batch.errors[1] is None and batch.pixels.shape == (1, 3, 32, 32)


def test_batches_of_a_large_model_input_are_cut_to_the_batch_byte_limit():
    from job.config import images_per_batch, parse_args

    config = parse_args(["--input", "x", "--model", "m", "--output", "o", "--max-batch-bytes", str(256 * 1024 ** 2)])
    assert images_per_batch(config, 224, 224) == 256  # 193 MB: the default batch fits
    assert images_per_batch(config, 1024, 1024) == 17  # 15.7 MB an image
    assert images_per_batch(config, 4096, 4096) == 1  # the largest input a package may have still runs


def test_bytes_in_flight_below_the_object_limit_is_refused():
    from job.config import ConfigError, parse_args

    with pytest.raises(ConfigError, match=r"--max-bytes-in-flight \(10\) must be at least --max-object-bytes \(20\)"):
        parse_args(["--input", "x", "--model", "m", "--output", "o", "--max-bytes-in-flight", "10",
                    "--max-object-bytes", "20"])


# --- a model that cannot be used fails its rows, not the step (reliability review #14, #17) -------------------------

@pytest.mark.parametrize("labels, external, reason", [
    (["a", "b", "c", "d", "e"], None, "bad_output_shape: model tiny returned scores of shape (1, 3)"),
    (["a", "b", "c"], "/etc/hostname", "model_refused: model package"),
])
def test_a_model_that_cannot_be_used_gives_one_error_row_per_input(tmp_path, cifar_samples, labels, external,
                                                                   reason):
    from hostile_packages import onnx_model, write_package

    import json

    from job.model_package import parse_manifest
    from job.worker import WorkerSettings, classify_items

    package_dir = write_package(str(tmp_path / "pkg"), onnx_model(external=external), labels=labels)
    with open(f"{package_dir}/model.json") as file:
        package = parse_manifest(json.load(file), package_dir)  # what a worker gets: the driver's parse, no file check
    items = []
    for name, data, _ in cifar_samples[:3]:
        (tmp_path / name).write_bytes(data)
        items.append(WorkItem(str(tmp_path / name), KIND_IMAGE))
    items.append(WorkItem(str(tmp_path / "x.txt"), "invalid", error="unsupported_type: x"))
    stats = {}
    rows = [row for record_batch in classify_items(items, WorkerSettings(
        package=package, device="cpu", batch_size=2, top_k=1, fetch_threads=2, s3_endpoint_url=None), stats)
            for row in record_batch.to_pylist()]
    assert [row["source"] for row in rows] == [item.source for item in items]
    assert all(row["status"] == "error" for row in rows)
    assert all(row["error"].startswith(reason) for row in rows[:3]) and rows[3]["error"] == "unsupported_type: x"
    assert [message.startswith(reason) for message in stats["model_errors"]] == [True]


def _png_items(tmp_path, cifar_samples, count: int, size: int = 0) -> list:
    items = []
    for number in range(count):
        path = tmp_path / f"{number}.png"
        path.write_bytes(_padded_png(cifar_samples, size) if size else cifar_samples[0][1])
        items.append(WorkItem(str(path), KIND_IMAGE))
    return items


def test_on_the_cpu_batches_are_decoded_in_turn_with_the_model_and_the_next_fetch_overlaps_it(tmp_path,
                                                                                              cifar_samples):
    """fetched_ahead (a model on the CPU): the same batches as prepare, in order; each batch is decoded in the
    consumer's thread; the next batch's fetches start after this batch's have all arrived and before the consumer
    gets it, so they run while the model predicts."""
    from job.worker import fetched_ahead

    events: list = []
    preparer = _memory_preparer()
    submit, complete = preparer.submit, preparer.complete

    def spied_submit(units):
        events.append(("submit", units[0].item.source))
        return submit(units)

    def spied_complete(fetching):
        events.append(("complete", fetching.units[0].item.source, threading.current_thread().name))
        return complete(fetching)

    preparer.submit, preparer.complete = spied_submit, spied_complete
    items = _png_items(tmp_path, cifar_samples, 80)
    batches = list(batch_units(items, 32))
    got = []
    for batch in fetched_ahead(iter(batches), preparer):
        events.append(("consumer", batch.sources[0]))
        got.append(batch)
    expected = [_memory_preparer().prepare(units) for units in batches]
    assert [batch.sources for batch in got] == [batch.sources for batch in expected]
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(got, expected))
    firsts = [units[0].item.source for units in batches]
    assert {event[2] for event in events if event[0] == "complete"} == {threading.current_thread().name}
    assert [event[:2] for event in events] == [
        ("submit", firsts[0]), ("complete", firsts[0]), ("submit", firsts[1]), ("consumer", firsts[0]),
        ("complete", firsts[1]), ("submit", firsts[2]), ("consumer", firsts[1]),
        ("complete", firsts[2]), ("consumer", firsts[2])]


def test_a_task_that_stops_early_leaves_no_fetch_holding_the_budget(tmp_path, cifar_samples):
    from job.worker import fetched_ahead

    preparer = _memory_preparer()
    iterator = fetched_ahead(iter(list(batch_units(_png_items(tmp_path, cifar_samples, 96), 32))), preparer)
    next(iterator)  # batch 2's fetches are under way or done, holding their bytes
    iterator.close()
    assert preparer.budget.held == 0


def test_fetching_ahead_never_waits_for_ever_on_a_budget_smaller_than_a_batch(tmp_path, cifar_samples):
    """Objects of 2 MiB against a 3 MiB budget, 8 fetch threads, 3 batches: a fetch of the next batch could take budget
    that an object of the current one waits for, if both ran at once; they do not, so every batch completes."""
    from job.worker import fetched_ahead

    mib = 1024 * 1024
    preparer = _memory_preparer(max_object_bytes=2 * mib + 1, max_bytes_in_flight=3 * mib)
    batches = list(batch_units(_png_items(tmp_path, cifar_samples, 72, 2 * mib), 32))
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.extend(fetched_ahead(iter(batches), preparer)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "fetching ahead waited for ever on the byte budget"
    assert [len(batch.sources) for batch in outcome] == [32, 32, 8]
    assert all(error is None for batch in outcome for error in batch.errors) and preparer.budget.held == 0
