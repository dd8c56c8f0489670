"""Manifests over read-only input locations (issue 18, part 1): the trigger accepts entries under the stack's
INPUT_LOCATIONS, and still refuses every other bucket and prefix (reliability review #10). moto's S3, EMR and DynamoDB
in-process; what it cannot show: that the nodes' real IAM role can read the second bucket (the synthesized grant is
tested in tests/infra/test_infra_input_locations.py)."""

from __future__ import annotations

import json

import pytest
from promises import invoke
from trigger_helpers import BUCKET, base_environment, failed_message_ids, manifest_objects, submitted_steps, upload

from submitter import UnusableUserManifest, user_manifest_objects
from trigger_settings import SettingsError, TriggerSettings

SECOND_BUCKET = "amzn-s3-demo-bucket2"
LOCATIONS = (f"s3://{SECOND_BUCKET}/photos/", f"s3://{SECOND_BUCKET}/more/2026/")


def read(document, locations=LOCATIONS) -> list:
    return user_manifest_objects(
        json.dumps(document).encode(),
        key="incoming/runs/r.json",
        bucket=BUCKET,
        allowed_prefixes=("incoming/", "staged/"),
        input_locations=locations,
    )


def test_the_environment_names_the_input_locations():
    settings = TriggerSettings.from_environment(
        base_environment(CLUSTER_ID="j-2AXXXXXXGAPLF", INPUT_LOCATIONS=json.dumps(list(LOCATIONS)))
    )
    assert settings.input_locations == LOCATIONS
    assert TriggerSettings.from_environment(base_environment(CLUSTER_ID="j-2AXXXXXXGAPLF")).input_locations == ()


@pytest.mark.parametrize(
    "text", ["not json", '"s3://b/p/"', "[]", '["s3://b/p"]', '["https://b/p/"]', "[3]", '["s3://"]', '["s3:///p/"]']
)
def test_a_wrong_input_locations_variable_is_named(text):
    with pytest.raises(SettingsError, match="INPUT_LOCATIONS"):
        TriggerSettings.from_environment(base_environment(CLUSTER_ID="j-2AXXXXXXGAPLF", INPUT_LOCATIONS=text))


def test_entries_in_the_input_locations_are_accepted_beside_the_stacks_own_prefixes():
    entries = [
        f"s3://{SECOND_BUCKET}/photos/cat.jpg",
        {"uri": f"s3://{SECOND_BUCKET}/more/2026/a/dog.png", "etag": "9b2cf535f27731c974343645a3985328"},
        f"s3://{BUCKET}/staged/x.png",
    ]
    assert read(entries) == entries


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (f"s3://{SECOND_BUCKET}/other/cat.jpg", "is not in the data bucket or an input location"),
        (f"s3://{SECOND_BUCKET}/photosX/cat.jpg", "is not in the data bucket or an input location"),
        (f"s3://{SECOND_BUCKET}/more/cat.jpg", "is not in the data bucket or an input location"),
        (f"s3://{SECOND_BUCKET}/photos/../secrets/key.png", r"has an empty, '.' or '..' path segment"),
        (f"s3://{SECOND_BUCKET}/photos//cat.png", r"has an empty, '.' or '..' path segment"),
        ("s3://amzn-s3-demo-bucket3/photos/cat.jpg", "is not in the data bucket"),
    ],
)
def test_entries_outside_the_input_locations_are_refused(uri, message):
    with pytest.raises(UnusableUserManifest, match=message) as raised:
        read([uri])
    assert LOCATIONS[0] in str(raised.value)  # the message lists where entries may be


def test_an_input_location_in_the_data_bucket_admits_nothing_outside_incoming_and_staged():
    with pytest.raises(UnusableUserManifest, match="is outside the allowed prefixes"):
        read([f"s3://{BUCKET}/models/default/model.onnx"], locations=(f"s3://{BUCKET}/",))


def test_without_input_locations_another_bucket_is_refused_as_before():
    with pytest.raises(UnusableUserManifest, match="is not in the data bucket"):
        read([f"s3://{SECOND_BUCKET}/photos/cat.jpg"], locations=())


def test_an_uploaded_manifest_over_an_input_location_runs_those_objects(aws, persistent_cluster, load_handler):
    aws.s3.create_bucket(Bucket=SECOND_BUCKET)
    listed = [f"s3://{SECOND_BUCKET}/photos/{index}.jpg" for index in range(3)]
    handler = load_handler(
        base_environment(CLUSTER_ID=persistent_cluster, INPUT_LOCATIONS=json.dumps(list(LOCATIONS)))
    )
    notification = upload(aws.s3, "incoming/runs/photos.json", json.dumps({"objects": listed}).encode(), sequence=1)

    assert invoke(handler, {"m-manifest": notification}) == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_objects(aws.s3, step) == listed


def test_the_same_manifest_is_refused_by_a_stack_without_input_locations(aws, persistent_cluster, load_handler):
    handler = load_handler(base_environment(CLUSTER_ID=persistent_cluster))
    listed = [f"s3://{SECOND_BUCKET}/photos/0.jpg"]
    notification = upload(aws.s3, "incoming/runs/photos.json", json.dumps(listed).encode(), sequence=1)

    assert failed_message_ids(invoke(handler, {"m-manifest": notification})) == []  # refused for good, reported
    assert submitted_steps(aws.emr, persistent_cluster) == []
