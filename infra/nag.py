"""cdk-nag acknowledgements, one resource and one finding at a time, each with its reason."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_s3 as s3
from constructs import IConstruct


def acknowledge(construct: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one cdk-nag finding (e.g. ``AwsSolutions-IAM5[Resource::*]``) on ``construct`` and its children."""
    Validations.of(construct).acknowledge(Acknowledgment(id=finding, reason=reason))


def object_wildcard_finding(bucket: s3.IBucket, prefix: str) -> str:
    """The AwsSolutions-IAM5 finding id for a grant on every object under ``prefix`` of ``bucket``."""
    logical_id = Stack.of(bucket).get_logical_id(bucket.node.default_child)
    return f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>/{prefix}*]"
