"""Bytes to model input: pure numpy, OpenCV and Pillow, no Spark.

Images of any size and mode become RGB ``uint8[H, W, 3]`` at the model's input size, by the package's resize mode
(:func:`plan_resize`: stretch, centre crop or pad) and interpolation; a batch of those becomes the model's input
(:class:`Normalizer`: e.g. ``float32[N, 3, H, W]`` normalised with the package's mean and std, or ``uint8[N, H, W,
3]`` in BGR order) in a single vectorised step.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
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
# The package's interpolation names. Scaling is Pillow's on both paths (torchvision, timm and Keras scale PIL images:
# Pillow's filters widen when they shrink, so a large photo is smoothed, not aliased), except the original format's
# stretch with bilinear, which keeps OpenCV's INTER_LINEAR on the OpenCV path so that existing packages get the same
# input as before.
PILLOW_INTERPOLATION = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
ORIGINAL_SCALING = ("stretch", "bilinear")


class DecodeError(ValueError):
    """One input could not be turned into pixels; ``str()`` starts with a short reason code."""


@dataclass(frozen=True)
class ResizePlan:
    """How an image of ``source`` size becomes the model's ``target`` size; sizes are ``(width, height)`` in pixels.

    The whole image is scaled to ``scaled``; then, for a centre crop, the ``target`` window at ``offset`` (left, top)
    of the scaled image is kept; for pad, the scaled image is placed at ``offset`` of a black ``target`` canvas.
    """

    mode: str
    source: tuple[int, int]
    target: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int] = (0, 0)

    def describe(self) -> str:
        (width, height), (left, top) = self.scaled, self.offset
        text = f"{self.source[0]}x{self.source[1]} scaled to {width}x{height}"
        if self.mode == "center_crop":
            text += (f", centre {self.target[0]}x{self.target[1]} kept (box left {left}, top {top}, right "
                     f"{left + self.target[0]}, bottom {top + self.target[1]})")
        elif self.mode == "pad":
            text += (f", placed at left {left}, top {top} of a black {self.target[0]}x{self.target[1]} canvas")
        return text


def plan_resize(width: int, height: int, target_width: int, target_height: int, mode: str = "stretch",
                crop_fraction: float = 0.875) -> ResizePlan:
    """The resize plan of a ``width`` x ``height`` image (as it is turned upright) for a model input of
    ``target_width`` x ``target_height``.

    ``center_crop`` follows torchvision's ``Resize(S)`` + ``CenterCrop`` (the long side ``int(S * long / short)``,
    the crop's corner ``int(round((scaled - target) / 2))``) with ``S = floor(target / crop_fraction)``, which is
    timm's evaluation transform; a non-square target is covered on both sides. ``pad`` scales the long side to fit,
    rounds the other, and centres the picture.
    """
    source, target = (width, height), (target_width, target_height)
    if mode == "stretch":
        return ResizePlan(mode, source, target, target)
    if mode == "center_crop":
        cover_width, cover_height = math.floor(target_width / crop_fraction), math.floor(target_height / crop_fraction)
        if cover_width / width >= cover_height / height:
            scaled = (cover_width, max(cover_height, int(cover_width * height / width)))
        else:
            scaled = (max(cover_width, int(cover_height * width / height)), cover_height)
        offset = (int(round((scaled[0] - target_width) / 2.0)), int(round((scaled[1] - target_height) / 2.0)))
        return ResizePlan(mode, source, target, scaled, offset)
    if mode == "pad":
        if target_width / width <= target_height / height:
            scaled = (target_width, min(target_height, max(1, round(height * target_width / width))))
        else:
            scaled = (min(target_width, max(1, round(width * target_height / height))), target_height)
        return ResizePlan(mode, source, target, scaled,
                          ((target_width - scaled[0]) // 2, (target_height - scaled[1]) // 2))
    raise ValueError(f"resize mode must be stretch, center_crop or pad; got {mode!r}")


def _place(scaled: np.ndarray, plan: ResizePlan) -> np.ndarray:
    """The model-size ``uint8[H, W, 3]`` from the scaled image: the crop window, or the image on a black canvas."""
    (target_width, target_height), (left, top) = plan.target, plan.offset
    if plan.mode == "center_crop":
        return scaled[top:top + target_height, left:left + target_width]
    if plan.mode == "pad":
        canvas = np.zeros((target_height, target_width, 3), dtype=np.uint8)
        canvas[top:top + plan.scaled[1], left:left + plan.scaled[0]] = scaled
        return canvas
    return scaled


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


def _scale_with_pillow(image: Image.Image, plan: ResizePlan, interpolation: str) -> np.ndarray:
    if image.size != plan.scaled:
        image = image.resize(plan.scaled, PILLOW_INTERPOLATION[interpolation])
    return _place(np.asarray(image, dtype=np.uint8), plan)


def _decode_with_pillow(data: bytes, height: int, width: int, mode: str = "stretch", crop_fraction: float = 0.875,
                        interpolation: str = "bilinear") -> np.ndarray:
    """The slow, thorough path: every mode Pillow knows, and the precise reason when the data is bad. EXIF
    orientation is applied, as OpenCV does on the fast path, so a photo is the same way up on both."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
            _check_pixels(image.width, image.height)
            turned = image.getexif().get(EXIF_ORIENTATION) in SWAPPING_ORIENTATIONS
            plan = plan_resize(*((image.height, image.width) if turned else image.size), width, height, mode,
                               crop_fraction)
            if image.format == "JPEG":
                # At least the scaled size (the DCT scaling keeps every side at or above it); the draft is taken
                # before turning, so either side may become the width.
                side = max(plan.scaled)
                image.draft("RGB", (side, side))
            return _scale_with_pillow(_to_rgb(ImageOps.exif_transpose(image)), plan, interpolation)
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


def _into(image: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """``image``, or ``out`` once ``image`` is copied into it."""
    if out is None:
        return image
    out[...] = image
    return out


def _bgr_to_rgb(bgr: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
    """OpenCV's BGR ``uint8[H, W, 3]`` as RGB: a view when there is no ``out``, else written straight into ``out``
    (one SIMD channel swap, no intermediate array)."""
    if out is None:
        return bgr[:, :, ::-1]
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out)


def decode_image(data: bytes, height: int, width: int, mode: str = "stretch", crop_fraction: float = 0.875,
                 interpolation: str = "bilinear", out: Optional[np.ndarray] = None) -> np.ndarray:
    """Decode one PNG/JPEG (or anything Pillow reads) to RGB ``uint8[height, width, 3]``; raise :class:`DecodeError`.

    OpenCV decodes PNG and complete JPEG files (about twice Pillow's speed at 32x32, where decoding competes with the
    model for the same cores); everything else, and anything OpenCV refuses, goes through Pillow, which also names the
    problem when the data is bad. Only the formats in :data:`PILLOW_FORMATS` are read. Image dimensions are checked
    from the header before any pixel is decoded. Both paths apply a JPEG's EXIF orientation, and both let libjpeg
    scale a large JPEG down in the DCT (by 2, 4 or 8) as far as it stays at least the size :func:`plan_resize` scales
    it to. ``mode``, ``crop_fraction`` and ``interpolation`` are the package's (:func:`plan_resize`); both paths
    scale with Pillow's filter of that name, except stretch with bilinear on the OpenCV path (OpenCV's INTER_LINEAR,
    as the original format did).

    ``out``: a C-contiguous ``uint8[height, width, 3]`` to decode into (a batch buffer's row), returned filled with the
    same bytes as without it. A stretched image from the OpenCV path (the job's default) goes into it straight from
    OpenCV's decoded or resized pixels, without the intermediate RGB copy.
    """
    if out is not None and (out.shape != (height, width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous uint8[{height}, {width}, 3]; got {out.dtype}{list(out.shape)}")
    if not data:
        raise DecodeError("empty_file: the object has zero bytes")
    png_size = _png_size(data)
    plan = None
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
        plan = plan_resize(*((header.height, header.width) if turned else header.size), width, height, mode,
                           crop_fraction)
        scaled_width, scaled_height = plan.scaled
        flags = _jpeg_reduction_flag(header.width, header.height, scaled_height if turned else scaled_width,
                                     scaled_width if turned else scaled_height)
    else:
        return _into(_decode_with_pillow(data, height, width, mode, crop_fraction, interpolation), out)
    decoded = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if decoded is None:
        return _into(_decode_with_pillow(data, height, width, mode, crop_fraction, interpolation), out)
    if plan is None:  # a PNG: its pixels as decoded
        plan = plan_resize(decoded.shape[1], decoded.shape[0], width, height, mode, crop_fraction)
    if decoded.shape[:2] == plan.scaled[::-1]:
        if plan.mode == "stretch":  # already the model's size: straight into ``out``
            return _bgr_to_rgb(decoded, out)
        return _into(_place(decoded[:, :, ::-1], plan), out)  # OpenCV's BGR to RGB; a view, copied once
    if (mode, interpolation) == ORIGINAL_SCALING:
        return _bgr_to_rgb(cv2.resize(decoded, plan.scaled, interpolation=cv2.INTER_LINEAR), out)
    return _into(_scale_with_pillow(Image.fromarray(np.ascontiguousarray(decoded[:, :, ::-1])), plan, interpolation),
                 out)


def describe_decoding(data: bytes, height: int, width: int, mode: str = "stretch", crop_fraction: float = 0.875) -> str:
    """What :func:`decode_image` will do to ``data`` for a ``height`` x ``width`` input, read from the header only:
    the format and size, the decoder path, the JPEG DCT scaling and the resize plan (``ResizePlan.describe``)."""
    try:
        header = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except Image.UnidentifiedImageError as error:
        raise DecodeError(f"not_an_image: the data is none of the image formats read ({', '.join(PILLOW_FORMATS)})"
                          ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise DecodeError(f"corrupt_image: {error}") from error
    turned = header.getexif().get(EXIF_ORIENTATION) in SWAPPING_ORIENTATIONS
    upright = (header.height, header.width) if turned else header.size
    plan = plan_resize(*upright, width, height, mode, crop_fraction)
    text = f"{header.format} {header.width}x{header.height}" + (", EXIF-turned" if turned else "")
    if header.format == "PNG":
        text += ", OpenCV path"
    elif header.format == "JPEG" and data.rstrip(b"\0")[-2:] == JPEG_END:
        scaled_width, scaled_height = plan.scaled
        flags = _jpeg_reduction_flag(header.width, header.height, scaled_height if turned else scaled_width,
                                     scaled_width if turned else scaled_height)
        factor = next((factor for factor, flag in JPEG_REDUCTIONS if flag == flags), 1)
        text += f", OpenCV path, DCT scaling 1/{factor}" if factor > 1 else ", OpenCV path"
    else:
        text += ", Pillow path"
    return f"{text}; {plan.describe()}"


def decode_cifar_records(data: bytes, height: int, width: int, mode: str = "stretch", crop_fraction: float = 0.875,
                         interpolation: str = "bilinear", out: Optional[np.ndarray] = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary records (1 label byte + 3,072 pixel bytes, channel-planar 32x32) to images and labels.

    Returns ``uint8[N, height, width, 3]`` and ``uint8[N]``; the images are scaled with Pillow as
    :func:`plan_resize` says. ``out``: a ``uint8[N, height, width, 3]`` (a batch buffer's rows) to write the images
    into, returned in their place: unscaled records go there in one strided copy, with no intermediate array.
    """
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3073)
    labels = records[:, 0].copy()
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    plan = plan_resize(32, 32, width, height, mode, crop_fraction)
    if plan.scaled != (32, 32) or plan.target != (32, 32):
        images = np.stack([_scale_with_pillow(Image.fromarray(np.ascontiguousarray(image)), plan, interpolation)
                           for image in images]).reshape(len(records), height, width, 3)
    if out is not None:
        out[...] = images
        return out, labels
    return np.ascontiguousarray(images), labels


class Normalizer:
    """RGB ``uint8[N, H, W, 3]`` -> the model's input, in one vectorised step.

    The channels are put in ``channel_order`` (RGB or BGR) and ``layout`` (NCHW: ``[N, 3, H, W]``, NHWC:
    ``[N, H, W, 3]``); then ``input_dtype`` float32 computes ``(pixel / 255 - mean) / std`` per model channel (``mean``
    and ``std`` are in the model's channel order), and uint8 passes the pixels unchanged (no mean or std).
    """

    def __init__(self, mean, std, *, channel_order: str = "RGB", layout: str = "NCHW", input_dtype: str = "float32"):
        self.channel_order, self.layout, self.input_dtype = channel_order, layout, input_dtype
        if input_dtype == "float32":
            shape = (1, 3, 1, 1) if layout == "NCHW" else (1, 1, 1, 3)
            std = np.asarray(std, dtype=np.float32)
            self.scale = (1.0 / (255.0 * std)).reshape(shape)
            self.offset = (-np.asarray(mean, dtype=np.float32) / std).reshape(shape)

    def __call__(self, images_nhwc: np.ndarray) -> np.ndarray:
        channels_first = self.layout == "NCHW"
        batch = images_nhwc.transpose(0, 3, 1, 2) if channels_first else images_nhwc
        if self.channel_order == "BGR":
            batch = batch[:, ::-1] if channels_first else batch[..., ::-1]
        if self.input_dtype == "uint8":
            return np.ascontiguousarray(batch)
        batch = batch.astype(np.float32, order="C")
        batch *= self.scale
        batch += self.offset
        return batch
