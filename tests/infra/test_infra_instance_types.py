"""vCPUs and GPUs of EC2 instance types, as the stack derives the cluster's task slots from them."""

from __future__ import annotations

import pytest

from infra.instance_types import UnknownInstanceSize, gpus, vcpus


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
