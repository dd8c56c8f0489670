"""The driver: validate everything, list inputs once, plan tasks, run the Spark job, write the run summary.

Data path: listing (driver) -> one Spark task per planned group of items -> ``mapInArrow`` runs
:func:`job.worker.classify_items` -> Spark's Parquet writer under ``OUTPUT/predictions/`` -> ``OUTPUT/summary.json``
from the rows the tasks counted as they streamed them out (checked against the committed files' Parquet footers), and
``OUTPUT/report.html`` (:mod:`job.report`) from the summary and the Parquet.
The driver never loads the model and never collects predictions.

Why the tasks' counts are the committed output's, once each: the classification and the Parquet write are one stage
of one Spark action (no shuffle between them), so each task is a result task, and Spark merges a result task's
accumulator updates only for the first attempt of its partition that succeeds (a failed, killed or commit-denied
attempt sends none). The counts still carry their partition and attempt, and the driver takes them only when every
partition appears once and their total equals the committed files' rows (read from the Parquet footers alone);
otherwise it counts from the Parquet as before, and says so in ``summary_counted_from``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import platform
import statistics
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Optional

from pyspark import AccumulatorParam, TaskContext

from job import __version__, report_inputs
from job.config import DEFAULT_LOCAL_MASTER, RUNTIMES, ConfigError, JobConfig, images_per_batch
from job.local_jvm import DriverJvm, dump_archive
from job.package_format import RUNTIME_OF_FORMAT, ModelPackage, runtime_package
from job.package_store import read_package
from job.sources import Listing, NoInputError, list_inputs, plan_tasks
from job.storage import Storage, is_s3, join, local_path
from job.worker import SPARK_OUTPUT_SCHEMA, WorkerSettings, classify_items, count_rows, items_from_arrow

PREDICTIONS_DIR = "predictions"
SUMMARY_NAME = "summary.json"
# The fields of a run's source the runs table has columns for (infra/catalog.py RUN_SOURCE_FIELDS); other fields a
# manifest's source may carry stay in summary.json only.
RUN_SOURCE_FIELDS = ("kind", "prefix", "uploads", "manifest", "input", "run_name", "rerun_of", "part", "parts")
# The last bytes of a Parquet file read at once: its footer (row groups' metadata) and its 8-byte trailer, for the
# job's files (a few row groups of 9 columns: a few KiB). A larger footer costs a second read.
FOOTER_READ_BYTES = 64 * 1024
FOOTER_READ_THREADS = 16
# The class archive this process's driver JVM records for (job.local_jvm), written once its first run's Spark work is
# done; None when it started with an archive, on EMR, or once written.
_archive_to_dump: Optional[str] = None
WORK_ITEM_SCHEMA = ("source string, kind string, start bigint, count bigint, error string, etag string, "
                    "version_id string")


class JobFailed(RuntimeError):
    """The job ran but its result is not acceptable (e.g. too many failed inputs); the summary says why."""


class StatsAccumulator(AccumulatorParam):
    """Sums per-task numbers (seconds, counts) keyed by name, except ``peak_*`` keys, which keep the maximum; nested
    dicts are merged key by key."""

    def zero(self, value):
        return {}

    def addInPlace(self, total, more):
        for key, value in more.items():
            if isinstance(value, dict):
                total[key] = self.addInPlace(dict(total.get(key, {})), value)
            elif key.startswith("peak_"):
                total[key] = max(total.get(key, 0), value)
            else:
                total[key] = total.get(key, 0) + value
        return total


class TaskListAccumulator(AccumulatorParam):
    """A list that tasks append to: each task's row counts, kept apart so that the driver can see every attempt."""

    def zero(self, value):
        return []

    def addInPlace(self, total, more):
        total.extend(more)
        return total


def check_output(config: JobConfig, storage: Storage) -> None:
    if config.overwrite:
        return
    if storage.exists_below(config.output):
        raise ConfigError(f"--output {config.output} already holds results; pass --overwrite to replace them, "
                          "or choose another --output")


def check_device_request(config: JobConfig, spark_conf) -> None:
    """``--device gpu`` needs Spark to hand each task a GPU; fail before any work when it will not."""
    if config.device != "gpu":
        return
    amount = spark_conf.get("spark.task.resource.gpu.amount", None)
    if not amount or float(amount) <= 0:
        raise ConfigError(
            "--device gpu, but spark.task.resource.gpu.amount is not set, so no task would get a GPU: set it (and "
            "spark.executor.resource.gpu.amount plus a discovery script; the stack's compute=gpu does), or use "
            "--device auto/cpu")


def resolve_runtime(package: ModelPackage, requested: str) -> str:
    """What runs ``package`` for ``--runtime requested``: ``mxnet`` or ``onnxruntime``.

    ``auto`` runs an mxnet package with a checked ONNX twin (``model.json``'s ``onnx_twin``, which
    :func:`job.package_store.read_package` verified against the files) with ONNX Runtime, and every other package with
    its own format's runtime. Raises :class:`ConfigError` when the runtime asked for cannot run the package."""
    if requested == "auto":
        return "onnxruntime" if package.onnx_twin is not None else RUNTIME_OF_FORMAT[package.format]
    if requested == "mxnet" and package.format != "mxnet":
        raise ConfigError(f"--runtime mxnet: --model {package.uri} is an {package.format} package, which only ONNX "
                          "Runtime runs; allowed: --runtime auto or onnxruntime")
    if requested == "onnxruntime" and package.format == "mxnet" and package.onnx_twin is None:
        raise ConfigError(
            f"--runtime onnxruntime: --model {package.uri} is an mxnet package without an ONNX twin; allowed values "
            f"are {', '.join(RUNTIMES)}. Add a twin checked on held-out images with `python -m job.model_package "
            f"add-onnx --package {package.uri} --held-out-manifest URI`, or use --runtime auto or mxnet")
    return requested


def check_framework(package: ModelPackage, runtime: str) -> None:
    """An ``mxnet`` package run by MXNet needs ``mxnet`` on the nodes; a Graviton node of a stock EMR AMI has none (its
    bootstrap installs everything but MXNet: MXNet's aarch64 wheel links Arm Performance Libraries, which no Amazon
    Linux 2023 package provides). An mxnet package whose ``runtime`` is ``onnxruntime`` (its ONNX twin) needs no
    mxnet. The driver's Python stands for the workers' (the stack sets one PYSPARK_PYTHON for all nodes of one
    architecture, and every node of a cluster is of one). find_spec only looks: the driver never imports a
    framework."""
    if runtime == "mxnet" and importlib.util.find_spec("mxnet") is None:
        raise ConfigError(
            f"--model {package.uri} is an mxnet package, but this {platform.machine()} node's Python "
            f"({sys.executable}) has no mxnet (a Graviton node without Arm Performance Libraries runs ONNX packages "
            f"only): give it a checked ONNX twin with `python -m job.model_package add-onnx --package {package.uri} "
            f"--held-out-manifest URI` and run it with --runtime auto, or convert it with `python -m "
            f"job.model_package to-onnx --package {package.uri} --out DIR` and pass the onnx package, or run on "
            "x86_64 nodes")


def prepare(config: JobConfig) -> tuple[Storage, ModelPackage, str, Listing, float]:
    """Everything that can fail on bad arguments, done before Spark starts. Returns the package, the runtime that
    will run it (``mxnet`` or ``onnxruntime``), the listing and its seconds."""
    storage = Storage(config.s3_endpoint_url)
    package = read_package(config.model, storage)
    runtime = resolve_runtime(package, config.runtime)
    check_framework(package, runtime)
    check_output(config, storage)
    started = time.perf_counter()
    try:
        listing = list_inputs(inputs=config.inputs, manifest=config.manifest, storage=storage,
                              records_per_item=config.batch_size)
    except NoInputError as error:
        raise ConfigError(str(error)) from error
    return storage, package, runtime, listing, time.perf_counter() - started


def task_slots(spark_context) -> tuple[int, Optional[str]]:
    """How many tasks the cluster runs at once, and a note when that number cannot be trusted.

    Spark's ``defaultParallelism`` is ``spark.default.parallelism`` when set (the stack sets it to the cluster's task
    slots), else the cores of the executors registered so far, at least 2. Under dynamic allocation (EMR's default) an
    application starts with no executors, so without the setting the job would plan 2 tasks for a whole cluster.
    """
    conf = spark_context.getConf()
    slots = spark_context.defaultParallelism
    if conf.get("spark.default.parallelism", None) is None and conf.get(
            "spark.dynamicAllocation.enabled", "false").lower() == "true":
        return slots, (f"dynamic allocation is on and spark.default.parallelism is not set, so tasks were planned for "
                       f"{slots} slots (the executors registered at start); set spark.default.parallelism to the "
                       "cluster's task slots (the stack does) to use the whole cluster")
    return slots, None


def spark_session(master: Optional[str], driver_jvm_options: Optional[str] = None):
    """The job's Spark session: on EMR (``master`` None) as spark-submit configured it; else a session of its own on
    ``master``. A driver JVM this call starts (one per process: PySpark keeps it across sessions; in local mode also
    the executor) starts with ``driver_jvm_options``, or by default with :mod:`job.local_jvm`'s options: C1 only and
    the installation's class archive, or, when there is none yet, recording so that :func:`run` writes one."""
    global _archive_to_dump
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("mxnet-inference")
    if master is not None:
        # Local runs: Python workers must import this package wherever the process was started from.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [package_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the workers use this interpreter's packages
        builder = (builder.master(master)
                   .config("spark.ui.enabled", "false")
                   .config("spark.sql.session.timeZone", "UTC"))
        if SparkContext._gateway is None:  # this call starts the driver JVM: its options still matter
            if driver_jvm_options is None:
                jvm = DriverJvm()
                driver_jvm_options = jvm.options()
                _archive_to_dump = jvm.archive if jvm.wants_dump() else None
            builder = builder.config("spark.driver.extraJavaOptions", driver_jvm_options)
    return builder.getOrCreate()


def _start_archive_dump(spark) -> Optional[threading.Thread]:
    """Once per process, when its driver JVM started recording (no class archive yet): start writing the archive."""
    global _archive_to_dump
    archive, _archive_to_dump = _archive_to_dump, None
    return dump_archive(spark, archive) if archive else None


def _versions(spark) -> dict:
    import numpy
    import pyarrow

    return {"job": __version__, "python": platform.python_version(), "spark": spark.version,
            "numpy": numpy.__version__, "pyarrow": pyarrow.__version__}


def summarize(spark, predictions_uri: str, package: ModelPackage) -> dict:
    """Counts, failures by reason, per-class counts and accuracy, from the written Parquet in one small Spark job: the
    fallback of :func:`counts_from_tasks`, and what tests compare it with."""
    from pyspark.sql import functions as F

    groups = (spark.read.parquet(predictions_uri)
              .groupBy("status",
                       F.substring_index("error", ":", 1).alias("reason"),
                       "label_name",
                       F.col("true_label").isNotNull().alias("graded"),
                       (F.col("label") == F.col("true_label")).alias("correct"))
              .count().collect())
    counts = {"total": 0, "ok": 0, "graded": 0, "correct": 0, "reasons": {}, "per_class": {}}
    for group in groups:
        counts["total"] += group["count"]
        if group["status"] != "ok":
            reasons = counts["reasons"]
            reasons[group["reason"]] = reasons.get(group["reason"], 0) + group["count"]
            continue
        counts["ok"] += group["count"]
        counts["per_class"][group["label_name"]] = counts["per_class"].get(group["label_name"], 0) + group["count"]
        if group["graded"]:
            counts["graded"] += group["count"]
            counts["correct"] += group["count"] if group["correct"] else 0
    return _summary_counts(counts, package)


def _summary_counts(counts: dict, package: ModelPackage) -> dict:
    """summary.json's count fields from ``total``, ``ok``, ``graded``, ``correct``, ``reasons`` and ``per_class``
    (see :func:`job.worker.count_rows`). Reasons are ordered by count, then name; classes by name."""
    total, ok, graded, correct = (counts[key] for key in ("total", "ok", "graded", "correct"))
    reasons, per_class = counts["reasons"], counts["per_class"]
    accuracy = None
    if graded:
        accuracy = {"images_with_ground_truth": graded, "correct": correct, "accuracy": correct / graded}
        if not package.trained:
            accuracy["note"] = "untrained model: random weights, so this accuracy is chance level by construction"
    return {
        "total": total,
        "ok": ok,
        "error": total - ok,
        "failures_by_reason": dict(sorted(reasons.items(), key=lambda pair: (-pair[1], str(pair[0])))),
        "per_class_counts": dict(sorted(per_class.items())),
        "accuracy": accuracy,
    }


def committed_rows(storage: Storage, predictions_uri: str) -> int:
    """Rows in the committed Parquet files under ``predictions_uri``, from their footers alone: one read of each
    file's last ``FOOTER_READ_BYTES`` (a ranged GET on S3), no column data. Files and directories whose names start
    with ``_`` or ``.`` (``_SUCCESS``, ``_temporary``, checksums) are skipped, as Spark's reader skips them."""
    import pyarrow.parquet as pq

    root = (predictions_uri if is_s3(predictions_uri) else local_path(predictions_uri)).rstrip("/")

    def hidden(uri: str) -> bool:  # uri: as listed (a local path for a local or file:// output)
        relative = uri[len(root):].strip("/")
        return any(part.startswith(("_", ".")) for part in relative.split("/"))

    def rows(info) -> int:
        tail = storage.read(info.uri, max(0, info.size - FOOTER_READ_BYTES))
        if len(tail) < 12 or tail[-4:] != b"PAR1":
            raise ValueError(f"{info.uri} is not a Parquet file: it does not end with PAR1")
        footer = struct.unpack("<I", tail[-8:-4])[0] + 8
        if footer > len(tail):
            tail = storage.read(info.uri, info.size - footer)
        return pq.read_metadata(io.BytesIO(tail[-footer:])).num_rows

    files = [info for info in storage.list_objects(predictions_uri)
             if info.uri.endswith(".parquet") and not hidden(info.uri)]
    with ThreadPoolExecutor(max_workers=FOOTER_READ_THREADS, thread_name_prefix="footer") as pool:
        return sum(pool.map(rows, files))


def counts_from_tasks(task_counts: list[dict], committed: int, package: ModelPackage,
                      thumbnails: int = 0) -> Optional[dict]:
    """summary.json's counts from the tasks' own (``task_counts``: one dict per task attempt that Spark merged, with
    its ``partition``), or None when they may not be the committed output's: a partition counted twice, or a total
    other than ``committed``, the rows in the committed files. ``report_inputs`` holds the report's inputs merged
    from the tasks' (:mod:`job.report_inputs`; ``thumbnails``: how many lowest-confidence rows to keep)."""
    partitions = [counts["partition"] for counts in task_counts]
    if len(set(partitions)) != len(partitions) or sum(counts["total"] for counts in task_counts) != committed:
        return None
    merged = {"total": 0, "ok": 0, "graded": 0, "correct": 0, "reasons": {}, "per_class": {}}
    for counts in task_counts:
        for key in ("total", "ok", "graded", "correct"):
            merged[key] += counts[key]
        for key in ("reasons", "per_class"):
            for name, count in counts[key].items():
                merged[key][name] = merged[key].get(name, 0) + count
    inputs = report_inputs.merge([counts.get("report", {}) for counts in task_counts], thumbnails)
    return {**_summary_counts(merged, package), "report_inputs": inputs}


def _model_load_per_worker(by_worker: dict) -> dict:
    """Seconds each worker process took to load the model: the most and the median (None when none loaded it)."""
    seconds = list(by_worker.values())
    return {"max": max(seconds) if seconds else None, "median": statistics.median(seconds) if seconds else None,
            "workers": len(seconds)}


def run_record(summary: dict, output: str, *, summary_uri: str, started_at: str) -> dict:
    """The run's row in the runs table (infra/catalog.py RUN_COLUMNS): flat, for Athena's JSON SerDe, one per line.
    ``run_id`` is the output folder's name (``results/<run id>/``); counts are images; times ISO 8601 UTC strings."""
    source = summary["source"]
    return {
        "run_id": output.rstrip("/").rsplit("/", 1)[-1],
        "status": summary["status"],
        "source": {name: source.get(name) for name in RUN_SOURCE_FIELDS} if isinstance(source, dict) else None,
        "total": summary["counts"]["total"],
        "ok": summary["counts"]["ok"],
        "error": summary["counts"]["error"],
        "model_name": summary["model"]["name"],
        "started_at": started_at,
        "finished_at": summary["finished_at"],
        "report": summary["report"]["uri"],
        "summary": summary_uri,
    }


def run(config: JobConfig, master: Optional[str] = DEFAULT_LOCAL_MASTER) -> dict:
    """Run the job; return the summary written to ``OUTPUT/summary.json``. Raises ConfigError before Spark starts on
    bad arguments, and JobFailed after writing the summary when more than ``--max-failure-ratio`` of inputs failed."""
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    storage, package, runtime, listing, listing_s = prepare(config)
    session_started = time.perf_counter()
    spark = spark_session(master)
    session_s = time.perf_counter() - session_started
    check_device_request(config, spark.sparkContext.getConf())

    slots, slots_note = task_slots(spark.sparkContext)
    if slots_note:
        print(f"warning: {slots_note}", file=sys.stderr)
    tasks = plan_tasks(listing.items, slots=slots, max_images_per_task=config.max_images_per_task)
    batch_size = images_per_batch(config, package.height, package.width)
    planning_notes = [slots_note] if slots_note else []
    if batch_size < config.batch_size:
        planning_notes.append(
            f"batches of {batch_size} images, not --batch-size {config.batch_size}: the model's {package.height}x"
            f"{package.width} input would decode to more than --max-batch-bytes {config.max_batch_bytes} per batch")
    settings = WorkerSettings(
        # An mxnet package with a twin: the workers copy (pinned) and load only the files of the runtime that runs it.
        package=runtime_package(package, runtime),
        device=config.device, batch_size=batch_size, top_k=config.top_k,
        fetch_threads=config.fetch_threads, s3_endpoint_url=config.s3_endpoint_url,
        max_object_bytes=config.max_object_bytes, max_bytes_in_flight=config.max_bytes_in_flight,
        kill_worker_once_marker=config.kill_worker_once_marker, kill_worker_after_images=config.kill_worker_after_images,
    )
    thumbnails = config.report_thumbnails
    stats = spark.sparkContext.accumulator({}, StatsAccumulator())
    row_counts = spark.sparkContext.accumulator([], TaskListAccumulator())

    def classify_partition(record_batches):
        task_started = time.perf_counter()
        task_stats: dict = {}
        context = TaskContext.get()
        counts: dict = {"partition": context.partitionId(), "attempt": context.attemptNumber()}
        report = counts["report"] = {}
        for record_batch in classify_items(items_from_arrow(record_batches), settings, task_stats):
            count_rows(record_batch, counts)
            report_inputs.gather(record_batch, report, thumbnails)
            yield record_batch
        task_stats["task_s"] = time.perf_counter() - task_started
        stats.add(task_stats)
        row_counts.add([counts])

    item_rows = spark.sparkContext.parallelize(tasks, len(tasks)).flatMap(
        lambda task: [(item.source, item.kind, item.start, item.count, item.error, item.etag, item.version_id)
                      for item in task])
    predictions_uri = join(config.output, PREDICTIONS_DIR)
    # The report's modules (matplotlib, Jinja2: about 0.4 s) load on the driver while the workers classify, not after.
    threading.Thread(target=importlib.import_module, args=("job.report",), name="import-report", daemon=True).start()
    processing_started = time.perf_counter()
    (spark.createDataFrame(item_rows, WORK_ITEM_SCHEMA)
     .mapInArrow(classify_partition, SPARK_OUTPUT_SCHEMA)
     .write.mode("overwrite" if config.overwrite else "errorifexists")
     .parquet(predictions_uri))
    processing_s = time.perf_counter() - processing_started

    summary_started = time.perf_counter()
    try:
        counts = counts_from_tasks(row_counts.value, committed_rows(storage, predictions_uri), package, thumbnails)
        why_not = "the tasks' counts do not match the committed files' rows"
    except Exception as error:  # the counts can always come from the Parquet itself, as they did before
        counts, why_not = None, f"the committed files' footers could not be read: {type(error).__name__}: {error}"
    counted_from = "tasks"
    if counts is None:
        print(f"warning: {why_not}; counting from the Parquet instead", file=sys.stderr)
        counts, counted_from = summarize(spark, predictions_uri, package), "parquet"
    worker = dict(stats.value)
    # The runtime the workers ran the model with, from what they loaded (not what was asked for): null when no worker
    # could load it. The driver hands every task the same package, so there is one; were there two, both are named.
    runtime_ran = "+".join(sorted(worker.get("images_by_runtime", {}))) or None
    failure_ratio = counts["error"] / counts["total"] if counts["total"] else 0.0
    failed = failure_ratio > config.max_failure_ratio
    summary = {
        "status": "failed" if failed else "succeeded",
        "message": (f"{counts['error']} of {counts['total']} inputs failed ({failure_ratio:.2%}), more than "
                    f"--max-failure-ratio {config.max_failure_ratio}") if failed else None,
        "inputs": list(config.inputs) or None,
        "manifest": config.manifest,
        # What the run came from (the manifest's "source": upload prefix, uploaded manifest, or submitted input).
        "source": listing.source,
        "output": predictions_uri,
        "model": {"uri": package.uri, "name": package.name, "format": package.format, "trained": package.trained,
                  "input_shape": list(package.input_shape), "provenance": package.provenance,
                  # The versions every worker loaded: a file replaced during the run fails its rows (model_changed).
                  "file_etags": package.file_etags, "runtime": runtime_ran, "onnx_twin": package.onnx_twin},
        "model_errors": sorted(worker.get("model_errors", {})),
        "runtime": runtime_ran,
        "runtime_requested": config.runtime,
        "images_by_runtime": worker.get("images_by_runtime", {}),
        "device_requested": config.device,
        "images_by_device": {key[len("images_on_"):]: value for key, value in worker.items()
                             if key.startswith("images_on_")},
        "device_notes": sorted(worker.get("device_notes", {})),
        "counts": {key: counts[key] for key in ("total", "ok", "error")} | {"skipped_objects": listing.skipped},
        "failure_ratio": failure_ratio,
        "max_failure_ratio": config.max_failure_ratio,
        "failures_by_reason": counts["failures_by_reason"],
        "per_class_counts": counts["per_class_counts"],
        "accuracy": counts["accuracy"],
        # "tasks": from the rows the tasks wrote, checked against the committed files; "parquet": read back.
        "summary_counted_from": counted_from,
        "images_per_s": counts["total"] / processing_s if processing_s else None,
        "tasks": len(tasks),
        "task_slots": slots,
        "planning_notes": planning_notes,
        "batch_size": batch_size,
        "top_k": config.top_k,
        "seconds": {"listing": listing_s, "session_start": session_s, "processing": processing_s},
        # Summed over tasks (a result task's accumulator counts once: its first successful attempt's): where the
        # workers spent their time.
        "worker_seconds": {name: worker.get(f"{name}_s", 0.0)
                           for name in ("task", "model_load", "fetch", "decode", "predict", "output")},
        # What each worker process paid once: the fixed cost's part that runs on the workers.
        "model_load_per_worker_s": _model_load_per_worker(worker.get("model_load_by_worker", {})),
        "worker_peak_rss_mb": worker.get("peak_rss_mb"),
        "worker_peak_fetch_bytes_in_flight": worker.get("peak_fetch_bytes_in_flight"),
        "memory_limits": {"max_object_bytes": config.max_object_bytes,
                          "max_bytes_in_flight": config.max_bytes_in_flight,
                          "max_batch_bytes": config.max_batch_bytes},
        "versions": _versions(spark),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    summary["seconds"]["summary"] = time.perf_counter() - summary_started
    # A local run's first driver JVM writes its class archive now (job.local_jvm), while the report renders in Python.
    dumping = _start_archive_dump(spark)
    try:
        report_started = time.perf_counter()
        # Imported here, not at the top: Python workers import this module to unpickle StatsAccumulator, and need
        # neither matplotlib nor jinja2.
        from job.report import REPORT_NAME, write_report

        summary["report"] = write_report(spark, summary, predictions_uri=predictions_uri, package=package,
                                         storage=storage, report_uri=join(config.output, REPORT_NAME),
                                         thumbnails=thumbnails, inputs=counts.get("report_inputs"))
        summary["seconds"]["report"] = time.perf_counter() - report_started
        summary_uri = join(config.output, SUMMARY_NAME)
        storage.write(summary_uri, (json.dumps(summary, indent=2) + "\n").encode(), content_type="application/json")
        # After the summary: a run in the runs table always has the summary its record points at (a crash in between
        # leaves a summary without a record, which `python -m infra.runs list` still shows).
        if config.run_record:
            record = run_record(summary, config.output, summary_uri=summary_uri, started_at=started_at)
            storage.write(config.run_record, (json.dumps(record) + "\n").encode(), content_type="application/json")
    finally:
        if dumping is not None:
            dumping.join()
    if failed:
        raise JobFailed(summary["message"])
    return summary
