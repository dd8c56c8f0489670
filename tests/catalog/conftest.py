"""Fixtures for the results catalog's tests: two runs of the real job on local Spark, laid out as the stack's steps lay
them out (``results/<run id>/``), with run ids made by the trigger's own functions, and the synthesized stack."""

from __future__ import annotations

import glob
import io
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
for path in (REPO, REPO / "tests" / "infra", REPO / "infra" / "trigger_function"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

RESULTS_PREFIX = "results/"
RUNS_PREFIX = "runs/"
# The retried run's source, as the trigger writes it into the manifest of uploads under one prefix.
UPLOAD_PREFIX = "s3://amzn-s3-demo-bucket/incoming/run-1/"


@dataclass(frozen=True)
class JobResults:
    """``root`` stands for the data bucket: each run wrote ``root/results/<run id>/`` (predictions/, summary.json) and
    its record ``root/runs/<run id>.json``."""

    root: Path
    first_run_id: str  # a batch's first attempt: the batch id itself
    retried_run_id: str  # another batch's second attempt: <batch id>-2

    @property
    def run_ids(self) -> tuple[str, str]:
        return self.first_run_id, self.retried_run_id

    def run_dir(self, run_id: str) -> Path:
        return self.root / RESULTS_PREFIX / run_id

    def run_record(self, run_id: str) -> Path:
        return self.root / RUNS_PREFIX / f"{run_id}.json"


@pytest.fixture(scope="session")
def job_results(tmp_path_factory) -> JobResults:
    """Two runs of the real job (real MXNet, real CIFAR-10 images from the foolbox wheel, an untrained ResNet-18):
    the first on 20 PNGs and a file that is not an image, the retried one on the same images as one CIFAR-10 batch
    with their labels (so ``index`` and ``true_label`` hold values), listed in a manifest whose source is an upload
    prefix (``UPLOAD_PREFIX``). Each writes its run record, as a step does."""
    import runs
    from job.config import parse_args
    from job.model_package import export_gluon, zoo_resnet18
    from job.pipeline import run
    from job.sample_data import cifar_batch_bytes, foolbox_cifar10

    wheels = glob.glob(str(REPO / "build" / "data" / "foolbox-3.3.4-*.whl"))
    if not wheels:
        pytest.fail("the foolbox wheel with the CIFAR-10 sample images is missing: run `make data` (make test does)")
    samples = foolbox_cifar10(wheels[0])
    work = tmp_path_factory.mktemp("catalog")
    model = work / "model"
    export_gluon(zoo_resnet18(10, seed=1), str(model), name="untrained", input_shape=(3, 32, 32),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=[f"c{i}" for i in range(10)], trained=False)
    first_inputs, retried_inputs = work / "first", work / "retried"
    first_inputs.mkdir()
    retried_inputs.mkdir()
    for name, data, _ in samples:
        (first_inputs / name).write_bytes(data)
    (first_inputs / "notes.png").write_bytes(b"not an image")
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data, _ in samples])
    labels = np.array([label for _, _, label in samples])
    (retried_inputs / "test_batch.bin").write_bytes(cifar_batch_bytes(pixels, labels))

    now = datetime.now(timezone.utc)
    results = JobResults(
        root=work / "bucket",
        first_run_id=runs.run_id(runs.new_batch_id(now), 1),
        retried_run_id=runs.run_id(runs.new_batch_id(now), 2),
    )
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({"objects": [str(retried_inputs / "test_batch.bin")],
                                    "source": {"kind": "upload", "prefix": UPLOAD_PREFIX, "uploads": 1}}))
    for run_id, source in zip(results.run_ids, (["--input", str(first_inputs)], ["--manifest", str(manifest)])):
        run(parse_args([*source, "--model", str(model), "--output", str(results.run_dir(run_id)),
                        "--max-failure-ratio", "0.1", "--run-record", str(results.run_record(run_id))]),
            master="local[2,4]")
    return results


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory):
    """The default stack (the catalog is the same in every variant; tests/infra checks each one's resources)."""
    from infra_helpers import synthesize

    return synthesize(tmp_path_factory.mktemp("artifacts"))
