"""The EMR step, exactly as ``build_step`` builds it, on a multi-process Spark cluster that loses a worker mid-job.

A Spark standalone master and two worker processes (2 cores each: 4 task slots, one 2-core executor per worker) run on
loopback from pyspark's own ``spark-class``. The step's arguments (``timeout ... spark-submit --deploy-mode client
--py-files job.zip spark_entry.py --manifest ...``) run unchanged, with the job packaged by ``infra/packaging.py`` and
the Spark configuration that EMR writes from ``infra.cluster_definition.spark_configurations``. Inputs (a manifest of
real CIFAR-10 images) and the model package (the untrained model-zoo ResNet-18: its labels mean nothing, only the
rows are counted) are on a moto S3 server on loopback, which the driver and the executors' Python workers reach
through ``AWS_ENDPOINT_URL_S3`` in their environment. Once a task is writing its output, the Worker JVM that hosts it
is killed with SIGKILL. One run; each test reads one of its records (Parquet, summary, Spark's event log).

What the cluster's configuration changes from EMR's ``spark-defaults`` (the rest is used as EMR writes it):
- replaced: ``spark.pyspark.python`` / ``spark.pyspark.driver.python`` and the ``spark-env`` exports
  ``PYSPARK_PYTHON`` / ``PYSPARK_DRIVER_PYTHON`` -> this virtualenv's interpreter (``/usr/bin/python3.11`` has no MXNet
  here); ``spark.executor.cores`` / ``.memory`` / ``.memoryOverhead`` -> 2 cores, 768m, 256m (EMR's are sized for a
  c5.2xlarge; as there, an executor runs several tasks at once, and two executor JVMs are what 2 cores can start fast);
- added: ``spark.master`` (EMR sets ``yarn`` itself), ``spark.dynamicAllocation.enabled`` (EMR's default, which EMR
  sets outside the classification) with ``spark.dynamicAllocation.shuffleTracking.enabled`` (standalone has no
  external shuffle service; EMR's YARN has one), ``spark.eventLog.*`` (EMR logs events to HDFS; here a local folder the
  test reads), ``spark.ui.port`` 0 (a free port).
- ``spark.default.parallelism`` is not overridden: as on EMR, the step carries it (``--conf``, from the stack's
  JOB_OPTIONS ``default_parallelism``: here this cluster's slot count). The YARN classifications (``yarn-site``,
  ``capacity-scheduler``) have nothing to configure without YARN and are left out.

What this cannot prove: YARN (container sizing, the ExecutorLauncher's container, node labels, decommissioning) and
GPU scheduling; EMRFS or S3A writing to s3:// (pyspark from PyPI has no hadoop-aws, so the output is a local folder
every process shares, and the Parquet commit is the local FileOutputCommitter's, not EMR's S3 committer); IAM and the
real S3 (moto); nodes on a network: everything is one machine, so a dead worker is a dead process, not a lost host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer
from standalone_cluster import (ClusterError, KilledWorker, StandaloneCluster, kill_worker_mid_task, read_event_log,
                                start_step, write_spark_conf_dir)

from infra.cluster_definition import spark_configurations
from infra.packaging import ENTRY_POINT_NAME, JOB_ZIP_NAME, stage_artifacts
from infra.trigger_function.emr_step import JobArtifacts, JobOptions, build_step

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
# The bucket name AWS reserves for documentation examples: it is nobody's real bucket.
BUCKET = "amzn-s3-demo-bucket"
REGION = "us-east-1"
WORKERS = 2
CORES_PER_WORKER = 2
# One executor per worker, using both of its cores (replaces the cluster's spark.executor.cores).
EXECUTOR_CORES = CORES_PER_WORKER
# 20 real images under 20 distinct prefixes: 400 inputs, so each of the 4 tasks classifies 100 in several batches of 32.
IMAGE_COPIES = 20
BATCH_SIZE = 32
STEP_SECONDS_LIMIT = 240


@dataclass(frozen=True)
class StepRun:
    """What one run left behind; the bulky records stay out of the repr that pytest prints on a failure."""

    exit_code: int
    killed: KilledWorker
    slots: int
    executors_by_worker: dict[int, set[str]]
    driver_log_tail: str = field(repr=False)
    sources: list[str] = field(repr=False)  # the manifest's object URIs
    rows: list[dict] = field(repr=False)  # source and status of every Parquet row
    summary: dict = field(repr=False)
    events: list[dict] = field(repr=False)

    def write_stage_events(self, event_name: str) -> list[dict]:
        """Events of the job's first stage: the one that classifies and writes the Parquet."""
        first_stage = next(event["Stage Info"]["Stage ID"] for event in self.events
                           if event["Event"] == "SparkListenerStageSubmitted")
        return [event for event in self.events if event["Event"] == event_name and _stage_id(event) == first_stage]


def _stage_id(event: dict):
    """The stage an event belongs to: task events name it, stage events carry it in their stage info."""
    return event["Stage ID"] if "Stage ID" in event else event.get("Stage Info", {}).get("Stage ID")


def _process_environment(s3_endpoint: str) -> dict[str, str]:
    """What every cluster process inherits: this machine's environment without any AWS or Spark setting, plus fake
    credentials for the loopback S3 server. Nothing puts the job on PYTHONPATH: it must come from job.zip."""
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith(("AWS_", "SPARK_", "PYSPARK_")) and name != "PYTHONPATH"}
    return {**inherited, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_ENDPOINT_URL_S3": s3_endpoint}


def _upload_inputs(s3, foolbox_wheel: str, model_dir: Path) -> tuple[str, str, list[str]]:
    """The model package, the images and their manifest on the S3 server: (manifest URI, model URI, image URIs)."""
    from job.sample_data import foolbox_cifar10

    model_uri = f"s3://{BUCKET}/models/untrained/"
    for path in sorted(model_dir.iterdir()):
        s3.upload_file(str(path), BUCKET, f"models/untrained/{path.name}")
    images = foolbox_cifar10(foolbox_wheel)
    sources = []
    for copy in range(IMAGE_COPIES):
        for name, data, _ in images:
            key = f"incoming/copy-{copy:03d}/{name}"
            s3.put_object(Bucket=BUCKET, Key=key, Body=data)
            sources.append(f"s3://{BUCKET}/{key}")
    s3.put_object(Bucket=BUCKET, Key="manifests/standalone.json", Body=json.dumps(sources).encode())
    return f"s3://{BUCKET}/manifests/standalone.json", model_uri, sources


def _export_untrained_model(directory: Path) -> Path:
    from job.model_package import export_gluon, zoo_resnet18

    export_gluon(zoo_resnet18(10, seed=1), str(directory), name="untrained", input_shape=(3, 32, 32),
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), labels=[f"c{i}" for i in range(10)],
                 trained=False)
    return directory


@pytest.fixture(scope="module")
def step_run(tmp_path_factory, foolbox_wheel) -> StepRun:
    root = tmp_path_factory.mktemp("standalone")
    events_dir = root / "events"
    events_dir.mkdir()
    output = root / "results"

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3_endpoint = f"http://{host}:{port}"
    environment = _process_environment(s3_endpoint)
    cluster = StandaloneCluster(root=root, workers=WORKERS, cores_per_worker=CORES_PER_WORKER,
                                memory_per_worker="2g", environment=environment)
    driver = None
    try:
        cluster.start()  # the workers start while the model, the job and the images are prepared
        model_dir = _export_untrained_model(root / "model")
        artifacts_dir = stage_artifacts(REPO, root / "artifacts")
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION, aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        manifest_uri, model_uri, sources = _upload_inputs(s3, foolbox_wheel, model_dir)
        cluster.wait_until_ready()

        step = build_step(
            name="mxnet-inference-standalone",
            artifacts=JobArtifacts(py_files_uri=(artifacts_dir / JOB_ZIP_NAME).as_uri(),
                                   entry_point_uri=(artifacts_dir / ENTRY_POINT_NAME).as_uri()),
            manifest_uri=manifest_uri, model_uri=model_uri, output_uri=str(output),
            # The stack's JOB_OPTIONS for this cluster: its slots, 2 per executor. No image count: the step's
            # executor cap (one executor per 1,000 images here) would leave one worker without an executor.
            options=JobOptions(device="cpu", batch_size=BATCH_SIZE, top_k=3, max_failure_ratio=0.0,
                               default_parallelism=cluster.slots, executor_task_slots=EXECUTOR_CORES),
        )
        conf_dir = root / "spark-conf"
        write_spark_conf_dir(
            conf_dir, spark_configurations("cpu", region=REGION),
            replaced={"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
                      "spark.executor.cores": str(EXECUTOR_CORES), "spark.executor.memory": "768m",
                      "spark.executor.memoryOverhead": "256m"},
            added={"spark.master": cluster.master_url,
                   "spark.dynamicAllocation.enabled": "true",
                   "spark.dynamicAllocation.shuffleTracking.enabled": "true",
                   "spark.eventLog.enabled": "true", "spark.eventLog.dir": events_dir.as_uri(),
                   "spark.ui.port": "0"},
            env_replaced={"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable},
        )
        (root / "driver-local").mkdir()
        driver = start_step(step, conf_dir=conf_dir, cwd=root, log=root / "driver.log",
                            environment={**environment, "SPARK_LOCAL_DIRS": str(root / "driver-local")})
        killed = kill_worker_mid_task(cluster, driver, output / "predictions")
        try:
            exit_code = driver.popen.wait(timeout=STEP_SECONDS_LIMIT)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"the step did not end within {STEP_SECONDS_LIMIT} s; last lines of {driver.log}:\n"
                               f"{driver.tail()}") from None
        predictions = output / "predictions"
        rows = pq.read_table(predictions, columns=["source", "status"]).to_pylist() if predictions.is_dir() else []
        summary_path = output / "summary.json"
        return StepRun(
            exit_code=exit_code,
            driver_log_tail=driver.tail(),
            sources=sources,
            rows=rows,
            summary=json.loads(summary_path.read_text()) if summary_path.exists() else {},
            events=read_event_log(events_dir),
            executors_by_worker={index: cluster.executors_of(index) for index in range(WORKERS)},
            killed=killed,
            slots=cluster.slots,
        )
    finally:
        if driver is not None:
            driver.stop_group()
        cluster.stop()
        server.stop()


def test_every_input_comes_out_exactly_once_although_a_worker_died(step_run):
    assert step_run.exit_code == 0, step_run.driver_log_tail
    assert len(step_run.rows) == len(step_run.sources) == len(set(step_run.sources))
    assert Counter(row["source"] for row in step_run.rows) == Counter(step_run.sources)
    assert Counter(row["status"] for row in step_run.rows) == {"ok": len(step_run.sources)}
    assert step_run.summary["counts"]["total"] == len(step_run.sources)


def test_the_kill_interrupted_running_tasks_which_then_succeeded_on_the_surviving_worker(step_run):
    lost_executors = step_run.executors_by_worker[step_run.killed.index]
    task_ends = step_run.write_stage_events("SparkListenerTaskEnd")
    lost = [event["Task Info"] for event in task_ends if event["Task End Reason"]["Reason"] == "ExecutorLostFailure"]
    succeeded = [event["Task Info"] for event in task_ends if event["Task End Reason"]["Reason"] == "Success"]
    lost_partitions = {task["Index"] for task in lost}

    assert step_run.killed.partition in lost_partitions
    assert {task["Executor ID"] for task in lost} <= lost_executors
    assert Counter(task["Index"] for task in succeeded) == Counter(range(step_run.summary["tasks"]))
    assert not {task["Executor ID"] for task in succeeded if task["Index"] in lost_partitions} & lost_executors


def test_tasks_ran_on_executors_of_every_worker(step_run):
    """Task attempts of the write stage, the lost ones included: they ran wherever the cluster had slots."""
    executors = {event["Task Info"]["Executor ID"] for event in step_run.write_stage_events("SparkListenerTaskEnd")}
    workers = {index for index, hosted in step_run.executors_by_worker.items() if executors & hosted}

    assert len(executors) > 1
    assert workers == set(range(WORKERS))


def test_the_job_planned_a_task_per_slot_before_any_executor_existed(step_run):
    """Dynamic allocation starts the application with no executors (Spark's defaultParallelism would be 2); the
    planned task count comes from spark.default.parallelism, which the cluster definition sets to the slot count."""
    (submitted,) = step_run.write_stage_events("SparkListenerStageSubmitted")
    first_job_submitted = next(event["Submission Time"] for event in step_run.events
                               if event["Event"] == "SparkListenerJobStart")
    first_executor_added = min(event["Timestamp"] for event in step_run.events
                               if event["Event"] == "SparkListenerExecutorAdded")

    assert submitted["Stage Info"]["Number of Tasks"] == step_run.summary["tasks"] >= step_run.slots
    assert first_executor_added > first_job_submitted
