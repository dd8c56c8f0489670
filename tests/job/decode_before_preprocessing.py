"""job/decode.py as it was before model packages had preprocessing fields (commit 7dedae2), kept verbatim below this
docstring: the reference that a model.json without them must still give byte-identical model input.
"""


from __future__ import annotations

import io
import struct
import warnings
from typing import Optional

import cv2
import numpy as np
from PIL import Image, ImageOps

# One thread: a Spark task owns one core, and the model's threads are sized the same way.
cv2.setNumThreads(1)

# Far above any photo a ResNet is fed, far below what exhausts a worker: a 40-megapixel RGB image is 120 MB decoded.
MAX_IMAGE_PIXELS = 40_000_000
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8"
JPEG_END = b"\xff\xd9"
# The only formats Pillow may open. Without the list, Pillow tries every plugin it has: its EPS plugin runs Ghostscript
# on the upload (where `gs` is installed), and PSD, FITS, ICNS and the rest are attack surface for no gain.
PILLOW_FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")
# EXIF Orientation values (TIFF tag 274) that turn the picture by 90 or 270 degrees, so width and height swap.
EXIF_ORIENTATION = 0x0112
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


class DecodeError(ValueError):
    """One input could not be turned into pixels; ``str()`` starts with a short reason code."""


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's own conversion clips 16-bit values at 255 (a white image); keep the high byte instead.
        high_byte = (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(high_byte, "L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the direct P -> RGB conversion warns about the transparency it drops
    return image if image.mode == "RGB" else image.convert("RGB")


def _png_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG's IHDR chunk, which the format requires first; None when not a PNG."""
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise DecodeError(
            f"image_too_large: {width}x{height} is {width * height} pixels; the limit is {MAX_IMAGE_PIXELS}")


def _jpeg_reduction_flag(width: int, height: int, target_width: int, target_height: int) -> int:
    """The largest libjpeg DCT down-scaling that keeps at least the target size: far less work for large JPEGs."""
    for factor, flag in JPEG_REDUCTIONS:
        if width // factor >= target_width and height // factor >= target_height:
            return flag
    return cv2.IMREAD_COLOR


def _decode_with_pillow(data: bytes, height: int, width: int) -> np.ndarray:
    """The slow, thorough path: every mode Pillow knows, and the precise reason when the data is bad. EXIF
    orientation is applied, as OpenCV does on the fast path, so a photo is the same way up on both."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
            _check_pixels(image.width, image.height)
            if image.format == "JPEG":
                side = max(width, height)  # the draft is taken before turning, so either side may become the width
                image.draft("RGB", (side, side))
            image = _to_rgb(ImageOps.exif_transpose(image))
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except DecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise DecodeError(f"image_too_large: {error}") from error
    except Image.UnidentifiedImageError as error:
        raise DecodeError(f"not_an_image: the data is none of the image formats read ({', '.join(PILLOW_FORMATS)})"
                          ) from error
    except (OSError, SyntaxError, ValueError, Warning) as error:
        # Truncated or corrupt data surfaces here, while the pixels are read.
        raise DecodeError(f"corrupt_image: {error}") from error


def decode_image(data: bytes, height: int, width: int) -> np.ndarray:
    """Decode one PNG/JPEG (or anything Pillow reads) to RGB ``uint8[height, width, 3]``; raise :class:`DecodeError`.

    OpenCV decodes PNG and complete JPEG files (about twice Pillow's speed at 32x32, where decoding competes with the
    model for the same cores); everything else, and anything OpenCV refuses, goes through Pillow, which also names the
    problem when the data is bad. Only the formats in :data:`PILLOW_FORMATS` are read. Image dimensions are checked
    from the header before any pixel is decoded. Both paths apply a JPEG's EXIF orientation.
    """
    if not data:
        raise DecodeError("empty_file: the object has zero bytes")
    png_size = _png_size(data)
    if png_size is not None:
        _check_pixels(*png_size)
        flags = cv2.IMREAD_COLOR
    elif data[:2] == JPEG_SIGNATURE and data.rstrip(b"\0")[-2:] == JPEG_END:
        # OpenCV fills a truncated JPEG with grey and says nothing, hence the end-marker check.
        try:
            header = Image.open(io.BytesIO(data), formats=("JPEG",))
            orientation = header.getexif().get(EXIF_ORIENTATION)
        except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise DecodeError(f"corrupt_image: {error}") from error
        _check_pixels(header.width, header.height)
        # OpenCV turns the picture by its EXIF orientation after the DCT down-scaling: compare the turned sizes.
        turned = orientation in SWAPPING_ORIENTATIONS
        flags = _jpeg_reduction_flag(header.width, header.height, height if turned else width,
                                     width if turned else height)
    else:
        return _decode_with_pillow(data, height, width)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if decoded is None:
        return _decode_with_pillow(data, height, width)
    if decoded.shape[:2] != (height, width):
        decoded = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_LINEAR)
    return decoded[:, :, ::-1]  # OpenCV's BGR to RGB; a view, copied once into the batch


def decode_cifar_records(data: bytes, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary records (1 label byte + 3,072 pixel bytes, channel-planar 32x32) to images and labels.

    Returns ``uint8[N, height, width, 3]`` and ``uint8[N]``.
    """
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
    labels = records[:, 0].copy()
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    if (height, width) != (32, 32):
        images = np.stack([
            np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))
            for image in images
        ])
    return np.ascontiguousarray(images), labels


class Normalizer:
    """``uint8[N, H, W, 3]`` -> ``float32[N, 3, H, W]`` computing ``(pixel / 255 - mean) / std`` per channel."""

    def __init__(self, mean, std):
        std = np.asarray(std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
        self.offset = (-np.asarray(mean, dtype=np.float32) / std).reshape(1, 3, 1, 1)

    def __call__(self, images_nhwc: np.ndarray) -> np.ndarray:
        batch = images_nhwc.transpose(0, 3, 1, 2).astype(np.float32, order="C")
        batch *= self.scale
        batch += self.offset
        return batch
