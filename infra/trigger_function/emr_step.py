"""The one definition of the EMR step that runs the inference job.

Both the trigger Lambda (which submits steps) and the stack (which documents the command in its outputs) build the step
here, so the job's command line - the contract documented in README.md ("The job's command line") - has a single writer.
This module imports nothing outside the standard library: it runs inside the Lambda.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

COMMAND_RUNNER_JAR = "command-runner.jar"
# EMR rejects a step whose strings add up to more than this many characters; a manifest URI keeps us far below it.
MAX_STEP_STRING_CHARS = 10_240
DEFAULT_STEP_TIMEOUT_MINUTES = 240
# After the time limit, `timeout` sends SIGTERM (Spark stops its context and releases its YARN containers); a driver
# still alive this long after that is killed.
STEP_KILL_GRACE_SECONDS = 120
# A step asks for at most one executor per this many images per task slot of an executor (review 2, #8): a small batch
# then runs on the executors the cluster already has, instead of dynamic allocation asking YARN for an executor per
# planned task and managed scaling adding Spot nodes that finish bootstrapping after the work is done. 500 images are
# about 10 s of one CPU slot's work at 224x224 (benchmarks/results.json), far less than a node's bootstrap.
MIN_IMAGES_PER_EXECUTOR_SLOT = 500


@dataclass(frozen=True)
class JobArtifacts:
    """Where the stack uploaded the packaged job (see README, "Packaged job")."""

    py_files_uri: str  # s3://bucket/artifacts/job.zip: the `job` package at the zip's root
    entry_point_uri: str  # s3://bucket/artifacts/spark_entry.py


@dataclass(frozen=True)
class JobOptions:
    """The job's tuning arguments that the stack fixes at deploy time (validated by the stack's settings)."""

    device: str = "auto"  # cpu | gpu | auto
    batch_size: int = 256
    top_k: int = 5
    max_failure_ratio: float = 0.01
    # Wall-clock limit of the whole step: a hung step cannot keep a cluster (and a transient cluster's bill) alive.
    timeout_minutes: int = DEFAULT_STEP_TIMEOUT_MINUTES
    # The cluster's task slots (the most tasks its workers run at once), computed by the stack from the fleets and
    # managed scaling's maximum: the step's spark.default.parallelism, from which the job plans its tasks. None: Spark's
    # own default. Kept out of the cluster's Configurations so that a resize does not replace the cluster.
    default_parallelism: Optional[int] = None
    # Task slots per executor (spark.executor.cores / spark.task.cpus): 4 on cpu, 1 on gpu.
    executor_task_slots: int = 1
    # The job's --max-batch-bytes (decoded bytes of one batch, job/config.py): the executors' memory budget for a
    # batch, so that a package whose input is larger than the stack's model_input_size setting still gets batches of
    # that size (fewer images). None: the job's own default.
    max_batch_bytes: Optional[int] = None


def build_step(
    *,
    name: str,
    artifacts: JobArtifacts,
    manifest_uri: str,
    model_uri: str,
    output_uri: str,
    options: JobOptions,
    run_record_uri: Optional[str] = None,
    image_count: Optional[int] = None,
    action_on_failure: str = "CONTINUE",
) -> dict:
    """Return an EMR ``StepConfig`` (the shape ``AddJobFlowSteps`` and ``RunJobFlow`` take) that runs the job on a manifest.

    The step points at a manifest instead of listing objects because EMR limits a step's strings to 10,240 characters.

    - ``--deploy-mode client``: the driver runs on the primary node, which runs no executors. In cluster mode it would
      take a YARN container on a worker: with the GPU sizing (an executor asks for the vcores a GPU node can spare) that
      node could host no executor, and with one core node the step would wait forever. Client mode also puts the
      driver's output (the job's traceback on failure) in the step's own stderr log.
    - ``--conf``: the cluster's task slots as ``spark.default.parallelism`` (``options.default_parallelism``) and,
      when the batch's ``image_count`` is known, a cap on the executors dynamic allocation may ask for (see
      :func:`max_executors`).
    - ``--max-batch-bytes`` only when ``options.max_batch_bytes`` is set (else the job's default).
    - ``--run-record`` only when ``run_record_uri`` is given: the run's row in the runs table (infra/catalog.py).
    - ``timeout``: EMR steps have no time limit of their own. coreutils' ``timeout`` (on every EMR node) ends
      spark-submit after ``options.timeout_minutes`` (exit code 124, so the step is FAILED), which stops the Spark
      application, and a transient cluster can then end.
    """
    args = [
        "timeout",
        "--kill-after",
        f"{STEP_KILL_GRACE_SECONDS}s",
        f"{options.timeout_minutes}m",
        "spark-submit",
        "--deploy-mode",
        "client",
        *_spark_conf(options, image_count),
        "--py-files",
        artifacts.py_files_uri,
        artifacts.entry_point_uri,
        "--manifest",
        manifest_uri,
        "--model",
        model_uri,
        "--output",
        output_uri,
        "--device",
        options.device,
        "--batch-size",
        str(options.batch_size),
        "--top-k",
        str(options.top_k),
        "--max-failure-ratio",
        str(options.max_failure_ratio),
        *(["--max-batch-bytes", str(options.max_batch_bytes)] if options.max_batch_bytes is not None else []),
        *(["--run-record", run_record_uri] if run_record_uri is not None else []),
    ]
    step_chars = len(name) + sum(len(arg) for arg in args)
    if step_chars > MAX_STEP_STRING_CHARS:
        raise ValueError(
            f"EMR step {name!r} has {step_chars} characters of strings; EMR accepts at most {MAX_STEP_STRING_CHARS}. "
            "Shorten the bucket prefixes or the model URI."
        )
    return {
        "Name": name,
        "ActionOnFailure": action_on_failure,
        "HadoopJarStep": {"Jar": COMMAND_RUNNER_JAR, "Args": args},
    }


def max_executors(image_count: int, options: JobOptions) -> int:
    """The most executors a step over ``image_count`` images may ask for: one per MIN_IMAGES_PER_EXECUTOR_SLOT images
    per executor slot, at least 1, and never more than the cluster's slots hold (when known)."""
    wanted = max(1, math.ceil(image_count / (MIN_IMAGES_PER_EXECUTOR_SLOT * options.executor_task_slots)))
    if options.default_parallelism is not None:
        wanted = min(wanted, max(1, options.default_parallelism // options.executor_task_slots))
    return wanted


def _spark_conf(options: JobOptions, image_count: Optional[int]) -> list[str]:
    conf = []
    if options.default_parallelism is not None:
        conf.append(f"spark.default.parallelism={options.default_parallelism}")
    if image_count is not None:
        conf.append(f"spark.dynamicAllocation.maxExecutors={max_executors(image_count, options)}")
    return [argument for setting in conf for argument in ("--conf", setting)]


def job_arguments(step: dict) -> list[str]:
    """The job's own arguments inside a step built by :func:`build_step` (everything after the entry point)."""
    args = step["HadoopJarStep"]["Args"]
    entry_point_index = args.index("--py-files") + 2
    return args[entry_point_index + 1 :]
