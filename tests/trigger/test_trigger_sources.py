"""Each batch manifest records what the run came from (issue 18, part 3): its "source" is the uploads' common folder,
the uploaded manifest, or the input a `python -m infra.submit_run` manifest declares. moto's S3, EMR and DynamoDB
in-process; the job copies the field into summary.json (tests/job/test_job_sources.py,
tests/job/test_job_pipeline.py::test_bad_inputs_are_recorded_failures_and_the_rest_is_classified)."""

from __future__ import annotations

import json

import emr_step
import pytest
from promises import invoke
from trigger_helpers import BUCKET, read_json, submitted_steps, upload

from uploads import Upload, UploadKind, batch_source


def batch_manifest(aws, step) -> dict:
    arguments = emr_step.job_arguments(step)
    return read_json(aws.s3, arguments[arguments.index("--manifest") + 1].removeprefix(f"s3://{BUCKET}/"))


def test_an_upload_batch_records_the_uploads_common_folder(aws, persistent_cluster, persistent_handler):
    messages = {
        "m-1": upload(aws.s3, "incoming/run-1/cats/a.png", b"a", sequence=1),
        "m-2": upload(aws.s3, "incoming/run-1/dogs/b.png", b"b", sequence=2),
    }

    assert invoke(persistent_handler, messages) == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert batch_manifest(aws, step)["source"] == {
        "kind": "upload", "prefix": f"s3://{BUCKET}/incoming/run-1/", "uploads": 2
    }


def test_an_uploaded_manifest_batch_records_the_manifest(aws, persistent_cluster, persistent_handler):
    aws.s3.put_object(Bucket=BUCKET, Key="staged/a.png", Body=b"a")
    notification = upload(aws.s3, "incoming/lists/one.json", json.dumps([f"s3://{BUCKET}/staged/a.png"]).encode(),
                          sequence=1)  # fmt: skip

    assert invoke(persistent_handler, {"m-1": notification}) == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, persistent_cluster)
    assert batch_manifest(aws, step)["source"] == {
        "kind": "manifest", "manifest": f"s3://{BUCKET}/incoming/lists/one.json"
    }


MANIFEST = Upload(bucket=BUCKET, key="incoming/runs/r/part-00001.json", etag="e", sequencer="1",
                  kind=UploadKind.MANIFEST)  # fmt: skip


@pytest.mark.parametrize(
    ("declared", "expected_extra"),
    [
        ({"kind": "run", "input": "s3://their-bucket/photos/", "run_name": "r", "part": 1},
         {"kind": "run", "input": "s3://their-bucket/photos/", "run_name": "r"}),
        ({"kind": "rerun", "rerun_of": "20261201093000a1b2c3", "input": "s3://their-bucket/photos/"},
         {"kind": "rerun", "rerun_of": "20261201093000a1b2c3", "input": "s3://their-bucket/photos/"}),
        # Declared by whoever wrote the manifest: only the known kinds and string fields of bounded length are kept.
        ({"kind": "upload", "prefix": "s3://elsewhere/"}, {}),
        ({"kind": "run", "input": "x" * 2000, "run_name": ["not", "a", "string"]}, {"kind": "run"}),
        ("s3://not-an-object/", {}),
        (None, {}),
    ],
)
def test_a_declared_source_keeps_only_what_it_may_say(declared, expected_extra):
    assert batch_source(UploadKind.MANIFEST, (MANIFEST,), declared) == {
        "kind": "manifest", "manifest": f"s3://{BUCKET}/{MANIFEST.key}", **expected_extra
    }


def test_uploads_without_a_common_folder_record_the_bucket_root():
    uploads = tuple(
        Upload(bucket=BUCKET, key=key, etag="e", sequencer="1", kind=UploadKind.IMAGE)
        for key in ("incoming/a.png", "incoming-b.png")
    )
    assert batch_source(UploadKind.IMAGE, uploads)["prefix"] == f"s3://{BUCKET}/"
