"""The job's command line (the contract with the stack, documented in README.md) parsed into one validated object."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional, Sequence

DEVICES = ("cpu", "gpu", "auto")
# auto: an mxnet package with a checked ONNX twin (add-onnx) runs with ONNX Runtime, every other package with its own
# format's runtime; mxnet and onnxruntime force one (docs/job.md, "Which runtime runs the model").
RUNTIMES = ("auto", "mxnet", "onnxruntime")
DEFAULT_RUNTIME = "auto"
DEFAULT_BATCH_SIZE = 256
DEFAULT_TOP_K = 5
DEFAULT_DEVICE = "auto"
DEFAULT_MAX_FAILURE_RATIO = 0.01
DEFAULT_FETCH_THREADS = 16
# A task holds this many images at most; with fewer images the inputs are spread over every core instead.
DEFAULT_MAX_IMAGES_PER_TASK = 20_000
# The run report's grid of lowest-confidence images: each costs one object read on the driver and 2-15 KB of page
# (32x32 to 224x224 inputs), so the cap keeps a page under about 8 MB.
DEFAULT_REPORT_THUMBNAILS = 48
MAX_REPORT_THUMBNAILS = 500
URI_SCHEMES = ("s3://", "file://", "/", "./", "../")
# Memory of one Python worker (bounded by settings, not by luck). An object larger than --max-object-bytes is never read
# (a `too_large` row): 64 MiB holds any photo within decode.MAX_IMAGE_PIXELS as PNG or JPEG. The fetched objects a
# worker holds at once are at most --max-bytes-in-flight; the decoded arrays of one batch (uint8 pixels plus the
# float32 model input, 15 bytes per pixel) at most --max-batch-bytes, by taking fewer images per batch when the model's
# input is large: 256 images of 224x224 are 193 MB.
MIB = 1024 * 1024
DEFAULT_MAX_OBJECT_BYTES = 64 * MIB
DEFAULT_MAX_BYTES_IN_FLIGHT = 256 * MIB
DEFAULT_MAX_BATCH_BYTES = 256 * MIB
DECODED_BYTES_PER_PIXEL = 3 + 3 * 4
# `python -m job` without --master: every core, and a failed task (e.g. a crashed Python worker) retried up to 4 times,
# as a cluster would.
DEFAULT_LOCAL_MASTER = "local[*,4]"


class ConfigError(ValueError):
    """A setting is wrong: the job stops before any Spark work, with this message."""


@dataclass(frozen=True)
class JobConfig:
    inputs: tuple[str, ...]
    manifest: Optional[str]
    model: str
    output: str
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int = DEFAULT_TOP_K
    device: str = DEFAULT_DEVICE
    runtime: str = DEFAULT_RUNTIME
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO
    overwrite: bool = False
    s3_endpoint_url: Optional[str] = None
    fetch_threads: int = DEFAULT_FETCH_THREADS
    max_images_per_task: int = DEFAULT_MAX_IMAGES_PER_TASK
    report_thumbnails: int = DEFAULT_REPORT_THUMBNAILS
    max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES
    max_bytes_in_flight: int = DEFAULT_MAX_BYTES_IN_FLIGHT
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    master: Optional[str] = None
    # Where to write the run's one-line record for the runs table (None: no record).
    run_record: Optional[str] = None
    # Test-only fault injection: the first Python worker to reach this many images kills itself (once per marker file).
    kill_worker_once_marker: Optional[str] = field(default=None, repr=False)
    kill_worker_after_images: int = field(default=0, repr=False)


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m job",
        description="Classify images with an MXNet or ONNX model package on Spark; write Parquet and summary.json.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", action="append", default=[], metavar="URI",
                        help="S3 prefix, local directory or single object (image or CIFAR-10 .bin); repeatable")
    source.add_argument("--manifest", metavar="URI",
                        help='JSON list of object URIs, or {"objects": [...]} (other keys ignored)')
    parser.add_argument("--model", required=True, metavar="URI", help="model package: directory or S3 prefix with model.json")
    parser.add_argument("--output", required=True, metavar="URI", help="where the Parquet files and summary.json go")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="N",
                        help=f"images per model call (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, metavar="K",
                        help=f"labels kept per image, best first (default {DEFAULT_TOP_K})")
    parser.add_argument("--device", default=DEFAULT_DEVICE, metavar="|".join(DEVICES),
                        help=f"where the model runs (default {DEFAULT_DEVICE}: the task's GPU when Spark assigned one)")
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME, metavar="|".join(RUNTIMES),
                        help=f"what runs the model (default {DEFAULT_RUNTIME}: ONNX Runtime for an mxnet package with "
                             "a checked ONNX twin, else the package's own)")
    parser.add_argument("--max-failure-ratio", type=float, default=DEFAULT_MAX_FAILURE_RATIO, metavar="F",
                        help=f"fail the job when more than this share of inputs failed (default {DEFAULT_MAX_FAILURE_RATIO})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output instead of refusing")
    parser.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")
    parser.add_argument("--fetch-threads", type=int, default=DEFAULT_FETCH_THREADS, metavar="N",
                        help=f"concurrent object reads per Python worker (default {DEFAULT_FETCH_THREADS})")
    parser.add_argument("--max-images-per-task", type=int, default=DEFAULT_MAX_IMAGES_PER_TASK, metavar="N",
                        help=f"upper bound on images per Spark task (default {DEFAULT_MAX_IMAGES_PER_TASK})")
    parser.add_argument("--report-thumbnails", type=int, default=DEFAULT_REPORT_THUMBNAILS, metavar="N",
                        help=f"lowest-confidence images shown in OUTPUT/report.html, 0 to {MAX_REPORT_THUMBNAILS} "
                             f"(default {DEFAULT_REPORT_THUMBNAILS}; 0: none)")
    parser.add_argument("--max-object-bytes", type=int, default=DEFAULT_MAX_OBJECT_BYTES, metavar="BYTES",
                        help=f"larger inputs are not read, but recorded as too_large "
                             f"(default {DEFAULT_MAX_OBJECT_BYTES})")
    parser.add_argument("--max-bytes-in-flight", type=int, default=DEFAULT_MAX_BYTES_IN_FLIGHT, metavar="BYTES",
                        help=f"fetched bytes one Python worker holds at once, at least --max-object-bytes (default "
                             f"{DEFAULT_MAX_BYTES_IN_FLIGHT})")
    parser.add_argument("--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES, metavar="BYTES",
                        help=f"decoded bytes of one batch ({DECODED_BYTES_PER_PIXEL} per input pixel); a large model "
                             f"input gets fewer images per batch (default {DEFAULT_MAX_BATCH_BYTES})")
    parser.add_argument("--run-record", metavar="URI",
                        help="also write the run's one-line JSON record here (the runs table's object)")
    parser.add_argument("--master", metavar="URL",
                        help=f"Spark master for `python -m job` (default {DEFAULT_LOCAL_MASTER}: every core, a failed "
                             "task retried up to 4 times); ignored under spark-submit")
    parser.add_argument("--test-kill-worker-once", dest="kill_worker_once_marker", help=argparse.SUPPRESS)
    parser.add_argument("--test-kill-worker-after-images", dest="kill_worker_after_images", type=int, default=0,
                        help=argparse.SUPPRESS)
    return parser


def _looks_like_uri(value: str) -> bool:
    return value.startswith(URI_SCHEMES) or "://" not in value


def _problems(config: JobConfig) -> list[str]:
    problems = []
    if config.batch_size < 1:
        problems.append(f"--batch-size must be a positive integer; got {config.batch_size}")
    if config.top_k < 1:
        problems.append(f"--top-k must be a positive integer; got {config.top_k}")
    if config.device not in DEVICES:
        problems.append(f"--device must be one of {', '.join(DEVICES)}; got {config.device!r}")
    if config.runtime not in RUNTIMES:
        problems.append(f"--runtime must be one of {', '.join(RUNTIMES)}; got {config.runtime!r}")
    if not 0.0 <= config.max_failure_ratio <= 1.0:
        problems.append(f"--max-failure-ratio must be between 0 and 1; got {config.max_failure_ratio}")
    if config.fetch_threads < 1:
        problems.append(f"--fetch-threads must be a positive integer; got {config.fetch_threads}")
    if config.max_images_per_task < 1:
        problems.append(f"--max-images-per-task must be a positive integer; got {config.max_images_per_task}")
    for flag, value in (("--max-object-bytes", config.max_object_bytes),
                        ("--max-bytes-in-flight", config.max_bytes_in_flight),
                        ("--max-batch-bytes", config.max_batch_bytes)):
        if value < 1:
            problems.append(f"{flag} must be a positive number of bytes; got {value}")
    if config.max_bytes_in_flight < config.max_object_bytes:
        problems.append(f"--max-bytes-in-flight ({config.max_bytes_in_flight}) must be at least --max-object-bytes "
                        f"({config.max_object_bytes}): a worker must be able to hold the largest object it may read")
    if not 0 <= config.report_thumbnails <= MAX_REPORT_THUMBNAILS:
        problems.append(f"--report-thumbnails must be an integer from 0 (no thumbnails) to {MAX_REPORT_THUMBNAILS}; "
                        f"got {config.report_thumbnails}")
    named_uris = [("--input", uri) for uri in config.inputs] + [
        (flag, uri) for flag, uri in (("--manifest", config.manifest), ("--model", config.model),
                                      ("--output", config.output), ("--run-record", config.run_record))
        if uri is not None
    ]
    for flag, uri in named_uris:
        if not uri.strip():
            problems.append(f"{flag} must not be empty")
        elif not _looks_like_uri(uri):
            problems.append(f"{flag} {uri!r}: only s3:// URIs and local paths (optionally file://) are supported")
    return problems


def images_per_batch(config: JobConfig, height: int, width: int) -> int:
    """``--batch-size``, or fewer images when one batch of ``height`` x ``width`` inputs would decode to more than
    ``--max-batch-bytes``; at least 1."""
    return max(1, min(config.batch_size, config.max_batch_bytes // (height * width * DECODED_BYTES_PER_PIXEL)))


def parse_args(argv: Optional[Sequence[str]] = None) -> JobConfig:
    """Parse and validate the command line; raise :class:`ConfigError` listing every problem at once."""
    args = _argument_parser().parse_args(argv)
    config = JobConfig(
        inputs=tuple(args.input),
        manifest=args.manifest,
        model=args.model,
        output=args.output,
        batch_size=args.batch_size,
        top_k=args.top_k,
        device=args.device,
        runtime=args.runtime,
        max_failure_ratio=args.max_failure_ratio,
        overwrite=args.overwrite,
        s3_endpoint_url=args.s3_endpoint_url,
        fetch_threads=args.fetch_threads,
        max_images_per_task=args.max_images_per_task,
        report_thumbnails=args.report_thumbnails,
        max_object_bytes=args.max_object_bytes,
        max_bytes_in_flight=args.max_bytes_in_flight,
        max_batch_bytes=args.max_batch_bytes,
        master=args.master,
        run_record=args.run_record,
        kill_worker_once_marker=args.kill_worker_once_marker,
        kill_worker_after_images=args.kill_worker_after_images,
    )
    problems = _problems(config)
    if problems:
        raise ConfigError("invalid arguments:\n  - " + "\n  - ".join(problems))
    return config
