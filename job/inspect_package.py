"""``python -m job.model_package inspect``: what ONNX Runtime runs for a package with the job's session options on
this CPU (integer or float convolutions, operator times) and how fast. Needs ONNX Runtime only, so it runs on a node.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from job.package_format import ModelPackage, ModelPackageError
from job.predictor import int8_instructions, onnx_session_options


@dataclass(frozen=True)
class SessionReport:
    """What ONNX Runtime runs for a package with the job's session options, on this CPU."""

    int8_instructions: str
    onnxruntime: str
    operators: dict  # op name -> (count, share of one batch's kernel time)
    convolutions: int
    integer_convolutions: int
    images_per_s: float
    threads: int
    batch_size: int

    def describe(self, package: ModelPackage) -> str:
        operators = ", ".join(f"{name} x{count} ({share:.0%})" for name, (count, share) in sorted(
            self.operators.items(), key=lambda pair: -pair[1][1]))
        return "\n".join([
            f"CPU 8-bit dot-product instructions: {self.int8_instructions}",
            f"onnxruntime {self.onnxruntime}, the job's session options, {self.threads} thread(s)",
            f"operators run (count, share of one batch's kernel time): {operators}",
            f"convolutions run as integer QLinearConv: {self.integer_convolutions} of {self.convolutions}",
            f"images/s, batch {self.batch_size} at {package.height}x{package.width}: {self.images_per_s:.1f}",
        ])


def inspect_session(package: ModelPackage, directory: str, *, threads: int = 1, batch_size: int = 32,
                    seconds: float = 5.0) -> SessionReport:
    """Profile one batch through the job's ONNX Runtime session for ``package`` (stored in ``directory``), then time
    batches for about ``seconds``: which operators run (integer or float convolutions) and how fast, on this CPU."""
    import onnxruntime

    if package.format != "onnx":
        raise ModelPackageError(f"inspect reads onnx packages; {package.uri} is {package.format!r}")
    model_path = os.path.join(directory, package.files["onnx"])
    random = np.random.default_rng(0)
    batch = (random.integers(0, 256, (batch_size, *package.input_shape), dtype=np.uint8)
             if package.preprocessing.input_dtype == "uint8"
             else random.standard_normal((batch_size, *package.input_shape)).astype(np.float32))
    scratch = tempfile.mkdtemp(prefix="inspect-")
    try:
        options = onnx_session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(scratch, "profile")
        profiled = onnxruntime.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
        profiled.run(None, {package.input_name: batch})  # one batch: every kernel event below belongs to it
        with open(profiled.end_profiling()) as file:
            events = json.load(file)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    kernels = [event for event in events if event.get("cat") == "Node" and event["name"].endswith("_kernel_time")]
    counts = collections.Counter(event["args"]["op_name"] for event in kernels)
    durations = collections.Counter()
    for event in kernels:
        durations[event["args"]["op_name"]] += event["dur"]
    total = sum(durations.values()) or 1
    timed = onnxruntime.InferenceSession(model_path, sess_options=onnx_session_options(threads),
                                         providers=["CPUExecutionProvider"])
    timed.run(None, {package.input_name: batch})
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        timed.run(None, {package.input_name: batch})
        images += batch_size
    return SessionReport(
        int8_instructions=int8_instructions(), onnxruntime=onnxruntime.__version__,
        operators={name: (count, durations[name] / total) for name, count in counts.items()},
        convolutions=sum(count for name, count in counts.items() if "Conv" in name),
        integer_convolutions=counts.get("QLinearConv", 0),
        images_per_s=images / (time.perf_counter() - started), threads=threads, batch_size=batch_size)
