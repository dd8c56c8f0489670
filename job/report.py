"""The run report: ``OUTPUT/report.html``, one self-contained page to look at instead of reading Parquet.

Fed by the summary step (:func:`job.pipeline.run`) with the run's summary and what the report shows beyond it:

- top-1 confidence in ``CONFIDENCE_BUCKETS`` buckets, a confusion matrix over at most ``MAX_MATRIX_CLASSES`` true
  classes, the ``thumbnails`` lowest-confidence rows and at most ``FAILED_EXAMPLES_PER_REASON`` failed rows per
  reason. They come from the tasks (:mod:`job.report_inputs`, gathered as the rows streamed out) when the summary's
  counts do; otherwise from Spark aggregations over the written Parquet that each return a bounded number of rows
  (sort + limit is planned as a per-partition take-ordered). No step collects all rows; per-class counts come from
  the summary.
- Thumbnails are read again with the job's :class:`~job.storage.Storage` (one CIFAR-10 record by a ranged read) and
  decoded by the job's own decoder at a small size, then inlined as PNG ``data:`` URIs.
- Charts are matplotlib figures saved as SVG and inlined; the page is a Jinja2 template. Nothing is fetched at view
  time, so the file opens from S3, an e-mail or a laptop alike.

:func:`write_report` never raises: a report that cannot be built is recorded in the summary and on stderr, because
the predictions it describes are already written.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
from jinja2 import Environment, PackageLoader
from markupsafe import Markup
from matplotlib import rc_context
from matplotlib.figure import Figure
from PIL import Image
from pyspark.sql import Window
from pyspark.sql import functions as F

from job.config import DEFAULT_MAX_OBJECT_BYTES
from job.decode import decode_cifar_records, decode_image
from job.package_format import ModelPackage
from job.report_inputs import CONFIDENCE_BUCKETS, FAILED_EXAMPLES_PER_REASON, MAX_FAILED_EXAMPLES
from job.sources import CIFAR_RECORD_BYTES, is_cifar_batch
from job.storage import Storage

REPORT_NAME = "report.html"
# Beyond these, bars and matrix cells stop being readable; the page says how many classes were left out.
MAX_CHART_CLASSES = 30
MAX_MATRIX_CLASSES = 20
THUMBNAIL_TOP_LABELS = 3
# A thumbnail is the model's input size, shrunk to this longest side: 32x32 stays as it is (the page scales it up
# without smoothing), 224x224 becomes 96x96 (about 15 KB of page each instead of 150 KB).
THUMBNAIL_MAX_SIDE = 96
THUMBNAIL_READ_THREADS = 16
BAR_COLOR = "#3b6ea8"
# Two charts side by side in the page's 1100 px (matplotlib's SVG is 72 points per inch, about 96 px per inch on screen).
CHART_WIDTH_INCHES = 5.2
LOG_SCALE_RATIO = 50
OTHER_CLASSES = "other"

# What each number of the time split is, shown beside it.
WALL_CLOCK_PHASES = (
    ("listing", "Listing", "listing the inputs on the driver (S3 LIST/HEAD requests or the manifest), before Spark"),
    ("session_start", "Spark start-up", "starting the Spark session"),
    ("processing", "Classification job",
     "the Spark job, wall clock: workers fetch, decode and predict, and Spark writes the Parquet files as the rows "
     "stream out (the write is not timed apart)"),
    ("summary", "Summary", "the counts in summary.json, from the rows the tasks counted, checked against the "
     "committed Parquet files' footers (read back in full only if they disagree)"),
)
WORKER_PHASES = (
    ("model_load", "Model load", "loading the model, once per Python worker process"),
    ("fetch", "Fetch", "reading the objects (S3 GETs, ranged for CIFAR-10 records), concurrently within a worker"),
    ("decode", "Decode", "decoding and resizing to the model's input size, then normalising"),
    ("predict", "Predict", "the model's forward passes"),
    ("output", "Output rows", "turning predictions into Arrow rows for Spark's Parquet writer"),
    ("task", "Whole tasks", "every task from start to end; fetch and decode run ahead of predict, so they overlap it"),
)


@dataclass(frozen=True)
class Tile:
    """One input in a grid: its picture (a ``data:`` URI, None when it could not be read) and what to say under it."""

    name: str
    source: str
    image: Optional[str]
    lines: tuple[str, ...] = ()
    note: Optional[str] = None
    true_label: Optional[str] = None
    correct: Optional[bool] = None  # None: no ground truth
    reason: Optional[str] = None


@dataclass(frozen=True)
class ConfusionMatrix:
    """``cells[i][j]``: images of true class ``rows[i]`` predicted as ``columns[j]``; the last column may be
    ``OTHER_CLASSES`` (predicted as a class that has no row)."""

    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: tuple[tuple[int, ...], ...]
    omitted_true_classes: int


def write_report(spark, summary: dict, *, predictions_uri: str, package: ModelPackage, storage: Storage,
                 report_uri: str, thumbnails: int, inputs: Optional[dict] = None) -> dict:
    """Build and write the report; return what the summary records about it (``uri`` is None when it failed)."""
    try:
        shown = build_report(spark, summary, predictions_uri=predictions_uri, package=package, storage=storage,
                             report_uri=report_uri, thumbnails=thumbnails, inputs=inputs)
    except Exception as error:  # the predictions are written: a report problem must not fail the run
        message = f"{type(error).__name__}: {error}"
        print(f"warning: the run report {report_uri} was not written: {message}", file=sys.stderr)
        traceback.print_exc(file=sys.stderr)
        return {"uri": None, "thumbnails": 0, "error": message}
    return {"uri": report_uri, "thumbnails": shown, "error": None}


def build_report(spark, summary: dict, *, predictions_uri: str, package: ModelPackage, storage: Storage,
                 report_uri: str, thumbnails: int, inputs: Optional[dict] = None) -> int:
    """Write ``report_uri``; return the number of thumbnails shown. Raises on any failure. ``inputs``: the tasks'
    report inputs (:func:`job.report_inputs.merge`), or None to compute them from the Parquet."""
    context = report_context(spark, summary, predictions_uri=predictions_uri, package=package, storage=storage,
                             thumbnails=thumbnails, inputs=inputs)
    page = _environment().get_template(REPORT_NAME).render(context)
    storage.write(report_uri, page.encode(), content_type="text/html; charset=utf-8")
    return len(context["lowest"])


def report_context(spark, summary: dict, *, predictions_uri: str, package: ModelPackage, storage: Storage,
                   thumbnails: int, inputs: Optional[dict] = None) -> dict:
    """What the page template renders. Without ``inputs``, the bounded aggregations run on the Parquet."""
    if inputs is None:
        inputs = _inputs_from_parquet(spark, summary, predictions_uri, thumbnails)
    any_classified = summary["counts"]["ok"] > 0
    lowest = _lowest_confidence_tiles(inputs["lowest"][:thumbnails], package, storage) if any_classified else []
    return {
        "summary": summary,
        "trained": summary["model"]["trained"],
        "wall_clock": _time_rows(summary["seconds"], WALL_CLOCK_PHASES),
        "worker": _time_rows(summary["worker_seconds"], WORKER_PHASES),
        "time_chart": _time_chart(summary["seconds"]),
        "class_chart": _class_chart(summary["per_class_counts"]) if any_classified else None,
        "omitted_classes": max(0, len(summary["per_class_counts"]) - MAX_CHART_CLASSES),
        "max_chart_classes": MAX_CHART_CLASSES,
        "confidence_chart": _confidence_chart(inputs["confidence"]) if any_classified else None,
        "thumbnails_setting": thumbnails,
        "lowest": lowest,
        "failed": _failed_tiles(inputs["failed"]),
        "failed_per_reason": FAILED_EXAMPLES_PER_REASON,
        "matrix": _confusion_matrix(inputs, package.labels) if summary["accuracy"] else None,
        "max_matrix_classes": MAX_MATRIX_CLASSES,
    }


def _environment() -> Environment:
    # PackageLoader reads the template from job/templates/ in a checkout and from inside job.zip (--py-files) alike.
    environment = Environment(loader=PackageLoader("job", "templates"), autoescape=True, trim_blocks=True,
                              lstrip_blocks=True)
    environment.filters["seconds"] = lambda value: "–" if value is None else f"{value:,.1f} s"
    environment.filters["percent"] = lambda value: f"{value:.1%}"
    return environment


def _time_rows(seconds: dict, phases) -> list[dict]:
    return [{"name": name, "seconds": seconds.get(key), "meaning": meaning} for key, name, meaning in phases]


# --- the report's inputs from the Parquet, when the tasks' are not taken: each query returns a bounded number of rows

def _inputs_from_parquet(spark, summary: dict, predictions_uri: str, thumbnails: int) -> dict:
    """The shape of :func:`job.report_inputs.merge`, from the written Parquet (``pairs`` holds only the true classes
    the matrix shows, with ``true_counts`` beside it for all of them)."""
    frame = spark.read.parquet(predictions_uri)
    classified = frame.where(F.col("status") == "ok")
    any_classified = summary["counts"]["ok"] > 0
    inputs = {"confidence": _confidence_buckets(classified) if any_classified else [0] * CONFIDENCE_BUCKETS,
              "lowest": [], "failed": [], "pairs": {}, "true_counts": {}}
    if any_classified and thumbnails:
        inputs["lowest"] = [row.asDict(recursive=True) for row in (
            classified.orderBy("probability", "source", "index")
            .select("source", "index", "probability", "top_k", "true_label").limit(thumbnails).collect())]
    if summary["counts"]["error"]:
        by_reason = Window.partitionBy("reason").orderBy("source", "index")
        inputs["failed"] = [row.asDict() for row in (
            frame.where(F.col("status") != "ok")
            .select("source", "index", "error", F.substring_index("error", ":", 1).alias("reason"))
            .withColumn("rank", F.row_number().over(by_reason))
            .where(F.col("rank") <= FAILED_EXAMPLES_PER_REASON).drop("rank")
            .orderBy("reason", "source", "index").limit(MAX_FAILED_EXAMPLES).collect())]
    if summary["accuracy"]:
        graded = classified.where(F.col("true_label").isNotNull())
        # True labels are CIFAR-10 label bytes, so there are at most 256 groups here.
        true_counts = {row["true_label"]: row["count"] for row in graded.groupBy("true_label").count().collect()}
        shown = _matrix_classes(true_counts)
        predicted = F.when(F.col("label").isin(shown), F.col("label")).otherwise(F.lit(-1))  # -1: a class with no row
        inputs["true_counts"] = true_counts
        inputs["pairs"] = {(row["true_label"], row["predicted"]): row["count"] for row in (
            graded.where(F.col("true_label").isin(shown))
            .groupBy("true_label", predicted.alias("predicted")).count().collect())}
    return inputs


def _confidence_buckets(classified) -> list[int]:
    """Images per top-1 probability bucket ``[i/B, (i+1)/B)``, the last bucket including 1.0."""
    bucket = F.least(F.floor(F.col("probability") * CONFIDENCE_BUCKETS), F.lit(CONFIDENCE_BUCKETS - 1)).cast("int")
    counts = [0] * CONFIDENCE_BUCKETS
    for row in classified.groupBy(bucket.alias("bucket")).count().collect():
        counts[row["bucket"]] = row["count"]
    return counts


def _class_name(label: int, labels: tuple[str, ...]) -> str:
    return labels[label] if 0 <= label < len(labels) else str(label)


def _matrix_classes(true_counts: dict[int, int]) -> list[int]:
    """The true classes the matrix shows: the ``MAX_MATRIX_CLASSES`` most frequent, in label order."""
    by_frequency = sorted(true_counts.items(), key=lambda pair: (-pair[1], pair[0]))
    return sorted(label for label, _ in by_frequency[:MAX_MATRIX_CLASSES])


def _confusion_matrix(inputs: dict, labels: tuple[str, ...]) -> Optional[ConfusionMatrix]:
    """True class × predicted class over the images with ground truth, for the most frequent true classes, from
    ``inputs["pairs"]`` ((true, predicted) -> images; ``true_counts`` per true class when pairs do not cover them)."""
    pairs = inputs["pairs"]
    true_counts = dict(inputs.get("true_counts") or {})
    if not true_counts:
        for (true_label, _), count in pairs.items():
            true_counts[true_label] = true_counts.get(true_label, 0) + count
    if not true_counts:
        return None
    shown = _matrix_classes(true_counts)
    groups: dict = {}
    for (true_label, label), count in pairs.items():
        if true_label in shown:
            key = (true_label, label if label in shown else -1)
            groups[key] = groups.get(key, 0) + count
    has_other = any(predicted == -1 for _, predicted in groups)
    columns = shown + ([-1] if has_other else [])
    position = {label: index for index, label in enumerate(columns)}
    cells = [[0] * len(columns) for _ in shown]
    for (true_label, predicted), count in groups.items():
        cells[position[true_label]][position[predicted]] = count
    return ConfusionMatrix(
        rows=tuple(_class_name(label, labels) for label in shown),
        columns=tuple(OTHER_CLASSES if label == -1 else _class_name(label, labels) for label in columns),
        cells=tuple(tuple(row) for row in cells),
        omitted_true_classes=len(true_counts) - len(shown),
    )


def _lowest_confidence_tiles(rows: list[dict], package: ModelPackage, storage: Storage) -> list[Tile]:
    """Tiles of the lowest-confidence rows (``source``, ``index``, ``probability``, ``top_k``, ``true_label``)."""
    if not rows:
        return []
    scale = min(1.0, THUMBNAIL_MAX_SIDE / max(package.height, package.width))
    size = (max(1, round(package.height * scale)), max(1, round(package.width * scale)))
    with ThreadPoolExecutor(max_workers=THUMBNAIL_READ_THREADS, thread_name_prefix="report-thumbnail") as pool:
        # Cropped or padded as the model saw it, at the thumbnail's size.
        preprocessing = package.preprocessing
        resize = (preprocessing.resize, preprocessing.crop_fraction, preprocessing.interpolation)
        images = list(pool.map(lambda row: _thumbnail(row["source"], row["index"], storage, size, resize), rows))
    tiles = []
    for row, (image, problem) in zip(rows, images):
        lines = tuple(f"{_class_name(entry['label'], package.labels)}: {entry['probability']:.0%}"
                      for entry in row["top_k"][:THUMBNAIL_TOP_LABELS])
        tiles.append(Tile(
            name=_display_name(row["source"], row["index"]), source=row["source"], image=image, lines=lines,
            note=problem,
            true_label=None if row["true_label"] is None else _class_name(row["true_label"], package.labels),
            correct=None if row["true_label"] is None else row["true_label"] == row["top_k"][0]["label"]))
    return tiles


def _failed_tiles(rows: list[dict]) -> list[Tile]:
    """Tiles of failed rows (``source``, ``index``, ``error``, ``reason``), in the order given."""
    return [Tile(name=_display_name(row["source"], row["index"]), source=row["source"], image=None,
                 note=row["error"].partition(": ")[2] or row["error"], reason=row["reason"]) for row in rows]


def _display_name(source: str, index: int) -> str:
    name = os.path.basename(source)
    return f"{name} #{index}" if is_cifar_batch(source) else name


def _thumbnail(source: str, index: int, storage: Storage, size: tuple[int, int], resize: tuple = ()
               ) -> tuple[Optional[str], Optional[str]]:
    """A PNG ``data:`` URI of the input as the job decodes it, or None and why (e.g. the object changed since);
    ``resize`` is the package's (mode, crop fraction, interpolation)."""
    height, width = size
    try:
        if is_cifar_batch(source):
            record = storage.read(source, index * CIFAR_RECORD_BYTES, CIFAR_RECORD_BYTES)
            pixels = decode_cifar_records(record, height, width, *resize)[0][0]
        else:
            # The driver's memory is bounded as a worker's is: the rows shown were at most this size when classified.
            pixels = decode_image(storage.read(source, max_bytes=DEFAULT_MAX_OBJECT_BYTES), height, width, *resize)
    except Exception as error:  # one unreadable thumbnail must not cost the whole report
        return None, f"not shown: {type(error).__name__}: {error}"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), None


# --- charts: matplotlib figures as inline SVG ------------------------------------------------------------------------

def _inline_svg(figure: Figure, prefix: str) -> Markup:
    """The figure as an ``<svg>`` element whose ids are unique in the page (they start with ``prefix``)."""
    figure.draw_without_rendering()  # creates the tick artists, so that they get ids below too
    for number, artist in enumerate(figure.findobj()):
        if artist.get_gid() is None:
            artist.set_gid(f"{prefix}-{number}")
    buffer = io.StringIO()
    # Text stays text (searchable, small); the salt keeps clip-path ids of different charts apart.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    return Markup(svg[svg.index("<svg"):])


def _horizontal_bars(names: list[str], values: list[float], value_labels: list[str], *, bar_ids: list[str],
                     xlabel: str, prefix: str) -> Markup:
    """One bar per name, the first on top, each labelled with its value.

    Names are drawn as written: without ``text.parse_math`` off, a label holding two ``$`` would be drawn as
    mathtext, or (``$x^{2$``) raise and cost the whole report. The setting is read when each text is created.
    """
    with rc_context({"text.parse_math": False}):
        return _draw_horizontal_bars(names, values, value_labels, bar_ids=bar_ids, xlabel=xlabel, prefix=prefix)


def _draw_horizontal_bars(names: list[str], values: list[float], value_labels: list[str], *, bar_ids: list[str],
                          xlabel: str, prefix: str) -> Markup:
    figure = Figure(figsize=(CHART_WIDTH_INCHES, 0.7 + 0.26 * len(names)), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(names))
    bars = axes.barh(positions, values, color=BAR_COLOR)
    for bar_id, bar in zip(bar_ids, bars):
        bar.set_gid(bar_id)
    axes.bar_label(bars, labels=value_labels, padding=3, fontsize=8)
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.margins(x=0.15)
    axes.spines[["top", "right"]].set_visible(False)
    return _inline_svg(figure, prefix)


def _class_chart(per_class_counts: dict[str, int]) -> Markup:
    ranked = sorted(per_class_counts.items(), key=lambda pair: (-pair[1], pair[0]))[:MAX_CHART_CLASSES]
    return _horizontal_bars([name for name, _ in ranked], [count for _, count in ranked],
                            [f"{count:,}" for _, count in ranked],
                            bar_ids=[f"class-bar-{index}" for index in range(len(ranked))],
                            xlabel="images (top-1 label)", prefix="class-chart")


def _confidence_chart(counts: list[int]) -> Markup:
    figure = Figure(figsize=(CHART_WIDTH_INCHES, 2.8), layout="constrained")
    axes = figure.subplots()
    width = 1.0 / len(counts)
    bars = axes.bar([(index + 0.5) * width for index in range(len(counts))], counts, width=width * 0.92,
                    color=BAR_COLOR)
    for index, bar in enumerate(bars):
        bar.set_gid(f"confidence-bar-{index}")
    axes.set_xlim(0, 1)
    axes.set_xlabel("top-1 probability")
    nonzero = [count for count in counts if count]
    if nonzero and max(nonzero) > LOG_SCALE_RATIO * min(nonzero):
        # A trained model puts nearly everything in the last bucket; a log scale keeps the uncertain ones visible.
        axes.set_yscale("log")
        axes.set_ylabel("images (log scale)")
    else:
        axes.set_ylabel("images")
    axes.spines[["top", "right"]].set_visible(False)
    return _inline_svg(figure, "confidence-chart")


def _time_chart(seconds: dict) -> Markup:
    values = [seconds.get(key) or 0.0 for key, _, _ in WALL_CLOCK_PHASES]
    return _horizontal_bars([name for _, name, _ in WALL_CLOCK_PHASES], values, [f"{value:.1f} s" for value in values],
                            bar_ids=[f"time-bar-{key}" for key, _, _ in WALL_CLOCK_PHASES],
                            xlabel="seconds, wall clock", prefix="time-chart")
