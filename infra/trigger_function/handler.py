"""The trigger Lambda: SQS messages carrying S3 upload events -> one manifest and one EMR step per batch of uploads;
and messages carrying EMR step events -> the batch of a cancelled or interrupted step submitted again.

Entry point: ``handler.lambda_handler``. The function's folder is its code root, so siblings import as top-level modules.

Failure policy, per SQS record (reported through Powertools' partial batch response):
- a record whose uploads belong to a batch that could not be submitted (cluster full or not accepting steps, an API error
  left after botocore's retries), or that carries an upload whose claim a live invocation holds and names this record,
  fails, so SQS delivers it again after the visibility timeout, and after the queue's maximum receive count it lands in
  the dead-letter queue;
- a record carrying only uploads that another batch owns is processed: the duplicates are dropped (see submitter.py);
- a record that is neither an S3 event notification nor one of this stack's step events is logged (message id and
  reason, not the body) and reported as processed: delivering it again cannot change its content, and failing it would
  only spend the receive count before it reached the DLQ, taking retries from nothing;
- an uploaded manifest that is not a usable list of URIs is logged and skipped for the same reason (uploading a fixed
  manifest is a new event);
- test events and objects that are not inputs (other prefixes, other suffixes) are processed by doing nothing.
"""

from __future__ import annotations

import os
from datetime import timedelta

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
AWS_TOTAL_ATTEMPTS = 5
AWS_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": AWS_TOTAL_ATTEMPTS})

logger = Logger()
# The SDK is the one pinned in requirements.lock and shipped in the function's asset (infra/function_asset.py), not the
# runtime's: S3 and DynamoDB features this code uses need a newer SDK than some runtimes carry. Say which one runs.
logger.info("Cold start", extra={"botocore_version": botocore.__version__, "boto3_version": boto3.__version__})
settings = TriggerSettings.from_environment(os.environ)
s3_client = boto3.client("s3", config=AWS_CONFIG)
emr_client = boto3.client("emr", config=AWS_CONFIG)
sns_client = boto3.client("sns", config=AWS_CONFIG)
# One connection per claim thread, so the threads never wait for each other's connection.
dynamodb_client = boto3.client("dynamodb", config=AWS_CONFIG.merge(Config(max_pool_connections=CLAIM_THREADS)))
claim_store = ClaimStore(
    table_name=settings.claims_table,
    dynamodb=dynamodb_client,
    retention=timedelta(days=settings.claim_retention_days),
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
        self.failures_by_message_id = submit_invocation(self.records)


def submit_invocation(records: list[dict]) -> dict[str, str]:
    """Parse every record, group the uploads, submit each group's batch and retry each cancelled step; return the
    reasons of the records that must come back."""
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
        sns=sns_client,
        claims=claim_store,
        clock=submitter.utc_now,
        log=logger,
    )
    groups = group_uploads(uploads_by_message)
    failures_by_message_id: dict[str, str] = {}
    batches = 0
    for group in groups:
        try:
            outcome = step_submitter.submit(group)
        except submitter.UnusableUserManifest as error:
            logger.error("Skipping an unusable uploaded manifest", extra={"key": group.uploads[0].key, "reason": str(error)})
            continue
        except Exception as error:  # cluster full, API errors left after retries, bad cluster definition: retry, then DLQ
            reason = f"uploads not submitted: {type(error).__name__}: {error}"
            log = logger.warning if isinstance(error, submitter.BatchNotSubmitted) else logger.exception
            log("Batch not submitted", extra={"uploads": len(group.uploads), "reason": reason})
            failures_by_message_id.update(dict.fromkeys(group.message_ids, reason))
            continue
        batches += outcome.batch is not None
        reason = "carries uploads whose claim a live invocation holds; retried after the claim's lease"
        failures_by_message_id.update(dict.fromkeys(outcome.messages_to_retry, reason))
    for message_id, step_event in step_events:
        try:
            step_submitter.retry(step_event)
        except Exception as error:
            reason = f"batch {step_event.batch_id} not retried: {type(error).__name__}: {error}"
            log = logger.warning if isinstance(error, submitter.BatchNotSubmitted) else logger.exception
            log("Retry not submitted", extra={"batch_id": step_event.batch_id, "reason": reason})
            failures_by_message_id[message_id] = reason
    logger.info(
        "Invocation handled",
        extra={
            "records": len(records),
            "malformed_records": malformed,
            "step_events": len(step_events),
            "batches": batches,
            "failed_records": len(failures_by_message_id),
        },
    )
    return failures_by_message_id


processor = InvocationBatchProcessor()


def record_handler(record: SQSRecord) -> None:
    """Fail a record whose batch was not submitted; every other record was handled by the invocation's submission."""
    reason = processor.failures_by_message_id.get(record.message_id)
    if reason is not None:
        raise RecordNotProcessed(reason)


@logger.inject_lambda_context
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
