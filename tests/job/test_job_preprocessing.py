"""A package's preprocessing: validation, each mode against an independent reference, and the original meaning kept.

The references are written here with numpy and Pillow only (torchvision's ``Resize`` + ``CenterCrop`` and a
letterbox, as a user would write them); the decoder's two paths (OpenCV for PNG and complete JPEG, Pillow for the
rest) are each compared with them. Lossless inputs (PNG, BMP) make the comparison exact. What this cannot show: that
a given third-party model was trained with these exact pixels; the presets' sources say what each library does.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

import decode_before_preprocessing as before
from job import decode
from job.decode import Normalizer, decode_cifar_records, decode_image, plan_resize
from job.model_package import ModelPackageError, Preprocessing, parse_manifest
from job.sample_data import cifar_batch_bytes
from job.worker import model_input

FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
VALID = {"format": "onnx", "files": {"onnx": "m.onnx"}, "input_shape": [3, 32, 32], "mean": [0.5, 0.5, 0.5],
         "std": [0.25, 0.25, 0.25], "labels": ["a", "b"]}


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """``uint8[height, width, 3]``: gradients, a fine checker (which shows aliasing) and noisy blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, ((x // 7 + y // 5) % 2) * 200 + 20], axis=2).astype(float)
    blobs = rng.normal(0, 25, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:height, :width]
    return np.clip(base + blobs, 0, 255).astype(np.uint8)


def encode(pixels: np.ndarray, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=image_format, **options)
    return buffer.getvalue()


def reference(pixels: np.ndarray, width: int, height: int, mode: str, crop_fraction: float,
              interpolation: str) -> np.ndarray:
    """What torchvision-style code does to the upright image, for a square target in center_crop mode."""
    image, resample = Image.fromarray(pixels), FILTERS[interpolation]
    if mode == "stretch":
        return np.asarray(image.resize((width, height), resample))
    if mode == "center_crop":
        assert width == height
        side = math.floor(width / crop_fraction)  # Resize(side): the short side becomes `side`
        short, long = sorted(image.size)
        other = int(side * long / short)
        size = (side, other) if image.width <= image.height else (other, side)
        scaled = image.resize(size, resample)
        left, top = int(round((size[0] - width) / 2.0)), int(round((size[1] - height) / 2.0))
        return np.asarray(scaled.crop((left, top, left + width, top + height)))
    scale = min(width / image.width, height / image.height)  # pad: fit inside, centre on black
    size = (round(image.width * scale), round(image.height * scale))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(image.resize(size, resample), ((width - size[0]) // 2, (height - size[1]) // 2))
    return np.asarray(canvas)


MODES = [(mode, interpolation) for mode in ("stretch", "center_crop", "pad")
         for interpolation in ("bilinear", "bicubic", "nearest")]


@pytest.mark.parametrize("mode, interpolation", MODES)
@pytest.mark.parametrize("size", [(97, 61), (61, 97), (300, 200), (20, 12)])
def test_each_mode_equals_the_reference_on_both_decoder_paths(mode, interpolation, size):
    """PNG takes the OpenCV path, BMP the Pillow path; both equal the reference exactly, except the original
    format's stretch with bilinear on the OpenCV path, which keeps OpenCV's resize (close, not equal: OpenCV's
    bilinear does not smooth when it shrinks)."""
    pixels = photo(*size)
    expected = reference(pixels, 32, 32, mode, 0.875, interpolation)
    pillow = decode_image(encode(pixels, "BMP"), 32, 32, mode, 0.875, interpolation)
    opencv = decode_image(encode(pixels, "PNG"), 32, 32, mode, 0.875, interpolation)
    assert pillow.shape == opencv.shape == (32, 32, 3)
    assert np.array_equal(pillow, expected)
    if (mode, interpolation) == ("stretch", "bilinear"):
        assert np.abs(opencv.astype(int) - expected).mean() < 40
    else:
        assert np.array_equal(opencv, expected)


@pytest.mark.parametrize("crop_fraction", [1.0, 0.875, 0.5])
def test_centre_crop_fraction_and_non_square_targets(crop_fraction):
    """A non-square target is covered on both sides, then its centre is cut: the kept box is inside the scaled image
    and centred on it."""
    pixels = photo(120, 90)
    plan = plan_resize(120, 90, 40, 24, "center_crop", crop_fraction)
    cover = (math.floor(40 / crop_fraction), math.floor(24 / crop_fraction))
    assert plan.scaled[0] >= cover[0] and plan.scaled[1] >= cover[1]
    assert min(plan.scaled[0] - cover[0], plan.scaled[1] - cover[1]) == 0  # the smallest size that covers
    left, top = plan.offset
    assert abs((plan.scaled[0] - 40) - 2 * left) <= 1 and abs((plan.scaled[1] - 24) - 2 * top) <= 1
    scaled = Image.fromarray(pixels).resize(plan.scaled, Image.BILINEAR)
    expected = np.asarray(scaled.crop((left, top, left + 40, top + 24)))
    for image_format in ("PNG", "BMP"):
        assert np.array_equal(decode_image(encode(pixels, image_format), 24, 40, "center_crop", crop_fraction),
                              expected)


def test_pad_keeps_the_aspect_and_fills_black():
    pixels = np.full((50, 100, 3), 200, dtype=np.uint8)  # wide, light grey
    padded = decode_image(encode(pixels, "PNG"), 32, 32, "pad")
    assert (padded[8:24] == 200).all()  # 100x50 -> 32x16, rows 8 to 23
    assert (padded[:8] == 0).all() and (padded[24:] == 0).all()


@pytest.mark.parametrize("mode", ["stretch", "center_crop", "pad"])
def test_a_large_jpeg_is_scaled_in_the_dct_no_further_than_the_size_before_the_crop(mode, monkeypatch):
    """1600x1200 to a 64x64 input: the DCT scaling (by 8 here: 200x150) stays at least the size the plan scales to
    (for center_crop 97x73, before the centre 64x64 is cut); the result is within JPEG noise of the reference made
    from the full-size decode, on both paths."""
    pixels = photo(1600, 1200)
    data = encode(pixels, "JPEG", quality=95)
    flags = []
    real_imdecode = decode.cv2.imdecode
    monkeypatch.setattr(decode.cv2, "imdecode", lambda buffer, flag: flags.append(flag) or real_imdecode(buffer, flag))
    plan = plan_resize(1600, 1200, 64, 64, mode)
    factor = {decode.cv2.IMREAD_REDUCED_COLOR_8: 8, decode.cv2.IMREAD_REDUCED_COLOR_4: 4,
              decode.cv2.IMREAD_REDUCED_COLOR_2: 2, decode.cv2.IMREAD_COLOR: 1}
    opencv = decode_image(data, 64, 64, mode, 0.875, "bicubic")
    assert len(flags) == 1 and factor[flags[0]] > 1
    assert 1600 // factor[flags[0]] >= plan.scaled[0] and 1200 // factor[flags[0]] >= plan.scaled[1]
    pillow = decode._decode_with_pillow(data, 64, 64, mode, 0.875, "bicubic")
    expected = reference(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), 64, 64, mode, 0.875, "bicubic")
    for decoded in (opencv, pillow):
        assert np.abs(decoded.astype(int) - expected).mean() < 6


def test_cifar_records_take_the_packages_resize():
    records = cifar_batch_bytes(np.stack([photo(32, 32, seed) for seed in range(3)]), np.arange(3))
    images, _ = decode_cifar_records(records, 24, 24, "center_crop", 0.75, "bicubic")
    raw = np.frombuffer(records, dtype=np.uint8).reshape(3, 3073)[:, 1:].reshape(3, 3, 32, 32).transpose(0, 2, 3, 1)
    for image, pixels in zip(images, raw):
        assert np.array_equal(image, reference(np.ascontiguousarray(pixels), 24, 24, "center_crop", 0.75, "bicubic"))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channel_order", ["RGB", "BGR"])
def test_model_input_layout_channel_order_and_dtype(layout, channel_order):
    """numpy reference: flip the channels, normalise per model channel, then lay them out; uint8 is left as is."""
    images = np.stack([photo(8, 6, seed) for seed in range(2)])
    mean, std = np.array([0.1, 0.4, 0.7]), np.array([0.2, 0.3, 0.5])
    ordered = images[..., ::-1] if channel_order == "BGR" else images
    expected = (ordered / 255.0 - mean) / std
    if layout == "NCHW":
        expected, ordered = expected.transpose(0, 3, 1, 2), ordered.transpose(0, 3, 1, 2)
    batch = Normalizer(mean, std, channel_order=channel_order, layout=layout)(images)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    np.testing.assert_allclose(batch, expected, atol=1e-5)
    raw = Normalizer(None, None, channel_order=channel_order, layout=layout, input_dtype="uint8")(images)
    assert raw.dtype == np.uint8 and raw.flags.c_contiguous and np.array_equal(raw, ordered)


def test_an_old_model_json_gives_byte_identical_input(cifar_samples):
    """A model.json without 'preprocessing' (and one that spells out the defaults) decodes and normalises every kind
    of input exactly as job/decode.py did before these fields (kept in decode_before_preprocessing.py): PNGs at and
    off the input size (OpenCV path), a large JPEG (DCT scaling), an EXIF-turned JPEG, a BMP (Pillow path), CIFAR
    records resized."""
    old_package = parse_manifest(dict(VALID, input_shape=[3, 24, 40]), "old")
    spelled_out = parse_manifest(dict(VALID, input_shape=[3, 24, 40], preprocessing={
        "resize": "stretch", "interpolation": "bilinear", "channel_order": "RGB", "layout": "NCHW",
        "input_dtype": "float32"}), "explicit")
    assert old_package.preprocessing == spelled_out.preprocessing == Preprocessing()
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(90, 60)).save(turned, format="JPEG", exif=exif)
    inputs = [data for _, data, _ in cifar_samples[:3]] + [encode(photo(97, 61), "PNG"),
                                                           encode(photo(1600, 1200), "JPEG"), turned.getvalue(),
                                                           encode(photo(50, 70), "BMP")]
    for package in (old_package, spelled_out):
        height, width = package.height, package.width
        preprocessing = package.preprocessing
        resize = (preprocessing.resize, preprocessing.crop_fraction, preprocessing.interpolation)
        new = np.stack([decode_image(data, height, width, *resize) for data in inputs])
        old = np.stack([before.decode_image(data, height, width) for data in inputs])
        assert new.tobytes() == old.tobytes()
        new_batch = model_input(package)(new)
        old_batch = before.Normalizer(package.mean, package.std)(old)
        assert new_batch.dtype == old_batch.dtype and new_batch.shape == old_batch.shape
        assert new_batch.tobytes() == old_batch.tobytes()
        records = cifar_batch_bytes(np.stack([photo(32, 32, seed) for seed in range(2)]), np.arange(2))
        assert (decode_cifar_records(records, height, width, *resize)[0].tobytes()
                == before.decode_cifar_records(records, height, width)[0].tobytes())


@pytest.mark.parametrize("preprocessing, extra, messages", [
    ({"resize": "letterbox", "interpolation": "lanczos", "channel_order": "GBR", "layout": "CHWN",
      "input_dtype": "float16", "gamma": 2.2}, {},
     ["'preprocessing.resize' must be one of ['stretch', 'center_crop', 'pad']; got 'letterbox'",
      "'preprocessing.interpolation' must be one of ['bilinear', 'bicubic', 'nearest']; got 'lanczos'",
      "'preprocessing.channel_order' must be one of ['RGB', 'BGR']; got 'GBR'",
      "'preprocessing.layout' must be one of ['NCHW', 'NHWC']; got 'CHWN'",
      "'preprocessing.input_dtype' must be one of ['float32', 'uint8']; got 'float16'",
      "unknown keys in 'preprocessing' ['gamma']"]),
    ({"resize": "center_crop", "crop_fraction": 1.5}, {},
     ["'preprocessing.crop_fraction' must be a number from 0.05 to 1", "got 1.5"]),
    ({"resize": "pad", "crop_fraction": 0.9}, {},
     ["'preprocessing.crop_fraction' applies only to resize 'center_crop'; resize is 'pad'"]),
    ({"layout": "NHWC"}, {}, [r"'input_shape' must be [height, width, 3]", "(layout NHWC); got [3, 32, 32]"]),
    ({"input_dtype": "uint8"}, {}, ["['mean', 'std'] must be left out with 'preprocessing.input_dtype' 'uint8'"]),
    ({"input_dtype": "uint8"}, {"format": "mxnet", "files": {"symbol": "s", "params": "p"}},
     ["'uint8' needs format 'onnx'"]),
    ("center_crop", {}, ["'preprocessing' must be an object; got 'center_crop'"]),
])
def test_bad_preprocessing_is_refused_naming_each_field_value_and_the_allowed_values(preprocessing, extra, messages):
    with pytest.raises(ModelPackageError) as caught:
        parse_manifest({**VALID, **extra, "preprocessing": preprocessing}, "pkg")
    for message in messages:
        assert message in str(caught.value)


def test_an_nhwc_uint8_package_parses_without_mean_and_std():
    package = parse_manifest({**{k: v for k, v in VALID.items() if k not in ("mean", "std")}, "input_shape":
                              [24, 40, 3], "preprocessing": {"layout": "NHWC", "input_dtype": "uint8",
                                                             "channel_order": "BGR"}}, "pkg")
    assert (package.height, package.width, package.mean, package.std) == (24, 40, None, None)
    assert package.manifest_fields()["preprocessing"] == {"channel_order": "BGR", "layout": "NHWC",
                                                          "input_dtype": "uint8"}
    assert "mean" not in package.manifest_fields()
