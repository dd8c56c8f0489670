"""The trigger Lambda: SQS messages carrying S3 upload events -> one manifest and one EMR step per batch of uploads;
and messages carrying EMR step events -> the batch of a cancelled or interrupted step submitted again.

Entry point: ``handler.lambda_handler``. The function's folder is its code root, so siblings import as top-level modules.

Failure policy, per SQS record (reported through Powertools' partial batch response):
- a record whose uploads belong to a batch that could not be submitted (cluster full or not accepting steps, an API error
  left after botocore's retries), or that carries an upload whose claim a live invocation holds and names this record,
  fails, so SQS delivers it again after the visibility timeout, and after the queue's maximum receive count it lands in
  the dead-letter queue. A record failed for a reason that passes soon (:class:`submitter.BatchNotSubmitted`: a cluster
  full, ending or starting over, a batch in flight) comes back sooner on its first ``SOON_RECEIVES`` receives: its
  visibility timeout is shortened to ``RETRY_SOON_SECONDS``, doubled at each receive, so a replacement cluster is not
  launched on top of the queue's 13 minutes; later receives keep the queue's timeout, so a cluster that stays full
  still has the queue's whole retry budget before the DLQ;
- a record whose group or step event the invocation did not start, because less than ``STOP_MARGIN_SECONDS`` of its
  time was left, fails and comes back soon, as for a passing reason: the invocation never runs into its timeout by
  starting work (final review F2);
- a record carrying only uploads that another batch owns is processed: the duplicates are dropped (see submitter.py);
- a record that is neither an S3 event notification nor one of this stack's step events is logged (message id and
  reason, not the body) and reported as processed: delivering it again cannot change its content, and failing it would
  only spend the receive count before it reached the DLQ, taking retries from nothing;
- an uploaded manifest replaced since the upload a record announces is logged and skipped: the replacing upload has
  its own event (the manifest is read with the announced ETag);
- an uploaded manifest that is not a usable list of allowed entries is logged, reported on the notification topic with
  its key and the reason, and skipped for the same reason (uploading a fixed manifest is a new event);
- test events and objects that are not inputs (other prefixes, other suffixes) are processed by doing nothing.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import NamedTuple

import boto3
import botocore
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

import submitter
from claims import CLAIM_THREADS, ClaimStore
from step_events import parse_step_event
from trigger_settings import TriggerSettings
from uploads import MalformedMessage, group_uploads, parse_message_body

# Throttling and transient errors (5xx, timeouts, connection resets) are retried by botocore with exponential backoff and
# jitter; errors left after the last attempt fail the batch's records, and SQS redelivers them. (botocore's `max_attempts`
# counts retries only; `total_max_attempts` counts the first call too.)
AWS_TOTAL_ATTEMPTS = submitter.SUBMIT_ATTEMPTS
# botocore waits 60 s for a connection and 60 s for an answer by default: half the function's 2-minute timeout
# (infra/trigger.py) for one unanswered call. Every call here is answered in well under a second, so these limits end a
# stuck call while the invocation still has time to report its records (final review F2).
CONNECT_TIMEOUT_SECONDS = 5
READ_TIMEOUT_SECONDS = 15
AWS_CONFIG = Config(
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=READ_TIMEOUT_SECONDS,
    retries={"mode": "standard", "total_max_attempts": AWS_TOTAL_ATTEMPTS},
)
# AddJobFlowSteps and RunJobFlow take no idempotency token: botocore must never send them twice (after a lost response
# EMR may have carried out the first). One attempt per call; submitter.py retries them after searching for the step.
EMR_SUBMIT_CONFIG = AWS_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 1}))
# The invocation starts no new batch, retry or step submission with less than this much of its time left: what was
# started (a call that times out, and the few quick calls that record its outcome) still ends before Lambda ends the
# invocation, and the records not handled are reported as failures (they come back after RETRY_SOON_SECONDS) instead
# of every record of the invocation failing with a timeout and coming back after the queue's 13 minutes.
STOP_MARGIN_SECONDS = CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS + 10
# A record failed for a passing reason comes back after this long on its first receive and twice as long on its second;
# from the third receive on, after the queue's own visibility timeout (6 x the function timeout + the batching window).
RETRY_SOON_SECONDS = 60
SOON_RECEIVES = 2

logger = Logger()
# The SDK is the one pinned in requirements.lock and shipped in the function's asset (infra/function_asset.py), not the
# runtime's: S3 and DynamoDB features this code uses need a newer SDK than some runtimes carry. Say which one runs.
logger.info("Cold start", extra={"botocore_version": botocore.__version__, "boto3_version": boto3.__version__})
settings = TriggerSettings.from_environment(os.environ)
s3_client = boto3.client("s3", config=AWS_CONFIG)
emr_client = boto3.client("emr", config=AWS_CONFIG)
emr_submit_client = boto3.client("emr", config=EMR_SUBMIT_CONFIG)
sns_client = boto3.client("sns", config=AWS_CONFIG)
sqs_client = boto3.client("sqs", config=AWS_CONFIG)
# One connection per claim thread, so the threads never wait for each other's connection.
dynamodb_client = boto3.client("dynamodb", config=AWS_CONFIG.merge(Config(max_pool_connections=CLAIM_THREADS)))
claim_store = ClaimStore(
    table_name=settings.claims_table,
    dynamodb=dynamodb_client,
    retention=timedelta(days=settings.claim_retention_days),
    lease=timedelta(seconds=settings.claim_lease_seconds),
)


class RecordNotProcessed(Exception):
    """The record's uploads or step event were not handled yet; SQS will deliver the record again."""


class InvocationBatchProcessor(BatchProcessor):
    """A Powertools SQS batch processor that submits the whole invocation's batches before reporting each record.

    Powertools calls the record handler once per record, but one EMR step covers every image of an invocation. So the
    submission runs once in ``_prepare`` (the hook Powertools documents for custom processors, called after the records
    are set and before any is handled) and the record handler only reports each record's share of the outcome.
    """

    def __init__(self) -> None:
        # When every record fails (a full cluster), return them all as item failures rather than raising: SQS redelivers
        # them either way, and the response states exactly which ones.
        super().__init__(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        self.failures_by_message_id: dict[str, str] = {}

    def _prepare(self) -> None:
        super()._prepare()
        context = self.lambda_context
        outcome = submit_invocation(
            self.records, seconds_left=lambda: context.get_remaining_time_in_millis() / 1000 - STOP_MARGIN_SECONDS
        )
        self.failures_by_message_id = outcome.failures_by_message_id
        bring_back_soon(self.records, outcome.retry_soon)


class InvocationOutcome(NamedTuple):
    failures_by_message_id: dict[str, str]  # message id -> why the record must come back
    retry_soon: frozenset[str]  # the failed records whose reason passes soon (BatchNotSubmitted)


def submit_invocation(records: list[dict], *, seconds_left) -> InvocationOutcome:
    """Parse every record, group the uploads, submit each group's batch and retry each cancelled step; return the
    reasons of the records that must come back.

    ``seconds_left()`` is how long the invocation may still start work (seconds; see STOP_MARGIN_SECONDS): a group or
    step event not started when it has run out fails, to come back soon."""
    uploads_by_message = []
    step_events = []
    malformed = 0
    for raw_record in records:
        record = SQSRecord(raw_record)
        step_event = parse_step_event(record.body, step_name_prefix=settings.step_name_prefix)
        if step_event is not None:
            step_events.append((record.message_id, step_event))
            continue
        try:
            uploads = parse_message_body(
                record.body, bucket=settings.data_bucket, incoming_prefix=settings.incoming_prefix
            )
        except MalformedMessage as error:
            malformed += 1
            logger.error("Skipping a message that is neither an S3 event notification nor a step event of this stack",
                         extra={"message_id": record.message_id, "reason": str(error)})  # fmt: skip
            continue
        uploads_by_message.append((record.message_id, uploads))

    step_submitter = submitter.StepSubmitter(
        settings=settings,
        s3=s3_client,
        emr=emr_client,
        emr_submit=emr_submit_client,
        sns=sns_client,
        claims=claim_store,
        clock=submitter.utc_now,
        log=logger,
        seconds_left=seconds_left,
    )
    groups = group_uploads(uploads_by_message)
    failures_by_message_id: dict[str, str] = {}
    retry_soon: set[str] = set()
    batches = 0
    not_started = f"not started: less than {STOP_MARGIN_SECONDS} s of the invocation were left"
    for group in groups:
        if seconds_left() <= 0:
            failures_by_message_id.update(dict.fromkeys(group.message_ids, not_started))
            retry_soon.update(group.message_ids)
            continue
        try:
            outcome = step_submitter.submit(group)
        except submitter.ManifestReplaced as error:
            logger.warning("Skipping an uploaded manifest replaced since", extra={"reason": str(error)})
            continue
        except submitter.UnusableUserManifest as error:
            key = group.uploads[0].key
            logger.error("Skipping an unusable uploaded manifest", extra={"key": key, "reason": str(error)})
            try:
                step_submitter.report_unusable_manifest(key, str(error))
            except Exception as report_error:  # the report must reach the uploader: the message comes back
                reason = f"unusable manifest not reported: {type(report_error).__name__}: {report_error}"
                logger.exception("Unusable manifest not reported", extra={"key": key, "reason": reason})
                failures_by_message_id.update(dict.fromkeys(group.message_ids, reason))
            continue
        except Exception as error:  # cluster full, API errors left after retries, bad cluster definition: retry, then DLQ
            reason = f"uploads not submitted: {type(error).__name__}: {error}"
            passing = isinstance(error, submitter.BatchNotSubmitted)
            log = logger.warning if passing else logger.exception
            log("Batch not submitted", extra={"uploads": len(group.uploads), "reason": reason})
            failures_by_message_id.update(dict.fromkeys(group.message_ids, reason))
            if passing:
                retry_soon.update(group.message_ids)
            continue
        batches += outcome.batch is not None
        reason = "carries uploads whose claim a live invocation holds; retried after the claim's lease"
        failures_by_message_id.update(dict.fromkeys(outcome.messages_to_retry, reason))
    for message_id, step_event in step_events:
        if seconds_left() <= 0:
            failures_by_message_id[message_id] = not_started
            retry_soon.add(message_id)
            continue
        try:
            step_submitter.retry(step_event)
        except Exception as error:
            reason = f"batch {step_event.batch_id} not retried: {type(error).__name__}: {error}"
            passing = isinstance(error, submitter.BatchNotSubmitted)
            log = logger.warning if passing else logger.exception
            log("Retry not submitted", extra={"batch_id": step_event.batch_id, "reason": reason})
            failures_by_message_id[message_id] = reason
            if passing:
                retry_soon.add(message_id)
    logger.info(
        "Invocation handled",
        extra={
            "records": len(records),
            "malformed_records": malformed,
            "step_events": len(step_events),
            "batches": batches,
            "failed_records": len(failures_by_message_id),
            "not_started_records": sum(reason == not_started for reason in failures_by_message_id.values()),
        },
    )
    return InvocationOutcome(failures_by_message_id, frozenset(retry_soon))


def bring_back_soon(records: list[dict], message_ids: frozenset[str]) -> None:
    """Shorten the visibility timeout of the records failed for a passing reason (aws-validity-review-2 #12).

    Best effort: a record whose timeout could not be changed comes back after the queue's own timeout, as before.
    """
    entries = []
    for raw_record in records:
        record = SQSRecord(raw_record)
        if record.message_id not in message_ids:
            continue
        receives = int(record.attributes.approximate_receive_count or 1)
        if receives > SOON_RECEIVES:
            continue
        delay = RETRY_SOON_SECONDS * 2 ** (receives - 1)
        entries.append({"Id": str(len(entries)), "ReceiptHandle": record.receipt_handle, "VisibilityTimeout": delay})
    for start in range(0, len(entries), 10):  # SQS takes at most 10 entries per request
        chunk = entries[start : start + 10]
        try:
            failed = sqs_client.change_message_visibility_batch(QueueUrl=settings.upload_queue_url, Entries=chunk).get(
                "Failed", []
            )
        except Exception as error:
            logger.warning("Visibility timeouts not shortened", extra={"records": len(chunk), "reason": str(error)})
            continue
        if failed:
            logger.warning(
                "Some visibility timeouts not shortened",
                extra={"records": len(failed), "codes": sorted({item.get("Code", "") for item in failed})},
            )


processor = InvocationBatchProcessor()


def record_handler(record: SQSRecord) -> None:
    """Fail a record whose batch was not submitted; every other record was handled by the invocation's submission."""
    reason = processor.failures_by_message_id.get(record.message_id)
    if reason is not None:
        raise RecordNotProcessed(reason)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
