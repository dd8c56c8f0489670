"""The run report (OUTPUT/report.html): written by real job runs on local Spark, then opened in Debian's headless
Chromium, where the assertions read the rendered page through the DOM.

Three runs are shared by the tests: a demo-like run (the trained digits model on PNG/JPEG files, a CIFAR-10 batch
with labels and a corrupt file), an untrained model on unlabelled photos, and a run where every input failed.
Every page is loaded with all requests refused, so each test also proves the page needs no network.

What this cannot prove: how other browsers lay the page out (only Chromium renders it here), and the report written
to real S3 (test_job_s3.py writes one to a moto server).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report_browser import open_browser, open_report

from job.config import ConfigError, parse_args
from job.demo import write_inputs
from job.model_package import read_package
from job.pipeline import JobFailed, run
from job.report import CONFIDENCE_BUCKETS, REPORT_NAME, WALL_CLOCK_PHASES, build_report, report_context
from job.report_inputs import gather, merge
from job.storage import Storage
from job.worker import PreparedBatch, to_record_batch

pytestmark = pytest.mark.spark
DEMO_THUMBNAILS = 12
DEMO_DIGITS = 40  # held-out digits, each as a file and as a CIFAR-10 record


def _run(*args: str) -> dict:
    return run(parse_args(list(args)), master="local[2,4]")


@pytest.fixture(scope="module")
def demo_run(spark, tmp_path_factory, digits_model) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("report-demo")
    write_inputs(str(directory / "inputs"), digits_model.held_out_indices[:DEMO_DIGITS])
    output = directory / "output"
    summary = _run("--input", str(directory / "inputs"), "--model", digits_model.package_dir, "--output", str(output),
                   "--max-failure-ratio", "0.05", "--report-thumbnails", str(DEMO_THUMBNAILS))
    return output, summary


@pytest.fixture(scope="module")
def untrained_run(spark, tmp_path_factory, cifar_samples, untrained_package) -> tuple[Path, dict]:
    """20 real photos, no ground truth, a model with random weights, the default number of thumbnails."""
    directory = tmp_path_factory.mktemp("report-untrained")
    for name, data, _ in cifar_samples:
        (directory / "inputs").mkdir(exist_ok=True)
        (directory / "inputs" / name).write_bytes(data)
    output = directory / "output"
    summary = _run("--input", str(directory / "inputs"), "--model", untrained_package, "--output", str(output))
    return output, summary


ALL_FAILED = {"corrupt.png": b"\x89PNG\r\n\x1a\n not really a PNG", "empty.jpg": b"", "partial.bin": b"\0" * 3000,
              "text.png": b"a text file with an image suffix"}


@pytest.fixture(scope="module")
def all_failed_run(spark, tmp_path_factory, untrained_package) -> tuple[Path, dict]:
    directory = tmp_path_factory.mktemp("report-all-failed")
    (directory / "inputs").mkdir()
    for name, data in ALL_FAILED.items():
        (directory / "inputs" / name).write_bytes(data)
    output = directory / "output"
    with pytest.raises(JobFailed):
        _run("--input", str(directory / "inputs"), "--model", untrained_package, "--output", str(output))
    return output, json.loads((output / "summary.json").read_text())


@pytest.fixture(scope="module")
def browser():
    with open_browser() as chromium:
        yield chromium


def _count(page, selector: str) -> int:
    return page.locator(selector).count()


def _rendered_box(page, selector: str) -> dict:
    box = page.locator(selector).bounding_box()
    assert box is not None, f"{selector} is not rendered"
    return box


def _assert_screenshot_shows_a_page(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as shot:
        assert shot.width == page.viewport_size["width"] and shot.height > 400
        assert len(np.unique(np.asarray(shot.convert("L")))) > 16  # not a blank page


def test_the_report_is_written_next_to_the_summary_and_recorded_in_it(demo_run):
    output, summary = demo_run
    assert summary["report"] == {"uri": str(output / REPORT_NAME), "thumbnails": DEMO_THUMBNAILS, "error": None}
    written = json.loads((output / "summary.json").read_text())
    assert written["report"] == summary["report"] and written["seconds"]["report"] > 0
    assert (output / REPORT_NAME).stat().st_size > 0


def test_demo_report_in_chromium_has_its_charts_thumbnails_and_confusion_matrix(demo_run, browser, tmp_path):
    output, summary = demo_run
    with open_report(browser, output / REPORT_NAME) as (page, refused):
        assert refused == []
        _assert_screenshot_shows_a_page(page, tmp_path / "report.png")
        assert _count(page, "#untrained-banner") == 0 and _count(page, "#status-banner") == 0
        assert page.inner_text("#count-total .value") == str(summary["counts"]["total"])
        assert page.inner_text("#count-failed .value") == "1"

        # Charts: matplotlib's SVG inlined, one bar per class, per confidence bucket, per wall-clock phase.
        assert _count(page, "#class-counts svg [id^=class-bar-]") == len(summary["per_class_counts"]) == 10
        assert _count(page, "#confidence-histogram svg [id^=confidence-bar-]") == CONFIDENCE_BUCKETS
        assert _count(page, "#time-chart svg [id^=time-bar-]") == len(WALL_CLOCK_PHASES)
        for chart in ("#class-counts svg", "#confidence-histogram svg", "#time-chart svg"):
            box = _rendered_box(page, chart)
            assert box["width"] > 200 and box["height"] > 80
        ids = page.evaluate("() => [...document.querySelectorAll('[id]')].map(element => element.id)")
        assert len(ids) == len(set(ids)), "the inline SVGs' ids collide"

        # Thumbnails: the N lowest-confidence rows of the Parquet, each decoded by the browser at the model's size.
        rows = pq.read_table(output / "predictions").to_pylist()
        lowest = sorted((row for row in rows if row["status"] == "ok"),
                        key=lambda row: (row["probability"], row["source"], row["index"]))[:DEMO_THUMBNAILS]
        thumbnails = page.locator("#lowest-confidence img.thumbnail")
        assert thumbnails.count() == DEMO_THUMBNAILS
        assert page.eval_on_selector_all("#lowest-confidence img.thumbnail",
                                          "images => images.map(image => [image.complete, image.naturalWidth])") == (
            [[True, 32]] * DEMO_THUMBNAILS)
        titles = page.eval_on_selector_all("#lowest-confidence .tile", "tiles => tiles.map(tile => tile.title)")
        assert titles == [row["source"] for row in lowest]
        assert page.eval_on_selector_all("#lowest-confidence .tile", "tiles => tiles.map(tile => "
                                         "tile.querySelectorAll('ul.labels li').length)") == [3] * DEMO_THUMBNAILS

        # Ground truth: accuracy and a 10 x 10 confusion matrix whose cells add up to the summary's counts.
        cells = page.eval_on_selector_all(
            "#confusion-matrix tr:not(:first-child)",
            "rows => rows.map(row => [...row.querySelectorAll('td')].map(cell => Number(cell.textContent)))")
        matrix = np.array(cells)
        assert matrix.shape == (10, 10)
        assert matrix.sum() == summary["accuracy"]["images_with_ground_truth"] == DEMO_DIGITS
        assert np.trace(matrix) == summary["accuracy"]["correct"]
        assert f"{summary['accuracy']['accuracy']:.1%}" in page.inner_text("#accuracy")

        failed = page.locator("#failed-inputs .tile.failed")
        assert failed.count() == 1 and failed.locator(".reason").inner_text() == "not_an_image"


def test_untrained_model_gets_the_banner_and_no_confusion_matrix_without_labels(untrained_run, browser, tmp_path):
    output, summary = untrained_run
    assert summary["model"]["trained"] is False and summary["accuracy"] is None
    with open_report(browser, output / REPORT_NAME) as (page, refused):
        assert refused == []
        _assert_screenshot_shows_a_page(page, tmp_path / "report.png")
        assert page.locator("#untrained-banner").is_visible()
        assert "mean nothing" in page.inner_text("#untrained-banner")
        assert _count(page, "#confusion-matrix") == 0 and _count(page, "#accuracy") == 0
        # Fewer classified images (20) than the default 48 thumbnails: every one is shown, none twice.
        assert _count(page, "#lowest-confidence img.thumbnail") == summary["counts"]["ok"] == 20
        assert _count(page, "#failed-inputs") == 0


def test_a_run_where_every_input_failed_still_renders(all_failed_run, browser, tmp_path):
    output, summary = all_failed_run
    assert summary["status"] == "failed" and summary["counts"]["ok"] == 0
    assert summary["report"]["error"] is None
    with open_report(browser, output / REPORT_NAME) as (page, refused):
        assert refused == []
        _assert_screenshot_shows_a_page(page, tmp_path / "report.png")
        assert page.locator("#status-banner").is_visible()
        assert page.locator("#no-predictions").is_visible()
        assert _count(page, "#class-counts") == 0 and _count(page, "img.thumbnail") == 0
        reasons = page.eval_on_selector_all("#failed-inputs .tile .reason", "tiles => tiles.map(tile => tile.textContent)")
        assert sorted(reasons) == sorted(["not_an_image", "empty_file", "bad_cifar_size", "not_an_image"])
        assert _count(page, "#time-chart svg [id^=time-bar-]") == len(WALL_CLOCK_PHASES)


def test_zero_thumbnails_turns_the_grid_off(demo_run, spark, browser, digits_model, tmp_path):
    output, summary = demo_run
    report = tmp_path / REPORT_NAME
    shown = build_report(spark, summary, predictions_uri=str(output / "predictions"),
                         package=read_package(digits_model.package_dir, Storage()), storage=Storage(),
                         report_uri=str(report), thumbnails=0)
    assert shown == 0
    with open_report(browser, report) as (page, refused):
        assert refused == []
        assert _count(page, "img.thumbnail") == 0
        assert "--report-thumbnails 0" in page.inner_text("#lowest-confidence")
        assert _count(page, "#confusion-matrix") == 1  # the rest of the page is unchanged


def test_a_report_that_cannot_be_written_is_recorded_and_the_run_succeeds(spark, tmp_path, cifar_samples,
                                                                          untrained_package, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, data, _ in cifar_samples[:4]:
        (inputs / name).write_bytes(data)
    output = tmp_path / "output"
    (output / REPORT_NAME).mkdir(parents=True)  # the report's path is taken by a directory: writing it fails for real
    summary = _run("--input", str(inputs), "--model", untrained_package, "--output", str(output), "--overwrite")
    assert summary["status"] == "succeeded" and summary["counts"]["ok"] == 4
    assert summary["report"]["uri"] is None and summary["report"]["error"].startswith("IsADirectoryError")
    assert json.loads((output / "summary.json").read_text())["report"] == summary["report"]
    assert len(pq.read_table(output / "predictions")) == 4
    assert f"the run report {output / REPORT_NAME} was not written" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "501"])
def test_report_thumbnails_out_of_range_is_refused_naming_the_setting(value):
    with pytest.raises(ConfigError, match=rf"--report-thumbnails must be an integer from 0 .* to 500; got {value}"):
        parse_args(["--input", "in", "--model", "m", "--output", "o", "--report-thumbnails", value])


@pytest.mark.parametrize("value", [0, 500])
def test_report_thumbnails_bounds_are_accepted(value):
    config = parse_args(["--input", "in", "--model", "m", "--output", "o", "--report-thumbnails", str(value)])
    assert config.report_thumbnails == value


@pytest.mark.parametrize("label", ["US$5-$10", "$\\undefined$", "$x^{2$"])
def test_labels_with_dollar_signs_are_drawn_as_written(label):
    """Reliability review #20: a label with two `$` was drawn as mathtext, or raised and cost the whole report."""
    from job.report import _class_chart

    svg = str(_class_chart({label: 3, "plain": 1}))
    escaped = label.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert escaped in svg


def _inputs_gathered_as_tasks(predictions: Path, thumbnails: int, rows_per_batch: int) -> dict:
    """The report's inputs as the tasks gather them (job.report_inputs), one task per Parquet file, from the files'
    rows in batches of ``rows_per_batch`` (so that what a task keeps across its batches is exercised too)."""
    per_task = []
    for path in sorted(predictions.glob("*.parquet")):
        inputs: dict = {}
        for record_batch in pq.read_table(path).to_batches(max_chunksize=rows_per_batch):
            gather(record_batch, inputs, thumbnails)
        per_task.append(inputs)
    return merge(per_task, thumbnails)


@pytest.mark.parametrize("run_name, thumbnails", [("demo_run", DEMO_THUMBNAILS), ("demo_run", 3),
                                                  ("untrained_run", 8), ("all_failed_run", 8)])
def test_the_report_from_the_tasks_inputs_equals_the_report_from_the_parquet(run_name, thumbnails, request, spark,
                                                                             digits_model, untrained_package):
    """The job builds the report from what its tasks gathered when it takes their counts; the fallback reads the
    Parquet back with Spark. Both give the same page content: buckets, matrix, lowest-confidence tiles (thumbnails
    included), failed examples per reason."""
    output, summary = request.getfixturevalue(run_name)
    package = read_package(digits_model.package_dir if run_name == "demo_run" else untrained_package, Storage())
    arguments = {"predictions_uri": str(output / "predictions"), "package": package, "storage": Storage(),
                 "thumbnails": thumbnails}
    from_parquet = report_context(spark, summary, **arguments)
    from_tasks = report_context(spark, summary, **arguments,
                                inputs=_inputs_gathered_as_tasks(output / "predictions", thumbnails, 7))
    assert from_tasks == from_parquet
    if run_name == "demo_run":  # the run has all of them, so the comparison is not between empty parts
        assert len(from_tasks["lowest"]) == thumbnails and from_tasks["matrix"] and from_tasks["failed"]


def test_ties_and_bucket_edges_are_ordered_and_counted_as_spark_does(spark, tmp_path):
    """Probabilities on bucket edges (k/20 in float32, 1.0), ties on probability broken by source then index across
    tasks, more failures per reason than are shown, and true labels beyond the model's classes: the tasks' inputs
    equal Spark's aggregations over the same rows."""
    labels = ("a", "b", "c")
    rng = np.random.default_rng(7)
    edges = np.array([k / 20 for k in range(21)] + [0.05, 0.05, 0.3, 0.3, 0.3], dtype=np.float32)
    files = []
    for task in range(3):
        count = len(edges)
        top = np.where(rng.random(count) < 0.5, edges, rng.random(count).astype(np.float32))
        probabilities = np.stack([top, (1 - top) * 0.6, (1 - top) * 0.4], axis=1).astype(np.float32)
        errors = [None if row % 5 else f"reason{row % 3}: detail {task}-{row}" for row in range(count)]
        batch = PreparedBatch(sources=[f"s3://b/{'zyx'[row % 3]}{task}.jpg" for row in range(count)],
                              indices=[row // 3 for row in range(count)],
                              true_labels=[None if row % 4 == 0 else int(rng.integers(0, 6)) for row in range(count)],
                              errors=errors)
        ok_rows = [row for row, error in enumerate(errors) if error is None]
        record_batch = to_record_batch(batch, probabilities[ok_rows], labels, top_k=2)
        path = tmp_path / "predictions" / f"part-{task}.parquet"
        path.parent.mkdir(exist_ok=True)
        # Rebuilt from Python rows: pyarrow's Parquet writer refuses a null list that keeps its offsets' length.
        pq.write_table(pa.Table.from_pylist(record_batch.to_pylist(), schema=record_batch.schema), path)
        files.append(path)
    graded = sum(row["true_label"] is not None and row["status"] == "ok"
                 for path in files for row in pq.read_table(path).to_pylist())
    summary = {"counts": {"ok": 1, "error": 1}, "accuracy": {"images_with_ground_truth": graded}}
    from job.report import _inputs_from_parquet

    from_parquet = _inputs_from_parquet(spark, summary, str(tmp_path / "predictions"), 10)
    from_tasks = _inputs_gathered_as_tasks(tmp_path / "predictions", 10, 4)
    assert from_tasks["confidence"] == from_parquet["confidence"] and sum(from_tasks["confidence"]) > 0
    assert from_tasks["lowest"] == from_parquet["lowest"] and len(from_tasks["lowest"]) == 10
    assert from_tasks["failed"] == from_parquet["failed"] and len(from_tasks["failed"]) == 9
    from job.report import _confusion_matrix

    assert _confusion_matrix(from_tasks, labels) == _confusion_matrix(from_parquet, labels)
