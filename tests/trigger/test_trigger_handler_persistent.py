"""The handler against moto (S3, EMR, SQS) with the stack's persistent cluster.

What moto cannot prove here: its steps never leave PENDING/RUNNING and it enforces neither EMR's 256 active steps nor the
10,240-character step strings nor the accepting cluster states on AddJobFlowSteps; `cancel_steps` is not implemented.
The handler's own checks are what these tests exercise; the limits themselves are EMR's.
"""

from __future__ import annotations

import emr_step
from trigger_helpers import (
    BUCKET,
    FakeLambdaContext,
    bodies,
    failed_message_ids,
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
    ]  # fmt: skip


def only_manifest(aws) -> tuple[str, dict]:
    (key,) = [key for key in object_keys(aws.s3, "manifests/") if not key.endswith(".step.json")]
    return key, read_json(aws.s3, key)


def test_upload_notified_through_sqs_becomes_one_step_with_the_job_arguments(aws, persistent_cluster, persistent_handler):
    queue_url = queue_uploads_to_sqs(aws, prefix="incoming/")
    aws.s3.put_object(Bucket=BUCKET, Key="incoming/cat one.png", Body=b"png bytes")
    event = receive_lambda_event(aws.sqs, queue_url)

    response = persistent_handler.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    _, manifest = only_manifest(aws)
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert step["Name"] == f"mxnet-inference-{manifest['batch_id']}"
    assert emr_step.job_arguments(step) == expected_job_arguments(manifest["batch_id"])
    assert manifest["objects"] == [f"s3://{BUCKET}/incoming/cat one.png"]
