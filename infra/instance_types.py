"""What the stack needs to know about an EC2 instance type: its vCPUs (EMR's YARN vcores), its NVIDIA GPUs, its CPU
architecture, and so how many of the job's tasks it runs at once.

No AWS call: synth needs no credentials. vCPUs follow EC2's size naming, which holds for every family EMR runs on
(medium 1, large 2, xlarge 4, Nxlarge 4N); ``metal`` sizes differ per family, so they are refused with a message.
GPU counts come from the table below (EC2's accelerated-computing pages), for the GPU families EMR supports. The
architecture is read from the name by aws-cdk-lib's rule (``ec2.InstanceType(...).architecture``: family ``a``, or a
``g`` among the letters after the generation, as in c7g, c6gn, m7gd, is Graviton), without importing aws-cdk-lib, so
that the cost model (``make cost``) needs no CDK and no Node; a test holds the two readings equal.
"""

from __future__ import annotations

import re

SIZE_PATTERN = re.compile(r"^(?:(\d+)xlarge|xlarge|large|medium)$")
# aws-cdk-lib's parse of an instance type name: family, generation, capabilities, size (InstanceType.architecture).
INSTANCE_TYPE_PATTERN = re.compile(r"^([a-z]+)(\d{1,2})([a-z\-]*)\.([a-z0-9\-]+)$")
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


# The `architecture` setting's values (AWS's names); a node's `uname -m` says aarch64 for arm64.
X86_64 = "x86_64"
ARM64 = "arm64"
ARCHITECTURES = (X86_64, ARM64)
# What `uname -m` says on a node of each architecture: the offline wheelhouse holds one folder per machine name.
MACHINE_NAMES = {X86_64: "x86_64", ARM64: "aarch64"}


class UnknownInstanceSize(ValueError):
    """The instance type's size does not tell its vCPUs."""


class UnknownArchitecture(ValueError):
    """aws-cdk-lib cannot read an architecture from the instance type's name."""


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


def architecture(instance_type: str) -> str:
    """:data:`ARM64` for Graviton types, :data:`X86_64` for the others; raises :class:`UnknownArchitecture` for a name
    that is not FAMILY GENERATION [CAPABILITIES] . SIZE (aws-cdk-lib refuses the same names)."""
    parsed = INSTANCE_TYPE_PATTERN.match(instance_type)
    if parsed is None:
        raise UnknownArchitecture(
            f"{instance_type!r}: not an instance type name like 'c7g.2xlarge' (family, generation, capabilities, "
            "'.', size), so its architecture is unknown")
    instance_family, _, capabilities, _ = parsed.groups()
    return ARM64 if instance_family == "a" or "g" in capabilities else X86_64


def task_slots_per_node(compute: str, instance_type: str) -> int:
    """How many of the job's tasks one node of ``instance_type`` runs at once: one per vCPU (cpu), one per GPU (gpu).
    It is also the node's weight in its instance fleet, so that fleet capacity counts task slots."""
    return gpus(instance_type) if compute == "gpu" else vcpus(instance_type)
