"""Custom resource run by `cdk destroy`: terminate this stack's EMR clusters, untangle its security groups, and stop
the data bucket's access logging.

Transient clusters are launched by the trigger Lambda, outside CloudFormation, so the stack cannot delete them itself.
When this resource is deleted (before the buckets, roles, security groups and subnets those clusters use), it
terminates every cluster carrying the stack's tag, waits until they are gone, then removes the rules EMR added to the
stack's security groups: EMR makes those groups reference each other, which would otherwise block their deletion.
Deleting the trigger function does not stop an invocation already running, which may still launch a cluster, so the
listing goes on until no new cluster of the stack has appeared for longer than the trigger function can run
(``QuietSeconds``). Only clusters whose name starts with the stack's (``ClusterNamePrefix``) are described: the
account may hold hundreds of other teams' clusters.
Last, it turns off the data bucket's server access logging: emptying that bucket would otherwise deliver log records
into the logs bucket after the logs bucket was emptied, and its deletion would fail with BucketNotEmpty (aws-cdk#21776).
Standard library and boto3 only (the Lambda runtime's).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any, Callable

import boto3

ACTIVE_STATES = ["STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING", "TERMINATING"]
POLL_SECONDS = 15
# Stop waiting this long before the Lambda's own timeout, so a FAILED answer still reaches CloudFormation.
SAFETY_MARGIN_MS = 60_000
# The trigger function's timeout (infra/trigger.py, FUNCTION_TIMEOUT: 2 minutes) plus a minute: an invocation that was
# running when the function was deleted has ended by then. The stack passes its own figure as QuietSeconds.
DEFAULT_QUIET_SECONDS = 120 + 60


def tagged_cluster_ids(emr: Any, tag_key: str, tag_value: str, name_prefix: str | None = None) -> list[str]:
    """Ids of the active clusters carrying tag_key=tag_value (ListClusters cannot filter by tag); only clusters whose
    name starts with ``name_prefix`` are described (ListClusters returns names)."""
    ids = []
    for page in emr.get_paginator("list_clusters").paginate(ClusterStates=ACTIVE_STATES):
        for summary in page["Clusters"]:
            if name_prefix is not None and not summary.get("Name", "").startswith(name_prefix):
                continue
            tags = emr.describe_cluster(ClusterId=summary["Id"])["Cluster"].get("Tags", [])
            if {"Key": tag_key, "Value": tag_value} in tags:
                ids.append(summary["Id"])
    return ids


def terminate_until_quiet(
    emr: Any,
    find: Callable[[], list[str]],
    remaining_ms: Callable[[], int],
    *,
    quiet_seconds: float,
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[list[str], list[str]]:
    """Terminate every cluster ``find`` lists, again and again, until all are gone and none new has appeared for
    ``quiet_seconds``; return (every cluster terminated, the ones still not TERMINATED when time ran out)."""
    sleep = sleep or time.sleep
    clock = clock or time.monotonic
    terminated: list[str] = []
    pending: list[str] = []
    quiet_since = clock()
    while True:
        new = [cluster_id for cluster_id in find() if cluster_id not in terminated]
        if new:
            emr.terminate_job_flows(JobFlowIds=new)
            terminated += new
            pending += new
            quiet_since = clock()
        pending = [
            cluster_id
            for cluster_id in pending
            if not emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"].startswith("TERMINATED")
        ]
        if not pending and clock() - quiet_since >= quiet_seconds:
            return terminated, []
        if remaining_ms() < SAFETY_MARGIN_MS:
            return terminated, pending
        sleep(POLL_SECONDS)


def revoke_rules(ec2: Any, security_group_ids: list[str]) -> int:
    """Remove every rule of the groups, both directions (EMR's cross-references); return how many were removed.

    The groups are deleted right after this resource, so nothing needs their rules any more.
    """
    removed = 0
    for group in ec2.describe_security_groups(GroupIds=security_group_ids)["SecurityGroups"]:
        if group.get("IpPermissions"):
            ec2.revoke_security_group_ingress(GroupId=group["GroupId"], IpPermissions=group["IpPermissions"])
            removed += len(group["IpPermissions"])
        if group.get("IpPermissionsEgress"):
            ec2.revoke_security_group_egress(GroupId=group["GroupId"], IpPermissions=group["IpPermissionsEgress"])
            removed += len(group["IpPermissionsEgress"])
    return removed


def stop_access_logging(s3: Any, bucket: str) -> None:
    """Turn off the bucket's server access logging (an empty logging status)."""
    s3.put_bucket_logging(Bucket=bucket, BucketLoggingStatus={})


def handle(
    event: dict,
    emr: Any,
    ec2: Any,
    s3: Any,
    remaining_ms: Callable[[], int],
    sleep: Callable[[float], None] | None = None,
    clock: Callable[[], float] | None = None,
) -> tuple[str, str]:
    """Return (status, reason) for CloudFormation; only Delete does any work."""
    if event["RequestType"] != "Delete":
        return "SUCCESS", "nothing to do until the stack is deleted"
    properties = event["ResourceProperties"]
    tag_key, tag_value = properties["TagKey"], properties["TagValue"]
    # The stack names its clusters "<stack>-<compute>" and tags them with the stack's name.
    name_prefix = properties.get("ClusterNamePrefix") or f"{tag_value}-"
    cluster_ids, still_running = terminate_until_quiet(
        emr,
        lambda: tagged_cluster_ids(emr, tag_key, tag_value, name_prefix),
        remaining_ms,
        quiet_seconds=float(properties.get("QuietSeconds", DEFAULT_QUIET_SECONDS)),
        sleep=sleep,
        clock=clock,
    )
    if still_running:
        return "FAILED", f"clusters still terminating: {', '.join(still_running)}; run the destroy again"
    removed = revoke_rules(ec2, list(properties["SecurityGroupIds"]))
    reason = f"terminated {len(cluster_ids)} cluster(s); removed {removed} security-group rule(s)"
    if properties.get("AccessLoggedBucket"):
        stop_access_logging(s3, properties["AccessLoggedBucket"])
        reason += f"; stopped access logging of {properties['AccessLoggedBucket']}"
    return "SUCCESS", reason


def send_response(event: dict, status: str, reason: str, physical_id: str) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:1000],
            "PhysicalResourceId": physical_id,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
        }
    ).encode()
    request = urllib.request.Request(event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""})
    with urllib.request.urlopen(request, timeout=30):  # noqa: S310 - CloudFormation's pre-signed S3 URL
        pass


def lambda_handler(event: dict, context: Any) -> None:
    physical_id = event.get("PhysicalResourceId") or f"cleanup-{os.environ.get('AWS_LAMBDA_FUNCTION_NAME', 'local')}"
    try:
        status, reason = handle(
            event,
            boto3.client("emr"),
            boto3.client("ec2"),
            boto3.client("s3"),
            context.get_remaining_time_in_millis,
        )
    except Exception as error:  # noqa: BLE001 - CloudFormation must always get an answer, or it waits an hour
        status, reason = "FAILED", f"{type(error).__name__}: {error}"
    print(json.dumps({"request": event["RequestType"], "status": status, "reason": reason}))
    send_response(event, status, reason, physical_id)
