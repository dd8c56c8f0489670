"""Turns groups of uploads into batches, manifests and EMR steps, and runs a batch again when its step was cancelled.

Exactly once per upload, and why it is built this way
-----------------------------------------------------
S3 events arrive at least once, SQS delivers a message at least once, and the poller may group redelivered records
differently each time, so one upload can reach this code several times, in different invocations, even at the same
moment. Whole-batch deduplication cannot catch that (the batches differ), so every upload is claimed on its own, in the
claims table (``claims.py``), under its identity (bucket, key, ETag, sequencer):

1. A group's batch gets a new id, and each upload is claimed for it with one conditional write. The batch is formed only
   from the uploads this invocation claimed; its manifest lists them.
2. Before the step is sent, the batch is recorded as *submitting*, naming the cluster it goes to ("" when a cluster
   is launched for it). Then the step is sent; once EMR accepted it, the batch is recorded as *submitted*. An upload
   claimed by a submitted batch is a duplicate: it is dropped with a log line naming the batch.
3. A claim whose batch is not submitted belongs to an invocation that is running now or that died before recording.
   The recorded cluster and every cluster of this stack created since the batch began are searched for its step by
   name: if it is there, only the record is missing and it is written now (and a step found CANCELLED or INTERRUPTED is
   retried at once). Otherwise, while the claim's lease runs (longer than any invocation can live), a message the claim
   names fails and comes back later, so a dead invocation cannot lose the upload; a message the claim does not name is
   a duplicate and is dropped, because the messages the claim names stay on the queue until their invocation ends well.
   After the lease, the claim is taken over, with a write that succeeds only if it is still that claim, and only after
   a fresh listing of the clusters' steps (one made earlier in the invocation may predate the step).
4. When EMR refused the step (or it was never sent), the claims are deleted and the messages fail, so the redelivery
   claims them again. Any other outcome leaves it unknown whether EMR accepted the step: the claims stay, and point 3
   sorts it out.

EMR's ``AddJobFlowSteps`` and ``RunJobFlow`` take no idempotency token, so botocore must never re-send them: after a
lost response EMR may have carried out the first request, and a second one adds a second step or a second cluster.
They go through a client that makes one attempt per call, and this module retries them itself, each time after
searching for the step by name. Only the errors EMR answers for a request it did not carry out (``REFUSALS``, and
throttling on every attempt) count as refusals.

Retries of cancelled steps
--------------------------
A step can end CANCELLED or INTERRUPTED without having failed itself: added to a transient cluster that was already
shutting down, or queued on a cluster whose bootstrap failed. The stack's EventBridge rule sends those events to the
queue; :meth:`StepSubmitter.retry` then submits the batch again as attempt n+1 (same manifest, its own results folder,
see ``runs.py``), at most ``MAX_STEP_ATTEMPTS`` attempts in all, and reports the batch on the SNS topic when the last one
was cancelled too. The batch record's attempt counter, changed only by conditional writes, makes a duplicated event
start one retry, not two; a retry whose invocation died is resumed after its lease, after the same search by name.
A batch an operator marked with a ``cancel#<batch id>`` item (they cancelled its step on purpose) is reported, not
retried.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

import emr_step
import runs
from claims import BatchRecord, BatchState, ClaimStore, UploadClaim
from step_events import RETRIED_STATES, StepEnded
from trigger_settings import ClusterMode, TriggerSettings
from uploads import Batch, Upload, UploadGroup, UploadKind, batch_source, latest_per_key, manifest_entry

# EMR accepts steps only in these cluster states; a cluster in any other state is ending or gone.
ACCEPTING_STATES = ("STARTING", "BOOTSTRAPPING", "RUNNING", "WAITING")
ENDED_STATES = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
# EMR's 256-step limit counts these states.
ACTIVE_STEP_STATES = ("PENDING", "RUNNING")
# A log line lists at most this many keys of the uploads it is about (a batch can have 10,000).
LOGGED_KEYS = 10
# Errors EMR answers for a request it did not carry out. Any other error (a timeout, a reset connection, a 5xx, a code
# not listed) may follow a request EMR carried out, so it is never read as a refusal.
REFUSALS = ("ValidationException", "InvalidRequestException", "AccessDeniedException")
THROTTLING = ("ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded")
# Attempts at AddJobFlowSteps/RunJobFlow, made by this module (botocore makes one per call), the same number as
# botocore's budget for every other call (handler.AWS_TOTAL_ATTEMPTS).
SUBMIT_ATTEMPTS = 5
# botocore's standard mode backs off up to 2**attempt seconds, capped at 20 s; the same here.
MAX_BACKOFF_SECONDS = 20
# A cluster launched for a batch, and the batch's step, were created after the batch's id was made; the margin covers
# clock skew. The search for a step stops listing there (ListSteps returns the newest first and has no time filter).
LAUNCH_SEARCH_MARGIN = timedelta(minutes=10)
# After a submission whose answer was lost, EMR may list the step only seconds later (final review F4): the search
# waits this long first, within the invocation's time left.
UNCLEAR_SEARCH_DELAY_SECONDS = 10
# An uploaded manifest may list at most this many characters per URI (S3 keys are at most 1,024 bytes).
MAX_MANIFEST_URI_CHARS = 1_100
MANIFEST_ENTRY_KEYS = frozenset({"uri", "etag", "version_id"})
# A persistent stack's definition keeps its cluster alive with no idle timeout. The cluster this function launches
# from it when the stack's own one ended lives outside CloudFormation: without a timeout it would run, and bill, until
# `cdk destroy`, also after a deploy gave the stack a new cluster of its own. It ends after this long without steps
# instead (the next batch launches another): about a cluster's boot, the ski-rental rule behind the stack's transient
# default (infra/settings.py, DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES). EMR allows 60 s to 7 days.
REPLACEMENT_IDLE_TIMEOUT_SECONDS = 10 * 60


class BatchNotSubmitted(Exception):
    """The batch was not submitted for a reason that may pass (cluster busy or starting over); SQS should redeliver."""


class ClusterNotAccepting(BatchNotSubmitted):
    pass


class ClusterFull(BatchNotSubmitted):
    pass


class BatchInFlight(BatchNotSubmitted):
    pass


class UnusableUserManifest(ValueError):
    """An uploaded manifest that is not a non-empty JSON list of allowed entries: redelivery cannot fix it, so it is
    reported on the topic and skipped."""


class ManifestReplaced(Exception):
    """An uploaded manifest replaced since the upload being handled: nothing is lost (the replacing upload has its own
    event), so the upload is skipped with a log line, not reported."""


class StepRefused(Exception):
    """EMR refused the step (or the request was never sent): nothing was accepted. ``error`` is EMR's answer."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class ClusterSlots:
    """What this invocation knows about a cluster: asked once, then counted locally as steps are added."""

    cluster_id: str
    state: str
    active_steps: int


@dataclass(frozen=True)
class FoundStep:
    cluster_id: str
    step_id: str
    state: str


@dataclass(frozen=True)
class ListedSteps:
    """A cluster's steps by name, listed newest first down to the first step created before ``since``."""

    since: datetime
    by_name: dict[str, FoundStep]


@dataclass(frozen=True)
class GroupOutcome:
    """What became of a group: the batch submitted for it (None when another batch owns every upload), and the
    messages that must come back later because they carry uploads whose claim is held by a live invocation."""

    batch: Batch | None
    cluster_id: str | None
    messages_to_retry: frozenset[str]


class StepSubmitter:
    """Submits the batches of one invocation; create one per invocation (it caches cluster state for that long only).

    ``emr`` is the function's EMR client (botocore retries its calls); ``emr_submit`` makes one attempt per call and
    serves only AddJobFlowSteps and RunJobFlow, which this class retries itself after searching for the step.
    ``seconds_left`` says how long this invocation may still wait and send new attempts (seconds; the handler's is the
    Lambda's remaining time less a margin for the work in flight): back-off and the wait before a search never go past
    it, and no attempt is sent once it has run out (final review F2).
    """

    def __init__(
        self,
        *,
        settings: TriggerSettings,
        s3,
        emr,
        emr_submit,
        sns,
        claims: ClaimStore,
        clock: Callable[[], datetime],
        log,
        seconds_left: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._s3 = s3
        self._emr = emr
        self._emr_submit = emr_submit
        self._sns = sns
        self._claims = claims
        self._clock = clock
        self._log = log
        self._seconds_left = seconds_left
        # Written into a resubmission's lease, so that a retried conditional update recognises its own write.
        self._token = secrets.token_hex(8)
        self._slots: dict[str, ClusterSlots] = {}
        self._steps: dict[str, ListedSteps] = {}
        # The stack's cluster found (or launched) by this invocation when steps may go to any cluster of the stack.
        self._launched_cluster_id: str | None = None
        self._stack_cluster_searched = False

    # --- new uploads ----------------------------------------------------------------------------------------------

    def submit(self, group: UploadGroup) -> GroupOutcome:
        """Claim the group's uploads and submit a step for those claimed. Raises :class:`BatchNotSubmitted`,
        :class:`UnusableUserManifest` or a botocore error when nothing was submitted (and then holds no claim)."""
        now = self._clock()
        batch_id = runs.new_batch_id(now)
        user_objects, declared_source = (
            self._user_manifest_objects(group) if group.kind is UploadKind.MANIFEST else (None, None)
        )
        slots = self._accepting_target()

        result = self._claims.claim(
            group.uploads, batch_id=batch_id, message_ids_by_upload=group.message_ids_by_upload, now=now
        )
        claimed = list(result.claimed)
        messages_to_retry: set[str] = set()
        if result.owned_elsewhere:
            taken_over, messages_to_retry = self._resolve_owned(result.owned_elsewhere, group, batch_id, now)
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
        cluster_id = self._submit_new_batch(batch, user_objects, slots, declared_source)
        return GroupOutcome(batch=batch, cluster_id=cluster_id, messages_to_retry=frozenset(messages_to_retry))

    def _submit_new_batch(
        self, batch: Batch, user_objects: list | None, slots: ClusterSlots | None, declared_source: object = None
    ) -> str:
        settings = self._settings
        manifest_key = runs.manifest_key(settings.manifests_prefix, batch.batch_id)
        objects = user_objects or [manifest_entry(upload) for upload in latest_per_key(batch.uploads)]
        try:
            self._s3.put_object(
                Bucket=settings.data_bucket,
                Key=manifest_key,
                Body=json.dumps(
                    {
                        "batch_id": batch.batch_id,
                        "objects": objects,
                        "source": batch_source(batch.kind, batch.uploads, declared_source),
                    }
                ).encode(),
                ContentType="application/json",
            )
            step = self._build_step(batch.batch_id, attempt=1, image_count=len(objects))
            self._claims.record_intent(
                batch_id=batch.batch_id,
                step_name=step["Name"],
                cluster_id=slots.cluster_id if slots is not None else "",
                manifest_key=manifest_key,
                image_count=len(objects),
                now=self._clock(),
            )
        except Exception:
            self._claims.release(batch.uploads, batch_id=batch.batch_id)
            raise
        try:
            cluster_id = self._add_step(slots, step, batch_id=batch.batch_id)
        except StepRefused as refused:
            # EMR answered with a refusal, or the request was never sent (a bad cluster definition, which this function
            # or botocore's parameter validation refuses): the step was not accepted, so remove its manifest and
            # release the claims for the redelivered messages. Any other error leaves it unknown whether EMR accepted
            # the step: manifest, record and claims stay, and the redelivery searches for the step or waits out the
            # lease.
            self._s3.delete_object(Bucket=settings.data_bucket, Key=manifest_key)
            self._claims.release(batch.uploads, batch_id=batch.batch_id)
            self._claims.forget_intent(batch.batch_id)
            raise refused.error from None
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
        self, owned: dict[Upload, UploadClaim], group: UploadGroup, batch_id: str, now: datetime
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
            if record is not None and record.state is not BatchState.SUBMITTING:
                self._log_dropped(owner, claims, f"the batch is {record.state.value} (attempt {record.attempt})")
                continue
            leased = {upload for upload, claim in claims.items() if now < claim.lease_until}
            # Messages of this invocation that the live claim names: if its invocation died, only they bring the upload
            # back, so they must not be reported as processed.
            named = {upload: group.message_ids_by_upload[upload] & claims[upload].message_ids for upload in leased}
            waiting = {upload for upload in leased if named[upload]}
            expired_here = {upload: claim for upload, claim in claims.items() if upload not in leased}
            if waiting or expired_here:
                # Listed afresh before a takeover: a listing cached earlier in this invocation may predate the step
                # (final review F3), and a takeover on a stale listing sends the batch's uploads a second time.
                found = self._find_step(
                    runs.step_name(self._settings.step_name_prefix, owner, 1),
                    batch_id=owner,
                    recorded_cluster_id=record.cluster_id if record is not None else "",
                    fresh=bool(expired_here),
                )
                if found is not None:
                    self._claims.record_submission(
                        batch_id=owner,
                        step_name=runs.step_name(self._settings.step_name_prefix, owner, 1),
                        cluster_id=found.cluster_id,
                        manifest_key=runs.manifest_key(self._settings.manifests_prefix, owner),
                        now=now,
                    )
                    self._log_dropped(owner, claims, f"its step was found on cluster {found.cluster_id}, recorded now")
                    if found.state in RETRIED_STATES:
                        self._retry_found_step(owner, found)
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

    def _retry_found_step(self, batch_id: str, found: FoundStep) -> None:
        """A step found by crash recovery already ended cancelled or interrupted: its event may have come while the
        batch was not recorded, so the retry starts here. If it cannot start now, the step's event (which fails until
        it can) starts it."""
        event = StepEnded(
            batch_id=batch_id, attempt=1, state=found.state, step_id=found.step_id, cluster_id=found.cluster_id
        )
        try:
            self.retry(event)
        except Exception as error:  # the event's own delivery retries it
            self._log.warning(
                "Retry of a cancelled step found by crash recovery not started; its step event will start it",
                extra={"batch_id": batch_id, "reason": f"{type(error).__name__}: {error}"},
            )

    def _log_dropped(self, owner: str, uploads, why: str) -> None:
        self._log.info(
            "Duplicate uploads dropped",
            extra={"batch_id": owner, "uploads": len(uploads), "keys": _some_keys(uploads), "reason": why},
        )

    def _user_manifest_objects(self, group: UploadGroup) -> tuple[list, object]:
        """The uploaded manifest's entries, and its own "source" (what `infra.submit_run` declares), if any."""
        (upload,) = latest_per_key(group.uploads)  # a manifest's group holds uploads of one key: read the latest
        key = upload.key
        # The manifest as it was uploaded, not as it is now (final review F5): a manifest replaced since this upload
        # is refused (412), and the replacing upload runs on its own event.
        condition = {"IfMatch": upload.etag} if upload.etag else {}
        try:
            body = self._s3.get_object(Bucket=self._settings.data_bucket, Key=key, **condition)["Body"].read()
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "NoSuchKey":
                raise UnusableUserManifest(f"manifest {key!r} was deleted before it could be read") from None
            if code in ("PreconditionFailed", "412"):
                raise ManifestReplaced(
                    f"manifest {key!r} was replaced after the upload with ETag {upload.etag}; the newer upload runs "
                    "on its own event"
                ) from None
            raise
        settings = self._settings
        return read_user_manifest(
            body,
            key=key,
            bucket=settings.data_bucket,
            allowed_prefixes=(settings.incoming_prefix, settings.staged_prefix),
            input_locations=settings.input_locations,
        )

    def report_unusable_manifest(self, key: str, reason: str) -> None:
        """Tell the uploader why their manifest will not run (reliability review #21): redelivery cannot fix it."""
        self._sns.publish(
            TopicArn=self._settings.notification_topic_arn,
            Subject="Uploaded manifest not run",
            Message=(
                f"The manifest s3://{self._settings.data_bucket}/{key} was not run: {reason}. Nothing was submitted "
                "for it. Upload a corrected manifest (a new upload is a new run)."
            ),
        )

    # --- cancelled or interrupted steps -----------------------------------------------------------------------------

    def retry(self, event: StepEnded) -> None:
        """Run the batch of a cancelled or interrupted step again, or report it once it used every attempt.

        Raises :class:`BatchNotSubmitted` or a botocore error when the retry must wait (SQS redelivers the event)."""
        record = self._claims.batch(event.batch_id)
        context = {"batch_id": event.batch_id, "attempt": event.attempt, "state": event.state, "step_id": event.step_id}
        if record is None:
            # A batch recorded before this function wrote a record ahead of each step: its invocation may still be
            # about to record it, while its claims' lease runs. Wait that long rather than drop the only event.
            if event.time is not None and self._clock() < event.time + self._claims.lease:
                raise BatchInFlight(f"batch {event.batch_id} is not recorded yet; its claims may still be live")
            self._log.warning("Step event for a batch that is not recorded: nothing to retry", extra=context)
            return
        if record.state is BatchState.SUBMITTING and event.attempt == 1:
            # The event proves EMR took the first step: its invocation has not recorded it yet, or died first.
            self._claims.record_submission(
                batch_id=record.batch_id,
                step_name=self._step_name(record),
                cluster_id=event.cluster_id or record.cluster_id,
                manifest_key=record.manifest_key,
                now=self._clock(),
            )
            record = self._claims.batch(event.batch_id)
        if record.attempt == event.attempt and record.state is BatchState.RESUBMITTING:
            # The event proves this attempt's step existed: its invocation died before recording it.
            if self._clock() < record.lease_until:
                raise BatchInFlight(f"batch {record.batch_id} attempt {record.attempt} is being submitted right now")
            self._claims.finish_retry(record, step_name=self._step_name(record), cluster_id=event.cluster_id)
            record = self._claims.batch(event.batch_id)
        if record.attempt == event.attempt and record.state is BatchState.SUBMITTED:
            if self._claims.operator_cancelled(record.batch_id):
                self._report_given_up(record, event, operator_cancelled=True)
                return
            if record.attempt >= self._settings.max_step_attempts:
                self._report_given_up(record, event)
                return
            slots = self._accepting_target()
            if not self._claims.start_retry(record, now=self._clock(), token=self._token,
                                            cluster_id=slots.cluster_id if slots else ""):
                self._log.info("Retry already started by another invocation", extra=context)
                return
            self._submit_retry(self._claims.batch(event.batch_id), slots)
            return
        if record.attempt == event.attempt + 1 and record.state is BatchState.RESUBMITTING:
            if self._clock() < record.lease_until:
                raise BatchInFlight(f"batch {record.batch_id} attempt {record.attempt} is being submitted right now")
            slots = self._accepting_target()
            name = self._step_name(record)
            # Listed afresh, as before a takeover (final review F3): the resumed attempt must not be sent twice.
            found = self._find_step(name, batch_id=record.batch_id, recorded_cluster_id=record.cluster_id, fresh=True)
            if found is not None:
                self._claims.finish_retry(record, step_name=name, cluster_id=found.cluster_id)
                return
            if self._claims.resume_retry(record, now=self._clock(), token=self._token,
                                         cluster_id=slots.cluster_id if slots else ""):
                self._submit_retry(self._claims.batch(event.batch_id), slots)
            return
        self._log.info(
            "Step event already handled", extra={**context, "recorded_attempt": record.attempt, "recorded": record.state}
        )

    def _submit_retry(self, record: BatchRecord, slots: ClusterSlots | None) -> None:
        step = self._build_step(record.batch_id, attempt=record.attempt, image_count=record.image_count)
        try:
            cluster_id = self._add_step(slots, step, batch_id=record.batch_id)
        except StepRefused as refused:
            self._claims.undo_retry(record)
            raise refused.error from None
        self._claims.finish_retry(record, step_name=step["Name"], cluster_id=cluster_id)
        self._log.warning(
            "Step submitted again",
            extra={"batch_id": record.batch_id, "attempt": record.attempt, "step_name": step["Name"],
                   "cluster_id": cluster_id, "of_attempts": self._settings.max_step_attempts},
        )  # fmt: skip

    def _report_given_up(self, record: BatchRecord, event: StepEnded, *, operator_cancelled: bool = False) -> None:
        """Publish first, then mark: a crash between the two repeats the report rather than losing it."""
        settings = self._settings
        manifest_uri = f"s3://{settings.data_bucket}/{record.manifest_key}"
        step = f"EMR step {self._step_name(record)} ({event.step_id}) on cluster {event.cluster_id}"
        if operator_cancelled:
            subject = f"Batch {record.batch_id} not run: its step was cancelled by an operator"
            why = (
                f"{step} ended {event.state}, and the batch carries an operator's cancel mark "
                f"(item cancel#{record.batch_id} in the claims table), so it is not submitted again."
            )
        else:
            subject = f"Batch {record.batch_id} not run: its step ended {event.state} {record.attempt} times"
            why = (
                f"{step} ended {event.state}. It was attempt {record.attempt} of {settings.max_step_attempts} for "
                f"batch {record.batch_id}, so the batch is not submitted again."
            )
        self._sns.publish(
            TopicArn=settings.notification_topic_arn,
            Subject=subject,
            Message=(
                f"{why} Its uploads are listed in {manifest_uri}. To run them, upload them again (a new upload is a "
                "new run), or submit a step with that manifest."
            ),
        )
        self._claims.give_up(record)
        self._log.error(
            "Batch given up",
            extra={"batch_id": record.batch_id, "attempts": record.attempt, "state": event.state,
                   "operator_cancelled": operator_cancelled},
        )  # fmt: skip

    def _step_name(self, record: BatchRecord) -> str:
        return runs.step_name(self._settings.step_name_prefix, record.batch_id, record.attempt)

    # --- the step -----------------------------------------------------------------------------------------------------

    def _build_step(self, batch_id: str, *, attempt: int, image_count: int | None) -> dict:
        """The step of a batch whose manifest lists ``image_count`` images (None: unknown, no executor cap)."""
        settings = self._settings
        record_key = runs.run_record_key(settings.runs_prefix, batch_id, attempt)
        return emr_step.build_step(
            name=runs.step_name(settings.step_name_prefix, batch_id, attempt),
            artifacts=settings.artifacts,
            manifest_uri=f"s3://{settings.data_bucket}/{runs.manifest_key(settings.manifests_prefix, batch_id)}",
            model_uri=settings.model_uri,
            output_uri=f"s3://{settings.data_bucket}/{runs.output_key(settings.results_prefix, batch_id, attempt)}",
            run_record_uri=f"s3://{settings.data_bucket}/{record_key}",
            options=settings.job_options,
            image_count=image_count,
        )

    # --- the cluster --------------------------------------------------------------------------------------------------

    def _accepting_target(self) -> ClusterSlots | None:
        """The cluster the next step goes to (checked: accepting, not full), or None when one must be launched."""
        slots = self._target_cluster()
        if slots is not None:
            self._check_accepting(slots)
        return slots

    def _target_cluster(self) -> ClusterSlots | None:
        settings = self._settings
        if settings.cluster_mode is ClusterMode.PERSISTENT:
            slots = self._cluster_slots(settings.cluster_id)
            if slots.state in ACCEPTING_STATES or not settings.job_flow_definition_key:
                return slots
            # The stack's own cluster ended (an unchanged deploy would not bring it back): like transient mode, a
            # running cluster launched from the current definition, or a new one (aws-validity-review-2 #10).
            if not self._stack_cluster_searched:
                self._log.warning(
                    "The stack's cluster does not accept steps; using or launching one from the definition",
                    extra={"cluster_id": settings.cluster_id, "state": slots.state},
                )
        if not self._stack_cluster_searched:
            self._launched_cluster_id = self._find_stack_cluster()
            self._stack_cluster_searched = True
        return self._cluster_slots(self._launched_cluster_id) if self._launched_cluster_id else None

    def _stack_cluster_summaries(self, states, created_after: datetime | None = None):
        """ListClusters summaries whose name is one of this stack's (``CLUSTER_NAME_PREFIX``): no other team's cluster
        is described (reliability review #18)."""
        prefix = self._settings.cluster_name_prefix
        arguments = {"ClusterStates": list(states)}
        if created_after is not None:
            arguments["CreatedAfter"] = created_after
        for page in self._emr.get_paginator("list_clusters").paginate(**arguments):
            for summary in page["Clusters"]:
                if prefix is None or summary.get("Name", "").startswith(prefix):
                    yield summary

    def _find_stack_cluster(self) -> str | None:
        """A cluster of this stack that accepts steps and was launched from the current definition: one launched
        before a deploy that changed it is left to idle out."""
        settings = self._settings
        tags = (
            {"Key": settings.cluster_tag_key, "Value": settings.cluster_tag_value},
            {"Key": settings.cluster_definition_tag_key, "Value": settings.cluster_definition_tag_value},
        )
        for summary in self._stack_cluster_summaries(ACCEPTING_STATES):
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

    def _steps_on(self, cluster_id: str, *, since: datetime, fresh: bool = False) -> dict[str, FoundStep]:
        """The cluster's steps created since ``since`` (and the rest of the page that reaches it) by name, listed once
        per invocation unless ``fresh`` (a takeover, a resumed retry, the search after an unanswered AddJobFlowSteps or
        RunJobFlow) or an older ``since`` is asked for.

        ListSteps returns the newest step first and takes no time filter (its parameters are ClusterId, StepStates,
        StepIds and Marker): the listing stops at the first page that reaches a step created before ``since``, instead
        of paging through a long-lived cluster's whole history (final review F2)."""
        listed = self._steps.get(cluster_id)
        if fresh or listed is None or since < listed.since:
            by_name: dict[str, FoundStep] = {}
            for page in self._emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
                for step in page["Steps"]:
                    by_name[step["Name"]] = FoundStep(
                        cluster_id=cluster_id, step_id=step["Id"], state=step["Status"]["State"]
                    )
                oldest = page["Steps"][-1]["Status"] if page["Steps"] else {}
                created = oldest.get("Timeline", {}).get("CreationDateTime")
                if created is not None and created < since:
                    break
            listed = self._steps[cluster_id] = ListedSteps(since=since, by_name=by_name)
        return listed.by_name

    def _find_step(
        self, step_name: str, *, batch_id: str, recorded_cluster_id: str, fresh: bool = False
    ) -> FoundStep | None:
        """The step named ``step_name`` on the cluster recorded for the batch, the persistent cluster, or any cluster
        of this stack created since the batch began (whatever its definition tag or state): after a deploy or a crash
        the step may be on a cluster this invocation would no longer choose (reliability review #5)."""
        settings = self._settings
        candidates = [cluster_id for cluster_id in (recorded_cluster_id, settings.cluster_id) if cluster_id]
        since = runs.batch_time(batch_id) - LAUNCH_SEARCH_MARGIN
        # Only a function that may launch clusters can have put the step on another one (and only it may list them).
        if settings.job_flow_definition_key and settings.cluster_name_prefix is not None:
            all_states = ACCEPTING_STATES + ENDED_STATES
            candidates += [summary["Id"] for summary in self._stack_cluster_summaries(all_states, created_after=since)]
        for cluster_id in dict.fromkeys(candidates):
            try:
                found = self._steps_on(cluster_id, since=since, fresh=fresh).get(step_name)
            except ClientError as error:
                # Named like the stack's clusters but not tagged as one: the function may not list its steps.
                if error.response["Error"]["Code"] == "AccessDeniedException":
                    continue
                raise
            if found is not None:
                return found
        return None

    def _add_step(self, slots: ClusterSlots | None, step: dict, *, batch_id: str) -> str:
        """Add ``step`` to the target cluster, or launch a cluster running it; return the cluster id.

        Each call is one attempt (``emr_submit``); after an answer that leaves it unknown whether EMR carried out the
        request, the step is searched for by name before any further attempt. No attempt starts when its back-off
        would reach past the invocation's time left. Raises :class:`StepRefused` when EMR carried out no attempt, or
        the last unclear error when the step was not found.
        """
        try:
            request = self._job_flow_request() if slots is None else None
        except ValueError as error:
            raise StepRefused(error) from None
        unclear: Exception | None = None
        throttled: Exception | None = None
        searched = False  # searched for the step since the last attempt
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            if attempt > 1:
                if unclear is not None:
                    if (found := self._found_after_unclear(slots, step, batch_id)) is not None:
                        return found
                    searched = True
                backoff = random.uniform(0, min(MAX_BACKOFF_SECONDS, 2 ** (attempt - 1)))
                if backoff >= self._seconds_left():
                    self._log.warning(
                        "No time left in this invocation for another step submission",
                        extra={"step_name": step["Name"], "attempts": attempt - 1},
                    )
                    break
                pause(backoff)
            searched = False
            try:
                return self._send_step(slots, step, request)
            except ParamValidationError as error:
                raise StepRefused(error) from None  # never sent
            except ClientError as error:
                code = error.response.get("Error", {}).get("Code", "")
                if code in THROTTLING:
                    throttled = error
                    continue
                if code in REFUSALS and unclear is None:
                    raise StepRefused(error) from None
                if code in REFUSALS:
                    break  # an earlier attempt may have been carried out: search once more, then leave it unclear
                unclear = error
            except BotoCoreError as error:  # read timeout, reset connection: EMR may have carried it out
                unclear = error
            self._log.warning(
                "EMR's answer to a step submission was lost; searching for the step before trying again",
                extra={"step_name": step["Name"], "attempt": attempt, "reason": f"{type(unclear).__name__}: {unclear}"},
            )
        if unclear is None:
            raise StepRefused(throttled) from None  # throttled on every attempt (or no time left): nothing carried out
        if not searched and (found := self._found_after_unclear(slots, step, batch_id)) is not None:
            return found
        raise unclear

    def _found_after_unclear(self, slots: ClusterSlots | None, step: dict, batch_id: str) -> str | None:
        """The cluster id when an attempt whose answer was lost did add the step (or launch its cluster); searched for
        after ``UNCLEAR_SEARCH_DELAY_SECONDS`` (or the time left, if shorter), so that EMR lists a step it added."""
        pause(max(0.0, min(UNCLEAR_SEARCH_DELAY_SECONDS, self._seconds_left())))
        found = self._find_step(
            step["Name"], batch_id=batch_id, recorded_cluster_id=slots.cluster_id if slots else "", fresh=True
        )
        if found is None:
            return None
        self._log.warning(
            "A step submission whose answer was lost had been carried out; not sent again",
            extra={"step_name": step["Name"], "cluster_id": found.cluster_id},
        )
        self._count_step(slots, found.cluster_id)
        return found.cluster_id

    def _send_step(self, slots: ClusterSlots | None, step: dict, request: dict | None) -> str:
        if slots is None:
            cluster_id = self._emr_submit.run_job_flow(**request, Steps=[step])["JobFlowId"]
        else:
            self._emr_submit.add_job_flow_steps(JobFlowId=slots.cluster_id, Steps=[step])
            cluster_id = slots.cluster_id
        self._count_step(slots, cluster_id)
        return cluster_id

    def _count_step(self, slots: ClusterSlots | None, cluster_id: str) -> None:
        if slots is None:  # a launched cluster: later batches of this invocation join it
            self._launched_cluster_id = cluster_id
            self._stack_cluster_searched = True
            self._slots[cluster_id] = ClusterSlots(cluster_id=cluster_id, state="STARTING", active_steps=1)
        else:
            slots.active_steps += 1

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
            if settings.cluster_mode is ClusterMode.PERSISTENT:
                # The persistent cluster's own definition (review 2, #10): its replacement ends by itself.
                request = {**request, "AutoTerminationPolicy": {"IdleTimeout": REPLACEMENT_IDLE_TIMEOUT_SECONDS}}
            else:
                raise ValueError(
                    f"{where} keeps the cluster alive without steps and has no AutoTerminationPolicy.IdleTimeout; a "
                    "launched cluster must end by itself, after its steps or after an idle timeout"
                )
        prefix = settings.cluster_name_prefix
        if prefix is not None and not str(request.get("Name", "")).startswith(prefix):
            raise ValueError(
                f"{where} names the cluster {request.get('Name')!r}, which does not start with {prefix!r}; the "
                "function finds the stack's clusters by that name (CLUSTER_NAME_PREFIX)"
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


def user_manifest_objects(
    body: bytes, *, key: str, bucket: str, allowed_prefixes: tuple[str, ...], input_locations: tuple[str, ...] = ()
) -> list:
    """The entries of an uploaded manifest (see :func:`read_user_manifest`)."""
    return read_user_manifest(
        body, key=key, bucket=bucket, allowed_prefixes=allowed_prefixes, input_locations=input_locations
    )[0]


def read_user_manifest(
    body: bytes, *, key: str, bucket: str, allowed_prefixes: tuple[str, ...], input_locations: tuple[str, ...] = ()
) -> tuple[list, object]:
    """The entries of an uploaded manifest (a JSON list, or an object whose "objects" is that list) and its declared
    "source" (None when it has none).

    Each entry is an ``s3://`` URI string or an object ``{"uri": ..., "etag": ..., "version_id": ...}`` (etag and
    version_id optional strings), and each URI must name an object of the data ``bucket`` under one of
    ``allowed_prefixes`` (the incoming and staged prefixes), with no empty, ``.`` or ``..`` path segment: a manifest
    may not make the nodes read what the uploader could not upload (reliability review #10), or under one of the
    ``input_locations`` ("s3://bucket/prefix/", the stack's read-only input locations, which the nodes may read).
    """
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnusableUserManifest(f"manifest {key!r} is not JSON ({error})") from None
    objects = document.get("objects") if isinstance(document, dict) else document
    if not isinstance(objects, list) or not objects:
        raise UnusableUserManifest(f'manifest {key!r} must be a non-empty JSON list of URIs or {{"objects": [...]}}')
    allowed = ", ".join([f"s3://{bucket}/{prefix}" for prefix in allowed_prefixes] + list(input_locations))
    for index, entry in enumerate(objects):
        problem = _manifest_entry_problem(
            entry, bucket=bucket, allowed_prefixes=allowed_prefixes, input_locations=input_locations
        )
        if problem is not None:
            raise UnusableUserManifest(
                f"manifest {key!r} entry {index} {problem}; every entry must be an s3:// URI (or an object with "
                f'"uri" and optional "etag", "version_id") under {allowed}'
            )
    return objects, document.get("source") if isinstance(document, dict) else None


def _manifest_entry_problem(
    entry, *, bucket: str, allowed_prefixes: tuple[str, ...], input_locations: tuple[str, ...] = ()
) -> str | None:
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - MANIFEST_ENTRY_KEYS)
        if unknown:
            return f"has unknown fields {unknown}"
        if any(not isinstance(entry.get(name, ""), str) for name in ("etag", "version_id")):
            return "has an etag or version_id that is not a string"
        entry = entry.get("uri")
    if not isinstance(entry, str):
        return f"is a {type(entry).__name__}, not a URI"
    shown = repr(entry[:200])
    if len(entry) > MAX_MANIFEST_URI_CHARS:
        return f"({shown}...) is longer than {MAX_MANIFEST_URI_CHARS} characters"
    # An input location's object: its key from the bucket on (the location's prefix has no '.' or '..' segment). The
    # data bucket is judged by its own prefixes alone, even if an input location names it (its models, artifacts and
    # results are never inputs).
    bucket_prefix = f"s3://{bucket}/"
    location = next((location for location in input_locations if entry.startswith(location)), None)
    if location is not None and not entry.startswith(bucket_prefix):
        object_key = entry[len("s3://") :].partition("/")[2]
    elif not entry.startswith(bucket_prefix):
        return f"({shown}) is not in the data bucket or an input location"
    else:
        object_key = entry[len(bucket_prefix) :]
        if not object_key.startswith(tuple(allowed_prefixes)):
            return f"({shown}) is outside the allowed prefixes"
    if any(segment in ("", ".", "..") for segment in object_key.split("/")):
        return f"({shown}) has an empty, '.' or '..' path segment"
    return None


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def pause(seconds: float) -> None:
    """Back off between two attempts at a step submission, or wait before searching for a step whose submission was
    not answered (a module function, so tests can skip the wait)."""
    time.sleep(seconds)


def _some_keys(uploads) -> list[str]:
    return sorted(upload.key for upload in uploads)[:LOGGED_KEYS]
