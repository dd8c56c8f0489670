"""Benchmark inputs made from real photos: the 20 CIFAR-10 test images in the foolbox wheel, varied so every file is
distinct (random crops, flips and brightness), written as 32x32 PNGs or 224x224 JPEGs."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from job.sample_data import encode_jpeg, encode_png, foolbox_cifar10


def _variants(wheel: str, count: int, size: int, seed: int):
    import io

    generator = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for _, data, _ in foolbox_cifar10(wheel)]
    for number in range(count):
        photo = photos[number % len(photos)]
        padded = np.pad(photo, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        top, left = generator.integers(0, 9, size=2)
        image = padded[top:top + 32, left:left + 32]
        if generator.random() < 0.5:
            image = image[:, ::-1]
        image = np.clip(image.astype(np.float32) * generator.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
        if size != 32:
            image = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
        yield number, image


def write_images(wheel: str, directory: str, count: int, size: int, seed: int = 0) -> str:
    """Write ``count`` images (PNG at 32x32, JPEG otherwise) into ``directory``, once; return the directory."""
    suffix = "png" if size == 32 else "jpg"
    done = os.path.join(directory, ".complete")
    if os.path.exists(done) and open(done).read() == f"{count} {size} {seed}":
        return directory
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    for number, image in _variants(wheel, count, size, seed):
        data = encode_png(image) if suffix == "png" else encode_jpeg(image, quality=90)
        with open(os.path.join(directory, f"img_{number:05d}.{suffix}"), "wb") as file:
            file.write(data)
    with open(done, "w") as file:
        file.write(f"{count} {size} {seed}")
    return directory
