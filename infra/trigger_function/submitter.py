"""Turns batches into manifests and EMR steps, at most once per batch id, within the cluster's limits.

Exactly once, and why it is built this way
-------------------------------------------
S3 events arrive at least once and Lambda may run twice on one message, so a batch id (derived from the batch's contents)
can reach this code more than once, even in two invocations at the same moment. Three objects under the manifests prefix,
all keyed by the batch id, make submission idempotent:

1. The *receipt* ``<batch_id>.step.json`` is written after EMR accepted the step. If it exists, the batch was submitted:
   nothing more is done. This is the common redelivery path and costs one HEAD request.
2. The *manifest* ``<batch_id>.json`` is created with an S3 conditional write (``If-None-Match: *``) just before the EMR
   call. Only one writer can create it, so it doubles as a claim: two concurrent invocations cannot both submit. When EMR
   refuses the step, the claim is deleted again so the redelivered message can retry; after a timeout it is kept, since
   EMR may have accepted the step (point 3 sorts that out).
3. A claim without a receipt means an earlier invocation stopped between claiming and writing the receipt (a timeout or
   crash), or another invocation is between those two points right now. The cluster's steps are searched by name (the step
   name carries the batch id): if the step is there, only the receipt is missing and it is written now. If not, the claim
   is taken over only once it is older than the longest an invocation can live (Lambda's 15-minute limit), so a live
   invocation is never overtaken; until then the records fail and SQS delivers them again later.

Why not only list the cluster's steps by name: in transient mode the cluster that ran the step may be gone, and listing every
step of a long-lived cluster on every upload is slow and throttled (ListSteps returns 50 steps a page). Why not only a marker:
a marker written before the EMR call cannot tell "submitted" from "crashed before submitting", and one written after it
leaves a window for duplicates. The combination closes both. What it cannot close: in transient mode, a crash between
RunJobFlow and the receipt, with the new cluster already terminated when the message comes back after the lease.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum

from botocore.exceptions import ClientError

import emr_step
from trigger_settings import ClusterMode, TriggerSettings
from uploads import Batch, UploadKind

# EMR accepts steps only in these cluster states; a cluster in any other state is ending or gone.
ACCEPTING_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
# EMR's 256-step limit counts these states.
ACTIVE_STEP_STATES = ("PENDING", "RUNNING")
# Lambda's maximum run time (900 s) plus a minute for clock skew: no live invocation can hold a claim older than this.
CLAIM_LEASE = timedelta(seconds=900 + 60)


class BatchNotSubmitted(Exception):
    """The batch was not submitted for a reason that may pass (cluster busy or starting over); SQS should redeliver."""


class ClusterNotAccepting(BatchNotSubmitted):
    pass


class ClusterFull(BatchNotSubmitted):
    pass


class BatchInFlight(BatchNotSubmitted):
    pass


class UnusableUserManifest(ValueError):
    """An uploaded manifest that is not a non-empty JSON list of s3:// URIs: redelivery cannot fix it, so it is skipped."""


class Outcome(str, Enum):
    SUBMITTED = "submitted"
    ALREADY_SUBMITTED = "already_submitted"


@dataclass
class ClusterSlots:
    """What this invocation knows about a cluster: asked once, then counted locally as steps are added."""

    cluster_id: str
    state: str
    active_steps: int


@dataclass(frozen=True)
class Submission:
    outcome: Outcome
    batch_id: str
    step_name: str
    cluster_id: str | None


def manifest_key(settings: TriggerSettings, batch_id: str) -> str:
    return f"{settings.manifests_prefix}{batch_id}.json"


def receipt_key(settings: TriggerSettings, batch_id: str) -> str:
    return f"{settings.manifests_prefix}{batch_id}.step.json"


class StepSubmitter:
    """Submits the batches of one invocation; create one per invocation (it caches cluster state for that long only)."""

    def __init__(self, *, settings: TriggerSettings, s3, emr, clock: Callable[[], datetime], log) -> None:
        self._settings = settings
        self._s3 = s3
        self._emr = emr
        self._clock = clock
        self._log = log
        self._slots: dict[str, ClusterSlots] = {}
        # Transient mode: the stack's cluster found (or launched) by this invocation, so later batches join it.
        self._transient_cluster_id: str | None = None
        self._transient_cluster_searched = False

    def submit(self, batch: Batch) -> Submission:
        """Submit ``batch`` unless it already was. Raises :class:`BatchNotSubmitted` or a botocore error when it was not."""
        settings = self._settings
        step_name = f"{settings.step_name_prefix}{batch.batch_id}"
        if self._exists(receipt_key(settings, batch.batch_id)):
            self._log.info("Batch already submitted", extra={"batch_id": batch.batch_id, "step_name": step_name})
            return Submission(Outcome.ALREADY_SUBMITTED, batch.batch_id, step_name, None)

        manifest = {"batch_id": batch.batch_id, "objects": self._manifest_objects(batch)}
        step = emr_step.build_step(
            name=step_name,
            artifacts=settings.artifacts,
            manifest_uri=f"s3://{settings.data_bucket}/{manifest_key(settings, batch.batch_id)}",
            model_uri=settings.model_uri,
            output_uri=f"s3://{settings.data_bucket}/{settings.results_prefix}{batch.batch_id}/",
            options=settings.job_options,
        )
        slots = self._target_cluster()
        if slots is not None:
            self._check_accepting(slots)

        if not self._claim(batch.batch_id, manifest):
            if slots is not None and self._has_step_named(slots.cluster_id, step_name):
                self._write_receipt(batch.batch_id, step_name, slots.cluster_id)
                self._log.info(
                    "Batch found on the cluster", extra={"batch_id": batch.batch_id, "cluster_id": slots.cluster_id}
                )
                return Submission(Outcome.ALREADY_SUBMITTED, batch.batch_id, step_name, slots.cluster_id)
            claimed_at = self._last_modified(manifest_key(settings, batch.batch_id))
            if claimed_at is not None and self._clock() - claimed_at < CLAIM_LEASE:
                raise BatchInFlight(
                    f"batch {batch.batch_id} was claimed at {claimed_at.isoformat()} and has no step yet; "
                    f"retrying after the claim's lease of {CLAIM_LEASE}"
                )
            self._log.warning("Taking over an expired claim", extra={"batch_id": batch.batch_id})
            self._put_manifest(batch.batch_id, manifest, only_if_new=False)

        try:
            cluster_id = self._add_step(slots, step)
        except (ClientError, ValueError):
            # EMR answered with a refusal, or the request was never sent (a bad cluster definition): the step was not
            # accepted, so release the claim for the redelivered message. Any other error (a timeout, a dropped
            # connection) leaves it unknown whether EMR accepted the step: the claim stays, and the redelivery finds the
            # step by name or waits out the lease.
            self._s3.delete_object(Bucket=settings.data_bucket, Key=manifest_key(settings, batch.batch_id))
            raise
        self._write_receipt(batch.batch_id, step_name, cluster_id)
        self._log.info(
            "Step submitted",
            extra={
                "batch_id": batch.batch_id,
                "step_name": step_name,
                "cluster_id": cluster_id,
                "manifest_key": manifest_key(settings, batch.batch_id),
                "objects": len(manifest["objects"]),
            },
        )
        return Submission(Outcome.SUBMITTED, batch.batch_id, step_name, cluster_id)

    # --- the manifest -------------------------------------------------------------------------------------------------

    def _manifest_objects(self, batch: Batch) -> list[str]:
        bucket = self._settings.data_bucket
        if batch.kind is not UploadKind.MANIFEST:
            return [f"s3://{bucket}/{key}" for key in batch.object_keys()]
        (key,) = batch.object_keys()
        try:
            body = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] == "NoSuchKey":
                raise UnusableUserManifest(f"manifest {key!r} was deleted before it could be read") from None
            raise
        return user_manifest_objects(body, key=key)

    def _claim(self, batch_id: str, manifest: dict) -> bool:
        """Create the manifest only if it does not exist; False when another invocation created it first."""
        try:
            self._put_manifest(batch_id, manifest, only_if_new=True)
        except ClientError as error:
            # 412: the object exists. 409: a conditional write to the same key is in progress right now.
            if error.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def _put_manifest(self, batch_id: str, manifest: dict, *, only_if_new: bool) -> None:
        condition = {"IfNoneMatch": "*"} if only_if_new else {}
        self._s3.put_object(
            Bucket=self._settings.data_bucket,
            Key=manifest_key(self._settings, batch_id),
            Body=json.dumps(manifest).encode(),
            ContentType="application/json",
            **condition,
        )

    def _write_receipt(self, batch_id: str, step_name: str, cluster_id: str) -> None:
        receipt = {"batch_id": batch_id, "step_name": step_name, "cluster_id": cluster_id}
        self._s3.put_object(
            Bucket=self._settings.data_bucket,
            Key=receipt_key(self._settings, batch_id),
            Body=json.dumps(receipt).encode(),
            ContentType="application/json",
        )

    def _exists(self, key: str) -> bool:
        return self._last_modified(key) is not None

    def _last_modified(self, key: str) -> datetime | None:
        try:
            return self._s3.head_object(Bucket=self._settings.data_bucket, Key=key)["LastModified"]
        except ClientError as error:
            if error.response["Error"]["Code"] in ("404", "NoSuchKey"):
                return None
            raise

    # --- the cluster --------------------------------------------------------------------------------------------------

    def _target_cluster(self) -> ClusterSlots | None:
        """The cluster the step goes to, or None in transient mode when no cluster of this stack accepts steps."""
        if self._settings.cluster_mode is ClusterMode.PERSISTENT:
            return self._cluster_slots(self._settings.cluster_id)
        if not self._transient_cluster_searched:
            self._transient_cluster_id = self._find_stack_cluster()
            self._transient_cluster_searched = True
        return self._cluster_slots(self._transient_cluster_id) if self._transient_cluster_id else None

    def _find_stack_cluster(self) -> str | None:
        tag = {"Key": self._settings.cluster_tag_key, "Value": self._settings.cluster_tag_value}
        for page in self._emr.get_paginator("list_clusters").paginate(ClusterStates=list(ACCEPTING_STATES)):
            for summary in page["Clusters"]:
                try:
                    cluster = self._emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
                except ClientError as error:
                    # The function may describe only clusters carrying this stack's tag: a refusal means another owner's.
                    if error.response["Error"]["Code"] == "AccessDeniedException":
                        continue
                    raise
                if tag in cluster.get("Tags", []):
                    return cluster["Id"]
        return None

    def _cluster_slots(self, cluster_id: str) -> ClusterSlots:
        if cluster_id not in self._slots:
            state = self._emr.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"]
            active = 0
            if state in ACCEPTING_STATES:
                pages = self._emr.get_paginator("list_steps").paginate(
                    ClusterId=cluster_id, StepStates=list(ACTIVE_STEP_STATES)
                )
                active = sum(len(page["Steps"]) for page in pages)
            self._slots[cluster_id] = ClusterSlots(cluster_id=cluster_id, state=state, active_steps=active)
        return self._slots[cluster_id]

    def _check_accepting(self, slots: ClusterSlots) -> None:
        if slots.state not in ACCEPTING_STATES:
            raise ClusterNotAccepting(
                f"cluster {slots.cluster_id} is {slots.state}; EMR accepts steps only in {', '.join(ACCEPTING_STATES)}"
            )
        if slots.active_steps >= self._settings.max_active_steps:
            raise ClusterFull(
                f"cluster {slots.cluster_id} has {slots.active_steps} pending or running steps; "
                f"MAX_ACTIVE_STEPS={self._settings.max_active_steps}"
            )

    def _has_step_named(self, cluster_id: str, step_name: str) -> bool:
        for page in self._emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
            if any(step["Name"] == step_name for step in page["Steps"]):
                return True
        return False

    def _add_step(self, slots: ClusterSlots | None, step: dict) -> str:
        """Add ``step`` to the target cluster, or launch a transient cluster running it; return the cluster id."""
        if slots is None:
            request = self._job_flow_request()
            cluster_id = self._emr.run_job_flow(**request, Steps=[step])["JobFlowId"]
            self._transient_cluster_id = cluster_id
            self._slots[cluster_id] = ClusterSlots(cluster_id=cluster_id, state="STARTING", active_steps=1)
            return cluster_id
        self._emr.add_job_flow_steps(JobFlowId=slots.cluster_id, Steps=[step])
        slots.active_steps += 1
        return slots.cluster_id

    def _job_flow_request(self) -> dict:
        """The stack's RunJobFlow request (read when a cluster is launched, so a redeploy takes effect at once)."""
        settings = self._settings
        key = settings.job_flow_definition_key
        request = json.loads(self._s3.get_object(Bucket=settings.data_bucket, Key=key)["Body"].read())
        where = f"the cluster definition s3://{settings.data_bucket}/{key}"
        if not isinstance(request, dict) or "Steps" in request:
            raise ValueError(f"{where} must be a JSON RunJobFlow request without 'Steps' (the trigger adds the step)")
        if request.get("Instances", {}).get("KeepJobFlowAliveWhenNoSteps", False):
            raise ValueError(
                f"{where} keeps the cluster alive without steps; a transient cluster must end with its steps"
            )
        tag = {"Key": settings.cluster_tag_key, "Value": settings.cluster_tag_value}
        if tag not in request.get("Tags", []):
            raise ValueError(f"{where} lacks the tag {tag}; without it later uploads cannot find the cluster")
        return request


def user_manifest_objects(body: bytes, *, key: str) -> list[str]:
    """The object URIs of an uploaded manifest: a JSON list of s3:// URIs, or an object whose "objects" is that list."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnusableUserManifest(f"manifest {key!r} is not JSON ({error})") from None
    objects = document.get("objects") if isinstance(document, dict) else document
    if not isinstance(objects, list) or not objects:
        raise UnusableUserManifest(f'manifest {key!r} must be a non-empty JSON list of URIs or {{"objects": [...]}}')
    not_s3 = [index for index, uri in enumerate(objects) if not (isinstance(uri, str) and uri.startswith("s3://"))]
    if not_s3:
        raise UnusableUserManifest(
            f"manifest {key!r} has {len(not_s3)} entries that are not s3:// URIs (first at index {not_s3[0]})"
        )
    return objects


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
