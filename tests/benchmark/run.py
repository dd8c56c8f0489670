"""`make bench`: every contender on the same cores, model package and images, in one run; ratios, not clocks.

    python -m tests.benchmark.run --foolbox-wheel WHEEL --results benchmarks/results.json [--smoke]

Steady throughput of the Spark contenders is measured by difference, in one Spark application per contender: a cold run
on a quarter of the images (starts the Python workers, loads the model), then warm runs on the quarter and on all N
images, each warm run repeated and the fastest kept; steady images/s = (N - N/4) / (T_warm(N) - T_warm(N/4)), so what
every run pays (job scheduling, output commit) cancels out too. The limit and decoding are also the best of repeats.
The fixed cost is what the cold run took beyond its steady share, plus the session start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

from tests.benchmark.data import write_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.path.join(REPO, "build", "bench")
# The 2017 seed: 10,000 CIFAR-10 images at 224x224 in 4.4 minutes on 4 x c4.8xlarge (144 vCPUs).
SEED_PUBLISHED_IMAGES_PER_S_PER_VCPU = 10_000 / (4.4 * 60) / 144
SCENARIOS = {
    "cifar32": {"size": 32, "images": 10_000, "smoke_images": 64, "batch_size": 256, "seed_batch": 32},
    "seed224": {"size": 224, "images": 640, "smoke_images": 16, "batch_size": 32, "seed_batch": 32},
}
TARGETS = {"job_vs_limit": 0.95, "job_vs_predict_batch_udf": 1.2, "job_vs_seed_published_per_vcpu_224": 100.0,
           "decode_vs_model_per_core_32": 10.0, "fixed_cost_s": 15.0}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    memory_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1),
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "date": datetime.now(timezone.utc).isoformat(timespec="minutes")}


def _python_env(threads: int, **extra: str) -> dict:
    environment = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS=str(threads), **extra)
    return environment


def _limit_threads(layout: str, cores: int) -> dict:
    """One instance using every core, or one single-threaded instance per core. For the latter MXNet's engine needs a
    CPU worker thread per instance: with its default of one, the instances take turns and the layout measures one core."""
    if layout == "threads":
        return {"threads": cores}
    return {"threads": 1, "MXNET_CPU_WORKER_NTHREADS": str(cores)}


def contender(name: str, args: dict, threads: int, **extra_env: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.benchmark.contenders", name, json.dumps(args)], cwd=REPO,
        env=_python_env(threads, **extra_env), capture_output=True, text=True)
    if completed.returncode:
        raise RuntimeError(f"contender {name} failed:\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def steady_and_fixed(timings: dict, quarter: int, full: int) -> dict:
    rate = (full - quarter) / max(timings["warm_full"] - timings["warm_quarter"], 1e-9)
    return {"images_per_s": rate, "fixed_cost_s": timings["session_s"] + max(0.0, timings["cold_quarter"] - quarter / rate),
            "timings": {key: value for key, value in timings.items() if isinstance(value, float)}}


def write_manifests(directory: str, count: int) -> tuple[str, str, int]:
    names = sorted(name for name in os.listdir(directory) if not name.startswith("."))[:count]
    paths = [os.path.join(directory, name) for name in names]
    quarter = max(1, len(paths) // 4)
    manifests = []
    for label, chosen in (("quarter", paths[:quarter]), ("full", paths)):
        manifest = os.path.join(os.path.dirname(directory), f"manifest-{label}.json")
        with open(manifest, "w") as file:
            json.dump(chosen, file)
        manifests.append(manifest)
    return manifests[0], manifests[1], quarter


def export_packages(size: int) -> tuple[str, str]:
    """Model-zoo ResNet-18 (10 classes) at ``size``, random weights (speed does not depend on them), and its ONNX twin."""
    mxnet_dir = os.path.join(WORK, f"model{size}-mxnet")
    onnx_dir = os.path.join(WORK, f"model{size}-onnx")
    if not os.path.exists(os.path.join(onnx_dir, "model.json")):
        for command in (["export-zoo", "--out", mxnet_dir, "--input-size", str(size)],
                        ["to-onnx", "--package", mxnet_dir, "--out", onnx_dir]):
            subprocess.run([sys.executable, "-m", "job.model_package", *command], cwd=REPO, env=_python_env(2),
                           check=True, capture_output=True)
    return mxnet_dir, onnx_dir


def run_scenario(name: str, spec: dict, wheel: str, smoke: bool, cores: int) -> dict:
    count = spec["smoke_images"] if smoke else spec["images"]
    size = spec["size"]
    directory = write_images(wheel, os.path.join(WORK, name, "images"), count, size)
    quarter_manifest, full_manifest, quarter = write_manifests(directory, count)
    mxnet_dir, onnx_dir = export_packages(size)
    master = f"local[{cores}]"
    repeats = 1 if smoke else 3
    model_images = max(spec["batch_size"] * cores * (1 if smoke else 8), count // (1 if smoke else 2))
    print(f"[bench] {name}: {count} images at {size}x{size}, {cores} cores", flush=True)

    limits = {layout: contender("limit", {"package": mxnet_dir, "batch_size": spec["batch_size"], "images": model_images,
                                          "layout": layout, "cores": cores, "repeats": repeats},
                                **_limit_threads(layout, cores))
              for layout in ("threads", "instances")}
    limit_rates = {layout: result["images"] / result["seconds"] for layout, result in limits.items()}
    one_core = contender("limit", {"package": mxnet_dir, "batch_size": spec["batch_size"], "layout": "threads",
                                   "images": model_images // cores, "cores": 1, "repeats": repeats}, threads=1)
    model_per_core = one_core["images"] / one_core["seconds"]
    decoded = contender("decode", {"package": mxnet_dir, "manifest": full_manifest, "repeats": repeats}, threads=1)
    decode_per_core = decoded["images"] / decoded["seconds"]
    print(f"[bench] {name}: limit {limit_rates}, model on one core {model_per_core:.1f}/s, "
          f"decode on one core {decode_per_core:.0f}/s", flush=True)

    def spark_contender(contender_name, package):
        timings = contender(contender_name, {
            "package": package, "quarter_manifest": quarter_manifest, "full_manifest": full_manifest,
            "master": master, "size": size, "seed_batch": spec["seed_batch"], "batch_size": spec["batch_size"],
            "repeats": repeats,
            "output": os.path.join(WORK, name, f"out-{contender_name}-{os.path.basename(package)}")}, threads=1)
        result = steady_and_fixed(timings, quarter, count)
        result["summary"] = timings.get("summary")
        print(f"[bench] {name}: {contender_name} ({os.path.basename(package)}) {result['images_per_s']:.1f}/s steady, "
              f"fixed {result['fixed_cost_s']:.1f} s", flush=True)
        return result

    job = spark_contender("job", mxnet_dir)
    onnx = spark_contender("job", onnx_dir)
    seed = spark_contender("seed", mxnet_dir)
    udf = spark_contender("predict_batch_udf", mxnet_dir)

    limit_rate = max(limit_rates.values())
    job_summary = job["summary"]
    return {
        "images": count,
        "image_size": size,
        "batch_size": spec["batch_size"],
        "images_per_s": {"limit": limit_rate, "decode": decode_per_core, "job": job["images_per_s"],
                         "seed": seed["images_per_s"], "predict_batch_udf": udf["images_per_s"],
                         "onnx": onnx["images_per_s"]},
        "limit_by_layout": limit_rates,
        "model_per_core_images_per_s": model_per_core,
        "timings_s": {"job": job["timings"], "onnx": onnx["timings"], "seed": seed["timings"],
                      "predict_batch_udf": udf["timings"]},
        "fixed_cost_s": job["fixed_cost_s"],
        "fixed_cost_s_by_contender": {"job": job["fixed_cost_s"], "onnx": onnx["fixed_cost_s"],
                                      "seed": seed["fixed_cost_s"], "predict_batch_udf": udf["fixed_cost_s"]},
        "worker_peak_rss_mb": job_summary.get("worker_peak_rss_mb"),
        "job_worker_seconds_full_run": job_summary["worker_seconds"],
        "ratios": {
            "job_vs_limit": job["images_per_s"] / limit_rate,
            "job_vs_predict_batch_udf": job["images_per_s"] / udf["images_per_s"],
            "job_vs_seed_here": job["images_per_s"] / seed["images_per_s"],
            "job_per_vcpu_vs_seed_published_per_vcpu": job["images_per_s"] / cores / SEED_PUBLISHED_IMAGES_PER_S_PER_VCPU,
            "decode_vs_model_per_core": decode_per_core / model_per_core,
            "onnx_vs_job": onnx["images_per_s"] / job["images_per_s"],
        },
    }


def table(results: dict) -> str:
    lines = [f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"{results['machine']['memory_gib']} GiB, Python {results['machine']['python']}, {results['machine']['date']}"]
    for name, scenario in results["scenarios"].items():
        rates, ratios = scenario["images_per_s"], scenario["ratios"]
        lines += [
            "",
            f"{name}: {scenario['images']} images at {scenario['image_size']}x{scenario['image_size']}, "
            f"batch {scenario['batch_size']}",
            f"  {'contender':<20}{'images/s':>11}{'x limit':>9}",
        ]
        for contender_name in ("limit", "job", "onnx", "predict_batch_udf", "seed"):
            lines.append(f"  {contender_name:<20}{rates[contender_name]:>11.1f}"
                         f"{rates[contender_name] / rates['limit']:>9.3f}")
        lines += [
            f"  {'decode (one core)':<20}{rates['decode']:>11.1f}   = {ratios['decode_vs_model_per_core']:.1f} x the model "
            "on one core",
            "  limit by layout: " + ", ".join(f"{k} {v:.1f}" for k, v in scenario["limit_by_layout"].items()),
            f"  job vs predict_batch_udf {ratios['job_vs_predict_batch_udf']:.2f}x; vs the seed here "
            f"{ratios['job_vs_seed_here']:.1f}x; per vCPU vs the seed's published 0.26/s/vCPU "
            f"{ratios['job_per_vcpu_vs_seed_published_per_vcpu']:.0f}x; onnx/mxnet {ratios['onnx_vs_job']:.2f}",
            f"  job fixed cost {scenario['fixed_cost_s']:.1f} s; worker peak RSS {scenario['worker_peak_rss_mb']:.0f} MB",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmark.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--foolbox-wheel", required=True)
    parser.add_argument("--results", default=os.path.join(REPO, "benchmarks", "results.json"))
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--smoke", action="store_true", help="tiny inputs: checks the harness, measures nothing")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    results = {"machine": machine(), "smoke": args.smoke, "targets": TARGETS, "scenarios": {}}
    for name in args.scenario or list(SCENARIOS):
        results["scenarios"][name] = run_scenario(name, SCENARIOS[name], args.foolbox_wheel, args.smoke, cores)
    results["bench_seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    with open(args.results, "w") as file:
        json.dump(results, file, indent=2)
        file.write("\n")
    print(table(results))
    print(f"\nresults: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
