"""The handler against moto (S3, EMR, SQS) with the stack's persistent cluster.

What moto cannot prove here: its steps never leave PENDING/RUNNING and it enforces neither EMR's 256 active steps nor the
10,240-character step strings nor the accepting cluster states on AddJobFlowSteps; `cancel_steps` is not implemented.
The handler's own checks are what these tests exercise; the limits themselves are EMR's.
"""

from __future__ import annotations

import json

import emr_step
from trigger_helpers import (
    BUCKET,
    JOB_OPTIONS,
    FakeLambdaContext,
    batch_records,
    entry_uris,
    load_event,
    object_keys,
    queue_uploads_to_sqs,
    read_json,
    receive_lambda_event,
    sqs_event,
    submitted_steps,
    upload,
)


def expected_job_arguments(batch_id: str) -> list[str]:
    return [
        "--manifest", f"s3://{BUCKET}/manifests/{batch_id}.json",
        "--model", f"s3://{BUCKET}/models/resnet18/",
        "--output", f"s3://{BUCKET}/results/{batch_id}/",
        "--device", "cpu",
        "--batch-size", "128",
        "--top-k", "3",
        "--max-failure-ratio", "0.05",
        "--max-batch-bytes", str(JOB_OPTIONS["max_batch_bytes"]),
        "--run-record", f"s3://{BUCKET}/runs/{batch_id}.json",  # the runs table's object (infra/catalog.py)
    ]  # fmt: skip


def only_manifest(aws) -> tuple[str, dict]:
    (key,) = object_keys(aws.s3, "manifests/")
    return key, read_json(aws.s3, key)


def test_upload_notified_through_sqs_becomes_one_step_with_the_job_arguments(
    aws, persistent_cluster, persistent_handler
):
    queue_url = queue_uploads_to_sqs(aws, prefix="incoming/")
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/cat one.png", Body=b"png bytes")
    event = receive_lambda_event(aws.sqs, queue_url)

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    _, manifest = only_manifest(aws)
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert step["Name"] == f"mxnet-inference-{manifest['batch_id']}"
    assert emr_step.job_arguments(step) == expected_job_arguments(manifest["batch_id"])
    etag = aws.s3.head_object(Bucket=BUCKET, Key="incoming/cat one.png")["ETag"].strip('"')
    # The uploaded version, not whatever the key holds when the job runs (reliability review #16): the job reads it
    # with IfMatch and writes changed_since_upload when the object was overwritten since.
    assert manifest["objects"] == [{"uri": f"s3://{BUCKET}/incoming/cat one.png", "etag": etag}]


def image_notifications(aws, count: int, *, first_sequence: int = 1) -> list[dict]:
    return [
        upload(aws.s3, f"incoming/batch/img-{index:04d}.jpg", b"jpeg bytes %d" % index, sequence=first_sequence + index)
        for index in range(count)
    ]


def test_thousand_image_records_in_one_invocation_become_one_step(aws, persistent_cluster, persistent_handler):
    notifications = image_notifications(aws, 1000)

    response = persistent_handler.lambda_handler(sqs_event(notifications), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1
    _, manifest = only_manifest(aws)
    assert entry_uris(manifest["objects"]) == sorted(
        f"s3://{BUCKET}/incoming/batch/img-{index:04d}.jpg" for index in range(1000)
    )


def test_step_name_and_manifest_share_the_batch_id(aws, persistent_cluster, persistent_handler):
    persistent_handler.lambda_handler(sqs_event(image_notifications(aws, 3)), FakeLambdaContext())

    manifest_key, manifest = only_manifest(aws)
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert manifest_key == f"manifests/{manifest['batch_id']}.json"
    assert step["Name"] == f"mxnet-inference-{manifest['batch_id']}"


def test_s3_test_event_submits_nothing_and_is_not_a_failure(aws, persistent_cluster, persistent_handler):
    response = persistent_handler.lambda_handler(load_event("sqs_s3_test_event.json"), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert submitted_steps(aws.emr, persistent_cluster) == []
    assert object_keys(aws.s3, "manifests/") == []


def test_url_encoded_keys_reach_the_manifest_decoded(aws, persistent_cluster, persistent_handler):
    response = persistent_handler.lambda_handler(load_event("sqs_s3_encoded_keys.json"), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    _, manifest = only_manifest(aws)
    assert entry_uris(manifest["objects"]) == [
        f"s3://{BUCKET}/incoming/café ☕ 日本.png",
        f"s3://{BUCKET}/incoming/holiday photos/beach day (1).JPG",
    ]


def test_objects_under_results_manifests_artifacts_and_non_inputs_submit_nothing(
    aws, persistent_cluster, persistent_handler
):
    response = persistent_handler.lambda_handler(load_event("sqs_s3_system_keys.json"), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert submitted_steps(aws.emr, persistent_cluster) == []
    assert object_keys(aws.s3, "manifests/") == []


def test_malformed_messages_are_skipped_without_losing_the_valid_one(aws, persistent_cluster, persistent_handler):
    event = load_event("sqs_malformed_and_valid.json")

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    _, manifest = only_manifest(aws)
    assert entry_uris(manifest["objects"]) == [f"s3://{BUCKET}/incoming/cat.png"]
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_redelivered_messages_do_not_submit_the_batch_again(aws, persistent_cluster, persistent_handler):
    event = sqs_event(image_notifications(aws, 5))
    persistent_handler.lambda_handler(event, FakeLambdaContext())

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_duplicate_events_in_one_invocation_list_each_object_once(aws, persistent_cluster, persistent_handler):
    notifications = image_notifications(aws, 2)

    response = persistent_handler.lambda_handler(sqs_event(notifications + notifications), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    _, manifest = only_manifest(aws)
    assert entry_uris(manifest["objects"]) == [
        f"s3://{BUCKET}/incoming/batch/img-0000.jpg",
        f"s3://{BUCKET}/incoming/batch/img-0001.jpg",
    ]
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 1


def test_same_images_uploaded_again_are_a_new_batch(aws, persistent_cluster, persistent_handler):
    persistent_handler.lambda_handler(sqs_event(image_notifications(aws, 2)), FakeLambdaContext())

    persistent_handler.lambda_handler(sqs_event(image_notifications(aws, 2, first_sequence=100)), FakeLambdaContext())

    first, second = submitted_steps(aws.emr, persistent_cluster)
    assert first["Name"] != second["Name"]


def test_cifar_batches_and_manifests_are_batches_by_themselves(aws, persistent_cluster, persistent_handler):
    aws.s3.put_object(Bucket=BUCKET, Key="staged/a.png", Body=b"png")
    notifications = image_notifications(aws, 2) + [
        upload(aws.s3, "incoming/cifar/test_batch.bin", b"\x03" * 3073, sequence=50),
        upload(aws.s3, "incoming/run.json", b'{"objects": ["s3://%s/staged/a.png"]}' % BUCKET.encode(), sequence=51),
    ]

    response = persistent_handler.lambda_handler(sqs_event(notifications), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    manifests = [read_json(aws.s3, key) for key in object_keys(aws.s3, "manifests/")]
    assert sorted(entry_uris(manifest["objects"]) for manifest in manifests) == [
        [f"s3://{BUCKET}/incoming/batch/img-0000.jpg", f"s3://{BUCKET}/incoming/batch/img-0001.jpg"],
        [f"s3://{BUCKET}/incoming/cifar/test_batch.bin"],
        [f"s3://{BUCKET}/staged/a.png"],
    ]
    assert len(submitted_steps(aws.emr, persistent_cluster)) == 3


def test_uploaded_manifest_as_a_plain_list_is_accepted(aws, persistent_cluster, persistent_handler):
    objects = [f"s3://{BUCKET}/staged/a.png", f"s3://{BUCKET}/incoming/b.jpg"]
    notification = upload(aws.s3, "incoming/list.json", json.dumps(objects).encode(), sequence=1)

    persistent_handler.lambda_handler(sqs_event([notification]), FakeLambdaContext())

    _, manifest = only_manifest(aws)
    assert manifest["objects"] == objects


def test_unusable_uploaded_manifest_is_skipped_not_retried(aws, persistent_cluster, persistent_handler):
    notification = upload(aws.s3, "incoming/broken.json", b'{"objects": ["datasets/relative.png"]}', sequence=1)

    response = persistent_handler.lambda_handler(sqs_event([notification]), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert submitted_steps(aws.emr, persistent_cluster) == []


def test_a_batch_record_names_the_cluster_step_and_manifest(aws, persistent_cluster, persistent_handler):
    persistent_handler.lambda_handler(sqs_event(image_notifications(aws, 1)), FakeLambdaContext())

    manifest_key, manifest = only_manifest(aws)
    assert batch_records(aws.dynamodb) == {
        manifest["batch_id"]: {
            "state": "submitted",
            "attempt": 1,
            "step_name": f"mxnet-inference-{manifest['batch_id']}",
            "cluster_id": persistent_cluster,
            "manifest_key": manifest_key,
        }
    }


def spark_conf(step: dict) -> list[str]:
    """The values of the step's spark-submit --conf arguments."""
    args = step["HadoopJarStep"]["Args"]
    return [args[index + 1] for index, arg in enumerate(args) if arg == "--conf"]


def test_each_step_caps_its_executors_for_the_images_of_its_batch(aws, persistent_cluster, persistent_handler):
    """Review 2, #8: the step asks for no more executors than its images need (one per 500 images per slot of a
    4-slot executor here), so a small batch never makes managed scaling add nodes. Counted over the manifest's
    entries: an uploaded manifest of 2,001 staged images needs two executors, two uploaded images one.
    (What YARN and managed scaling then do needs an account.)"""
    per_executor = emr_step.MIN_IMAGES_PER_EXECUTOR_SLOT * JOB_OPTIONS["executor_task_slots"]
    staged = [f"s3://{BUCKET}/staged/run-1/img-{index:04d}.jpg" for index in range(per_executor + 1)]
    listed = upload(aws.s3, "incoming/run-1/list.json", json.dumps(staged).encode(), sequence=1)
    persistent_handler.lambda_handler(sqs_event([listed]), FakeLambdaContext())
    persistent_handler.lambda_handler(sqs_event(image_notifications(aws, 2, first_sequence=2)), FakeLambdaContext())

    large, small = submitted_steps(aws.emr, persistent_cluster)
    parallelism = f"spark.default.parallelism={JOB_OPTIONS['default_parallelism']}"
    assert spark_conf(large) == [parallelism, "spark.dynamicAllocation.maxExecutors=2"]
    assert spark_conf(small) == [parallelism, "spark.dynamicAllocation.maxExecutors=1"]
