"""Decoding without Spark: real CIFAR-10 PNGs, every image mode, and every kind of bad data."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from job import decode
from job.decode import DecodeError, Normalizer, decode_cifar_records, decode_image
from job.sample_data import cifar_batch_bytes


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _gradient(width=48, height=40) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], axis=2).astype(np.uint8)


def test_real_cifar_png_decodes_to_the_exact_pixels(cifar_samples):
    for _, data, _ in cifar_samples:
        expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert np.array_equal(decode_image(data, 32, 32), expected)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I;16"])
def test_png_modes_become_rgb_at_model_size(mode):
    image = Image.fromarray(_gradient()).convert("L" if mode == "I;16" else mode)
    if mode == "I;16":
        image = Image.fromarray((np.asarray(image).astype(np.uint16) * 257), "I;16")
    decoded = decode_image(_encode(image, "PNG"), 32, 32)
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    assert decoded.std() > 10  # still a picture, not a flat white or black field


def test_sixteen_bit_png_keeps_the_high_byte():
    values = np.full((32, 32), 0x8040, dtype=np.uint16)
    decoded = decode_image(_encode(Image.fromarray(values, "I;16"), "PNG"), 32, 32)
    assert np.all(np.abs(decoded.astype(int) - 0x80) <= 1)


def test_palette_png_with_transparency():
    image = Image.fromarray(_gradient()).convert("P")
    image.info["transparency"] = 0
    decoded = decode_image(_encode(image, "PNG", transparency=0), 32, 32)
    assert decoded.shape == (32, 32, 3)


def test_cmyk_and_grayscale_jpeg():
    rgb = Image.fromarray(_gradient(64, 64))
    for image in (rgb.convert("CMYK"), rgb.convert("L")):
        decoded = decode_image(_encode(image, "JPEG", quality=95), 32, 32)
        expected = np.asarray(rgb.resize((32, 32), Image.BILINEAR)).astype(int)
        assert decoded.shape == (32, 32, 3)
        assert np.abs(decoded.astype(int).mean(axis=2) - expected.mean(axis=2)).mean() < 20


def test_large_jpeg_is_reduced_then_resized():
    data = _encode(Image.fromarray(_gradient(1024, 768)), "JPEG", quality=90)
    assert decode_image(data, 224, 224).shape == (224, 224, 3)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (b"just some text that is not an image", "not_an_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not_an_image"),
])
def test_bad_data_is_a_decode_error_with_a_reason(data, reason):
    with pytest.raises(DecodeError, match=f"^{reason}:"):
        decode_image(data, 32, 32)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_truncated_images_are_errors(image_format):
    data = _encode(Image.fromarray(_gradient(256, 256)), image_format)
    with pytest.raises(DecodeError, match="^corrupt_image:"):
        decode_image(data[: len(data) // 2], 32, 32)


def _png_claiming(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00" * 64)


def test_decompression_bomb_is_refused_from_the_header():
    with pytest.raises(DecodeError, match="^image_too_large: 100000x100000"):
        decode_image(_png_claiming(100_000, 100_000), 32, 32)


def test_jpeg_over_the_pixel_limit_is_refused(monkeypatch):
    monkeypatch.setattr(decode, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="^image_too_large"):
        decode_image(_encode(Image.fromarray(_gradient(64, 64)), "JPEG"), 32, 32)


def test_cifar_records_keep_labels_and_pixels():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5])
    decoded, decoded_labels = decode_cifar_records(cifar_batch_bytes(images, labels), 32, 32)
    assert np.array_equal(decoded, images)
    assert decoded_labels.tolist() == labels.tolist()


def test_cifar_records_resized_for_larger_models():
    images = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    decoded, _ = decode_cifar_records(cifar_batch_bytes(images, np.array([0, 1])), 64, 48)
    assert decoded.shape == (2, 64, 48, 3)


def test_normalizer_is_the_per_channel_formula_in_nchw():
    images = np.random.default_rng(1).integers(0, 256, size=(4, 8, 6, 3), dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    batch = Normalizer(mean, std)(images)
    expected = (images.transpose(0, 3, 1, 2) / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[
        None, :, None, None]
    assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"] and batch.shape == (4, 3, 8, 6)
    np.testing.assert_allclose(batch, expected, rtol=1e-5, atol=1e-5)


# --- hostile formats and orientation (reliability review #11, #15) ---------------------------------------------------

_EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\n"
        b"newpath 0 0 moveto 32 32 lineto stroke showpage\n%%EOF\n")


def _psd(width=8, height=8) -> bytes:
    """A minimal uncompressed RGB Photoshop file, which Pillow's PSD plugin decodes."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    return header + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(range(64)) * 3 * (width * height // 64)


def test_the_psd_fixture_is_a_real_psd():
    """Pillow itself reads the fixture: so the test below proves the allow-list, not a broken file."""
    assert Image.open(io.BytesIO(_psd())).format == "PSD"


@pytest.mark.parametrize("data", [_EPS, _psd(), b"<!doctype html><html><body>hi</body></html>"],
                         ids=["eps", "psd", "html"])
def test_formats_outside_the_allow_list_are_not_an_image_and_run_no_plugin(data, monkeypatch):
    """A PostScript upload named image.png made Pillow start Ghostscript (`gs`, not installed here: the spy records
    the call instead). Now no plugin outside decode.PILLOW_FORMATS opens anything."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(DecodeError, match="^not_an_image: the data is none of the image formats read"):
        decode_image(data, 32, 32)
    assert calls == []


def _oriented_jpeg(orientation: int) -> tuple[bytes, np.ndarray]:
    """A 96x48 JPEG (left red, right blue, a green top stripe) with EXIF ``orientation``, and how it must look."""
    pixels = np.zeros((48, 96, 3), np.uint8)
    pixels[:, :48, 0] = 255
    pixels[:, 48:, 2] = 255
    pixels[:8, :, 1] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    data = _encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    return data, upright


@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("height, width", [(32, 32), (24, 12), (12, 24)])
def test_exif_orientation_is_applied_on_both_decoder_paths(orientation, height, width):
    """A complete JPEG goes to OpenCV; the same JPEG with a trailer after its end marker (a motion photo's MP4)
    goes to Pillow. Both must give the upright picture."""
    data, upright = _oriented_jpeg(orientation)
    expected = np.asarray(Image.fromarray(upright).resize((width, height), Image.BILINEAR)).astype(int)
    opencv = decode_image(data, height, width).astype(int)
    pillow = decode_image(data + b"\0\0\0\x18ftypmp42 motion photo trailer", height, width).astype(int)
    for decoded in (opencv, pillow):
        assert decoded.shape == (height, width, 3)
        assert np.abs(decoded - expected).mean() < 12
    assert np.abs(opencv - pillow).mean() < 12


def _encoded(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_decoding_straight_into_the_batch_buffer_gives_the_same_bytes(cifar_samples):
    """Issue 20, goal 3: ``out=`` (a batch buffer's row, as the worker now decodes) against the same call without it
    (the path as it was: an array per image, then copied into the batch), on real CIFAR-10 images through every path:
    OpenCV at size, OpenCV resized, Pillow's filters, crop, pad, the Pillow-only formats, and CIFAR records."""
    photo = Image.open(io.BytesIO(cifar_samples[3][1])).convert("RGB").resize((61, 47), Image.BICUBIC)
    cases = [
        (cifar_samples[0][1], 32, 32, ()),  # PNG at the model's size: OpenCV's pixels straight in
        (cifar_samples[1][1], 24, 24, ()),  # PNG shrunk by OpenCV's INTER_LINEAR
        (_encoded(photo, "JPEG", quality=90), 32, 32, ()),
        (_encoded(photo, "JPEG", quality=90), 32, 32, ("center_crop", 0.875, "bicubic")),
        (_encoded(photo, "PNG"), 32, 40, ("pad", 0.875, "bilinear")),
        (_encoded(photo, "PNG"), 47, 61, ("stretch", 0.875, "bicubic")),  # at size by Pillow's rules
        (_encoded(photo, "GIF"), 32, 32, ()),  # the Pillow path
    ]
    for data, height, width, resize in cases:
        expected = decode_image(data, height, width, *resize)
        batch = np.full((3, height, width, 3), 7, dtype=np.uint8)
        returned = decode_image(data, height, width, *resize, out=batch[1])
        assert np.shares_memory(returned, batch) and np.array_equal(returned, batch[1]), (height, width, resize)
        assert np.array_equal(batch[1], expected), (height, width, resize)
        assert (batch[0] == 7).all() and (batch[2] == 7).all()  # the neighbouring rows untouched
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data, _ in cifar_samples[:5]])
    records = cifar_batch_bytes(pixels, np.arange(5))
    for height, width, resize in ((32, 32, ()), (40, 40, ("center_crop", 0.875, "bilinear"))):
        expected, labels = decode_cifar_records(records, height, width, *resize)
        batch = np.full((7, height, width, 3), 7, dtype=np.uint8)
        returned, returned_labels = decode_cifar_records(records, height, width, *resize, out=batch[1:6])
        assert np.shares_memory(returned, batch) and np.array_equal(batch[1:6], expected)
        assert np.array_equal(returned_labels, labels) and (batch[0] == 7).all() and (batch[6] == 7).all()


def test_an_output_buffer_of_the_wrong_shape_is_refused(cifar_samples):
    with pytest.raises(ValueError, match=r"out must be a C-contiguous uint8\[32, 32, 3\]; got uint8\[32, 31, 3\]"):
        decode_image(cifar_samples[0][1], 32, 32, out=np.zeros((32, 31, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        decode_image(cifar_samples[0][1], 32, 32, out=np.zeros((32, 64, 3), dtype=np.uint8)[:, ::2])
