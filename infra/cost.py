"""`make cost`: dollars per million images and minutes from upload to results, from measured throughput.

    python -m infra.cost [--results benchmarks/results.json] [--prices infra/prices.json]

Reads the benchmark's measured throughput (``benchmarks/results.json``, written by ``make bench``: images per second of
the job on local Spark, per vCPU of the benchmark machine, at 32 x 32 and 224 x 224) and a dated price table with its
assumptions (``infra/prices.json``), and prints, for the stack's default CPU and GPU clusters (the instance types,
counts and idle timeouts of ``infra/settings.py``) in both cluster modes, and for the seed's 2017 set-up on the same
basis, the cost per million images and the minutes to results for 1,000, 100,000 and 10,000,000 images.

The model, each term a column or a stated assumption:
- cluster price per hour: every node's EC2 price (Spot nodes at the assumed discount) plus EMR's charge per node;
- throughput: CPU clusters, the measured per-vCPU rate times the workers' vCPUs (a worker vCPU assumed as fast as one
  of the benchmark machine); GPU clusters, a cited public figure per GPU (an estimate), capped by what the executor's
  vCPUs decode at the measured rate;
- minutes to results: the trigger's batching window, the cluster's start (transient mode; assumed), the step's start
  (assumed) plus the job's measured fixed cost, and the images at the cluster's throughput, as one step (a manifest, or
  CIFAR batch files; a run of single-image uploads is split into steps of trigger_batch_size, each paying the start);
- cost per run: the cluster's hours (transient: start, step and the idle timeout after it; persistent: the step only,
  the idle cluster being paid monthly, printed apart) plus one S3 GET per image.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

if TYPE_CHECKING:
    from infra.settings import Settings

# The stack's modules are imported where they are used, not here, so that `--help` and a bad argument answer without
# loading them (infra.settings reads instance types through aws-cdk-lib, which starts a Node process).

REPO_ROOT = Path(__file__).resolve().parent.parent
RUN_SIZES = (1_000, 100_000, 10_000_000)
SECONDS_PER_HOUR = 3600
HOURS_PER_MONTH = 730
# The seed (awslabs/deeplearning-emr, 2017): ResNet-18 on 4 x c4.8xlarge (144 vCPUs), 38 images per second, as the talk
# and its repository report it; priced here as a cluster that runs, like a persistent one.
SEED_INSTANCE_TYPE = "c4.8xlarge"
SEED_NODES = 4
SEED_IMAGES_PER_S = 38.0
SEED_IMAGE_SIZE = 224


class CostModelError(ValueError):
    """An input the model needs is missing; the message names it and the file."""


@dataclass(frozen=True)
class Nodes:
    instance_type: str
    count: int
    spot: bool = False


@dataclass(frozen=True)
class Cluster:
    name: str
    compute: str  # cpu | gpu
    mode: str  # transient | persistent
    primary: Nodes
    workers: tuple[Nodes, ...]
    idle_timeout_minutes: Optional[int]


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    estimate: bool  # True: from a cited figure, not from this project's measurement


@dataclass(frozen=True)
class Run:
    minutes: float  # from the upload to the results
    step_minutes: float  # the step alone, which step_timeout_minutes limits
    dollars: float

    def dollars_per_million(self, images: int) -> float:
        return self.dollars / images * 1_000_000


def default_cluster(compute: str, mode: str, architecture: str = "x86_64") -> Cluster:
    """The stack's default cluster for ``compute`` and ``mode``, each fleet at its first (reference) instance type."""
    from infra.settings import Settings

    settings = Settings.from_context({"compute": compute, "cluster_mode": mode, "architecture": architecture})
    workers = [Nodes(settings.resolved_core_instance_types[0], settings.core_instance_count)]
    if settings.has_task_fleet:
        workers.append(Nodes(settings.resolved_task_instance_types[0], settings.task_instance_count, spot=True))
    return Cluster(
        name=f"{compute} {mode}" + (" (Graviton)" if architecture == "arm64" else ""),
        compute=compute,
        mode=mode,
        primary=Nodes(settings.resolved_primary_instance_types[0], 1),
        workers=tuple(workers),
        idle_timeout_minutes=settings.resolved_idle_timeout_minutes,
    )


SEED = Cluster(
    name=f"seed 2017 ({SEED_NODES} x {SEED_INSTANCE_TYPE})",
    compute="cpu",
    mode="persistent",
    primary=Nodes(SEED_INSTANCE_TYPE, 0),  # the four nodes as reported, no separate primary
    workers=(Nodes(SEED_INSTANCE_TYPE, SEED_NODES),),
    idle_timeout_minutes=None,
)


def _price(prices: Mapping[str, Any], table: str, instance_type: str) -> float:
    try:
        return float(prices[table][instance_type])
    except KeyError:
        raise CostModelError(
            f"the price table has no {table}[{instance_type!r}]: add it to infra/prices.json"
        ) from None


def dollars_per_hour(cluster: Cluster, prices: Mapping[str, Any]) -> float:
    """EC2 (Spot at the assumed discount) plus EMR's charge, which Spot does not lower, for every node."""
    total = 0.0
    for nodes in (cluster.primary, *cluster.workers):
        ec2 = _price(prices, "ec2_on_demand_per_hour", nodes.instance_type)
        if nodes.spot:
            ec2 *= 1 - float(prices["spot_discount"])
        total += nodes.count * (ec2 + _price(prices, "emr_per_hour", nodes.instance_type))
    return total


def _scenario(results: Mapping[str, Any], image_size: int) -> Mapping[str, Any]:
    for scenario in results["scenarios"].values():
        if scenario["image_size"] == image_size:
            return scenario
    raise CostModelError(f"the benchmark results have no scenario at {image_size} x {image_size}: run make bench")


def per_vcpu(results: Mapping[str, Any], image_size: int, contender: str) -> float:
    """Images per second per vCPU of the benchmark machine (its measurement over all its cores)."""
    return float(_scenario(results, image_size)["images_per_s"][contender]) / int(results["machine"]["cores"])


def throughput(cluster: Cluster, image_size: int, results: Mapping[str, Any], prices: Mapping[str, Any]) -> Throughput:
    if cluster == SEED:
        if image_size != SEED_IMAGE_SIZE:
            raise CostModelError(f"the seed published {SEED_IMAGE_SIZE} x {SEED_IMAGE_SIZE} figures only")
        return Throughput(SEED_IMAGES_PER_S, estimate=False)
    from infra.cluster_definition import GPU_EXECUTOR_SIZING
    from infra.instance_types import task_slots_per_node

    slots = sum(nodes.count * task_slots_per_node(cluster.compute, nodes.instance_type) for nodes in cluster.workers)
    if cluster.compute == "cpu":
        return Throughput(slots * per_vcpu(results, image_size, "job"), estimate=False)
    figure = prices["gpu_throughput_estimate"]
    per_gpu = float(figure["images_per_s"]) * (int(figure["image_size"]) / image_size) ** 2
    decode_bound = per_vcpu(results, image_size, "decode") * int(GPU_EXECUTOR_SIZING["spark.executor.cores"])
    return Throughput(slots * min(per_gpu, decode_bound), estimate=True)


def run(
    cluster: Cluster,
    images: int,
    image_size: int,
    results: Mapping[str, Any],
    prices: Mapping[str, Any],
    batching_window_seconds: int,
) -> Run:
    """Minutes from the upload to the results, and dollars, of one run of ``images`` images as one step."""
    rate = throughput(cluster, image_size, results, prices)
    assumptions = prices["assumptions"]
    # The measured fixed cost of the contender the row stands for: the seed's own method, or this job.
    contender = "seed" if cluster == SEED else "job"
    step_seconds = (
        float(assumptions["step_start_seconds"]["value"])
        + float(_scenario(results, image_size)["fixed_cost_s_by_contender"][contender])
        + images / rate.images_per_s
    )
    start_seconds = 0.0
    billed_seconds = step_seconds
    if cluster.mode == "transient":
        start_seconds = float(assumptions["cluster_start_minutes"][cluster.compute]) * 60
        billed_seconds += start_seconds + (cluster.idle_timeout_minutes or 0) * 60
    cluster_dollars = dollars_per_hour(cluster, prices) * billed_seconds / SECONDS_PER_HOUR
    s3_dollars = images / 1000 * float(prices["s3_get_per_1000_requests"])
    minutes = (batching_window_seconds + start_seconds + step_seconds) / 60
    return Run(minutes=minutes, step_minutes=step_seconds / 60, dollars=cluster_dollars + s3_dollars)


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}" if value >= 1 else f"{value:.3f}"


def table(
    clusters: list[Cluster], image_size: int, results: Mapping[str, Any], prices: Mapping[str, Any], settings: Settings
) -> str:
    """One Markdown table: each cluster's price, throughput, and $/million images and minutes per run size."""
    header = ["cluster", "$/hour", "images/s"]
    header += [f"$/M at {images:,}" for images in RUN_SIZES] + [f"min for {images:,}" for images in RUN_SIZES]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    step_limit_minutes = settings.step_timeout_minutes
    for cluster in clusters:
        rate = throughput(cluster, image_size, results, prices)
        window = settings.trigger_batching_window_seconds
        runs = [run(cluster, images, image_size, results, prices, window) for images in RUN_SIZES]
        cells = [cluster.name, f"{dollars_per_hour(cluster, prices):.2f}"]
        cells.append(_number(rate.images_per_s) + (" (estimate)" if rate.estimate else ""))
        cells += [_number(r.dollars_per_million(n)) for r, n in zip(runs, RUN_SIZES)]
        # A step longer than step_timeout_minutes is stopped: such a run must be split or the limit raised.
        over = [cluster != SEED and r.step_minutes > step_limit_minutes for r in runs]
        cells += [_number(r.minutes) + (" (over the step limit)" if o else "") for r, o in zip(runs, over)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(results: Mapping[str, Any], prices: Mapping[str, Any]) -> str:
    from infra.settings import Settings

    settings = Settings()
    clusters = [default_cluster(c, m) for c in ("cpu", "gpu") for m in ("transient", "persistent")]
    sections = [
        f"Prices: {prices['region']}, as of {prices['as_of']} ({prices['note']})",
        f"Measured: benchmarks/results.json, {results['machine']['cpu']} x {results['machine']['cores']} vCPUs, "
        f"{results['machine']['date']}.",
    ]
    for image_size in sorted({scenario["image_size"] for scenario in results["scenarios"].values()}):
        rows = clusters + ([SEED] if image_size == SEED_IMAGE_SIZE else [])
        sections += [f"\n{image_size} x {image_size} images", table(rows, image_size, results, prices, settings)]
    persistent = [cluster for cluster in clusters if cluster.mode == "persistent"]
    sections.append(
        "\nAlways paid: the NAT gateway, $"
        f"{float(prices['nat_gateway_per_hour']) * HOURS_PER_MONTH:,.0f}/month; a persistent cluster, idle or not: "
        + "; ".join(f"{c.name} ${dollars_per_hour(c, prices) * HOURS_PER_MONTH:,.0f}/month" for c in persistent)
        + ". Uploading one object per image adds S3's PUT price, "
        f"${float(prices['s3_put_per_1000_requests']) * 1000:.2f} per million images, whatever runs the model."
    )
    graviton = default_cluster("cpu", "transient", architecture="arm64")
    sections.append(
        f"Graviton ({graviton.workers[0].instance_type} workers): ${dollars_per_hour(graviton, prices):.2f}/hour; "
        "its throughput per vCPU is not measured (no arm64 machine here), so no $/M or minutes are printed for it."
    )
    assumptions = prices["assumptions"]
    start = assumptions["cluster_start_minutes"]
    estimate = prices["gpu_throughput_estimate"]
    step_start = assumptions["step_start_seconds"]
    sections += [
        "\nAssumptions (infra/prices.json):",
        f"- transient cluster start, bootstrap included: cpu {start['cpu']} min, gpu {start['gpu']} min "
        f"({start['note']})",
        f"- step start: {step_start['value']} s ({step_start['note']})",
        f"- Spot: {float(prices['spot_discount']):.0%} below On-Demand for the task nodes "
        f"({prices['sources']['spot_discount']})",
        f"- GPU: {estimate['images_per_s']} images/s per GPU at {estimate['image_size']} x {estimate['image_size']}, "
        f"{estimate['what']}: {estimate['source']}. {estimate['note']}",
        f"- one step per run, after the trigger's {settings.trigger_batching_window_seconds} s batching window; steps "
        f"are stopped after step_timeout_minutes ({settings.step_timeout_minutes} min); transient runs pay the idle "
        f"timeout ({settings.resolved_idle_timeout_minutes} min) after the step; a worker vCPU runs the job as fast as "
        "one of the benchmark machine.",
    ]
    return "\n".join(sections)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.cost", description=__doc__.split("\n\n")[0],
        epilog="No AWS call and no network. Exit codes: 0 the table was printed; 1 a file lacks a price or a measured "
               "size (named); 2 bad arguments. How to read the table: docs/cost.md.")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "benchmarks" / "results.json", metavar="FILE",
                        help="the benchmark's measured throughput, written by make bench (default "
                             "benchmarks/results.json)")
    parser.add_argument("--prices", type=Path, default=REPO_ROOT / "infra" / "prices.json", metavar="FILE",
                        help="dated prices and assumptions per region (default infra/prices.json)")
    arguments = parser.parse_args(argv)
    try:
        print(report(json.loads(arguments.results.read_text()), json.loads(arguments.prices.read_text())))
    except CostModelError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
