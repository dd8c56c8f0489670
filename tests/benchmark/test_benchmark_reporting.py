"""The bench's reporting without running it: the pipeline limit, the fixed cost's parts, which targets apply on which
CPU, and results.json keeping the last result of each kind of CPU. The figures here are made up: they test the
arithmetic and the bookkeeping, never a measured speed."""

import json
import math

from tests.benchmark.run import (TARGETS, cpu_kind, fixed_cost_parts, pipeline_limit, target_results,
                                 with_earlier_cpus)


def test_the_pipeline_limit_adds_the_per_image_times_of_decoding_and_the_model():
    assert pipeline_limit(100.0, 900.0) == 90.0  # 10 ms + 1.11 ms per image
    assert pipeline_limit(50.0, 50.0) == 25.0
    assert pipeline_limit(100.0, 1e12) < 100.0


def _summary(load_max):
    return {"seconds": {"listing": 0.5, "session_start": 0.25, "processing": 9.0, "summary": 0.75, "report": 2.0},
            "model_load_per_worker_s": {"max": load_max, "median": load_max, "workers": 2 if load_max else 0},
            "summary_counted_from": "tasks"}


def test_the_fixed_cost_is_split_into_what_the_job_timed():
    parts = fixed_cost_parts(3.0, _summary(1.5), fixed_in_processing_s=4.0)
    assert parts["session_start"] == 3.25 and parts["model_load_max_per_worker"] == 1.5
    assert parts["first_calls_and_worker_start"] == 2.5  # 4.0 s beyond steady work, of which 1.5 s loading
    assert parts["total"] == 3.25 + 0.5 + 4.0 + 0.75 + 2.0
    warm = fixed_cost_parts(3.0, _summary(None), fixed_in_processing_s=0.5)  # the model was already loaded
    assert warm["model_load_max_per_worker"] is None and warm["first_calls_and_worker_start"] == 0.5


def _results(int8_instructions: str, vnni: bool, cpu: str = "Some CPU", smoke: bool = False) -> dict:
    scenario = {"image_size": 224, "fixed_cost_s": 9.0,
                "ratios": {"job_int8_vs_limit": 2.9, "job_vs_limit": 0.9, "job_vs_predict_batch_udf": 2.0,
                           "job_per_vcpu_vs_seed_published_per_vcpu": 80.0, "decode_vs_model_per_core": 20.0},
                "job_vs_pipeline_limit": {"job": 0.97, "onnx": 0.9, "job_int8": 0.8},
                "fixed_cost_parts_s": {"job": {"total": 12.0}}}
    return {"machine": {"cpu": cpu, "int8_instructions": int8_instructions, "vnni": vnni}, "smoke": smoke,
            "scenarios": {"seed224": scenario}}


def test_the_int8_target_at_224_applies_only_on_a_vnni_cpu_and_every_format_has_a_pipeline_target():
    for vnni, instructions in ((False, "avx2 (no VNNI)"), (True, "avx512_vnni")):
        found = {entry["target"]: entry for entry in target_results(_results(instructions, vnni))}
        int8 = found["job_int8_vs_limit_224"]
        assert int8["applies"] is vnni and int8["met"] is (False if vnni else None)
        for label, met in (("job", True), ("onnx", False), ("job_int8", False)):
            entry = found[f"{label}_vs_pipeline_limit"]
            assert entry["threshold"] == TARGETS["job_vs_pipeline_limit"] and entry["met"] is met and entry["applies"]
        assert found["fixed_cost_total_s"]["met"] is False  # 12 s, at most 6 allowed
        assert all(math.isfinite(entry["value"]) for entry in found.values())


def test_results_keep_the_last_result_of_each_kind_of_cpu(tmp_path):
    path = tmp_path / "results.json"
    old_format = _results("avx2 (no VNNI)", False, cpu="AMD EPYC")  # a file from before by_cpu
    path.write_text(json.dumps(old_format))
    vnni_run = _results("avx512_vnni", True, cpu="AMD EPYC")
    written = with_earlier_cpus(vnni_run, str(path))
    assert written["machine"] == vnni_run["machine"]  # the top level is this run, as infra/cost.py reads it
    assert set(written["by_cpu"]) == {"AMD EPYC | avx2 (no VNNI)", "AMD EPYC | avx512_vnni"}
    path.write_text(json.dumps(written))
    again = with_earlier_cpus(_results("avx512_vnni", True, cpu="AMD EPYC"), str(path))
    smoke = with_earlier_cpus(_results("avx512_vnni", True, cpu="AMD EPYC", smoke=True), str(path))
    assert len(again["by_cpu"]) == 2 and "by_cpu" not in again["by_cpu"][cpu_kind(vnni_run)]
    assert again["by_cpu"][cpu_kind(old_format)] == old_format
    assert len(smoke["by_cpu"]) == 3  # a smoke run never replaces a real result
    assert with_earlier_cpus(vnni_run, str(tmp_path / "none.json"))["by_cpu"] == {cpu_kind(vnni_run): vnni_run}
