"""What the run report shows beyond summary.json's counts, gathered by the tasks as they stream their rows out.

Each task adds every output batch (``job.worker.OUTPUT_SCHEMA``) to a dict of its own with :func:`gather`:

- ``confidence``: ``list[int]`` of ``CONFIDENCE_BUCKETS``, ok rows per top-1 probability bucket ``[i/B, (i+1)/B)``
  (the last bucket includes 1.0), computed in float32 as Spark computes ``floor(probability * B)`` on the float column;
- ``pairs``: ``{(true label, top-1 label): rows}`` over the ok rows with a true label;
- ``lowest``: the ``thumbnails`` ok rows of lowest top-1 probability, ordered by (probability, source, index);
- ``failed``: per reason (an error's text before its first ``:``), the first ``FAILED_EXAMPLES_PER_REASON`` error rows
  by (source, index).

The driver merges the tasks' dicts (:func:`merge`) when it takes the tasks' counts (job.pipeline.counts_from_tasks:
each partition once, adding up to the committed rows), and the report is then built without reading the Parquet back
(a cold Spark aggregation costs a step about 2 s). Otherwise the report computes the same from the Parquet
(job.report), and tests/job/test_job_report.py holds the two equal. Every part is bounded: 20 buckets, pairs of at
most 256 true labels (CIFAR-10 label bytes) by the model's classes, ``thumbnails`` rows, a few rows per reason.

Imported by the Python workers: numpy and pyarrow only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CONFIDENCE_BUCKETS = 20
FAILED_EXAMPLES_PER_REASON = 3
MAX_FAILED_EXAMPLES = 12
STATUS_OK = "ok"  # job.worker.STATUS_OK (not imported: that module imports the decoders and the predictor)
LOWEST_COLUMNS = ("source", "index", "probability", "top_k", "true_label")


def confidence_buckets(probabilities: np.ndarray) -> np.ndarray:
    """``int[n]`` bucket of each top-1 probability (``float32[n]``): ``min(floor(p * B), B - 1)`` in float32."""
    scaled = np.floor(probabilities.astype(np.float32) * np.float32(CONFIDENCE_BUCKETS))
    return np.minimum(scaled, CONFIDENCE_BUCKETS - 1).astype(np.int64)


def _lowest_key(row: dict) -> tuple:
    return row["probability"], row["source"], row["index"]


def _failed_key(row: dict) -> tuple:
    return row["source"], row["index"]


def gather(record_batch: pa.RecordBatch, inputs: dict, thumbnails: int) -> None:
    """Add one output batch to ``inputs`` (a task's dict, empty at first). Vectorised except for the few rows kept."""
    ok = pc.fill_null(pc.equal(record_batch.column("status"), STATUS_OK), False)
    confidence = inputs.setdefault("confidence", [0] * CONFIDENCE_BUCKETS)
    probabilities = pc.filter(record_batch.column("probability"), ok).to_numpy(zero_copy_only=False)
    if len(probabilities):
        for bucket, count in enumerate(np.bincount(confidence_buckets(probabilities), minlength=CONFIDENCE_BUCKETS)):
            confidence[bucket] += int(count)
    pairs = inputs.setdefault("pairs", {})
    graded = pc.and_(ok, pc.is_valid(record_batch.column("true_label")))
    true_labels = pc.filter(record_batch.column("true_label"), graded).to_numpy(zero_copy_only=False)
    if len(true_labels):
        predicted = pc.filter(record_batch.column("label"), graded).to_numpy(zero_copy_only=False)
        found, counts = np.unique(np.stack([true_labels, predicted], axis=1).astype(np.int64), axis=0,
                                  return_counts=True)
        for (true_label, label), count in zip(found.tolist(), counts.tolist()):
            pairs[(true_label, label)] = pairs.get((true_label, label), 0) + count
    lowest = inputs.setdefault("lowest", [])
    if thumbnails and len(probabilities):
        # Rows that can be among the lowest: at most the threshold of this batch's thumbnails-th lowest and of the
        # task's current last kept row; ties on probability are ordered by source and index below.
        threshold = np.partition(probabilities, min(thumbnails, len(probabilities)) - 1)[
            min(thumbnails, len(probabilities)) - 1]
        if len(lowest) == thumbnails:
            threshold = min(threshold, lowest[-1]["probability"])
        candidates = pc.and_(ok, pc.fill_null(pc.less_equal(record_batch.column("probability"), threshold), False))
        if pc.any(candidates).as_py():
            rows = record_batch.select(list(LOWEST_COLUMNS)).filter(candidates).to_pylist()
            lowest.extend(rows)
            lowest.sort(key=_lowest_key)
            del lowest[thumbnails:]
    failed = inputs.setdefault("failed", {})
    if pc.sum(ok).as_py() != record_batch.num_rows:
        errors = record_batch.select(["source", "index", "error"]).filter(pc.invert(ok)).to_pylist()
        for row in errors:
            reason = row["error"].split(":", 1)[0]
            kept = failed.setdefault(reason, [])
            kept.append({**row, "reason": reason})
            kept.sort(key=_failed_key)
            del kept[FAILED_EXAMPLES_PER_REASON:]


def merge(per_task: list[dict], thumbnails: int) -> dict:
    """One run's report inputs from its tasks' (each as :func:`gather` left it): ``confidence``, ``pairs``,
    ``lowest`` (at most ``thumbnails`` rows) and ``failed`` (a list of at most ``MAX_FAILED_EXAMPLES`` rows with their
    ``reason``, ordered by reason, source and index, at most ``FAILED_EXAMPLES_PER_REASON`` per reason)."""
    confidence = [0] * CONFIDENCE_BUCKETS
    pairs: dict = {}
    lowest: list = []
    failed: dict = {}
    for inputs in per_task:
        for bucket, count in enumerate(inputs.get("confidence", ())):
            confidence[bucket] += count
        for pair, count in inputs.get("pairs", {}).items():
            pairs[pair] = pairs.get(pair, 0) + count
        lowest.extend(inputs.get("lowest", ()))
        for reason, rows in inputs.get("failed", {}).items():
            failed.setdefault(reason, []).extend(rows)
    examples = [row for reason in sorted(failed)
                for row in sorted(failed[reason], key=_failed_key)[:FAILED_EXAMPLES_PER_REASON]]
    return {"confidence": confidence, "pairs": pairs, "lowest": sorted(lowest, key=_lowest_key)[:thumbnails],
            "failed": examples[:MAX_FAILED_EXAMPLES]}
