"""The handler against a moto *server* on loopback, reached through AWS_ENDPOINT_URL as any boto3 client is.

This is the set-up the integration test with the real job uses (the job then reads the inputs from the same server). What it
adds over the in-process mock: the function's module-level clients honour AWS_ENDPOINT_URL, and S3 notifications travel
to SQS as HTTP messages. moto's limits (no step ever runs, no EMR step-limit enforcement) apply as in the other tests.
"""

from __future__ import annotations

from trigger_helpers import base_environment

import emr_step
from trigger_helpers import (
    BUCKET,
    FakeLambdaContext,
    aws_clients,
    create_cluster,
    create_function_resources,
    entry_uris,
    forget_trigger_modules,
    queue_uploads_to_sqs,
    read_json,
    receive_lambda_event,
    submitted_steps,
)


def test_uploads_to_a_moto_server_become_one_step_whose_manifest_lists_them(moto_server_url, load_handler):
    aws = aws_clients()
    create_function_resources(aws)
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    queue_url = queue_uploads_to_sqs(aws, prefix="incoming/")
    keys = [f"incoming/run/image {index}.png" for index in range(3)]
    for key in keys:
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=b"png bytes")
    handler = load_handler(base_environment(CLUSTER_ID=cluster_id))

    response = handler.lambda_handler(receive_lambda_event(aws.sqs, queue_url), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, cluster_id)
    arguments = emr_step.job_arguments(step)
    manifest_uri = arguments[arguments.index("--manifest") + 1]
    manifest_key = manifest_uri.removeprefix(f"s3://{BUCKET}/")
    assert entry_uris(read_json(aws.s3, manifest_key)["objects"]) == [f"s3://{BUCKET}/{key}" for key in keys]


def test_the_measurement_harness_counts_one_claim_per_upload(moto_server_url, monkeypatch, request):
    """Smoke test of tests/trigger/measure_uploads.py (the README's figure for 10,000 uploads): it runs and its request
    counts are the handler's. Its timings are printed by the script, never asserted."""
    import measure_uploads

    request.addfinalizer(forget_trigger_modules)
    result = measure_uploads.measure(20, moto_server_url, monkeypatch.setenv)

    assert result["first_delivery"]["requests"]["dynamodb.PutItem"] == 20 + 1
    assert result["second_delivery_all_duplicates"]["requests"]["dynamodb.PutItem"] == 20
    assert result["first_delivery"]["failed_records"] == result["second_delivery_all_duplicates"]["failed_records"] == 0
