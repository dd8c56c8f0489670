"""A tiny run of the `make bench` harness: every contender runs and reports; no timing is asserted (a shared machine
makes clocks meaningless, and the tiny inputs make these numbers meaningless too).

To stay short, the smoke run gives each Spark contender one application, so its "cold" runs are not cold: it checks
the harness (every contender, the INT8 package made by the quantize command, both rates, the targets, the table),
not the method of measuring a new application per run, which only `make bench` exercises."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTENDERS = {"limit", "limit_onnx", "limit_int8", "decode", "job", "seed", "predict_batch_udf", "onnx", "job_int8"}


@pytest.mark.spark
def test_the_harness_runs_every_contender_and_writes_the_results_file(tmp_path):
    wheels = glob.glob(os.path.join(REPO, "build", "data", "foolbox-3.3.4-*.whl"))
    assert wheels, "run `make data` (make test does): the benchmark images come from the foolbox wheel"
    results_path = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmark.run", "--foolbox-wheel", wheels[0], "--results", str(results_path),
         "--smoke", "--scenario", "cifar32"],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": REPO})
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(results_path.read_text())
    scenario = results["scenarios"]["cifar32"]
    assert set(scenario["images_per_s"]) == CONTENDERS
    # Rates by difference are not asserted: a smoke run's sizes are too small for the difference to mean anything
    # (it may even be negative, which by_difference reports as NaN). What the harness must do is time every run.
    assert all(scenario["images_per_s"][label] > 0 for label in ("limit", "limit_onnx", "limit_int8", "decode"))
    assert set(scenario["images_per_s_warm"]) == {"job", "onnx", "job_int8", "seed", "predict_batch_udf"}
    for label, result in scenario["contenders"].items():
        timings = result["timings_s"]
        assert min(timings["cold_small"] + timings["cold_large"] + timings["cold_session"]) > 0, label
        assert timings["warm"]["warm_small"] > 0 and timings["warm"]["warm_large"] > 0, label
    assert scenario["worker_seconds_cold_large"]["job_int8"]["predict"] > 0
    assert {entry["target"] for entry in results["target_results"]} >= {"job_int8_vs_limit_32", "job_vs_limit"}
    assert 0 <= scenario["int8_package_agreement"]["top1_agreement"] <= 1
    assert scenario["fixed_cost_s"] > 0 and scenario["worker_peak_rss_mb"] > 0
    assert {"job", "seed"} <= set(scenario["fixed_cost_s_by_contender"])  # what infra/cost.py reads
    assert results["smoke"] is True and results["machine"]["cores"] >= 1
    assert "x limit" in completed.stdout  # the printed table
    # Issue 20: decoding alone and the pipeline limit per package format, the job's ratio to it, the fixed cost's
    # parts, the CPU's 8-bit instructions, and the last result per kind of CPU. Present and sane, not their values.
    assert set(scenario["decode_alone_images_per_s"]) == set(scenario["pipeline_limit_images_per_s"]) == {
        "mxnet", "onnx", "int8"}
    for kind, model_alone in (("mxnet", "limit"), ("onnx", "limit_onnx"), ("int8", "limit_int8")):
        decode_alone, limit = scenario["decode_alone_images_per_s"][kind], scenario["pipeline_limit_images_per_s"][kind]
        assert math.isfinite(decode_alone) and decode_alone > 0, kind
        assert 0 < limit < min(decode_alone, scenario["images_per_s"][model_alone]), kind
    assert set(scenario["job_vs_pipeline_limit"]) == {"job", "onnx", "job_int8"}  # NaN allowed: rates by difference
    for label, parts in scenario["fixed_cost_parts_s"].items():
        for part in ("session_start", "listing", "summary", "report", "model_load_max_per_worker",
                     "model_load_median_per_worker", "total"):
            assert math.isfinite(parts[part]) and parts[part] > 0, (label, part)
        assert parts["model_load_max_per_worker"] >= parts["model_load_median_per_worker"], label
        assert parts["first_calls_and_worker_start"] >= 0 and parts["summary_counted_from"] == "tasks", label
    assert isinstance(results["machine"]["vnni"], bool)
    assert {"job_vs_pipeline_limit", "fixed_cost_total_s"} <= {entry["kind"] for entry in results["target_results"]}
    assert all(entry["met"] is None for entry in results["target_results"] if not entry["applies"])
    assert list(results["by_cpu"]) == [f"{results['machine']['cpu']} | {results['machine']['int8_instructions']} | "
                                       "smoke"]
    # Goal 3's decoding figures and goal 5's JVM start-up, side by side: present and sane.
    parts = scenario["decode_parts_us"]
    for name in ("job_decode", "per_image_arrays", "opencv_only", "simplejpeg", "normalise", "uint8_input"):
        assert math.isfinite(parts[name]) and parts[name] > 0, name
    assert 0 <= parts["simplejpeg_identical"] <= parts["images"] and scenario["int8_model_us_per_image_per_core"] > 0
    assert set(results["jvm_start_s"]["variants"]) == {"default", "c1", "job"}
    # The scenario's first job run wrote the installation's class archive; the job's variant started from it.
    assert "-XX:SharedArchiveFile=" in results["jvm_start_s"]["variants"]["job"]["options"]
    for name, variant in results["jvm_start_s"]["variants"].items():
        assert variant["total_s"] > variant["session_s"] > 0, name
    for label, split in scenario["where_the_time_goes"].items():  # issue 20: where the job's time goes
        # Differences of two tiny runs: present and finite, of any sign.
        assert split["images"] > 0 and all(math.isfinite(seconds) for seconds in split["parts"].values()), label
    for printed in ("pipeline_limit", "fixed cost, job_int8: total", "8-bit instructions: ", "JVM start-up",
                    "straight into the batch", "where the time goes, job_int8"):
        assert printed in completed.stdout, printed
