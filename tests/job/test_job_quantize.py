"""The INT8 package: `python -m job.model_package quantize` on the demo's model (trained briefly) and real images, its
agreement gate, the ONNX Runtime session the job gives it, and the job running it on local Spark.

What these tests cannot show: speed (that is `make bench`), and a CPU with VNNI. This machine's kernel class is
whatever it is (`int8_instructions()`); the 7-bit weights make the integer results the same on every x86 kernel, which
the benchmark's agreement figures and the probe notes, not these tests, bear out on other CPUs.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from moto.server import ThreadedMotoServer

from job.config import parse_args
from job.model_package import main as model_package_main
from job.model_package import read_package
from job.pipeline import run
from job.predictor import int8_instructions, onnx_session_options
from job.quantize import MIN_HELD_OUT_IMAGES, quantize_package, split_images
from job.sample_data import cifar_batch_bytes, digits_32x32, encode_jpeg, encode_png, split_held_out
from job.sources import KIND_IMAGE, KIND_INVALID, WorkItem
from job.storage import Storage

CALIBRATION_IMAGES = 32  # small on purpose: make test stays fast; the demo and the benchmark calibrate on 256
CIFAR_RECORDS = 200


@pytest.fixture(scope="module")
def calibration_pool(tmp_path_factory, digits_model):
    """The digits the model trained on (never its held-out ones): PNG and JPEG files, one CIFAR-10 batch whose records
    carry their labels, and one corrupt file."""
    images, labels = digits_32x32()
    train_indices, _ = split_held_out(labels, 0.2, 0)
    assert not set(train_indices) & set(digits_model.held_out_indices)
    directory = tmp_path_factory.mktemp("calibration")
    as_files, as_records = train_indices[CIFAR_RECORDS:], train_indices[:CIFAR_RECORDS]
    for position, index in enumerate(as_files):
        encode, suffix = (encode_png, "png") if position % 2 == 0 else (encode_jpeg, "jpg")
        (directory / f"digit_{index:04d}.{suffix}").write_bytes(encode(images[index]))
    (directory / "records.bin").write_bytes(cifar_batch_bytes(images[as_records], labels[as_records]))
    (directory / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG")
    return directory, len(train_indices)


@pytest.fixture(scope="module")
def int8_package(tmp_path_factory, digits_model, calibration_pool):
    """The quantize command, run once for the tests below: the package it wrote, its exit code, what it printed."""
    directory, images = calibration_pool
    out = str(tmp_path_factory.mktemp("int8") / "package")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = model_package_main(["quantize", "--package", digits_model.package_dir, "--calibration", str(directory),
                                   "--out", out, "--calibration-images", str(CALIBRATION_IMAGES),
                                   "--held-out-images", str(images)])
    return out, code, printed.getvalue()


def test_quantize_command_writes_an_onnx_package_that_passes_the_default_gate(
        int8_package, digits_model, calibration_pool):
    directory, images = calibration_pool
    out, code, printed = int8_package
    assert code == 0, printed
    package = read_package(out, Storage())
    assert (package.format, package.files) == ("onnx", {"onnx": "model.onnx"})
    assert (package.input_shape, package.mean, package.std, package.labels) == (
        (3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), tuple(str(digit) for digit in range(10)))
    quantization = package.provenance["quantization"]
    agreement = quantization["agreement"]
    # Every listed training digit is used once: 32 calibrate, all the others measure (the corrupt file is skipped).
    assert quantization["calibration"] == {"inputs": [str(directory)], "images": CALIBRATION_IMAGES, "split_seed": 0}
    assert agreement["held_out_images"] == images - CALIBRATION_IMAGES
    assert 0.99 <= agreement["top1_agreement"] <= 1.0 and agreement["min_agreement"] == 0.99
    assert 0 < agreement["max_probability_difference"] < 0.5
    assert CIFAR_RECORDS - CALIBRATION_IMAGES <= agreement["labelled_images"] <= CIFAR_RECORDS
    assert agreement["measured_on_cpu_int8_instructions"] == int8_instructions()
    assert quantization["source_package"] == {"uri": digits_model.package_dir, "name": "resnet18_v1-digits",
                                              "format": "mxnet"}
    assert "7-bit" in quantization["method"]
    assert quantization["method"].endswith("; the final classifier in float32") and quantization["kept_in_float32"]
    assert package.provenance["held_out_accuracy"] == digits_model.held_out_accuracy  # the source's provenance kept
    assert f"top-1 agreement with FP32 {agreement['top1_agreement']:.2%}" in printed
    assert "skipped 1 input that is not a decodable image" in printed and "accuracy on" in printed


def test_the_int8_weights_use_the_7_bit_range_and_the_classifier_stays_float(int8_package):
    """Why 7 bits: VPMADDUBSW (CPUs without VNNI) adds two uint8 x int8 products in 16 bits; 255 * 64 * 2 fits,
    255 * 127 * 2 does not."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(os.path.join(int8_package[0], "model.onnx"))
    weights = [numpy_helper.to_array(tensor) for tensor in model.graph.initializer
               if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 4]
    assert len(weights) == 20  # the 20 convolutions of ResNet-18 (batch norms folded into them)
    assert max(int(np.abs(weight).max()) for weight in weights) == 64
    operators = collections.Counter(node.op_type for node in model.graph.node)
    assert operators["Gemm"] == 1 and operators["Conv"] == 20 and operators["DequantizeLinear"] > 20
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    dequantized = {output for node in model.graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    assert not dequantized & set(gemm.input[1:])  # its weights and bias are float32 initializers
    assert read_package(int8_package[0], Storage()).provenance["quantization"]["kept_in_float32"] == [gemm.name]


def test_a_gate_at_100_percent_refuses_and_writes_nothing(tmp_path, capsys, digits_model, calibration_pool):
    directory, images = calibration_pool
    out = tmp_path / "int8"
    code = model_package_main(["quantize", "--package", digits_model.package_dir, "--calibration", str(directory),
                               "--out", str(out), "--calibration-images", str(CALIBRATION_IMAGES),
                               "--held-out-images", str(images), "--min-agreement", "1"])
    error = capsys.readouterr().err
    assert code == 3
    assert error.startswith(f"refused: the INT8 model was not written to {out}: top-1 agreement with FP32 ")
    assert f"/{images - CALIBRATION_IMAGES} held-out images)" in error and "below --min-agreement 100.00%" in error
    assert not out.exists()


def test_bad_arguments_are_named_before_any_work(tmp_path, capsys, digits_model, calibration_pool):
    code = model_package_main(["quantize", "--package", digits_model.package_dir, "--calibration",
                               str(calibration_pool[0]), "--out", str(tmp_path / "q"), "--held-out-images", "10",
                               "--min-agreement", "99", "--calibration-images", "0"])
    error = capsys.readouterr().err
    assert code == 2
    assert all(text in error for text in (
        "--calibration-images must be a positive integer; got 0",
        f"--held-out-images must be at least {MIN_HELD_OUT_IMAGES}", "--min-agreement must be between 0 and 1; got 99"))


@pytest.mark.parametrize("out, expected", [
    ("s3://bucket/int8/", "--out must be a local directory path (upload the package afterwards); got s3://bucket/"),
    (None, "--out must not be the FP32 package's own directory"),
])
def test_an_out_that_is_not_a_new_local_directory_is_refused_before_any_work(capsys, digits_model, out, expected):
    model_json = os.path.join(digits_model.package_dir, "model.json")
    before = open(model_json).read()
    code = model_package_main(["quantize", "--package", digits_model.package_dir, "--calibration", "/nonexistent",
                               "--out", out or digits_model.package_dir])
    assert code == 2 and expected in capsys.readouterr().err
    assert open(model_json).read() == before


def test_an_mxnet_package_and_images_on_s3(tmp_path, digits_model, calibration_pool):
    """The package and the calibration images under S3 prefixes of a loopback moto server: MXNet's exporter and ONNX
    Runtime open local files only, so the package is copied first. The mock cannot show real S3's latency or IAM."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="quantize-test")
        for name in os.listdir(digits_model.package_dir):
            s3.upload_file(os.path.join(digits_model.package_dir, name), "quantize-test", f"models/digits/{name}")
        images = sorted(path for path in os.listdir(calibration_pool[0]) if path.startswith("digit_"))
        for name in images[:CALIBRATION_IMAGES + MIN_HELD_OUT_IMAGES]:
            s3.upload_file(os.path.join(calibration_pool[0], name), "quantize-test", f"calibration/{name}")
        result = quantize_package(
            "s3://quantize-test/models/digits/", str(tmp_path / "int8"),
            calibration_inputs=["s3://quantize-test/calibration/"], calibration_images=CALIBRATION_IMAGES,
            held_out_images=MIN_HELD_OUT_IMAGES, s3_endpoint_url=endpoint)
    finally:
        server.stop()
    package = read_package(result.package_dir, Storage())
    assert package.format == "onnx" and result.agreement.images == MIN_HELD_OUT_IMAGES
    quantization = package.provenance["quantization"]
    assert quantization["source_package"]["uri"] == "s3://quantize-test/models/digits/"
    assert quantization["calibration"]["inputs"] == ["s3://quantize-test/calibration/"]


def test_too_few_images_for_both_sets_is_refused(tmp_path, digits_model):
    images, _ = digits_32x32()
    for index in range(120):
        (tmp_path / f"digit_{index}.png").write_bytes(encode_png(images[index]))
    with pytest.raises(ValueError, match=r"hold 120 images; 32 calibrate and at least 100 others"):
        quantize_package(digits_model.package_dir, str(tmp_path / "q"), calibration_inputs=[str(tmp_path)],
                         calibration_images=32)


def test_an_int8_package_is_not_quantized_again(tmp_path, int8_package):
    with pytest.raises(ValueError, match="is already an INT8 package; give the FP32 package it was made from"):
        quantize_package(int8_package[0], str(tmp_path / "q"), calibration_inputs=[str(tmp_path)])


def test_calibration_and_held_out_sets_are_disjoint_reproducible_and_images_only():
    items = [WorkItem(f"/d/{index}.png", KIND_IMAGE) for index in range(50)] + [
        WorkItem("/d/x.txt", KIND_INVALID, error="unsupported_type: ...")]
    calibration, held_out = split_images(items, 10, 100)
    assert (len(calibration), len(held_out)) == (10, 40)
    assert not {item.source for item in calibration} & {item.source for item in held_out}
    assert all(item.kind == KIND_IMAGE for item in calibration + held_out)
    assert split_images(items, 10, 100) == (calibration, held_out)
    assert [item.source for item in calibration] != [f"/d/{index}.png" for index in range(10)]  # shuffled, not sorted


def test_the_jobs_session_runs_the_int8_package_as_integer_channels_last_convolutions(tmp_path, int8_package):
    """The optimised graph ONNX Runtime builds with the job's session options: every convolution an integer
    QLinearConv in NHWC layout, with one DequantizeLinear, before the float32 classifier. At a lower optimisation
    level (ORT_ENABLE_EXTENDED) the convolutions stay NCHW, and this test fails."""
    import onnx
    import onnxruntime

    options = onnx_session_options(threads=1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(os.path.join(int8_package[0], "model.onnx"), sess_options=options,
                                 providers=["CPUExecutionProvider"])
    nodes = onnx.load(options.optimized_model_filepath).graph.node
    operators = collections.Counter(f"{node.domain or 'ai.onnx'}:{node.op_type}" for node in nodes)
    convolutions = [node for node in nodes if "Conv" in node.op_type]
    assert len(convolutions) == 20 and all(node.op_type == "QLinearConv" for node in convolutions)
    assert all(any(attribute.name == "channels_last" and attribute.i == 1 for attribute in node.attribute)
               for node in convolutions)
    assert operators["ai.onnx:DequantizeLinear"] == 1 and operators["ai.onnx:Gemm"] == 1


def test_inspect_tells_integer_from_float_convolutions_on_this_cpu(capsys, int8_package, digits_onnx_package):
    """The check to run on an EMR node (README): the job's own session options, profiled on one batch."""
    printed = {}
    for name, package in (("int8", int8_package[0]), ("fp32", digits_onnx_package)):
        assert model_package_main(["inspect", "--package", package, "--seconds", "0.2", "--batch-size", "8"]) == 0
        printed[name] = capsys.readouterr().out
    assert "convolutions run as integer QLinearConv: 20 of 20" in printed["int8"]
    assert "convolutions run as integer QLinearConv: 0 of 20" in printed["fp32"]
    assert f"CPU 8-bit dot-product instructions: {int8_instructions()}" in printed["int8"]
    assert "images/s, batch 8 at 32x32: " in printed["int8"]


@pytest.mark.parametrize("option, value", [("--threads", "0"), ("--batch-size", "-4"), ("--seconds", "0")])
def test_inspect_refuses_settings_below_one_naming_them(capsys, digits_onnx_package, option, value):
    with pytest.raises(SystemExit) as exit_info:
        model_package_main(["inspect", "--package", digits_onnx_package, option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be more than 0, got {value}" in capsys.readouterr().err


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse avx2 avx512f avx512bw avx512_vnni", "avx512_vnni"),
    ("fpu avx2 avx_vnni amx_int8 amx_tile", "amx_int8"),
    ("fpu avx2 avx512f avx512bw", "avx512bw (no VNNI)"),
    ("fpu fma avx f16c avx2", "avx2 (no VNNI)"),
])
def test_int8_instructions_read_from_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: a CPU\nflags\t\t: {flags}\n\n"
                       f"processor\t: 1\nflags\t\t: {flags}\n")
    assert int8_instructions(str(cpuinfo)) == expected


@pytest.mark.parametrize("features, expected", [
    ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimdrdm lrcpc dcpop asimddp ssbs", "asimddp"),  # Graviton2
    ("fp asimd aes sha512 asimddp sve asimdfhm i8mm bf16 dgh rng", "i8mm"),  # Graviton3
    ("fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid", "no 8-bit dot product (arm64)"),
])
def test_int8_instructions_read_from_arm64_features(tmp_path, features, expected):
    """arm64 kernels list CPU features under ``Features``, not ``flags``: a Graviton node must not read as x86."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: {features}\nCPU implementer\t: 0x41\n")
    assert int8_instructions(str(cpuinfo)) == expected


def test_int8_instructions_unknown_without_a_flags_line(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: a CPU\n")
    assert int8_instructions(str(tmp_path / "cpuinfo")) == "unknown"


@pytest.mark.spark
def test_the_job_runs_the_int8_package_every_input_once_with_the_same_schema(spark, tmp_path, digits_model,
                                                                            int8_package):
    """Held-out digits (never calibrated on) as PNG, JPEG and CIFAR-10 records, and one corrupt file."""
    images, labels = digits_32x32()
    held_out = digits_model.held_out_indices[:60]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for position, index in enumerate(held_out[:40]):
        encode, suffix = (encode_png, "png") if position % 2 == 0 else (encode_jpeg, "jpg")
        (inputs / f"digit_{index:04d}.{suffix}").write_bytes(encode(images[index]))
    (inputs / "held_out.bin").write_bytes(cifar_batch_bytes(images[held_out[40:]], labels[held_out[40:]]))
    (inputs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not a PNG")
    outputs = {}
    for name, model in (("fp32", digits_model.package_dir), ("int8", int8_package[0])):
        outputs[name] = str(tmp_path / name)
        summary = run(parse_args(["--input", str(inputs), "--model", model, "--output", outputs[name],
                                  "--batch-size", "16", "--max-failure-ratio", "0.05"]), master="local[2,4]")
        assert summary["counts"] == {"total": 61, "ok": 60, "error": 1, "skipped_objects": 0}
    tables = {name: pq.read_table(os.path.join(output, "predictions")) for name, output in outputs.items()}
    assert tables["int8"].schema == tables["fp32"].schema
    rows = {name: {(row["source"], row["index"]): row for row in table.to_pylist()} for name, table in tables.items()}
    assert len(rows["int8"]) == tables["int8"].num_rows == 61 and rows["int8"].keys() == rows["fp32"].keys()
    with open(os.path.join(outputs["int8"], "summary.json")) as file:
        assert json.load(file)["model"]["format"] == "onnx"
    agreeing = sum(rows["int8"][key]["label"] == row["label"]
                   for key, row in rows["fp32"].items() if row["status"] == "ok")
    assert agreeing >= 58  # 60 held-out digits; the gate measured >= 99 % on the training digits
