"""Read-only input locations: buckets and prefixes the nodes read images from where they are (issue 18, part 1).

The nodes' instance role may read (``s3:GetObject``, ``s3:GetObjectVersion`` for pinned versions) exactly the objects
under each ``s3://bucket/prefix/`` of the ``input_locations`` setting, and list each bucket only under those prefixes
(``s3:ListBucket`` with an ``s3:prefix`` condition): no write, no other prefix, no other bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws
from aws_cdk import aws_iam as iam

from infra.nag import acknowledge


def split_location(location: str) -> tuple[str, str]:
    """``"s3://bucket/prefix/"`` -> ``("bucket", "prefix/")`` (the prefix is "" for a whole bucket)."""
    bucket, _, prefix = location.removeprefix("s3://").partition("/")
    return bucket, prefix


def grant_read_input_locations(role: iam.Role, locations: Sequence[str]) -> None:
    """Let ``role`` read the objects under each location and list each bucket under its locations' prefixes only."""
    if not locations:
        return
    object_arns = []
    prefixes_by_bucket: dict[str, list[str]] = {}
    for location in locations:
        bucket, prefix = split_location(location)
        object_arns.append(f"arn:{Aws.PARTITION}:s3:::{bucket}/{prefix}*")
        prefixes_by_bucket.setdefault(bucket, []).append(prefix + "*")
    role.add_to_policy(
        iam.PolicyStatement(
            sid="ReadInputLocations",
            actions=["s3:GetObject", "s3:GetObjectVersion"],
            resources=object_arns,
        )
    )
    for index, (bucket, prefixes) in enumerate(sorted(prefixes_by_bucket.items())):
        role.add_to_policy(
            iam.PolicyStatement(
                sid=f"ListInputLocation{index}",
                actions=["s3:ListBucket"],
                resources=[f"arn:{Aws.PARTITION}:s3:::{bucket}"],
                conditions={"StringLike": {"s3:prefix": prefixes}},
            )
        )
    for location in locations:
        bucket, prefix = split_location(location)
        acknowledge(
            role,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::{bucket}/{prefix}*]",
            f"The input location {location} set in input_locations: any image under it may be listed in a run; "
            "read-only.",
        )
