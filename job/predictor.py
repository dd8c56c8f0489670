"""Running a model package: device choice, framework loading (lazy imports), and the per-worker model cache.

``load_predictor`` returns ``predict(batch) -> probabilities`` where ``batch`` is the package's input
(``float32[N, 3, H, W]`` by default; its ``preprocessing`` may make it NHWC or uint8) and the result is
``float32[N, classes]``. The cache keeps one loaded model per Python worker process: Spark reuses workers across tasks
(``spark.python.worker.reuse``, on by default), so a model is loaded once per worker, not once per task.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from job.package_format import ModelOutputError, ModelPackage, check_onnx_file
from job.package_store import download_package
from job.storage import Storage, is_s3, local_path

Predict = Callable[[np.ndarray], np.ndarray]


class DeviceError(RuntimeError):
    """The requested device cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class Device:
    kind: str  # "cpu" | "gpu"
    index: int = 0
    note: str = ""  # why this device was chosen, when it was not simply what was asked for

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.index}"


def resolve_device(requested: str, assigned_gpus: Sequence[str], framework_gpu_count: int) -> Device:
    """Choose the device for one task.

    ``assigned_gpus`` are the GPU addresses Spark gave this task (``TaskContext.resources()["gpu"]``), which is how each
    executor gets a GPU of its own; ``framework_gpu_count`` is how many GPUs the model framework can see.
    """
    if requested == "cpu":
        return Device("cpu")
    if requested not in ("gpu", "auto"):
        raise DeviceError(f"--device must be cpu, gpu or auto; got {requested!r}")
    problem = None
    if not assigned_gpus:
        problem = ("Spark assigned no GPU to this task: set spark.executor.resource.gpu.amount=1 and "
                   "spark.task.resource.gpu.amount=1 with a GPU discovery script (the stack does this for compute=gpu)")
    elif framework_gpu_count == 0:
        problem = ("the model framework sees no GPU: install the CUDA build (bootstrap/install-mxnet.sh gpu) and check "
                   "the NVIDIA driver")
    elif int(assigned_gpus[0]) >= framework_gpu_count:
        problem = f"Spark assigned GPU {assigned_gpus[0]} but the framework sees only {framework_gpu_count} GPU(s)"
    if problem is None:
        return Device("gpu", int(assigned_gpus[0]))
    if requested == "gpu":
        raise DeviceError(f"--device gpu: {problem}")
    return Device("cpu", note=f"--device auto fell back to CPU: {problem}")


def task_gpu_addresses() -> list[str]:
    """GPU addresses Spark assigned to the running task (empty outside a task or without GPU scheduling)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    resource = context.resources().get("gpu")
    return list(resource.addresses) if resource is not None else []


def framework_gpu_count(model_format: str) -> int:
    if model_format == "mxnet":
        import mxnet as mx

        return mx.context.num_gpus()
    import onnxruntime

    return 1 if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else 0


def threads_per_task() -> int:
    """Spark sets OMP_NUM_THREADS to spark.task.cpus in Python workers; outside Spark use every core."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def _mxnet_predictor(package: ModelPackage, directory: str, device: Device) -> Predict:
    import mxnet as mx

    context = mx.gpu(device.index) if device.kind == "gpu" else mx.cpu()
    with warnings.catch_warnings():
        # SymbolBlock.imports warns that the input's dtype is unknown; it is float32 by the package format.
        warnings.filterwarnings("ignore", message="Cannot decide type")
        net = mx.gluon.SymbolBlock.imports(
            os.path.join(directory, package.files["symbol"]), [package.input_name],
            os.path.join(directory, package.files["params"]), ctx=context)
    # static_alloc reuses the memory plan between calls; the shape still may change (the last batch is smaller).
    net.hybridize(static_alloc=True)

    def predict(batch: np.ndarray) -> np.ndarray:
        return net(mx.nd.array(batch, ctx=context, dtype=np.float32)).asnumpy()

    return predict


def int8_instructions(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's 8-bit dot-product instructions, as ONNX Runtime's kernels choose them (from CPUID, not the vendor).

    ``amx_int8`` (Sapphire Rapids and later), ``avx512_vnni`` (Cascade Lake, Ice Lake, AMD Zen 4) and ``avx_vnni``
    (Alder Lake-class cores) multiply-accumulate 8-bit values into 32 bits in one instruction. Without them
    (Skylake-era c5, AMD Zen 2/3: c5a, c6a, m6a) ``avx512bw`` or ``avx2`` take two instructions and a 16-bit
    intermediate: INT8 then gains less over FP32. On arm64 (Graviton) ``/proc/cpuinfo`` names them under
    ``Features``: ``i8mm`` (8-bit matrix multiply, Graviton3 and later) and ``asimddp`` (8-bit dot product).
    """
    try:
        with open(cpuinfo_path) as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), None)
    except OSError:
        return "unknown"
    if line is None:
        return "unknown"
    flags = set(line.split(":", 1)[1].split())
    if line.startswith("Features"):
        return next((flag for flag in ("i8mm", "asimddp") if flag in flags), "no 8-bit dot product (arm64)")
    for flag in ("amx_int8", "avx512_vnni", "avx_vnni"):
        if flag in flags:
            return flag
    return next((f"{flag} (no VNNI)" for flag in ("avx512bw", "avx2") if flag in flags), "no AVX2 (no VNNI)")


def onnx_session_options(threads: int):
    """The job's ONNX Runtime session options (also used by ``job.quantize`` to measure a package's agreement)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # ONNX Runtime would otherwise size its pool from every core of the machine, oversubscribing the other tasks.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Every graph optimisation, stated rather than left to the default: level 2 fuses an INT8 package's
    # QuantizeLinear/DequantizeLinear pairs into integer operators (QLinearConv, QLinearAdd), and only level 3 runs
    # those convolutions channels-last, which made INT8 ResNet-18 1.2x faster at 224x224 on an AVX2 CPU. Not set:
    # session.x64quantprecision. It moves CPUs without VNNI to a slower exact kernel (0.72x here), which packages made
    # by `job.model_package quantize` do not need: their 7-bit weights never saturate the fast one (job/quantize.py).
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _onnx_predictor(package: ModelPackage, directory: str, device: Device) -> Predict:
    import onnxruntime

    options = onnx_session_options(threads_per_task())
    providers = (
        [("CUDAExecutionProvider", {"device_id": device.index})] if device.kind == "gpu" else ["CPUExecutionProvider"])
    with warnings.catch_warnings():
        # A build without CUDA warns that the provider is not available; the check below turns that into an error.
        warnings.filterwarnings("ignore", message="Specified provider 'CUDAExecutionProvider' is not in available")
        session = onnxruntime.InferenceSession(
            os.path.join(directory, package.files["onnx"]), sess_options=options, providers=providers)
    # ONNX Runtime lists its CUDA provider as available even when it cannot load it (the CUDA 12 or cuDNN 9 libraries
    # missing), and then quietly runs the session on the CPU: only the session's own providers tell.
    if device.kind == "gpu" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise DeviceError(
            f"ONNX Runtime could not run on GPU {device.index}: the session's providers are {session.get_providers()}, "
            f"not CUDAExecutionProvider. Its CUDA provider needs the CUDA 12 and cuDNN 9 libraries of the "
            f"nvidia-*-cu12 wheels that bootstrap/install-mxnet.sh gpu installs; ONNX Runtime's log names the one "
            f"it could not load")
    input_name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: batch})[0]

    return predict


def load_predictor(package: ModelPackage, directory: str, device: Device) -> Predict:
    """``predict(input[N, *input_shape]) -> float32[N, len(labels)]`` probabilities, for a package stored in
    ``directory``; the input's dtype is the package's ``preprocessing.input_dtype``.

    One forward pass of a single blank image checks the output's shape before any input is classified. Raises
    :class:`DeviceError` when the framework cannot run on ``device`` after all (ONNX Runtime without CUDA), and
    :class:`ModelOutputError` when the model's output does not match its labels.
    """
    raw = _mxnet_predictor(package, directory, device) if package.format == "mxnet" else _onnx_predictor(
        package, directory, device)
    expected_classes = len(package.labels)

    def predict(batch: np.ndarray) -> np.ndarray:
        scores = np.asarray(raw(batch), dtype=np.float32)
        if scores.shape != (len(batch), expected_classes):
            raise ModelOutputError(
                f"model {package.name} returned scores of shape {scores.shape} for a batch of {len(batch)} images "
                f"of input_shape {list(package.input_shape)}; expected ({len(batch)}, {expected_classes}) to match "
                f"the {expected_classes} labels in model.json")
        return softmax(scores) if package.output == "logits" else scores

    predict(np.zeros((1, *package.input_shape), dtype=package.preprocessing.input_dtype))
    return predict


_cache: dict[tuple, tuple[Predict, Device]] = {}
_cache_lock = threading.Lock()


def scratch_root() -> str | None:
    """Where a worker copies a model package: the YARN container's working directory when there is one (YARN removes
    it with the container, and on EMR it is on the instance's disks, not the tmpfs ``/tmp``), else the system's."""
    return os.getcwd() if "CONTAINER_ID" in os.environ else None


def cached_predictor(package: ModelPackage, requested_device: str, storage: Storage) -> tuple[Predict, Device, bool]:
    """The worker's predictor for ``package``, loading it on first use. Returns ``(predict, device, loaded_now)``.

    An S3 package is copied (only the files ``model.json`` names, at the ETags the driver recorded) into a scratch
    directory that is removed as soon as the model is loaded: both frameworks hold the model in memory by then.
    """
    device = resolve_device(requested_device, task_gpu_addresses(),
                            0 if requested_device == "cpu" else framework_gpu_count(package.format))
    key = (package.uri, package.format, str(device), tuple(sorted(package.file_etags.items())))
    with _cache_lock:
        if key in _cache:
            return (*_cache[key], False)
        scratch = None
        try:
            if is_s3(package.uri):
                scratch = tempfile.mkdtemp(prefix="model-package-", dir=scratch_root())
                download_package(package, storage, scratch)
                directory = scratch
            else:
                directory = local_path(package.uri)
                if package.format == "onnx":
                    check_onnx_file(package, os.path.join(directory, package.files["onnx"]))
            try:
                predict = load_predictor(package, directory, device)
            except DeviceError as error:
                if requested_device == "gpu":
                    raise DeviceError(f"--device gpu: {error}") from error
                device = Device("cpu", note=f"--device auto fell back to CPU: {error}")
                predict = load_predictor(package, directory, device)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        # Kept under the key of the device asked for, so later tasks of this worker reuse the fallback too.
        _cache[key] = (predict, device)
        return (*_cache[key], True)
