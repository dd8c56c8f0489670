"""The cost model (infra/cost.py) on a small fixture: arithmetic and units.

Every expected value is computed here from the fixture's own figures and the stack's default settings, so the tests
check the model's formulas, not numbers copied from its output; the real table comes from benchmarks/results.json and
infra/prices.json when `make cost` runs. What no test here can check: that the prices are today's (they are dated), and
that the assumptions (cluster start, GPU figure) hold on a real account.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.cluster_definition import GPU_EXECUTOR_SIZING
from infra.cost import (
    RUN_SIZES,
    SEED,
    SEED_IMAGES_PER_S,
    CostModelError,
    default_cluster,
    dollars_per_hour,
    main,
    report,
    run,
    throughput,
)
from infra.instance_types import gpus, vcpus
from infra.settings import Settings

FIXTURES = Path(__file__).parent / "fixtures"
RESULTS_FILE = FIXTURES / "cost_results.json"
PRICES_FILE = FIXTURES / "cost_prices.json"
WINDOW = Settings().trigger_batching_window_seconds


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads(RESULTS_FILE.read_text())


@pytest.fixture(scope="module")
def prices() -> dict:
    return json.loads(PRICES_FILE.read_text())


def node_price(prices: dict, instance_type: str, spot: bool = False) -> float:
    ec2 = prices["ec2_on_demand_per_hour"][instance_type] * ((1 - prices["spot_discount"]) if spot else 1)
    return ec2 + prices["emr_per_hour"][instance_type]


def per_vcpu(results: dict, image_size: int, contender: str) -> float:
    (scenario,) = [s for s in results["scenarios"].values() if s["image_size"] == image_size]
    return scenario["images_per_s"][contender] / results["machine"]["cores"]


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_the_default_cluster_is_the_settings_default(compute):
    settings = Settings.from_context({"compute": compute})
    cluster = default_cluster(compute, "transient")
    core, task = cluster.workers
    assert cluster.primary.instance_type == settings.resolved_primary_instance_types[0]
    assert (core.instance_type, core.count, core.spot) == (
        settings.resolved_core_instance_types[0], settings.core_instance_count, False
    )  # fmt: skip
    assert (task.count, task.spot) == (settings.task_instance_count, True)
    assert cluster.idle_timeout_minutes == settings.resolved_idle_timeout_minutes


def test_price_per_hour_is_ec2_plus_emr_per_node_with_spot_discounting_only_ec2(prices):
    cluster = default_cluster("cpu", "transient")
    core, task = cluster.workers
    expected = (
        node_price(prices, cluster.primary.instance_type)
        + core.count * node_price(prices, core.instance_type)
        + task.count * node_price(prices, task.instance_type, spot=True)
    )
    assert dollars_per_hour(cluster, prices) == pytest.approx(expected)


@pytest.mark.parametrize("image_size", [32, 224])
def test_cpu_throughput_is_the_measured_rate_per_vcpu_times_the_workers_vcpus(results, prices, image_size):
    cluster = default_cluster("cpu", "persistent")
    vcpu_count = sum(nodes.count * vcpus(nodes.instance_type) for nodes in cluster.workers)
    rate = throughput(cluster, image_size, results, prices)
    assert rate.images_per_s == pytest.approx(vcpu_count * per_vcpu(results, image_size, "job"))
    assert rate.estimate is False


@pytest.mark.parametrize("image_size", [32, 224])
def test_gpu_throughput_is_the_cited_figure_per_gpu_capped_by_decoding_and_marked_an_estimate(
    results, prices, image_size
):
    cluster = default_cluster("gpu", "persistent")
    gpu_count = sum(nodes.count * gpus(nodes.instance_type) for nodes in cluster.workers)
    figure = prices["gpu_throughput_estimate"]
    scaled = figure["images_per_s"] * (figure["image_size"] / image_size) ** 2
    decode = per_vcpu(results, image_size, "decode") * int(GPU_EXECUTOR_SIZING["spark.executor.cores"])
    rate = throughput(cluster, image_size, results, prices)
    assert rate.images_per_s == pytest.approx(gpu_count * min(scaled, decode))
    assert rate.estimate is True


def test_the_fixture_exercises_both_gpu_bounds(results, prices):
    """At 224 the figure binds, at 32 the decoding: the test above checks both branches of the min."""
    figure = prices["gpu_throughput_estimate"]
    cores = int(GPU_EXECUTOR_SIZING["spark.executor.cores"])
    decode = {size: per_vcpu(results, size, "decode") * cores for size in (32, 224)}
    assert figure["images_per_s"] < decode[224]
    assert figure["images_per_s"] * (224 / 32) ** 2 > decode[32]


def test_a_persistent_run_takes_the_window_the_step_start_the_fixed_cost_and_the_images(results, prices):
    cluster = default_cluster("cpu", "persistent")
    images = 100_000
    rate = throughput(cluster, 224, results, prices).images_per_s
    step_seconds = prices["assumptions"]["step_start_seconds"]["value"] + 12.0 + images / rate  # 12.0: the fixture's
    outcome = run(cluster, images, 224, results, prices, WINDOW)
    assert outcome.minutes == pytest.approx((WINDOW + step_seconds) / 60)
    assert outcome.step_minutes == pytest.approx(step_seconds / 60)
    s3 = images / 1000 * prices["s3_get_per_1000_requests"]
    assert outcome.dollars == pytest.approx(dollars_per_hour(cluster, prices) * step_seconds / 3600 + s3)
    assert outcome.dollars_per_million(images) == pytest.approx(outcome.dollars * 1_000_000 / images)


def test_a_transient_run_adds_the_cluster_start_to_the_wait_and_the_idle_timeout_to_the_bill(results, prices):
    transient, persistent = default_cluster("gpu", "transient"), default_cluster("gpu", "persistent")
    start_minutes = prices["assumptions"]["cluster_start_minutes"]["gpu"]
    a, b = run(transient, 1000, 32, results, prices, WINDOW), run(persistent, 1000, 32, results, prices, WINDOW)
    assert a.minutes - b.minutes == pytest.approx(start_minutes)
    billed_extra_hours = (start_minutes + transient.idle_timeout_minutes) / 60
    assert a.dollars - b.dollars == pytest.approx(dollars_per_hour(transient, prices) * billed_extra_hours)


def test_fixed_costs_dominate_small_runs_and_fade_in_large_ones(results, prices):
    cluster = default_cluster("cpu", "transient")
    per_million = [run(cluster, n, 224, results, prices, WINDOW).dollars_per_million(n) for n in RUN_SIZES]
    assert per_million == sorted(per_million, reverse=True)


def test_the_seed_is_priced_as_four_running_c4_8xlarge_at_its_published_rate(results, prices):
    assert dollars_per_hour(SEED, prices) == pytest.approx(4 * node_price(prices, "c4.8xlarge"))
    assert throughput(SEED, 224, results, prices).images_per_s == SEED_IMAGES_PER_S
    seed_run = run(SEED, 38_000, 224, results, prices, WINDOW)
    # Its own measured fixed cost (the fixture's seed: 6.0 s), no cluster start.
    step_seconds = prices["assumptions"]["step_start_seconds"]["value"] + 6.0 + 38_000 / SEED_IMAGES_PER_S
    assert seed_run.minutes == pytest.approx((WINDOW + step_seconds) / 60)
    with pytest.raises(CostModelError, match="the seed published 224 x 224 figures only"):
        throughput(SEED, 32, results, prices)


def test_a_missing_price_is_named_with_the_file_to_add_it_to(results, prices):
    incomplete = {**prices, "emr_per_hour": {k: v for k, v in prices["emr_per_hour"].items() if k != "g4dn.xlarge"}}
    with pytest.raises(CostModelError, match=r"no emr_per_hour\['g4dn.xlarge'\]: add it to infra/prices.json"):
        dollars_per_hour(default_cluster("gpu", "persistent"), incomplete)


def test_report_prints_both_sizes_every_run_size_and_labels_estimates(results, prices):
    text = report(results, prices)
    assert "32 x 32 images" in text and "224 x 224 images" in text
    for size in RUN_SIZES:
        assert f"$/M at {size:,}" in text and f"min for {size:,}" in text
    gpu_rows = [line for line in text.splitlines() if line.startswith("| gpu ")]
    assert len(gpu_rows) == 4 and all("(estimate)" in row for row in gpu_rows)
    cpu_rows = [line for line in text.splitlines() if line.startswith("| cpu ")]
    assert cpu_rows and not any("(estimate)" in row for row in cpu_rows)
    assert sum(line.startswith("| seed 2017") for line in text.splitlines()) == 1  # the 224 table only


def test_runs_longer_than_the_step_time_limit_are_flagged(results, prices):
    """The fixture's cpu rate at 224 (10 images/s per vCPU) runs 10 million images far past the 240-minute limit."""
    cluster = default_cluster("cpu", "persistent")
    assert run(cluster, 10_000_000, 224, results, prices, WINDOW).step_minutes > Settings().step_timeout_minutes
    row = next(line for line in report(results, prices).split("224 x 224 images")[1].splitlines()
               if line.startswith("| cpu persistent"))  # fmt: skip
    assert row.endswith("(over the step limit) |")


def test_a_size_the_benchmark_did_not_measure_is_refused_naming_the_command(results, prices):
    with pytest.raises(CostModelError, match=r"no scenario at 64 x 64: run make bench"):
        throughput(default_cluster("cpu", "transient"), 64, results, prices)


def test_command_line_prints_the_report_or_the_error(tmp_path, capsys, prices):
    assert main(["--results", str(RESULTS_FILE), "--prices", str(PRICES_FILE)]) == 0
    assert "| cluster | $/hour | images/s |" in capsys.readouterr().out
    without_seed_price = {**prices, "ec2_on_demand_per_hour": {
        k: v for k, v in prices["ec2_on_demand_per_hour"].items() if k != "c4.8xlarge"}}  # fmt: skip
    (tmp_path / "prices.json").write_text(json.dumps(without_seed_price))
    assert main(["--results", str(RESULTS_FILE), "--prices", str(tmp_path / "prices.json")]) == 1
    assert "error: the price table has no ec2_on_demand_per_hour['c4.8xlarge']" in capsys.readouterr().err


CDK_MODULES = ("aws_cdk", "jsii", "constructs")


def modules_loaded_by(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter (this process has the CDK loaded already) and list the CDK modules it
    loaded. Runs from the repository root, as `make cost` does."""
    import subprocess
    import sys

    probe = code + "\nimport sys\nprint(sorted({m.split('.')[0] for m in sys.modules} & set(%r)))" % (CDK_MODULES,)
    done = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).parents[2], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_cost_help_imports_no_cdk():
    """`python -m infra.cost --help` answers without aws-cdk-lib (which starts a Node process and, on an old Node,
    prints jsii's banner): the stack's modules are imported only when the model runs."""
    loaded = modules_loaded_by(
        "import contextlib, io, runpy, sys\nsys.argv = ['infra.cost', '--help']\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    runpy.run_module('infra.cost', run_name='__main__')")
    assert loaded == []


def test_the_cost_table_imports_no_cdk():
    """`make cost` prints its table without aws-cdk-lib (infra/instance_types.py reads an architecture from the name
    itself; tests/infra/test_infra_instance_types.py holds that reading equal to aws-cdk-lib's)."""
    loaded = modules_loaded_by(
        "import contextlib, io\nfrom infra.cost import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    main(['--results', {str(RESULTS_FILE)!r}, "
        f"'--prices', {str(PRICES_FILE)!r}])")
    assert loaded == []
