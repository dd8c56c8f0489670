"""Which objects count as uploads, how keys are decoded, how uploads group, and how runs are named (pure functions)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

import runs
from step_events import StepEnded, parse_step_event
from submitter import UnusableUserManifest, user_manifest_objects
from trigger_helpers import BUCKET, bodies, load_event, s3_notification, step_status_event
from trigger_settings import BATCH_ID_LENGTH
from uploads import (
    MalformedMessage,
    Upload,
    UploadKind,
    group_uploads,
    latest_per_key,
    manifest_entry,
    parse_message_body,
    upload_kind,
)


def parse(body) -> list[Upload]:
    return parse_message_body(
        body if isinstance(body, str) else json.dumps(body), bucket=BUCKET, incoming_prefix="incoming/"
    )


def image(key: str, sequencer: str = "0055AED6DCD90281E5") -> Upload:
    return Upload(
        bucket=BUCKET, key=key, etag="0cc175b9c0f1b6a831c399e269772661", sequencer=sequencer, kind=UploadKind.IMAGE
    )


def test_plus_and_percent_escapes_in_keys_are_decoded():
    keys = [upload.key for body in bodies(load_event("sqs_s3_encoded_keys.json")) for upload in parse(body)]

    assert keys == ["incoming/holiday photos/beach day (1).JPG", "incoming/café ☕ 日本.png"]


def test_a_literal_plus_arrives_encoded_and_survives():
    (upload,) = parse(s3_notification("incoming/a+b.png", "e", "01", encoded_key="incoming/a%2Bb.png"))

    assert upload.key == "incoming/a+b.png"


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("incoming/a.png", UploadKind.IMAGE),
        ("incoming/a.JPG", UploadKind.IMAGE),
        ("incoming/deep/a.Jpeg", UploadKind.IMAGE),
        ("incoming/cifar/test_batch.bin", UploadKind.CIFAR_BATCH),
        ("incoming/run.JSON", UploadKind.MANIFEST),
        ("incoming/notes.txt", None),
        ("incoming/png", None),
        ("incoming/folder.png/", None),
        ("results/abc/a.png", None),
        ("manifests/abc.json", None),
        ("artifacts/job.zip", None),
        ("incoming.png", None),
    ],
)
def test_upload_kind_by_prefix_and_case_insensitive_suffix(key, kind):
    assert upload_kind(key, incoming_prefix="incoming/") is kind


def test_s3_test_event_announces_no_upload():
    (body,) = bodies(load_event("sqs_s3_test_event.json"))

    assert parse(body) == []


def test_objects_the_system_writes_announce_no_upload():
    assert [upload for body in bodies(load_event("sqs_s3_system_keys.json")) for upload in parse(body)] == []


def test_events_from_another_bucket_announce_no_upload():
    notification = s3_notification("incoming/a.png", "e", "01")
    notification["Records"][0]["s3"]["bucket"]["name"] = "another-bucket"

    assert parse(notification) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("this is not JSON", "body is not JSON"),
        ("[1, 2]", "body is a JSON list, expected an object"),
        ('{"Message": "hello"}', "no 'Records' list"),
        (
            '{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}}}]}',
            "record 0 is not an S3 event record",
        ),
    ],
)
def test_a_body_that_is_no_s3_notification_is_malformed(body, message):
    with pytest.raises(MalformedMessage, match=message):
        parse(body)


def test_images_of_an_invocation_form_one_group_with_the_messages_of_each():
    a, b = image("incoming/a.png"), image("incoming/b.png")

    (group,) = group_uploads([("m1", [a]), ("m2", [b]), ("m3", [a])])

    assert (group.kind, group.uploads) == (UploadKind.IMAGE, (a, b))
    assert group.message_ids_by_upload == {a: {"m1", "m3"}, b: {"m2"}}
    assert group.message_ids == {"m1", "m2", "m3"}


def test_each_cifar_file_and_manifest_is_a_group_by_itself():
    cifar = [Upload(BUCKET, f"incoming/{name}.bin", "e", "01", UploadKind.CIFAR_BATCH) for name in ("a", "b")]
    manifest = Upload(BUCKET, "incoming/run.json", "e", "02", UploadKind.MANIFEST)

    groups = group_uploads([("m1", cifar), ("m2", [manifest])])

    assert [[upload.key for upload in group.uploads] for group in groups] == [
        ["incoming/a.bin"],
        ["incoming/b.bin"],
        ["incoming/run.json"],
    ]


def test_duplicate_events_in_one_invocation_are_one_upload():
    uploads = [image("incoming/a.png"), image("incoming/b.png")]

    (group,) = group_uploads([("m1", uploads), ("m2", uploads)])

    assert group.uploads == tuple(uploads)


def test_upload_identity_is_bucket_key_etag_and_sequencer():
    upload = image("incoming/a.png", "0055AED6DCD90281E5")
    variants = [
        Upload("another-bucket", upload.key, upload.etag, upload.sequencer, upload.kind),
        Upload(upload.bucket, "incoming/b.png", upload.etag, upload.sequencer, upload.kind),
        Upload(upload.bucket, upload.key, "another-etag", upload.sequencer, upload.kind),
        image("incoming/a.png", "0055AED6DCD90281F0"),  # the same bytes uploaded again: a new sequencer
    ]

    assert image("incoming/a.png", "0055AED6DCD90281E5").identity == upload.identity
    assert len({upload.identity, *(variant.identity for variant in variants)}) == 5


def test_a_new_batch_id_starts_with_its_utc_time_and_has_the_configured_length():
    now = datetime(2026, 12, 1, 9, 30, 5, tzinfo=timezone.utc)

    first, second = runs.new_batch_id(now), runs.new_batch_id(now)

    assert len(first) == BATCH_ID_LENGTH and first.startswith("20261201093005")
    assert set(first) <= set("0123456789abcdef")
    assert first != second


@pytest.mark.parametrize("attempt", [1, 2, 9])
def test_run_ids_round_trip_and_give_each_attempt_its_own_output(attempt):
    batch_id = runs.new_batch_id(datetime(2026, 12, 1, tzinfo=timezone.utc))

    assert runs.parse_run_id(runs.run_id(batch_id, attempt)) == (batch_id, attempt)
    assert runs.output_key("results/", batch_id, attempt) == (
        f"results/{batch_id}/" if attempt == 1 else f"results/{batch_id}-{attempt}/"
    )
    assert runs.manifest_key("manifests/", batch_id) == f"manifests/{batch_id}.json"


@pytest.mark.parametrize("text", ["", "short", "20261201093005abcdef-1", "20261201093005abcdef-02", "20261201093005abc_ef"])
def test_text_that_is_no_run_id_is_refused(text):
    assert runs.parse_run_id(text) is None


MANIFEST_KEY = "incoming/run.json"
ALLOWED = ("incoming/", "staged/")


def read_manifest(body: bytes) -> list:
    return user_manifest_objects(body, key=MANIFEST_KEY, bucket="b", allowed_prefixes=ALLOWED)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "is not JSON"),
        (b"[]", "must be a non-empty JSON list"),
        (b'{"objects": "s3://b/incoming/a.png"}', "must be a non-empty JSON list"),
        (b'{"items": ["s3://b/incoming/a.png"]}', "must be a non-empty JSON list"),
        (b'["s3://b/incoming/a.png", "datasets/b.png", 3]', r"entry 1 \('datasets/b.png'\) is not in the data bucket"),
        (b'["s3://b/incoming/a.png", 3]', "entry 1 is a int, not a URI"),
        # Reliability review #10: a manifest reads only what an uploader may upload, never what the nodes may read.
        (b'["s3://other-bucket/incoming/a.png"]', r"entry 0 \('s3://other-bucket/incoming/a.png'\) is not in the data"),
        (b'["s3://b/models/default/weights.bin"]', r"\('s3://b/models/default/weights.bin'\) is outside the allowed"),
        (b'["s3://b/results/x/summary.json"]', "is outside the allowed prefixes"),
        (b'["s3://b/manifests/20261201000000abcdef.json"]', "is outside the allowed prefixes"),
        (b'["s3://b/incoming/../models/default/model.onnx"]', r"has an empty, '.' or '..' path segment"),
        (b'["s3://b/staged//etc/passwd.png"]', r"has an empty, '.' or '..' path segment"),
        (b'[{"uri": "s3://b/incoming/a.png", "sha": "x"}]', r"entry 0 has unknown fields \['sha'\]"),
        (b'[{"uri": "s3://b/incoming/a.png", "etag": 7}]', "has an etag or version_id that is not a string"),
        (b'[{"etag": "abc"}]', "entry 0 is a NoneType, not a URI"),
    ],
)
def test_unusable_uploaded_manifest_says_why(body, message):
    with pytest.raises(UnusableUserManifest, match=message) as raised:
        read_manifest(body)
    assert MANIFEST_KEY in str(raised.value)


@pytest.mark.parametrize(
    "document",
    [
        ["s3://b/incoming/a.png", "s3://b/staged/photos/b.jpg"],
        {"objects": ["s3://b/incoming/a.png", "s3://b/staged/photos/b.jpg"], "note": "ignored"},
    ],
)
def test_uploaded_manifest_lists_its_objects(document):
    assert read_manifest(json.dumps(document).encode()) == ["s3://b/incoming/a.png", "s3://b/staged/photos/b.jpg"]


def test_uploaded_manifest_may_pin_versions_with_entry_objects():
    entries = [{"uri": "s3://b/staged/a.png", "etag": "9b2cf535f27731c974343645a3985328", "version_id": "3HL4kqtJ"}]

    assert read_manifest(json.dumps(entries).encode()) == entries


def test_a_staged_object_is_never_an_upload():
    """Reliability review #4: images a manifest lists live under staged/, which must never start a run of their own."""
    assert upload_kind("staged/run-1/a.png", incoming_prefix="incoming/") is None
    assert upload_kind("staged/run-1/list.json", incoming_prefix="incoming/") is None


def test_a_manifest_entry_names_the_uploaded_version():
    plain = Upload(bucket="b", key="incoming/a.png", etag="e1", sequencer="0A", kind=UploadKind.IMAGE)
    versioned = Upload(
        bucket="b", key="incoming/a.png", etag="e1", sequencer="0A", kind=UploadKind.IMAGE, version_id="v1"
    )

    assert manifest_entry(plain) == {"uri": "s3://b/incoming/a.png", "etag": "e1"}
    assert manifest_entry(versioned) == {"uri": "s3://b/incoming/a.png", "etag": "e1", "version_id": "v1"}


def test_of_two_uploads_of_one_key_the_later_by_sequencer_is_listed():
    """S3 sequencers compare as hex once padded: '0FF' < '100' although 'F' > '1' at the first differing place."""
    earlier = Upload(bucket="b", key="incoming/a.png", etag="old", sequencer="0FF", kind=UploadKind.IMAGE)
    later = Upload(bucket="b", key="incoming/a.png", etag="new", sequencer="100", kind=UploadKind.IMAGE)
    other = Upload(bucket="b", key="incoming/0.png", etag="x", sequencer="1", kind=UploadKind.IMAGE)

    assert latest_per_key([later, other, earlier]) == [other, later]
    assert latest_per_key([earlier, later]) == [later]


def test_the_version_id_of_an_s3_event_is_kept():
    body = json.loads(load_event("sqs_s3_put_image.json")["Records"][0]["body"])
    body["Records"][0]["s3"]["object"]["versionId"] = "3HL4kqtJlcpXroDTDmJ"

    (parsed,) = parse_message_body(json.dumps(body), bucket=body["Records"][0]["s3"]["bucket"]["name"],
                                   incoming_prefix="incoming/")  # fmt: skip

    assert parsed.version_id == "3HL4kqtJlcpXroDTDmJ"


# --- step events (the EventBridge rule sends this stack's cancelled and interrupted steps to the queue) ---------------


@pytest.mark.parametrize(("suffix", "attempt"), [("", 1), ("-2", 2)])
def test_a_cancelled_step_event_names_its_batch_and_attempt(suffix, attempt):
    event = step_status_event(f"mxnet-inference-20261125100000abcdef{suffix}", "CANCELLED", cluster_id="j-1ABC")

    parsed = parse_step_event(json.dumps(event), step_name_prefix="mxnet-inference-")

    assert parsed == StepEnded(
        batch_id="20261125100000abcdef",
        attempt=attempt,
        state="CANCELLED",
        step_id="s-ZYXWVUTSRQPON",
        cluster_id="j-1ABC",
        time=datetime(2026, 11, 25, 10, 20, tzinfo=timezone.utc),  # the fixture's EventBridge time
    )


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("mxnet-inference-20261125100000abcdef", "COMPLETED"),
        ("mxnet-inference-20261125100000abcdef", "FAILED"),
        ("another-stack-20261125100000abcdef", "CANCELLED"),
        ("mxnet-inference-not-a-run-id", "CANCELLED"),
    ],
)
def test_step_events_that_are_not_retried_parse_to_nothing(name, state):
    event = step_status_event(name, state, cluster_id="j-1ABC")

    assert parse_step_event(json.dumps(event), step_name_prefix="mxnet-inference-") is None


def test_an_s3_notification_is_no_step_event():
    (body,) = bodies(load_event("sqs_s3_put_image.json"))

    assert parse_step_event(json.dumps(body), step_name_prefix="mxnet-inference-") is None
