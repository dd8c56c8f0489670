"""vCPUs and GPUs of EC2 instance types, as the stack derives the cluster's task slots from them."""

from __future__ import annotations

import pytest

from infra.instance_types import ARM64, X86_64, UnknownArchitecture, UnknownInstanceSize, architecture, gpus, vcpus


@pytest.mark.parametrize(
    ("instance_type", "expected"),
    [("c6g.medium", 1), ("m5.large", 2), ("m5.xlarge", 4), ("c5.2xlarge", 8), ("c7g.16xlarge", 64), ("p3.2xlarge", 8)],
)
def test_vcpus_follow_ec2_size_names(instance_type, expected):
    assert vcpus(instance_type) == expected


@pytest.mark.parametrize("instance_type", ["c5.metal", "m5", "m5.huge"])
def test_sizes_that_do_not_tell_their_vcpus_are_refused(instance_type):
    with pytest.raises(UnknownInstanceSize, match="does not tell its vCPUs"):
        vcpus(instance_type)


@pytest.mark.parametrize(
    ("instance_type", "expected"),
    [("c5.2xlarge", 0), ("g4dn.xlarge", 1), ("g4dn.12xlarge", 4), ("g5.48xlarge", 8), ("p3.8xlarge", 4)],
)
def test_gpus_per_instance(instance_type, expected):
    assert gpus(instance_type) == expected


# Names of every kind the rule must tell apart: first-generation Graviton (a1), Graviton with capability letters
# after the g (c6gn, m7gd, x2gd, im4gn, g5g), Intel/AMD with letters that hold no g (m5dn, c5ad, m7i-flex, g4dn),
# and GPU families.
ARCHITECTURE_NAMES = [
    "a1.xlarge", "c6g.2xlarge", "c6gn.xlarge", "c7g.16xlarge", "m7gd.large", "r8g.4xlarge", "x2gd.xlarge",
    "im4gn.large", "g5g.xlarge", "m5.xlarge", "m5dn.2xlarge", "c5ad.4xlarge", "m7i-flex.large", "c7a.2xlarge",
    "g4dn.xlarge", "g6e.12xlarge", "p4d.24xlarge", "inf2.xlarge", "c5.metal",
]  # fmt: skip


@pytest.mark.parametrize("instance_type", ARCHITECTURE_NAMES)
def test_the_architecture_read_from_the_name_is_aws_cdk_libs(instance_type):
    """infra/instance_types.py reads the architecture without aws-cdk-lib (so that `make cost` needs no CDK); this
    holds its reading equal to aws-cdk-lib's own ``InstanceType.architecture`` for every kind of name."""
    from aws_cdk import aws_ec2 as ec2

    cdk_arm = ec2.InstanceType(instance_type).architecture == ec2.InstanceArchitecture.ARM_64
    assert architecture(instance_type) == (ARM64 if cdk_arm else X86_64)


@pytest.mark.parametrize("instance_type", ["c5", "C5.xlarge", "c.xlarge", "5c.large"])
def test_names_aws_cdk_lib_cannot_parse_have_no_architecture(instance_type):
    with pytest.raises(UnknownArchitecture, match="not an instance type name"):
        architecture(instance_type)
