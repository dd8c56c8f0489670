"""Which objects count as uploads, how keys are decoded, and how uploads group into batches (pure functions)."""

from __future__ import annotations

import json
import random

import pytest

from submitter import UnusableUserManifest, user_manifest_objects
from trigger_helpers import BUCKET, bodies, load_event, s3_notification
from trigger_settings import BATCH_ID_LENGTH
from uploads import MalformedMessage, Upload, UploadKind, batch_id, group_into_batches, parse_message_body, upload_kind


def parse(body) -> list[Upload]:
    return parse_message_body(
        body if isinstance(body, str) else json.dumps(body), bucket=BUCKET, incoming_prefix="incoming/"
    )


def image(key: str, sequencer: str = "0055AED6DCD90281E5") -> Upload:
    return Upload(key=key, etag="0cc175b9c0f1b6a831c399e269772661", sequencer=sequencer, kind=UploadKind.IMAGE)


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


def test_images_of_an_invocation_form_one_batch_with_all_their_messages():
    (batch,) = group_into_batches([("m1", [image("incoming/a.png")]), ("m2", [image("incoming/b.png")])])

    assert (batch.kind, batch.object_keys(), batch.message_ids) == (
        UploadKind.IMAGE,
        ["incoming/a.png", "incoming/b.png"],
        {"m1", "m2"},
    )


def test_each_cifar_file_and_manifest_is_a_batch_by_itself():
    cifar = [Upload(f"incoming/{name}.bin", "e", "01", UploadKind.CIFAR_BATCH) for name in ("a", "b")]
    manifest = Upload("incoming/run.json", "e", "02", UploadKind.MANIFEST)

    batches = group_into_batches([("m1", cifar), ("m2", [manifest])])

    assert sorted(batch.object_keys() for batch in batches) == [
        ["incoming/a.bin"],
        ["incoming/b.bin"],
        ["incoming/run.json"],
    ]


def test_batch_id_does_not_depend_on_delivery_order():
    uploads = [image(f"incoming/{index}.png", f"{index:018X}") for index in range(50)]
    shuffled = uploads[:]
    random.Random(7).shuffle(shuffled)

    assert batch_id(uploads) == batch_id(shuffled)


def test_duplicate_events_do_not_change_the_batch():
    uploads = [image("incoming/a.png"), image("incoming/b.png")]

    (once,) = group_into_batches([("m1", uploads)])
    (twice,) = group_into_batches([("m1", uploads), ("m2", uploads)])

    assert (twice.batch_id, twice.object_keys()) == (once.batch_id, once.object_keys())


def test_a_new_upload_of_the_same_key_is_a_new_batch_id():
    assert batch_id([image("incoming/a.png", "0055AED6DCD90281E5")]) != batch_id(
        [image("incoming/a.png", "0055AED6DCD90281F0")]
    )


def test_batch_id_is_hex_of_the_configured_length():
    identifier = batch_id([image("incoming/a.png")])

    assert len(identifier) == BATCH_ID_LENGTH
    assert set(identifier) <= set("0123456789abcdef")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "is not JSON"),
        (b"[]", "must be a non-empty JSON list"),
        (b'{"objects": "s3://b/a.png"}', "must be a non-empty JSON list"),
        (b'{"items": ["s3://b/a.png"]}', "must be a non-empty JSON list"),
        (b'["s3://b/a.png", "datasets/b.png", 3]', "has 2 entries that are not s3:// URIs \\(first at index 1\\)"),
    ],
)
def test_unusable_uploaded_manifest_says_why(body, message):
    with pytest.raises(UnusableUserManifest, match=message):
        user_manifest_objects(body, key="incoming/run.json")


@pytest.mark.parametrize("document", [["s3://b/a.png"], {"objects": ["s3://b/a.png"], "note": "ignored"}])
def test_uploaded_manifest_lists_its_objects(document):
    assert user_manifest_objects(json.dumps(document).encode(), key="incoming/run.json") == ["s3://b/a.png"]
