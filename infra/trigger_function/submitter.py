"""Turns groups of uploads into batches, manifests and EMR steps, and runs a batch again when its step was cancelled.

Exactly once per upload, and why it is built this way
-----------------------------------------------------
S3 events arrive at least once, SQS delivers a message at least once, and the poller may group redelivered records
differently each time, so one upload can reach this code several times, in different invocations, even at the same
moment. Whole-batch deduplication cannot catch that (the batches differ), so every upload is claimed on its own, in the
claims table (``claims.py``), under its identity (bucket, key, ETag, sequencer):

1. A group's batch gets a new id, and each upload is claimed for it with one conditional write. The batch is formed only
   from the uploads this invocation claimed; its manifest lists them, and its step is submitted to EMR.
2. Once EMR accepted the step, the batch is recorded as submitted (one more item). An upload claimed by a submitted batch
   is a duplicate: it is dropped with a log line naming the batch.
3. A claim whose batch is not recorded belongs to an invocation that is running now or that died between claiming and
   recording. The cluster's steps are searched by name: if the step is there, only the record is missing and it is
   written now. Otherwise, while the claim's lease runs (longer than any invocation can live), a message the claim
   names fails and comes back later, so a dead invocation cannot lose the upload; a message the claim does not name is
   a duplicate and is dropped, because the messages the claim names stay on the queue until their invocation ends well.
   After the lease, the claim is taken over, with a write that succeeds only if it is still that claim.
4. When EMR refused the step (or it was never sent), the claims are deleted and the messages fail, so the redelivery
   claims them again. A timeout leaves it unknown whether EMR accepted the step: the claims stay, and point 3 sorts it out.

What it cannot close: in transient mode, an invocation that dies between RunJobFlow and the record, with the cluster it
launched already gone when the lease ends (the step cannot be found, so the uploads run again).

Retries of cancelled steps
--------------------------
A step can end CANCELLED or INTERRUPTED without having failed itself: added to a transient cluster that was already
shutting down, or queued on a cluster whose bootstrap failed. The stack's EventBridge rule sends those events to the
queue; :meth:`StepSubmitter.retry` then submits the batch again as attempt n+1 (same manifest, its own results folder,
see ``runs.py``), at most ``MAX_STEP_ATTEMPTS`` attempts in all, and reports the batch on the SNS topic when the last one
was cancelled too. The batch record's attempt counter, changed only by conditional writes, makes a duplicated event
start one retry, not two; a retry whose invocation died is resumed after its lease, after the same search by name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from botocore.exceptions import ClientError, ParamValidationError

import emr_step
import runs
from claims import BatchRecord, BatchState, ClaimStore, UploadClaim
from step_events import StepEnded
from trigger_settings import ClusterMode, TriggerSettings
from uploads import Batch, Upload, UploadGroup, UploadKind

# EMR accepts steps only in these cluster states; a cluster in any other state is ending or gone.
ACCEPTING_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
# EMR's 256-step limit counts these states.
ACTIVE_STEP_STATES = ("PENDING", "RUNNING")
# A log line lists at most this many keys of the uploads it is about (a batch can have 10,000).
LOGGED_KEYS = 10


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


@dataclass
class ClusterSlots:
    """What this invocation knows about a cluster: asked once, then counted locally as steps are added."""

    cluster_id: str
    state: str
    active_steps: int


@dataclass(frozen=True)
class GroupOutcome:
    """What became of a group: the batch submitted for it (None when another batch owns every upload), and the
    messages that must come back later because they carry uploads whose claim is held by a live invocation."""

    batch: Batch | None
    cluster_id: str | None
    messages_to_retry: frozenset[str]


class StepSubmitter:
    """Submits the batches of one invocation; create one per invocation (it caches cluster state for that long only)."""

    def __init__(
        self, *, settings: TriggerSettings, s3, emr, sns, claims: ClaimStore, clock: Callable[[], datetime], log
    ) -> None:
        self._settings = settings
        self._s3 = s3
        self._emr = emr
        self._sns = sns
        self._claims = claims
        self._clock = clock
        self._log = log
        self._slots: dict[str, ClusterSlots] = {}
        self._step_names: dict[str, set[str]] = {}
        # Transient mode: the stack's cluster found (or launched) by this invocation, so later batches join it.
        self._transient_cluster_id: str | None = None
        self._transient_cluster_searched = False

    # --- new uploads ----------------------------------------------------------------------------------------------

    def submit(self, group: UploadGroup) -> GroupOutcome:
        """Claim the group's uploads and submit a step for those claimed. Raises :class:`BatchNotSubmitted`,
        :class:`UnusableUserManifest` or a botocore error when nothing was submitted (and then holds no claim)."""
        now = self._clock()
        batch_id = runs.new_batch_id(now)
        user_objects = self._user_manifest_objects(group) if group.kind is UploadKind.MANIFEST else None
        slots = self._target_cluster()
        if slots is not None:
            self._check_accepting(slots)

        result = self._claims.claim(
            group.uploads, batch_id=batch_id, message_ids_by_upload=group.message_ids_by_upload, now=now
        )
        claimed = list(result.claimed)
        messages_to_retry: set[str] = set()
        if result.owned_elsewhere:
            taken_over, messages_to_retry = self._resolve_owned(result.owned_elsewhere, group, batch_id, slots, now)
            claimed += taken_over
        if not claimed:
            return GroupOutcome(batch=None, cluster_id=None, messages_to_retry=frozenset(messages_to_retry))

        claimed_set = set(claimed)
        uploads = tuple(upload for upload in group.uploads if upload in claimed_set)  # the group's order
        batch = Batch(
            batch_id=batch_id,
            kind=group.kind,
            uploads=uploads,
            message_ids=frozenset().union(*(group.message_ids_by_upload[upload] for upload in uploads)),
        )
        cluster_id = self._submit_new_batch(batch, user_objects, slots)
        return GroupOutcome(batch=batch, cluster_id=cluster_id, messages_to_retry=frozenset(messages_to_retry))

    def _submit_new_batch(self, batch: Batch, user_objects: list[str] | None, slots: ClusterSlots | None) -> str:
        settings = self._settings
        manifest_key = runs.manifest_key(settings.manifests_prefix, batch.batch_id)
        objects = user_objects or [f"s3://{upload.bucket}/{key}" for key, upload in _by_key(batch.uploads).items()]
        try:
            self._s3.put_object(
                Bucket=settings.data_bucket,
                Key=manifest_key,
                Body=json.dumps({"batch_id": batch.batch_id, "objects": objects}).encode(),
                ContentType="application/json",
            )
            step = self._build_step(batch.batch_id, attempt=1)
        except Exception:
            self._claims.release(batch.uploads, batch_id=batch.batch_id)
            raise
        try:
            cluster_id = self._add_step(slots, step)
        except (ClientError, ParamValidationError, ValueError):
            # EMR answered with a refusal, or the request was never sent (a bad cluster definition, which this function
            # or botocore's parameter validation refuses): the step was not accepted, so remove its manifest and
            # release the claims for the redelivered messages. Any other error (a timeout, a dropped connection) leaves
            # it unknown whether EMR accepted the step: manifest and claims stay, and the redelivery finds the step by
            # name or waits out the lease.
            self._s3.delete_object(Bucket=settings.data_bucket, Key=manifest_key)
            self._claims.release(batch.uploads, batch_id=batch.batch_id)
            raise
        self._claims.record_submission(
            batch_id=batch.batch_id,
            step_name=step["Name"],
            cluster_id=cluster_id,
            manifest_key=manifest_key,
            now=self._clock(),
        )
        self._log.info(
            "Step submitted",
            extra={
                "batch_id": batch.batch_id,
                "step_name": step["Name"],
                "cluster_id": cluster_id,
                "manifest_key": manifest_key,
                "uploads": len(batch.uploads),
                "objects": len(objects),
            },
        )
        return cluster_id

    def _resolve_owned(
        self,
        owned: dict[Upload, UploadClaim],
        group: UploadGroup,
        batch_id: str,
        slots: ClusterSlots | None,
        now: datetime,
    ) -> tuple[list[Upload], set[str]]:
        """Sort uploads another batch claimed into duplicates (dropped), claims in flight (their messages retried) and
        expired claims (taken over for ``batch_id``); return the uploads taken over and the messages to retry."""
        by_owner: dict[str, dict[Upload, UploadClaim]] = {}
        for upload, claim in owned.items():
            by_owner.setdefault(claim.batch_id, {})[upload] = claim
        expired: dict[Upload, UploadClaim] = {}
        messages_to_retry: set[str] = set()
        for owner, claims in sorted(by_owner.items()):
            record = self._claims.batch(owner)
            if record is not None:
                self._log_dropped(owner, claims, f"the batch is {record.state.value} (attempt {record.attempt})")
                continue
            leased = {upload for upload, claim in claims.items() if now < claim.lease_until}
            # Messages of this invocation that the live claim names: if its invocation died, only they bring the upload
            # back, so they must not be reported as processed.
            named = {upload: group.message_ids_by_upload[upload] & claims[upload].message_ids for upload in leased}
            waiting = {upload for upload in leased if named[upload]}
            expired_here = {upload: claim for upload, claim in claims.items() if upload not in leased}
            if waiting or expired_here:
                first_step_name = runs.step_name(self._settings.step_name_prefix, owner, 1)
                if slots is not None and first_step_name in self._step_names_on(slots.cluster_id):
                    self._claims.record_submission(
                        batch_id=owner,
                        step_name=first_step_name,
                        cluster_id=slots.cluster_id,
                        manifest_key=runs.manifest_key(self._settings.manifests_prefix, owner),
                        now=now,
                    )
                    self._log_dropped(owner, claims, f"its step was found on cluster {slots.cluster_id}, recorded now")
                    continue
            if leased - waiting:
                self._log_dropped(
                    owner, leased - waiting, "the batch is being submitted; the messages its claims name carry them"
                )
            if waiting:
                messages_to_retry |= frozenset().union(*(named[upload] for upload in waiting))
                self._log.warning(
                    "Uploads claimed by a batch in flight; their messages will come back after its lease",
                    extra={"batch_id": owner, "uploads": len(waiting), "keys": _some_keys(waiting)},
                )
            expired.update(expired_here)
        if not expired:
            return [], messages_to_retry
        self._log.warning(
            "Taking over expired claims",
            extra={"batch_id": batch_id, "from_batches": sorted({c.batch_id for c in expired.values()}),
                   "uploads": len(expired), "keys": _some_keys(expired)},
        )  # fmt: skip
        result = self._claims.take_over(
            expired, batch_id=batch_id, message_ids_by_upload=group.message_ids_by_upload, now=now
        )
        # Lost to another invocation taking the same claims over this moment: come back and find its batch.
        for upload in result.owned_elsewhere:
            messages_to_retry |= group.message_ids_by_upload[upload]
        return list(result.claimed), messages_to_retry

    def _log_dropped(self, owner: str, uploads, why: str) -> None:
        self._log.info(
            "Duplicate uploads dropped",
            extra={"batch_id": owner, "uploads": len(uploads), "keys": _some_keys(uploads), "reason": why},
        )

    def _user_manifest_objects(self, group: UploadGroup) -> list[str]:
        key = group.uploads[0].key
        try:
            body = self._s3.get_object(Bucket=self._settings.data_bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response["Error"]["Code"] == "NoSuchKey":
                raise UnusableUserManifest(f"manifest {key!r} was deleted before it could be read") from None
            raise
        return user_manifest_objects(body, key=key)

    # --- cancelled or interrupted steps -----------------------------------------------------------------------------

    def retry(self, event: StepEnded) -> None:
        """Run the batch of a cancelled or interrupted step again, or report it once it used every attempt.

        Raises :class:`BatchNotSubmitted` or a botocore error when the retry must wait (SQS redelivers the event)."""
        record = self._claims.batch(event.batch_id)
        context = {"batch_id": event.batch_id, "attempt": event.attempt, "state": event.state, "step_id": event.step_id}
        if record is None:
            self._log.warning("Step event for a batch that is not recorded: nothing to retry", extra=context)
            return
        if record.attempt == event.attempt and record.state is BatchState.RESUBMITTING:
            # The event proves this attempt's step existed: its invocation died before recording it.
            if self._clock() < record.lease_until:
                raise BatchInFlight(f"batch {record.batch_id} attempt {record.attempt} is being submitted right now")
            self._claims.finish_retry(record, step_name=self._step_name(record), cluster_id=event.cluster_id)
            record = self._claims.batch(event.batch_id)
        if record.attempt == event.attempt and record.state is BatchState.SUBMITTED:
            if record.attempt >= self._settings.max_step_attempts:
                self._report_given_up(record, event)
                return
            slots = self._accepting_target()
            if not self._claims.start_retry(record, now=self._clock()):
                self._log.info("Retry already started by another invocation", extra=context)
                return
            self._submit_retry(self._claims.batch(event.batch_id), slots)
            return
        if record.attempt == event.attempt + 1 and record.state is BatchState.RESUBMITTING:
            if self._clock() < record.lease_until:
                raise BatchInFlight(f"batch {record.batch_id} attempt {record.attempt} is being submitted right now")
            slots = self._accepting_target()
            name = self._step_name(record)
            if slots is not None and name in self._step_names_on(slots.cluster_id):
                self._claims.finish_retry(record, step_name=name, cluster_id=slots.cluster_id)
                return
            if self._claims.resume_retry(record, now=self._clock()):
                self._submit_retry(self._claims.batch(event.batch_id), slots)
            return
        self._log.info(
            "Step event already handled", extra={**context, "recorded_attempt": record.attempt, "recorded": record.state}
        )

    def _submit_retry(self, record: BatchRecord, slots: ClusterSlots | None) -> None:
        step = self._build_step(record.batch_id, attempt=record.attempt)
        try:
            cluster_id = self._add_step(slots, step)
        except (ClientError, ParamValidationError, ValueError):
            self._claims.undo_retry(record)
            raise
        self._claims.finish_retry(record, step_name=step["Name"], cluster_id=cluster_id)
        self._log.warning(
            "Step submitted again",
            extra={"batch_id": record.batch_id, "attempt": record.attempt, "step_name": step["Name"],
                   "cluster_id": cluster_id, "of_attempts": self._settings.max_step_attempts},
        )  # fmt: skip

    def _report_given_up(self, record: BatchRecord, event: StepEnded) -> None:
        """Publish first, then mark: a crash between the two repeats the report rather than losing it."""
        settings = self._settings
        manifest_uri = f"s3://{settings.data_bucket}/{record.manifest_key}"
        self._sns.publish(
            TopicArn=settings.notification_topic_arn,
            Subject=f"Batch {record.batch_id} not run: its step ended {event.state} {record.attempt} times",
            Message=(
                f"EMR step {self._step_name(record)} ({event.step_id}) on cluster {event.cluster_id} ended "
                f"{event.state}. It was attempt {record.attempt} of {settings.max_step_attempts} for batch "
                f"{record.batch_id}, so the batch is not submitted again. Its uploads are listed in {manifest_uri}. "
                "To run them, upload them again (a new upload is a new run), or submit a step with that manifest."
            ),
        )
        self._claims.give_up(record)
        self._log.error(
            "Batch given up", extra={"batch_id": record.batch_id, "attempts": record.attempt, "state": event.state}
        )

    def _step_name(self, record: BatchRecord) -> str:
        return runs.step_name(self._settings.step_name_prefix, record.batch_id, record.attempt)

    # --- the step -----------------------------------------------------------------------------------------------------

    def _build_step(self, batch_id: str, *, attempt: int) -> dict:
        settings = self._settings
        return emr_step.build_step(
            name=runs.step_name(settings.step_name_prefix, batch_id, attempt),
            artifacts=settings.artifacts,
            manifest_uri=f"s3://{settings.data_bucket}/{runs.manifest_key(settings.manifests_prefix, batch_id)}",
            model_uri=settings.model_uri,
            output_uri=f"s3://{settings.data_bucket}/{runs.output_key(settings.results_prefix, batch_id, attempt)}",
            options=settings.job_options,
        )

    # --- the cluster --------------------------------------------------------------------------------------------------

    def _accepting_target(self) -> ClusterSlots | None:
        slots = self._target_cluster()
        if slots is not None:
            self._check_accepting(slots)
        return slots

    def _target_cluster(self) -> ClusterSlots | None:
        """The cluster the step goes to, or None in transient mode when no cluster of this stack accepts steps."""
        if self._settings.cluster_mode is ClusterMode.PERSISTENT:
            return self._cluster_slots(self._settings.cluster_id)
        if not self._transient_cluster_searched:
            self._transient_cluster_id = self._find_stack_cluster()
            self._transient_cluster_searched = True
        return self._cluster_slots(self._transient_cluster_id) if self._transient_cluster_id else None

    def _find_stack_cluster(self) -> str | None:
        """A cluster of this stack that accepts steps and was launched from the current definition: one launched
        before a deploy that changed it is left to idle out."""
        settings = self._settings
        tags = (
            {"Key": settings.cluster_tag_key, "Value": settings.cluster_tag_value},
            {"Key": settings.cluster_definition_tag_key, "Value": settings.cluster_definition_tag_value},
        )
        for page in self._emr.get_paginator("list_clusters").paginate(ClusterStates=list(ACCEPTING_STATES)):
            for summary in page["Clusters"]:
                try:
                    cluster = self._emr.describe_cluster(ClusterId=summary["Id"])["Cluster"]
                except ClientError as error:
                    # The function may describe only clusters carrying this stack's tag: a refusal means another owner's.
                    if error.response["Error"]["Code"] == "AccessDeniedException":
                        continue
                    raise
                if all(tag in cluster.get("Tags", []) for tag in tags):
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

    def _step_names_on(self, cluster_id: str) -> set[str]:
        """Every step name on the cluster, listed once per invocation (only on the crash-recovery paths)."""
        if cluster_id not in self._step_names:
            pages = self._emr.get_paginator("list_steps").paginate(ClusterId=cluster_id)
            self._step_names[cluster_id] = {step["Name"] for page in pages for step in page["Steps"]}
        return self._step_names[cluster_id]

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
        kept_alive = request.get("Instances", {}).get("KeepJobFlowAliveWhenNoSteps", False)
        if kept_alive and not request.get("AutoTerminationPolicy", {}).get("IdleTimeout"):
            raise ValueError(
                f"{where} keeps the cluster alive without steps and has no AutoTerminationPolicy.IdleTimeout; a "
                "launched cluster must end by itself, after its steps or after an idle timeout"
            )
        tag = {"Key": settings.cluster_tag_key, "Value": settings.cluster_tag_value}
        if tag not in request.get("Tags", []):
            raise ValueError(f"{where} lacks the tag {tag}; without it later uploads cannot find the cluster")
        definition_tag = {"Key": settings.cluster_definition_tag_key, "Value": settings.cluster_definition_tag_value}
        if definition_tag not in request.get("Tags", []):
            # The deploy replaces the definition and the function's environment one after the other: refused for
            # now, the messages come back once both are the new ones.
            raise ValueError(
                f"{where} lacks the tag {definition_tag} of the definition this function was deployed with (a deploy "
                "in progress?); the uploads are retried"
            )
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


def _by_key(uploads: tuple[Upload, ...]) -> dict[str, Upload]:
    """One upload per key, keys sorted: two uploads of one key are one object in the manifest (read as it is now)."""
    return {upload.key: upload for upload in sorted(uploads, key=lambda upload: upload.key)}


def _some_keys(uploads) -> list[str]:
    return sorted(upload.key for upload in uploads)[:LOGGED_KEYS]
