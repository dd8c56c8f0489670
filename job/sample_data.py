"""Real, labelled images that ship inside registry packages, written in the job's input formats.

- scikit-learn's digits: 1,797 labelled 8x8 scans of handwritten digits, rendered as 32x32 RGB (CIFAR-10's geometry).
- foolbox 3.3.4's wheel: 20 CIFAR-10 test images (``foolbox/data/cifar10_<index>_<label>.png``), read straight out of
  the wheel file, which `make data` downloads with a pinned hash.

Also writes CIFAR-10 binary batches (1 label byte + 3,072 channel-planar pixel bytes per record).
"""

from __future__ import annotations

import io
import os
import re
import zipfile

import numpy as np
from PIL import Image

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_LABELS = tuple(str(digit) for digit in range(10))
FOOLBOX_CIFAR10 = re.compile(r"foolbox/data/cifar10_(\d+)_(\d+)\.png$")


def digits_32x32() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``uint8[1797, 32, 32, 3]`` (white ink on black, like the originals) and ``int64[1797]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scaled = (digits.images * (255.0 / 16.0)).astype(np.uint8)  # the scans use 17 grey levels, 0..16
    images = np.stack([np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR)) for image in scaled])
    return np.repeat(images[..., None], 3, axis=3), digits.target.astype(np.int64)


def split_held_out(labels: np.ndarray, held_out_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/held-out split, reproducible from ``seed``."""
    generator = np.random.default_rng(seed)
    train, held_out = [], []
    for label in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == label))
        cut = int(round(len(members) * held_out_share))
        held_out.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(np.array(train)), np.sort(np.array(held_out))


def foolbox_cifar10(wheel_path: str) -> list[tuple[str, bytes, int]]:
    """``(name, png_bytes, label)`` for the 20 CIFAR-10 test images inside the foolbox wheel, in index order."""
    found = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for name in wheel.namelist():
            match = FOOLBOX_CIFAR10.search(name)
            if match:
                found.append((int(match.group(1)), os.path.basename(name), wheel.read(name), int(match.group(2))))
    if not found:
        raise ValueError(f"{wheel_path} holds no foolbox/data/cifar10_*.png images: is it the foolbox 3.3.4 wheel?")
    return [(name, data, label) for _, name, data, label in sorted(found)]


def cifar_batch_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records for ``uint8[N, 32, 32, 3]`` images and their labels."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], planar], axis=1).tobytes()


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
