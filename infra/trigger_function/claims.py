"""Who owns which upload, and what became of each batch: one DynamoDB item per upload and one per batch.

Why a DynamoDB table, and why one conditional PutItem per upload
-----------------------------------------------------------------
Every upload needs an atomic "claim if nobody has" (so two invocations never put one upload in two steps) and, for a
claim whose invocation died, an atomic "take over if it is still the dead one's and its lease ran out". Prices below are
us-east-1 list prices (S3 Standard; DynamoDB on demand since November 2024), for 10,000 uploads in one invocation:

- S3 conditional writes, one small object per upload: 10,000 ``PutObject`` with ``If-None-Match: *`` cost $0.05 and take
  10,000 requests at S3's 20-100 ms each. A takeover needs a ``GetObject`` and a ``PutObject`` with ``If-Match`` (the
  ETag read), expiry needs a lifecycle rule, and the owner of a refused claim needs a third request to read.
- DynamoDB ``TransactWriteItems``, 100 conditional puts per request: 100 requests, but 2 write units per item (20,000 WRU,
  $0.0125), and one duplicate or one concurrent writer on any of the 100 items cancels all of them, so overlapping
  invocations would cancel each other's transactions over and over. (moto also copies the whole table on each
  transaction, so it could not be measured.)
- DynamoDB ``PutItem`` with ``attribute_not_exists(pk)``, one per upload (this module): 10,000 requests of single-digit
  milliseconds each, sent by CLAIM_THREADS threads; 1 write unit per item under 1 KB: 10,000 WRU = $0.00625. A refused
  claim returns the existing item in the same response (``ReturnValuesOnConditionCheckFailure=ALL_OLD``), so naming the
  owning batch costs nothing more; a takeover is one conditional ``UpdateItem``; TTL deletes old items for free; items
  are independent, so concurrent invocations never block each other. Storage: about 300 bytes per upload for 30 days.

The table also holds one item per batch. It is written *before* the step is sent, naming the cluster it goes to (state
*submitting*), so that crash recovery knows where to look; once EMR accepted the step it becomes *submitted*, and its
attempt counter drives the retries of cancelled steps (``submitter.StepSubmitter.retry``). An operator who cancels a
step on purpose writes a third kind of item, ``cancel#<batch id>``: that batch is then not retried.

Lost responses
--------------
botocore re-sends a request whose response was lost (a timeout, a reset connection, a 5xx) even when DynamoDB had
carried it out. A re-sent conditional write then fails its own condition. Every conditional write here therefore reads
a refusal against what it wrote: a claim refused because *this batch* holds it is this batch's own claim, and a batch
update refused while the item already holds every value it set (including this invocation's token where two invocations
could set the same values) is this invocation's own update.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum

from botocore.exceptions import ClientError

from uploads import Upload

# Concurrent DynamoDB requests per invocation (the client's connection pool is sized to match, see handler.py).
CLAIM_THREADS = 16
# The item attribute the table's TTL reads (the stack names the same one: infra/trigger.py, CLAIM_TTL_ATTRIBUTE).
TTL_ATTRIBUTE = "expires_at"
UPLOAD_KEY_PREFIX = "upload#"
BATCH_KEY_PREFIX = "batch#"
# An operator's mark on a batch whose step they cancelled on purpose: the batch is not submitted again.
CANCEL_KEY_PREFIX = "cancel#"
CONDITION_FAILED = "ConditionalCheckFailedException"


class BatchState(str, Enum):
    SUBMITTING = "submitting"  # the first step is being sent to `cluster_id` ("" for a cluster being launched)
    SUBMITTED = "submitted"  # EMR accepted the step of attempt `attempt`
    RESUBMITTING = "resubmitting"  # attempt `attempt` is being submitted now, under a lease
    GAVE_UP = "gave_up"  # the last allowed attempt was cancelled or interrupted; reported, not retried


@dataclass(frozen=True)
class UploadClaim:
    """An upload's owner: the batch that claimed it, until when the claim is leased, and the messages that carried it."""

    batch_id: str
    lease_until: datetime
    message_ids: frozenset[str]


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    state: BatchState
    attempt: int
    step_name: str
    cluster_id: str
    manifest_key: str
    lease_until: datetime
    lease_owner: str = ""  # the token of the invocation that holds a resubmission's lease
    # The images the batch's manifest lists: a retry's step caps its executors as the first did. None for a batch
    # recorded without it (by crash recovery from a step found on a cluster): its retry has no cap.
    image_count: int | None = None


@dataclass(frozen=True)
class ClaimResult:
    claimed: tuple[Upload, ...]
    owned_elsewhere: dict[Upload, UploadClaim]


class ClaimStore:
    """The claims table of one function instance (thread-safe; create once, module-level)."""

    def __init__(
        self, *, table_name: str, dynamodb, retention: timedelta, lease: timedelta, threads: int = CLAIM_THREADS
    ) -> None:
        """``lease``: how long a claim or a resubmission is reserved for the invocation that wrote it; longer than any
        invocation can live (the function's timeout plus a margin for clock skew)."""
        self._table = table_name
        self._dynamodb = dynamodb
        self._retention = retention
        self.lease = lease
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="claims")

    # --- uploads ------------------------------------------------------------------------------------------------------

    def claim(
        self, uploads: Iterable[Upload], *, batch_id: str, message_ids_by_upload: dict[Upload, frozenset[str]], now: datetime
    ) -> ClaimResult:
        """Claim every upload nobody owns for ``batch_id``; return the claimed ones and the others' owners.

        If a request fails after retries, the uploads claimed so far are released before the error is raised, so the
        redelivered messages find them free rather than waiting out a lease.
        """
        uploads = list(uploads)
        condition = {"ConditionExpression": "attribute_not_exists(pk)"}
        try:
            results = self._run_all(
                lambda upload: self._write_claim(upload, batch_id, message_ids_by_upload[upload], now, condition),
                uploads,
            )
        except Exception:
            self.release(uploads, batch_id=batch_id)
            raise
        return _claim_result(results)

    def take_over(
        self,
        claims: dict[Upload, UploadClaim],
        *,
        batch_id: str,
        message_ids_by_upload: dict[Upload, frozenset[str]],
        now: datetime,
    ) -> ClaimResult:
        """Take over claims whose lease ended, each only if it still belongs to the batch it was read with (or was
        deleted meanwhile)."""
        results = self._run_all(
            lambda upload: self._write_claim(
                upload,
                batch_id,
                message_ids_by_upload[upload],
                now,
                {
                    "ConditionExpression": (
                        "attribute_not_exists(pk) OR (batch_id = :previous_owner AND lease_until < :now)"
                    ),
                    "ExpressionAttributeValues": {
                        ":previous_owner": {"S": claims[upload].batch_id},
                        ":now": {"N": str(_epoch(now))},
                    },
                },
            ),
            list(claims),
        )
        return _claim_result(results)

    def release(self, uploads: Iterable[Upload], *, batch_id: str) -> None:
        """Delete this batch's claims (EMR refused its step): the redelivered messages can claim the uploads again."""

        def release_one(upload: Upload) -> None:
            try:
                self._dynamodb.delete_item(
                    TableName=self._table,
                    Key={"pk": {"S": UPLOAD_KEY_PREFIX + upload.identity}},
                    ConditionExpression="batch_id = :mine",
                    ExpressionAttributeValues={":mine": {"S": batch_id}},
                )
            except ClientError as error:
                if error.response["Error"]["Code"] != CONDITION_FAILED:
                    raise

        self._run_all(release_one, list(uploads))

    def _write_claim(
        self, upload: Upload, batch_id: str, message_ids: frozenset[str], now: datetime, condition: dict
    ) -> tuple[Upload, UploadClaim | None]:
        """Write one claim under ``condition``; return (upload, None) when it was written, else its current owner."""
        item = {
            "pk": {"S": UPLOAD_KEY_PREFIX + upload.identity},
            "batch_id": {"S": batch_id},
            "lease_until": {"N": str(_epoch(now + self.lease))},
            "message_ids": {"SS": sorted(message_ids)},
            "object_key": {"S": upload.key},
            TTL_ATTRIBUTE: {"N": str(_epoch(now + self._retention))},
        }
        try:
            self._dynamodb.put_item(
                TableName=self._table, Item=item, ReturnValuesOnConditionCheckFailure="ALL_OLD", **condition
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != CONDITION_FAILED:
                raise
            # Every condition here holds for a missing item, so a refusal always comes with the existing one.
            existing = error.response["Item"]
            if existing["batch_id"]["S"] == batch_id and existing["lease_until"] == item["lease_until"]:
                # This very write, carried out before its response was lost and refused when botocore sent it again.
                return upload, None
            return upload, UploadClaim(
                batch_id=existing["batch_id"]["S"],
                lease_until=_from_epoch(existing["lease_until"]["N"]),
                message_ids=frozenset(existing.get("message_ids", {}).get("SS", [])),
            )
        return upload, None

    def _run_all(self, function, items: list):
        """``function`` on every item on the pool; every item is attempted, then the first error (if any) is raised."""
        futures = [self._pool.submit(function, item) for item in items]
        errors = [future.exception() for future in futures]
        first_error = next((error for error in errors if error is not None), None)
        if first_error is not None:
            raise first_error
        return [future.result() for future in futures]

    # --- batches ------------------------------------------------------------------------------------------------------

    def batch(self, batch_id: str) -> BatchRecord | None:
        item = self._dynamodb.get_item(
            TableName=self._table, Key={"pk": {"S": BATCH_KEY_PREFIX + batch_id}}, ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        return BatchRecord(
            batch_id=batch_id,
            state=BatchState(item["state"]["S"]),
            attempt=int(item["attempt"]["N"]),
            step_name=item["step_name"]["S"],
            cluster_id=item["cluster_id"]["S"],
            manifest_key=item["manifest_key"]["S"],
            lease_until=_from_epoch(item["lease_until"]["N"]),
            lease_owner=item.get("lease_owner", {}).get("S", ""),
            image_count=int(item["image_count"]["N"]) if "image_count" in item else None,
        )

    def record_intent(
        self, *, batch_id: str, step_name: str, cluster_id: str, manifest_key: str, image_count: int, now: datetime
    ) -> None:
        """Before the first step is sent: the batch is being submitted to ``cluster_id`` ("" when a cluster is being
        launched for it), under a lease. Crash recovery reads it to know where the step may be; a retry reads
        ``image_count`` (the images its manifest lists)."""
        item = {
            "pk": {"S": BATCH_KEY_PREFIX + batch_id},
            "state": {"S": BatchState.SUBMITTING.value},
            "attempt": {"N": "1"},
            "step_name": {"S": step_name},
            "cluster_id": {"S": cluster_id},
            "manifest_key": {"S": manifest_key},
            "image_count": {"N": str(image_count)},
            "lease_until": {"N": str(_epoch(now + self.lease))},
            TTL_ATTRIBUTE: {"N": str(_epoch(now + self._retention))},
        }
        try:
            self._dynamodb.put_item(TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)")
        except ClientError as error:
            # Batch ids are never reused: the item that is there is this write, re-sent after a lost response.
            if error.response["Error"]["Code"] != CONDITION_FAILED:
                raise

    def forget_intent(self, batch_id: str) -> None:
        """EMR refused the first step: the batch will never exist (its uploads are released and get a new batch)."""
        try:
            self._dynamodb.delete_item(
                TableName=self._table,
                Key={"pk": {"S": BATCH_KEY_PREFIX + batch_id}},
                ConditionExpression="#state = :submitting",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":submitting": {"S": BatchState.SUBMITTING.value}},
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != CONDITION_FAILED:
                raise

    def record_submission(
        self, *, batch_id: str, step_name: str, cluster_id: str, manifest_key: str, now: datetime
    ) -> None:
        """Mark the batch submitted (attempt 1) once EMR accepted its step (or it was found on a cluster); a batch
        already past *submitting* is left as it is."""
        values = {
            ":submitted": {"S": BatchState.SUBMITTED.value},
            ":submitting": {"S": BatchState.SUBMITTING.value},
            ":one": {"N": "1"},
            ":step_name": {"S": step_name},
            ":cluster_id": {"S": cluster_id},
            ":manifest_key": {"S": manifest_key},
            ":zero": {"N": "0"},
            ":expires": {"N": str(_epoch(now + self._retention))},
        }
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"pk": {"S": BATCH_KEY_PREFIX + batch_id}},
                UpdateExpression=(
                    "SET #state = :submitted, attempt = :one, step_name = :step_name, cluster_id = :cluster_id, "
                    "manifest_key = :manifest_key, lease_until = :zero, #expires = :expires"
                ),
                ConditionExpression="attribute_not_exists(pk) OR #state = :submitting",
                ExpressionAttributeNames={"#state": "state", "#expires": TTL_ATTRIBUTE},
                ExpressionAttributeValues=values,
            )
        except ClientError as error:
            # Recorded already: by this request before its response was lost, or by the step event's invocation.
            if error.response["Error"]["Code"] != CONDITION_FAILED:
                raise

    def operator_cancelled(self, batch_id: str) -> bool:
        """Whether an operator marked the batch as cancelled on purpose (an item ``cancel#<batch id>``)."""
        item = self._dynamodb.get_item(
            TableName=self._table, Key={"pk": {"S": CANCEL_KEY_PREFIX + batch_id}}, ConsistentRead=True
        ).get("Item")
        return item is not None

    def start_retry(self, record: BatchRecord, *, now: datetime, token: str, cluster_id: str) -> bool:
        """Move a submitted batch to its next attempt, under a lease held by ``token`` (one per invocation), naming
        the cluster the retry is sent to ("" when one is launched), as :meth:`record_intent` does for a first attempt:
        crash recovery searches that cluster, whatever its definition or age; False when another invocation did it
        first."""
        return self._update_batch(
            record,
            set_values={
                "attempt": record.attempt + 1,
                "state": BatchState.RESUBMITTING,
                "lease_until": now + self.lease,
                "lease_owner": token,
                "cluster_id": cluster_id,
            },
            condition="attempt = :attempt AND #state = :state",
            condition_values={":attempt": record.attempt, ":state": BatchState.SUBMITTED},
        )

    def resume_retry(self, record: BatchRecord, *, now: datetime, token: str, cluster_id: str) -> bool:
        """Take over a resubmission whose invocation died (its lease ended), naming the cluster this attempt is sent
        to; False when someone else holds it."""
        return self._update_batch(
            record,
            set_values={"lease_until": now + self.lease, "lease_owner": token, "cluster_id": cluster_id},
            condition="attempt = :attempt AND #state = :state AND lease_until < :now",
            condition_values={":attempt": record.attempt, ":state": BatchState.RESUBMITTING, ":now": now},
        )

    def finish_retry(self, record: BatchRecord, *, step_name: str, cluster_id: str) -> bool:
        return self._update_batch(
            record,
            set_values={"state": BatchState.SUBMITTED, "step_name": step_name, "cluster_id": cluster_id},
            condition="attempt = :attempt AND #state = :state",
            condition_values={":attempt": record.attempt, ":state": BatchState.RESUBMITTING},
        )

    def undo_retry(self, record: BatchRecord) -> bool:
        """EMR refused the retry's step: back to the attempt before, so the redelivered event can try again."""
        return self._update_batch(
            record,
            set_values={"attempt": record.attempt - 1, "state": BatchState.SUBMITTED},
            condition="attempt = :attempt AND #state = :state",
            condition_values={":attempt": record.attempt, ":state": BatchState.RESUBMITTING},
        )

    def give_up(self, record: BatchRecord) -> bool:
        return self._update_batch(
            record,
            set_values={"state": BatchState.GAVE_UP},
            condition="attempt = :attempt AND #state = :state",
            condition_values={":attempt": record.attempt, ":state": BatchState.SUBMITTED},
        )

    def _update_batch(self, record: BatchRecord, *, set_values: dict, condition: str, condition_values: dict) -> bool:
        names = {"#state": "state"}
        values = {}
        assignments = []
        for name, value in set_values.items():
            placeholder = f"#{name}"
            names[placeholder] = name
            values[f":new_{name}"] = _attribute(value)
            assignments.append(f"{placeholder} = :new_{name}")
        values.update({name: _attribute(value) for name, value in condition_values.items()})
        try:
            self._dynamodb.update_item(
                TableName=self._table,
                Key={"pk": {"S": BATCH_KEY_PREFIX + record.batch_id}},
                UpdateExpression="SET " + ", ".join(assignments),
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error.response["Error"]["Code"] != CONDITION_FAILED:
                raise
            # Refused: by someone else's update, or by this update's own effect when it was re-sent after a lost
            # response. Only in the second case does the item already hold every value this update sets.
            existing = error.response.get("Item") or {}
            return all(existing.get(name) == _attribute(value) for name, value in set_values.items())
        return True


def _claim_result(results: list[tuple[Upload, UploadClaim | None]]) -> ClaimResult:
    return ClaimResult(
        claimed=tuple(upload for upload, owner in results if owner is None),
        owned_elsewhere={upload: owner for upload, owner in results if owner is not None},
    )


def _attribute(value) -> dict:
    if isinstance(value, datetime):
        return {"N": str(_epoch(value))}
    if isinstance(value, Enum):
        return {"S": value.value}
    if isinstance(value, int):
        return {"N": str(value)}
    return {"S": value}


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _from_epoch(text: str) -> datetime:
    return datetime.fromtimestamp(int(text), tz=timezone.utc)
