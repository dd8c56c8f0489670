"""`python -m infra.submit_run` over a prefix in a SECOND bucket, end to end against a loopback moto server (issue 18):
the command lists the prefix and writes its manifest under incoming/runs/, moto's S3 sends the notification to SQS,
and the trigger handler turns it into one step whose manifest lists exactly those objects. Run twice with the same run
name, it gives one run. What moto cannot show: real IAM (the caller's own credentials listing their bucket, the uploader
policy writing incoming/), and S3's real If-None-Match under a race (moto checks it per request)."""

from __future__ import annotations

import json
import re
import sys
import threading
from pathlib import Path

import boto3
import emr_step
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError
from trigger_helpers import (
    BUCKET,
    FakeLambdaContext,
    aws_clients,
    base_environment,
    create_cluster,
    create_function_resources,
    manifest_entries,
    queue_uploads_to_sqs,
    read_json,
    receive_lambda_event,
    submitted_steps,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from infra import submit_run  # noqa: E402

SECOND_BUCKET = "amzn-s3-demo-bucket2"
PHOTOS = f"s3://{SECOND_BUCKET}/photos/"


@pytest.fixture
def stack(moto_server_url, load_handler):
    """The stack's bucket, claims table, topic and persistent cluster on the server, with S3 notifications to a queue,
    and a second bucket of the user's holding images (and an object that is no image) under photos/."""
    return make_stack(load_handler)


def make_stack(load_handler):
    aws = aws_clients()
    create_function_resources(aws)
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    queue_url = queue_uploads_to_sqs(aws, prefix="incoming/")
    aws.s3.create_bucket(Bucket=SECOND_BUCKET)
    etags = {}
    for name in ("a.jpg", "b.PNG", "sub/c.jpeg"):
        key = f"photos/{name}"
        etags[f"s3://{SECOND_BUCKET}/{key}"] = aws.s3.put_object(Bucket=SECOND_BUCKET, Key=key, Body=name.encode())[
            "ETag"
        ].strip('"')
    aws.s3.put_object(Bucket=SECOND_BUCKET, Key="photos/README.txt", Body=b"not an image")
    aws.s3.put_object(Bucket=SECOND_BUCKET, Key="other/d.jpg", Body=b"outside the prefix")
    handler = load_handler(base_environment(CLUSTER_ID=cluster_id, INPUT_LOCATIONS=json.dumps([PHOTOS])))
    return aws, cluster_id, queue_url, handler, etags


def deliver(aws, queue_url, handler) -> dict:
    """Hand the queued notifications to the handler as Lambda's poller would; None when the queue is empty."""
    event = receive_lambda_event(aws.sqs, queue_url)
    return handler.lambda_handler(event, FakeLambdaContext()) if event["Records"] else None


def test_a_run_over_a_prefix_in_a_second_bucket_becomes_one_step_listing_exactly_those_objects(stack, capsys):
    aws, cluster_id, queue_url, handler, etags = stack

    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "photos-1", PHOTOS]) == 0
    (part,) = re.findall(r"^submitted (\S+)$", capsys.readouterr().out, flags=re.MULTILINE)
    assert re.fullmatch(rf"s3://{BUCKET}/incoming/runs/photos-1/[0-9a-f]{{16}}/part-00001\.json", part)
    assert deliver(aws, queue_url, handler) == {"batchItemFailures": []}

    (step,) = submitted_steps(aws.emr, cluster_id)
    assert manifest_entries(aws.s3, step) == [{"uri": uri, "etag": etag} for uri, etag in sorted(etags.items())]
    arguments = emr_step.job_arguments(step)
    batch_manifest = read_json(aws.s3, arguments[arguments.index("--manifest") + 1].removeprefix(f"s3://{BUCKET}/"))
    assert batch_manifest["source"] == {
        "kind": "run",
        "manifest": part,
        "input": PHOTOS,
        "run_name": "photos-1",
    }


def test_the_same_command_twice_with_the_same_run_name_gives_one_run(stack, capsys):
    aws, cluster_id, queue_url, handler, _ = stack

    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "photos-1", PHOTOS]) == 0
    assert deliver(aws, queue_url, handler) == {"batchItemFailures": []}
    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "photos-1", PHOTOS]) == 0
    assert "run photos-1 was already submitted" in capsys.readouterr().out
    assert deliver(aws, queue_url, handler) is None  # nothing was written, so nothing was notified

    assert len(submitted_steps(aws.emr, cluster_id)) == 1


def test_without_a_run_name_a_repeated_command_is_one_run_and_a_new_name_is_a_second(stack):
    aws, cluster_id, queue_url, handler, _ = stack

    for _ in range(2):
        assert submit_run.main(["--data-bucket", BUCKET, PHOTOS]) == 0
        deliver(aws, queue_url, handler)
    assert len(submitted_steps(aws.emr, cluster_id)) == 1
    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "again", PHOTOS]) == 0
    assert deliver(aws, queue_url, handler) == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, cluster_id)) == 2


def test_at_most_max_entries_per_manifest_several_manifests_for_more(stack):
    aws, cluster_id, queue_url, handler, etags = stack

    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "small", "--max-entries", "2", PHOTOS]) == 0
    assert deliver(aws, queue_url, handler) == {"batchItemFailures": []}

    steps = submitted_steps(aws.emr, cluster_id)
    listed = [entry["uri"] for step in steps for entry in manifest_entries(aws.s3, step)]
    assert len(steps) == 2 and sorted(listed) == sorted(etags)


def test_a_manifest_in_the_second_bucket_is_submitted_as_it_is(stack):
    aws, cluster_id, queue_url, handler, etags = stack
    entries = sorted(etags)[:2]
    aws.s3.put_object(Bucket=SECOND_BUCKET, Key="photos/list.json", Body=json.dumps(entries).encode())

    assert submit_run.main(["--data-bucket", BUCKET, f"s3://{SECOND_BUCKET}/photos/list.json"]) == 0
    assert deliver(aws, queue_url, handler) == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, cluster_id)
    assert manifest_entries(aws.s3, step) == entries


def test_on_the_stacks_bucket_the_command_only_puts_objects_as_the_uploader_policy_allows(stack, monkeypatch):
    """The uploader policy grants s3:PutObject on incoming/ and nothing to read there: the command makes no other call
    on the data bucket, also when the run exists already (If-None-Match answers that)."""
    calls = []

    def recording_client():
        client = boto3.client("s3")
        client.meta.events.register(
            "before-parameter-build.s3.*",
            lambda params, model, **_: calls.append((model.name, params.get("Bucket"))),
        )
        return client

    monkeypatch.setattr(submit_run, "s3_client", recording_client)
    for _ in range(2):
        assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "photos-1", PHOTOS]) == 0

    assert {name for name, bucket in calls if bucket == BUCKET} == {"PutObject"}


def test_a_redelivered_notification_of_the_runs_manifest_is_one_run(stack):
    """SQS delivers at least once: the manifest's notification handled twice (a redelivery) submits one step."""
    aws, cluster_id, queue_url, handler, _ = stack
    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "photos-1", PHOTOS]) == 0
    event = receive_lambda_event(aws.sqs, queue_url)

    for _ in range(2):
        assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}

    assert len(submitted_steps(aws.emr, cluster_id)) == 1


def test_two_commands_at_once_with_one_run_name_write_one_manifest(serialized_moto_server_url, load_handler):
    """Two submissions racing on one run name: If-None-Match lets one write each part, so there is one upload and one
    run. The server handles one request at a time, as S3 makes each conditional write atomic."""
    aws, cluster_id, queue_url, handler, _ = make_stack(load_handler)
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(submit_run.main(["--data-bucket", BUCKET, "--run-name", "race", PHOTOS]))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [0, 0]
    event = receive_lambda_event(aws.sqs, queue_url)
    created = [json.loads(record["body"]).get("Records") for record in event["Records"]]
    assert len([records for records in created if records]) == 1  # one object created (besides S3's test event)
    assert handler.lambda_handler(event, FakeLambdaContext()) == {"batchItemFailures": []}
    assert len(submitted_steps(aws.emr, cluster_id)) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["s3://amzn-s3-demo-bucket9/photos/"], "NoSuchBucket"),
        ([f"s3://{SECOND_BUCKET}/missing.json"], "NoSuchKey"),
        ([f"s3://{SECOND_BUCKET}/empty/"], "error: no images"),
        ([f"s3://{SECOND_BUCKET}/photos"], "a prefix ends with '/'"),
        (["photos/"], "expected s3://bucket/prefix/"),
        (["--run-name", "../x", PHOTOS], "--run-name '../x'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(stack, capsys, arguments, message):
    assert submit_run.main(["--data-bucket", BUCKET, *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_access_denied_is_one_line_and_exit_2(stack, capsys, monkeypatch):
    """moto grants everything, so the refusal is made by a botocore hook that answers as S3 does (403 AccessDenied)."""
    def denying_client():
        client = boto3.client("s3")

        def deny(**_):
            from botocore.awsrequest import AWSResponse

            body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
            return AWSResponse("https://s3", 403, {}, type("Raw", (), {"stream": lambda *a, **k: [body]})())

        client.meta.events.register("before-send.s3.ListObjectsV2", deny)
        return client

    monkeypatch.setattr(submit_run, "s3_client", denying_client)
    assert submit_run.main(["--data-bucket", BUCKET, PHOTOS]) == 2
    error = capsys.readouterr().err
    assert "AccessDenied" in error and error.count("\n") == 1


def test_no_credentials_is_one_line_and_exit_2(moto_server_url, monkeypatch, capsys, tmp_path):
    """No credential source at all (environment, files, instance metadata); the endpoint is the loopback server, so a
    request sent without credentials could not reach AWS either."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    assert submit_run.main(["--data-bucket", BUCKET, PHOTOS]) == 2
    error = capsys.readouterr().err
    assert "no AWS credentials" in error and error.count("\n") == 1


def test_a_submission_that_stopped_part_way_is_completed_without_losing_an_object_added_since(stack):
    """Final review R1: a submission wrote part 1 of 2 and stopped (its connection failed before part 2); an object
    was added to the prefix before the command ran again. The parts of the second submission must not be cut from the
    new listing under the first one's keys (part 1 kept, part 2 re-cut: the new object fell between them and never
    ran): every object listed now is in a step. The stop is a botocore event hook on the command's client."""
    aws, cluster_id, queue_url, handler, etags = stack
    stopping = boto3.client("s3")

    def connection_lost_before_part_2(params, **_):
        if params["url_path"].endswith("/part-00002.json"):
            raise EndpointConnectionError(endpoint_url=params["url"])

    stopping.meta.events.register("before-call.s3.PutObject", connection_lost_before_part_2)
    with pytest.raises(EndpointConnectionError):
        submit_run.submit(stopping, input_uri=PHOTOS, data_bucket=BUCKET, run_name="photos-1", max_entries=2)
    added = f"s3://{SECOND_BUCKET}/photos/0.jpg"  # lists first, so a re-cut shifts every part's entries
    aws.s3.put_object(Bucket=SECOND_BUCKET, Key="photos/0.jpg", Body=b"added after the first submission")

    written = submit_run.submit(aws.s3, input_uri=PHOTOS, data_bucket=BUCKET, run_name="photos-1", max_entries=2)

    assert len(written) == 2  # a part cut from another listing is never taken for one of these
    while deliver(aws, queue_url, handler) is not None:
        pass
    listed = [entry["uri"] for step in submitted_steps(aws.emr, cluster_id) for entry in manifest_entries(aws.s3, step)]
    assert set(listed) == {added, *etags}


def test_a_conditional_write_in_progress_elsewhere_is_asked_again_not_taken_as_written(stack):
    """Final review R2: S3 answers 409 ConditionalRequestConflict to an If-None-Match PUT while another conditional
    write of the key is in progress; the command must ask again (the other write may fail), not report the part as
    written by someone else and leave it unwritten. The 409 is answered by a botocore event hook (moto never sends
    it); what this cannot show is how long S3's conflicts last."""
    aws, cluster_id, queue_url, handler, etags = stack
    conflicted = boto3.client("s3")
    answers = []

    def conflict_once(**_):
        if not answers:
            answers.append(409)
            error = {"Error": {"Code": "ConditionalRequestConflict", "Message": "A conflicting operation"}}
            return AWSResponse(f"http://127.0.0.1/{BUCKET}", 409, {}, None), error
        return None

    conflicted.meta.events.register("before-call.s3.PutObject", conflict_once)

    written = submit_run.submit(conflicted, input_uri=PHOTOS, data_bucket=BUCKET, run_name="photos-1", max_entries=10)

    assert answers == [409] and len(written) == 1  # asked again after one pause of PUT_RETRY_SECONDS
    assert deliver(aws, queue_url, handler) == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, cluster_id)
    assert sorted(entry["uri"] for entry in manifest_entries(aws.s3, step)) == sorted(etags)


def test_a_conflict_that_lasts_is_one_line_and_exit_2(stack, monkeypatch, capsys):
    conflicted = boto3.client("s3")
    error = {"Error": {"Code": "ConditionalRequestConflict", "Message": "A conflicting operation"}}
    conflicted.meta.events.register(
        "before-call.s3.PutObject", lambda **_: (AWSResponse(f"http://127.0.0.1/{BUCKET}", 409, {}, None), error)
    )
    monkeypatch.setattr(submit_run, "s3_client", lambda: conflicted)
    monkeypatch.setattr(submit_run, "pause", lambda seconds: None)

    assert submit_run.main(["--data-bucket", BUCKET, "--run-name", "photos-1", PHOTOS]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"after {submit_run.PUT_ATTEMPTS} attempts (409 ConditionalRequestConflict); run the command again" in line
