"""The trigger Lambda: SQS messages carrying S3 upload events -> one manifest and one EMR step per batch of uploads.

Entry point: ``handler.lambda_handler``. The function's folder is its code root, so siblings import as top-level modules.

Failure policy, per SQS record (reported through Powertools' partial batch response):
- a record whose uploads belong to a batch that could not be submitted (cluster full or not accepting steps, an API error
  left after botocore's retries, a claim held by another invocation) fails, so SQS delivers it again after the visibility
  timeout, and after the queue's maximum receive count it lands in the dead-letter queue;
- a record that is not an S3 event notification at all is logged (message id and reason, not the body) and reported as
  processed: delivering it again cannot change its content, and failing it would only spend the receive count before it
  reached the DLQ, taking retries from nothing;
- an uploaded manifest that is not a usable list of URIs is logged and skipped for the same reason (uploading a fixed
  manifest is a new event);
- test events and objects that are not inputs (other prefixes, other suffixes) are processed by doing nothing.
"""

from __future__ import annotations

import os

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config

import submitter
from trigger_settings import TriggerSettings
from uploads import MalformedMessage, group_into_batches, parse_message_body

# Throttling and transient errors (5xx, timeouts, connection resets) are retried by botocore with exponential backoff and
# jitter; errors left after the last attempt fail the batch's records, and SQS redelivers them. (botocore's `max_attempts`
# counts retries only; `total_max_attempts` counts the first call too.)
AWS_TOTAL_ATTEMPTS = 5
AWS_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": AWS_TOTAL_ATTEMPTS})

logger = Logger()
settings = TriggerSettings.from_environment(os.environ)
s3_client = boto3.client("s3", config=AWS_CONFIG)
emr_client = boto3.client("emr", config=AWS_CONFIG)


class RecordNotProcessed(Exception):
    """The record's uploads belong to a batch that was not submitted; SQS will deliver the record again."""


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
    """Parse every record, group the uploads into batches, submit each batch; return the failed records' reasons."""
    uploads_by_message = []
    for raw_record in records:
        record = SQSRecord(raw_record)
        try:
            uploads = parse_message_body(
                record.body, bucket=settings.data_bucket, incoming_prefix=settings.incoming_prefix
            )
        except MalformedMessage as error:
            logger.error("Skipping a message that is not an S3 event notification",
                         extra={"message_id": record.message_id, "reason": str(error)})  # fmt: skip
            continue
        uploads_by_message.append((record.message_id, uploads))

    step_submitter = submitter.StepSubmitter(
        settings=settings, s3=s3_client, emr=emr_client, clock=submitter.utc_now, log=logger
    )
    batches = group_into_batches(uploads_by_message)
    failures_by_message_id: dict[str, str] = {}
    for batch in batches:
        try:
            step_submitter.submit(batch)
        except submitter.UnusableUserManifest as error:
            logger.error(
                "Skipping an unusable uploaded manifest", extra={"batch_id": batch.batch_id, "reason": str(error)}
            )
        except submitter.BatchNotSubmitted as error:
            reason = f"batch {batch.batch_id} not submitted: {error}"
            logger.warning("Batch not submitted", extra={"batch_id": batch.batch_id, "reason": reason})
            failures_by_message_id.update(dict.fromkeys(batch.message_ids, reason))
        except Exception as error:  # API errors left after retries, bad cluster definition: retry, then the DLQ
            reason = f"batch {batch.batch_id} not submitted: {type(error).__name__}: {error}"
            logger.exception("Batch not submitted", extra={"batch_id": batch.batch_id, "reason": reason})
            failures_by_message_id.update(dict.fromkeys(batch.message_ids, reason))
    logger.info(
        "Invocation handled",
        extra={
            "records": len(records),
            "malformed_records": len(records) - len(uploads_by_message),
            "batches": len(batches),
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
