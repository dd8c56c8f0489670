"""Pure functions: SQS message bodies carrying S3 event notifications -> uploads -> groups that may become batches.

No AWS calls here, so every rule about which objects count and how they are grouped is testable on its own.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote_plus


class UploadKind(str, Enum):
    IMAGE = "image"  # all images of one invocation form one batch
    CIFAR_BATCH = "cifar_batch"  # a CIFAR-10 binary batch file is a batch by itself
    MANIFEST = "manifest"  # a user's manifest (JSON list of object URIs) is a batch by itself


KIND_BY_SUFFIX = {
    ".png": UploadKind.IMAGE,
    ".jpg": UploadKind.IMAGE,
    ".jpeg": UploadKind.IMAGE,
    ".bin": UploadKind.CIFAR_BATCH,
    ".json": UploadKind.MANIFEST,
}


class MalformedMessage(ValueError):
    """A message body that is not an S3 event notification; the message says what was wrong, never the payload."""


@dataclass(frozen=True)
class Upload:
    """One created object under the incoming prefix, as its S3 event describes it.

    (bucket, key, ETag, sequencer) is the upload's identity: a redelivered or duplicated event repeats all four, while
    uploading the same bytes again gets a new sequencer, so it is a new upload and a new run.
    """

    bucket: str
    key: str  # decoded: '+' is a space and %xx escapes are resolved
    etag: str
    sequencer: str  # orders events for one key; a re-upload of the same bytes gets a new sequencer
    kind: UploadKind
    # The object version S3 names in the event (versioned buckets only); "" when the bucket is not versioned. Not part
    # of the identity: the sequencer already tells two uploads of one key apart.
    version_id: str = ""

    @property
    def identity(self) -> str:
        """A fixed-length digest of the identity (S3 keys reach 1,024 bytes; a digest keeps claim items small)."""
        return hashlib.sha256(f"{self.bucket}\0{self.key}\0{self.etag}\0{self.sequencer}".encode()).hexdigest()


@dataclass(frozen=True)
class UploadGroup:
    """Uploads of one invocation that would form one batch, and the SQS messages that carried each of them."""

    kind: UploadKind
    uploads: tuple[Upload, ...]  # sorted by key, then ETag and sequencer
    message_ids_by_upload: dict[Upload, frozenset[str]]

    @property
    def message_ids(self) -> frozenset[str]:
        return frozenset().union(*self.message_ids_by_upload.values())


@dataclass(frozen=True)
class Batch:
    """Uploads this invocation claimed, which become one manifest and one EMR step, and the messages that carried them."""

    batch_id: str
    kind: UploadKind
    uploads: tuple[Upload, ...]  # sorted by key, then ETag and sequencer
    message_ids: frozenset[str]


def parse_message_body(body: str, *, bucket: str, incoming_prefix: str) -> list[Upload]:
    """Return the input uploads an SQS message body announces; an empty list for test events and objects to ignore.

    Raises :class:`MalformedMessage` when the body is not an S3 event notification at all.
    """
    try:
        notification = json.loads(body)
    except (json.JSONDecodeError, TypeError) as error:
        raise MalformedMessage(f"body is not JSON ({error})") from None
    if not isinstance(notification, dict):
        raise MalformedMessage(f"body is a JSON {type(notification).__name__}, expected an object")
    # S3 sends this once when a notification is configured; it announces no object.
    if notification.get("Event") == "s3:TestEvent":
        return []
    records = notification.get("Records")
    if not isinstance(records, list):
        raise MalformedMessage("body has no 'Records' list and is not an s3:TestEvent or an EMR step event")
    uploads = []
    for index, record in enumerate(records):
        try:
            event_name = record["eventName"]
            record_bucket = record["s3"]["bucket"]["name"]
            s3_object = record["s3"]["object"]
            key = unquote_plus(s3_object["key"])
        except (KeyError, TypeError) as error:
            raise MalformedMessage(f"record {index} is not an S3 event record (missing {error})") from None
        if not event_name.startswith("ObjectCreated:") or record_bucket != bucket:
            continue
        kind = upload_kind(key, incoming_prefix=incoming_prefix)
        if kind is not None:
            # Copies and some multipart uploads can omit the ETag; the sequencer alone still tells events apart.
            uploads.append(
                Upload(
                    bucket=record_bucket,
                    key=key,
                    etag=s3_object.get("eTag", ""),
                    sequencer=s3_object.get("sequencer", ""),
                    kind=kind,
                    version_id=_text(s3_object.get("versionId")),
                )
            )
    return uploads


def upload_kind(key: str, *, incoming_prefix: str) -> UploadKind | None:
    """The kind of input a decoded key is, or None for anything that must not start a run.

    Only keys under the incoming prefix count; the settings guarantee manifests/ and results/ are not under it, so objects
    this system writes never trigger it. The suffix is matched case-insensitively (cameras write .JPG).
    """
    if not key.startswith(incoming_prefix) or key.endswith("/"):
        return None
    return KIND_BY_SUFFIX.get(posixpath.splitext(key)[1].lower())


def group_uploads(uploads_by_message: Iterable[tuple[str, list[Upload]]]) -> list[UploadGroup]:
    """Group one invocation's uploads: all images into one group, each CIFAR-10 file and each manifest into its own.

    Duplicate events within the invocation are one upload carried by several messages. Two uploads of one key in the
    same invocation stay two uploads (two claims) but one object in the manifest: the job reads the object as it is now.
    """
    message_ids_by_upload: dict[Upload, set[str]] = {}
    for message_id, uploads in uploads_by_message:
        for upload in uploads:
            message_ids_by_upload.setdefault(upload, set()).add(message_id)
    images = [upload for upload in message_ids_by_upload if upload.kind is UploadKind.IMAGE]
    members = [images] if images else []
    single_upload_groups: dict[str, list[Upload]] = {}
    for upload in message_ids_by_upload:
        if upload.kind is not UploadKind.IMAGE:
            single_upload_groups.setdefault(upload.key, []).append(upload)
    members += single_upload_groups.values()
    groups = []
    for member in members:
        uploads = tuple(sorted(member, key=_upload_order))
        groups.append(
            UploadGroup(
                kind=uploads[0].kind,
                uploads=uploads,
                message_ids_by_upload={upload: frozenset(message_ids_by_upload[upload]) for upload in uploads},
            )
        )
    return sorted(groups, key=lambda group: _upload_order(group.uploads[0]))


def manifest_entry(upload: Upload) -> dict[str, str]:
    """The manifest entry of an upload: the object and the version of it that was uploaded, so the job reads those bytes
    or reports ``changed_since_upload`` (reliability review #16). ``version_id`` only when S3 named one."""
    entry = {"uri": f"s3://{upload.bucket}/{upload.key}", "etag": upload.etag}
    if upload.version_id:
        entry["version_id"] = upload.version_id
    return entry


# What a run came from (issue 18, part 3), as the batch manifest's "source" records it and the job copies into
# summary.json. A manifest written by `python -m infra.submit_run` or `python -m infra.runs rerun` declares its own
# "source" (kind "run" or "rerun"): these string fields of it are kept, each at most this long; nothing else is.
DECLARED_SOURCE_KINDS = ("run", "rerun")
DECLARED_SOURCE_FIELDS = ("input", "run_name", "rerun_of")
MAX_SOURCE_TEXT_CHARS = 1024


def batch_source(kind: UploadKind, uploads: tuple[Upload, ...], declared: object = None) -> dict:
    """What a batch came from: ``{"kind": "upload", "prefix": "s3://bucket/<longest common folder>/", "uploads": N}``
    for uploaded images or CIFAR-10 files; ``{"kind": "manifest", "manifest": "s3://..."}`` for an uploaded manifest,
    whose ``declared`` source (its "source" object, when it is a dict of kind run or rerun) adds its input, run name
    and the run it reruns."""
    first = uploads[0]
    if kind is UploadKind.MANIFEST:
        source = {"kind": "manifest", "manifest": f"s3://{first.bucket}/{first.key}"}
        if isinstance(declared, dict) and declared.get("kind") in DECLARED_SOURCE_KINDS:
            source["kind"] = declared["kind"]
            for name in DECLARED_SOURCE_FIELDS:
                value = declared.get(name)
                if isinstance(value, str) and len(value) <= MAX_SOURCE_TEXT_CHARS:
                    source[name] = value
        return source
    keys = [upload.key for upload in uploads]
    common = posixpath.commonprefix(keys)
    folder = common[: common.rfind("/") + 1]
    return {"kind": "upload", "prefix": f"s3://{first.bucket}/{folder}", "uploads": len(uploads)}


def latest_per_key(uploads: Iterable[Upload]) -> list[Upload]:
    """One upload per key, keys sorted: of two uploads of one key, the later one (by S3's sequencer), which is the
    object's current content. The earlier upload's bytes are gone from an unversioned bucket."""
    latest: dict[str, Upload] = {}
    for upload in uploads:
        kept = latest.get(upload.key)
        if kept is None or _sequencer_order(upload.sequencer) > _sequencer_order(kept.sequencer):
            latest[upload.key] = upload
    return [latest[key] for key in sorted(latest)]


def _sequencer_order(sequencer: str) -> tuple[int, str]:
    """S3 sequencers of one key compare as hexadecimal strings once padded to the same length (S3's documentation)."""
    digits = sequencer.upper().lstrip("0")
    return (len(digits), digits)


def _text(value) -> str:
    return value if isinstance(value, str) else ""


def _upload_order(upload: Upload) -> tuple[str, str, str]:
    return (upload.key, upload.etag, upload.sequencer)
