"""YARN's memory rule, from measured worker memory: the executors the stack writes leave room for their Python workers.

YARN's physical-memory check kills an executor's container when the resident memory of its processes (the executor
JVM and its Python workers, one per task slot) exceeds ``spark.executor.memory`` + ``spark.executor.memoryOverhead``
+ ``spark.executor.pyspark.memory``. The heap is the JVM's; the rest must hold the JVM's off-heap memory and every
Python worker. This test runs the job's real per-task code (``job.worker.classify_items``: fetch, JPEG decode,
normalise, predict, Arrow output, with its prefetching) in a fresh process, as a Spark Python worker runs it (one
intra-op thread: Spark sets OMP_NUM_THREADS to spark.task.cpus), on real 224x224 JPEGs with a ResNet-18 (1,000
classes, random weights: the memory of a trained one is the same) as an MXNet and as an ONNX package, at the batch
size the stack hands the job. It measures the worker's peak resident memory (VmHWM) and checks it against the
sizing in the synthesized template.

When ``spark.executor.pyspark.memory`` is set, Spark also gives each worker an address-space limit (RLIMIT_AS) of
pyspark.memory / executor cores: the worker is then run under that limit, as Spark would, and must finish.

What this cannot show: the JVM's own off-heap use (a reserve, JVM_OFF_HEAP_MIB, is counted for it), an S3 client's
buffers (inputs are local files here), a GPU worker (no GPU here), and a model larger than ResNet-18 (set
model_input_size to its input size; a deeper model needs more: see the infra README). The first real 224-px step's
NodeManager log ("Container killed by YARN for exceeding memory limits") is the proof on a cluster.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
from infra_helpers import REPO_ROOT

from infra.cluster_definition import JVM_OFF_HEAP_MIB, PYTHON_WORKERS_PER_EXECUTOR
from job.worker import PREFETCH_BATCHES

MODEL_INPUT_SIZE = 224
# Enough batches for the prefetch queue to fill and drain: PREFETCH_BATCHES ahead, one predicting, one more after.
STEADY_BATCHES = PREFETCH_BATCHES + 3

# One Spark task's work in a fresh Python process; prints the process's peak resident memory. argv: package folder,
# image folder, batch size, address-space limit in MiB (0: none).
WORKER_PROGRAM = """
import json, os, resource, sys
package_dir, image_dir, batch_size, limit_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if limit_mib:
    resource.setrlimit(resource.RLIMIT_AS, (limit_mib << 20, limit_mib << 20))  # as pyspark's worker.py does
from job.model_package import read_package
from job.sources import KIND_IMAGE, WorkItem
from job.storage import Storage
from job.worker import WorkerSettings, classify_items
from job.config import DEFAULT_FETCH_THREADS
package = read_package(package_dir, Storage())
items = [WorkItem(source=os.path.join(image_dir, name), kind=KIND_IMAGE)
         for name in sorted(os.listdir(image_dir)) if name.endswith(".jpg")]
settings = WorkerSettings(package=package, device="cpu", batch_size=batch_size, top_k=5,
                          fetch_threads=DEFAULT_FETCH_THREADS, s3_endpoint_url=None)
stats = {}
rows = [batch for batch in classify_items(items, settings, stats)]
statuses = [status for batch in rows for status in batch.column("status").to_pylist()]
# VmHWM, the high-water mark of this program's own memory: ru_maxrss would not do, since Linux keeps it across
# execve, so it would report the resident size of the (large) pytest process this one was forked from.
with open("/proc/self/status") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"rows": len(statuses), "ok": statuses.count("ok"), "peak_rss_mib": peak_kib / 1024}))
"""


def _run(args: list[str], **environment: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **environment}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, str]:
    """A ResNet-18 at 224x224, 1,000 classes: the MXNet package and its ONNX export (the job's own tools)."""
    root = tmp_path_factory.mktemp("resnet18-224")
    mxnet, onnx = str(root / "mxnet"), str(root / "onnx")
    for command in (
        ["export-zoo", "--out", mxnet, "--input-size", str(MODEL_INPUT_SIZE), "--classes", "1000"],
        ["to-onnx", "--package", mxnet, "--out", onnx],
    ):
        completed = _run(["-m", "job.model_package", *command])
        assert completed.returncode == 0, completed.stderr[-2000:]
    return {"mxnet": mxnet, "onnx": onnx}


@pytest.fixture(scope="module")
def stack_sizing(synth) -> dict:
    """The default stack's executor settings (as written into its Configurations) and the job's batch size."""
    stack = synth().stack
    definition = stack.resolve(stack.cluster.job_flow)
    configurations = definition["Configurations"]
    (spark_defaults,) = [c["Properties"] for c in configurations if c["Classification"] == "spark-defaults"]
    return {**spark_defaults, "batch_size": stack.job_options.batch_size}


@pytest.fixture(scope="module")
def images(tmp_path_factory, stack_sizing) -> str:
    """Real photos (the CIFAR-10 samples in the foolbox wheel, varied) as 224x224 JPEGs, enough for STEADY_BATCHES."""
    sys.path.insert(0, str(REPO_ROOT / "tests" / "benchmark"))
    from data import write_images

    wheels = glob.glob(str(REPO_ROOT / "build" / "data" / "foolbox-3.3.4-*.whl"))
    if not wheels:
        pytest.fail("the foolbox wheel with the CIFAR-10 sample images is missing: run `make data` (make test does)")
    count = STEADY_BATCHES * stack_sizing["batch_size"]
    return write_images(wheels[0], str(tmp_path_factory.mktemp("jpeg224")), count, MODEL_INPUT_SIZE)


def _mib(value: str) -> int:
    """A Spark memory string ("4608m", "1g") in MiB."""
    units = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
    return int(float(value[:-1]) * units[value[-1].lower()]) if value[-1].isalpha() else int(value) >> 20


@pytest.mark.parametrize("package_format", ["mxnet", "onnx"])
def test_an_executors_python_workers_fit_the_memory_yarn_allows_it(packages, images, stack_sizing, package_format):
    cores = int(stack_sizing["spark.executor.cores"])
    workers = cores // int(stack_sizing.get("spark.task.cpus", "1"))
    assert workers == PYTHON_WORKERS_PER_EXECUTOR["cpu"]
    pyspark_mib = _mib(stack_sizing["spark.executor.pyspark.memory"]) if "spark.executor.pyspark.memory" in (
        stack_sizing
    ) else 0
    # Spark's PythonRunner gives each worker an equal share of pyspark.memory as its address-space limit.
    limit_mib = pyspark_mib // cores if pyspark_mib else 0
    completed = _run(
        ["-c", WORKER_PROGRAM, packages[package_format], images, str(stack_sizing["batch_size"]), str(limit_mib)],
        OMP_NUM_THREADS="1",
    )
    assert completed.returncode == 0, (
        f"the worker failed (address-space limit {limit_mib or 'none'} MiB): {completed.stderr[-3000:]}"
    )
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    assert measured["rows"] == measured["ok"] == STEADY_BATCHES * stack_sizing["batch_size"]
    # YARN's physical-memory check: the container's processes against heap + overhead + pyspark.memory. The heap is
    # the JVM's; the overhead must also hold the JVM's off-heap memory.
    room_for_workers_mib = _mib(stack_sizing["spark.executor.memoryOverhead"]) + pyspark_mib - JVM_OFF_HEAP_MIB
    needed_mib = workers * measured["peak_rss_mib"]
    assert needed_mib <= room_for_workers_mib, (
        f"{workers} {package_format} workers at batch size {stack_sizing['batch_size']} peak at {needed_mib:.0f} MiB "
        f"resident ({measured['peak_rss_mib']:.0f} MiB each); the executor leaves them {room_for_workers_mib} MiB"
    )
