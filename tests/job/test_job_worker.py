"""The worker's pieces without Spark: batching without padding, Arrow rows, and the prefetching thread."""

import numpy as np
import pytest

from job.sources import KIND_CIFAR, KIND_IMAGE, WorkItem
from job.worker import OUTPUT_SCHEMA, PreparedBatch, batch_units, prefetched, to_record_batch


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
    import threading

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

    def faulty(data, height, width):
        if data == cifar_samples[1][1]:
            raise RuntimeError("decoder bug")
        return real_decode(data, height, width)

    monkeypatch.setattr(job.worker, "decode_image", faulty)
    items = []
    for name, data, _ in cifar_samples[:3]:
        (tmp_path / name).write_bytes(data)
        items.append(WorkItem(str(tmp_path / name), KIND_IMAGE))
    [units] = list(batch_units(items, 8))
    batch = _preparer().prepare(units)
    assert batch.errors == [None, "corrupt_image: RuntimeError: decoder bug", None]
    assert batch.pixels.shape == (2, 3, 32, 32)
