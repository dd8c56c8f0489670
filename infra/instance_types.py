"""What the stack needs to know about an EC2 instance type: its vCPUs (EMR's YARN vcores) and its NVIDIA GPUs.

No AWS call: synth needs no credentials. vCPUs follow EC2's size naming, which holds for every family EMR runs on
(medium 1, large 2, xlarge 4, Nxlarge 4N); ``metal`` sizes differ per family, so they are refused with a message.
GPU counts come from the table below (EC2's accelerated-computing pages), for the GPU families EMR supports.
"""

from __future__ import annotations

import re

SIZE_PATTERN = re.compile(r"^(?:(\d+)xlarge|xlarge|large|medium)$")
VCPUS_PER_XLARGE = 4

# GPUs per instance by family and size: every size of a family has one GPU except those listed.
GPU_FAMILIES_MULTI_GPU_SIZES: dict[str, dict[str, int]] = {
    "g4dn": {"12xlarge": 4},
    "g5": {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8},
    "g6": {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8},
    "g6e": {"12xlarge": 4, "24xlarge": 4, "48xlarge": 8},
    "p3": {"8xlarge": 4, "16xlarge": 8},
    "p3dn": {"24xlarge": 8},
    "p4d": {"24xlarge": 8},
    "p4de": {"24xlarge": 8},
    "p5": {"48xlarge": 8},
}
GPU_FAMILIES = tuple(GPU_FAMILIES_MULTI_GPU_SIZES)


class UnknownInstanceSize(ValueError):
    """The instance type's size does not tell its vCPUs."""


def family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def vcpus(instance_type: str) -> int:
    """vCPUs of ``instance_type`` (= YARN vcores on EMR); raises :class:`UnknownInstanceSize` for e.g. ``metal``."""
    size = instance_type.split(".", 1)[1] if "." in instance_type else ""
    match = SIZE_PATTERN.match(size)
    if match is None:
        raise UnknownInstanceSize(
            f"{instance_type!r}: the size {size!r} does not tell its vCPUs; use a sized type (medium, large, xlarge, "
            "2xlarge, ...), not metal"
        )
    if size == "medium":
        return 1
    if size == "large":
        return 2
    return VCPUS_PER_XLARGE * int(match.group(1) or 1)


def gpus(instance_type: str) -> int:
    """NVIDIA GPUs of ``instance_type``: 0 outside :data:`GPU_FAMILIES`."""
    sizes = GPU_FAMILIES_MULTI_GPU_SIZES.get(family(instance_type))
    if sizes is None:
        return 0
    return sizes.get(instance_type.split(".", 1)[1], 1)
