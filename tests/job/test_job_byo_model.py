"""Bring your own model: ``init`` from an ONNX file, ``validate``, the presets, and an NHWC/BGR/uint8 model that must
label real images as its NCHW/RGB/float32 twin does.

The twin is the repository's trained digits model exported to ONNX, wrapped with ONNX nodes built here (Cast,
Transpose, a channel Gather, Sub and Div: what a TensorFlow export with its preprocessing inside looks like); both
packages are made by ``init`` and run through the job's own worker code (fetch, decode, model input, predictor) on
the 20 real CIFAR-10 test images. What this cannot show: a real PyTorch/TensorFlow export (neither is installed here).
"""

from __future__ import annotations

import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from job import model_package
from job.decode import Normalizer, describe_decoding
from job.model_package import read_package
from job.package_init import PRESETS
from job.predictor import Device, load_predictor
from job.sources import KIND_IMAGE, WorkItem
from job.storage import Storage
from job.worker import BatchPreparer, WorkerSettings, batch_units

DIGITS_MEAN, DIGITS_STD = 0.5, 0.25  # job/train_digits.py


def nhwc_bgr_uint8_twin(onnx_path: str, out_path: str, mean: float, std: float) -> None:
    """The same model taking ``uint8[N, H, W, 3]`` BGR pixels 0-255: it turns them into its twin's
    ``float32[N, 3, H, W]`` RGB ``(pixel / 255 - mean) / std`` input itself."""
    model = onnx.load(onnx_path)
    graph = model.graph
    (original,) = graph.input
    height, width = [dim.dim_value for dim in original.type.tensor_type.shape.dim][2:]
    pixels = helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", height, width, 3])
    constants = [numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), "bgr_to_rgb"),
                 numpy_helper.from_array(np.full((1, 3, 1, 1), 255 * mean, dtype=np.float32), "mean_255"),
                 numpy_helper.from_array(np.full((1, 3, 1, 1), 255 * std, dtype=np.float32), "std_255")]
    prefix = [helper.make_node("Cast", ["pixels"], ["pixels_float"], to=TensorProto.FLOAT),
              helper.make_node("Transpose", ["pixels_float"], ["pixels_nchw"], perm=[0, 3, 1, 2]),
              helper.make_node("Gather", ["pixels_nchw", "bgr_to_rgb"], ["pixels_rgb"], axis=1),
              helper.make_node("Sub", ["pixels_rgb", "mean_255"], ["pixels_centred"]),
              helper.make_node("Div", ["pixels_centred", "std_255"], [original.name])]
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(prefix + nodes)
    graph.initializer.extend(constants)
    del graph.input[:]
    graph.input.append(pixels)
    onnx.checker.check_model(model)
    onnx.save(model, out_path)


@pytest.fixture(scope="module")
def twins(digits_onnx_package, tmp_path_factory):
    """Two packages of one model made by ``init``: (float32 NCHW RGB, uint8 NHWC BGR), both centre-cropped."""
    root = tmp_path_factory.mktemp("twins")
    source = read_package(digits_onnx_package, Storage())
    (root / "labels.txt").write_text("\n".join(source.labels) + "\n")
    nhwc_bgr_uint8_twin(f"{digits_onnx_package}/{source.files['onnx']}", str(root / "uint8.onnx"), DIGITS_MEAN,
                        DIGITS_STD)
    common = ["--labels", str(root / "labels.txt"), "--resize", "center_crop", "--crop-fraction", "0.8",
              "--interpolation", "bicubic"]
    assert model_package.main(["init", "--onnx", f"{digits_onnx_package}/{source.files['onnx']}", *common,
                               "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25",
                               "--out", str(root / "float32")]) == 0
    assert model_package.main(["init", "--onnx", str(root / "uint8.onnx"), *common, "--channel-order", "BGR",
                               "--out", str(root / "uint8")]) == 0
    return read_package(str(root / "float32"), Storage()), read_package(str(root / "uint8"), Storage())


def _worker_run(package, paths):
    """The worker's fetch, decode and model input, then the job's predictor: (model input, probabilities)."""
    settings = WorkerSettings(package=package, device="cpu", batch_size=64, top_k=1, fetch_threads=4,
                              s3_endpoint_url=None)
    (units,) = list(batch_units([WorkItem(path, KIND_IMAGE) for path in paths], 64))
    batch = BatchPreparer(settings).prepare(units)
    assert batch.errors == [None] * len(paths)
    return batch.pixels, load_predictor(package, package.uri, Device("cpu"))(batch.pixels)


def test_init_reads_layout_dtype_and_shape_from_the_graph(twins):
    float_package, uint8_package = twins
    assert (float_package.preprocessing.layout, float_package.preprocessing.input_dtype,
            float_package.input_shape, float_package.mean) == ("NCHW", "float32", (3, 32, 32), (0.5, 0.5, 0.5))
    assert (uint8_package.preprocessing.layout, uint8_package.preprocessing.input_dtype, uint8_package.input_shape,
            uint8_package.mean, uint8_package.input_name) == ("NHWC", "uint8", (32, 32, 3), None, "pixels")
    assert uint8_package.preprocessing.channel_order == "BGR"
    assert uint8_package.preprocessing.resize == float_package.preprocessing.resize == "center_crop"


def test_nhwc_bgr_uint8_model_labels_real_images_as_its_nchw_rgb_float32_twin(twins, cifar_samples, tmp_path):
    paths = []
    for name, data, _ in cifar_samples:
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    float_package, uint8_package = twins
    float_input, float_probabilities = _worker_run(float_package, paths)
    uint8_input, uint8_probabilities = _worker_run(uint8_package, paths)
    assert float_input.dtype == np.float32 and float_input.shape == (20, 3, 32, 32)
    assert uint8_input.dtype == np.uint8 and uint8_input.shape == (20, 32, 32, 3)
    # The same pixels: BGR channels last, against normalised RGB channels first.
    np.testing.assert_allclose(uint8_input[..., ::-1].transpose(0, 3, 1, 2) / 255.0 * 4 - 2, float_input, atol=1e-5)
    assert (uint8_probabilities.argmax(1) == float_probabilities.argmax(1)).all()
    np.testing.assert_allclose(uint8_probabilities, float_probabilities, atol=1e-4)
    assert len(set(float_probabilities.argmax(1).tolist())) > 1  # not one label for everything


def test_init_refuses_an_out_directory_that_holds_files(digits_onnx_package, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (tmp_path / "labels.txt").write_text("\n".join(str(n) for n in range(10)))
    assert model_package.main(["init", "--onnx", f"{digits_onnx_package}/model.onnx", "--labels",
                               str(tmp_path / "labels.txt"), "--preset", "cifar", "--out", str(out)]) == 2
    assert f"--out {out} already holds files (notes.txt...)" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_init_refuses_labels_that_do_not_match_the_outputs_and_leaves_nothing(digits_onnx_package, tmp_path, capsys):
    (tmp_path / "labels.txt").write_text("cat\ndog\n\n")
    out = tmp_path / "package"
    assert model_package.main(["init", "--onnx", f"{digits_onnx_package}/model.onnx", "--labels",
                               str(tmp_path / "labels.txt"), "--preset", "cifar", "--out", str(out)]) == 2
    assert "has 2 class names; the model's output has 10 scores per image" in capsys.readouterr().err
    assert not out.exists()


def test_init_refuses_a_graph_the_job_cannot_feed(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "four.onnx")
    (tmp_path / "labels.txt").write_text("a\n")
    assert model_package.main(["init", "--onnx", str(tmp_path / "four.onnx"), "--labels",
                               str(tmp_path / "labels.txt"), "--preset", "cifar", "--out", str(tmp_path / "p")]) == 2
    assert "the job feeds [N, 3, H, W] (NCHW) or [N, H, W, 3] (NHWC)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_validate_prints_what_it_does_to_each_image_and_the_top_labels(twins, cifar_samples, tmp_path, capsys):
    _, uint8_package = twins
    name, data, _ = cifar_samples[0]
    (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.txt").write_text("not an image")
    assert model_package.main(["validate", "--package", uint8_package.uri, "--images", str(tmp_path / name),
                               "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "input 'pixels': uint8 NHWC [N, 32, 32, 3], channels BGR" in out
    assert "pixels 0-255 unchanged" in out
    assert "PNG 32x32, OpenCV path; 32x32 scaled to 40x40, centre 32x32 kept (box left 4, top 4, right 36" in out
    assert "model input: uint8 [1, 32, 32, 3]" in out
    assert f"{tmp_path / name}: top-3 " in out
    assert model_package.main(["validate", "--package", uint8_package.uri, "--images",
                               str(tmp_path / "notes.txt")]) == 2
    assert "not classified: not_an_image" in capsys.readouterr().out


def test_validate_names_the_dct_scaling_of_a_large_jpeg():
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), (90, 120, 150)).save(buffer, format="JPEG")
    text = describe_decoding(buffer.getvalue(), 224, 224, "center_crop", 0.875)
    assert text.startswith("JPEG 1600x1200, OpenCV path, DCT scaling 1/4; 1600x1200 scaled to 341x256")
    assert "box left 58, top 16, right 282, bottom 240" in text


@pytest.mark.parametrize("preset, formula", [
    ("imagenet-torchvision", lambda rgb: (rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]),
    ("imagenet-timm", lambda rgb: (rgb / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]),
    ("imagenet-keras-caffe", lambda rgb: rgb[..., ::-1] - [103.939, 116.779, 123.68]),
    ("imagenet-keras-tf", lambda rgb: rgb / 127.5 - 1.0),
    ("cifar", lambda rgb: (rgb / 255 - [0.4914, 0.4822, 0.4465]) / [0.2023, 0.1994, 0.2010]),
])
def test_each_preset_computes_its_librarys_formula(preset, formula):
    """The formulas as the cited code writes them (Keras caffe: BGR, minus the mean on 0-255; tf: [-1, 1])."""
    chosen = PRESETS[preset]
    assert chosen.source.startswith("https://github.com/")
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    batch = Normalizer(chosen.mean, chosen.std, channel_order=chosen.preprocessing.channel_order,
                       layout="NHWC")(rgb)
    np.testing.assert_allclose(batch, formula(rgb.astype(np.float64)), rtol=1e-5, atol=1e-3)


def test_init_records_the_preset_and_its_source(digits_onnx_package, tmp_path):
    (tmp_path / "labels.txt").write_text("\n".join(str(n) for n in range(10)))
    out = tmp_path / "package"
    assert model_package.main(["init", "--onnx", f"{digits_onnx_package}/model.onnx", "--labels",
                               str(tmp_path / "labels.txt"), "--preset", "imagenet-timm", "--out", str(out)]) == 0
    document = json.loads((out / "model.json").read_text())
    assert document["preprocessing"] == {"resize": "center_crop", "interpolation": "bicubic", "crop_fraction": 0.875}
    assert document["provenance"]["preset_source"] == PRESETS["imagenet-timm"].source
    assert document["input_shape"] == [3, 32, 32]  # from the graph, not the preset's 224


def test_to_onnx_keeps_the_packages_preprocessing(untrained_package, tmp_path):
    """An mxnet package with its own preprocessing converts to an onnx package that means the same."""
    import shutil

    from job.model_package import export_onnx

    source = tmp_path / "mxnet"
    shutil.copytree(untrained_package, source)
    document = json.loads((source / "model.json").read_text())
    document["preprocessing"] = {"resize": "center_crop", "crop_fraction": 0.9, "interpolation": "bicubic",
                                 "channel_order": "BGR"}
    (source / "model.json").write_text(json.dumps(document))
    export_onnx(read_package(str(source), Storage()), str(tmp_path / "onnx"))
    converted = read_package(str(tmp_path / "onnx"), Storage())
    assert converted.preprocessing == read_package(str(source), Storage()).preprocessing
    assert (converted.mean, converted.std) == (tuple(document["mean"]), tuple(document["std"]))


def test_init_refuses_bad_models_and_arguments_before_writing(digits_onnx_package, twins, tmp_path, capsys):
    """Each case exits 2 with a line naming the problem, and ``--out`` is never created. The model whose tensor reads
    ``../../etc/passwd`` is refused before ONNX Runtime opens it (it would follow that path)."""
    from hostile_packages import onnx_model

    onnx.save(onnx_model(10, external="../../etc/passwd"), tmp_path / "climbs.onnx")
    (tmp_path / "notes.onnx").write_bytes(b"\xff" * 64)
    (tmp_path / "labels.txt").write_text("\n".join(str(n) for n in range(10)))
    cases = [
        (["--onnx", str(tmp_path / "climbs.onnx"), "--preset", "cifar"],
         "reads external data from ['../../etc/passwd']"),
        (["--onnx", str(tmp_path / "notes.onnx"), "--preset", "cifar"], "is not an ONNX model"),
        (["--onnx", f"{digits_onnx_package}/model.onnx", "--preset", "cifar", "--input-size", "224"],
         "--input-size 224: the graph's input is fixed at 32x32"),
        (["--onnx", f"{twins[1].uri}/model.onnx", "--mean", "0.5", "0.5", "0.5"], "--mean and --std do not apply"),
        (["--onnx", f"{digits_onnx_package}/model.onnx"], "a float32 model needs --mean and --std"),
        (["--onnx", f"{digits_onnx_package}/model.onnx", "--preset", "cifar", "--crop-fraction", "0.9"],
         "--crop-fraction applies only to --resize center_crop"),
    ]
    for arguments, message in cases:
        out = tmp_path / "package"
        assert model_package.main(["init", *arguments, "--labels", str(tmp_path / "labels.txt"),
                                   "--out", str(out)]) == 2, message
        assert message in capsys.readouterr().err
        assert not out.exists()
