"""Upload -> S3 notification -> SQS -> trigger handler -> EMR step -> that step's own arguments run by the real job.

Everything AWS is a moto server on loopback; Spark, MXNet and the images are real. What this cannot prove: EMR really
running the step (moto's steps never run, so the test runs the step's arguments itself), EMRFS writing to s3:// (the
output is redirected to a local path, the one argument changed), and IAM.
"""

from __future__ import annotations

import glob
import os
import sys

import pyarrow.parquet as pq
import pytest
from trigger_helpers import base_environment

import emr_step
from trigger_helpers import (BUCKET, FakeLambdaContext, aws_clients, create_cluster, create_function_resources,
                             queue_uploads_to_sqs, receive_lambda_event, submitted_steps)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

pytestmark = pytest.mark.spark


def _upload_model_package(s3, tmp_path) -> str:
    from job.model_package import export_gluon, zoo_resnet18

    directory = tmp_path / "model"
    export_gluon(zoo_resnet18(10, seed=3), str(directory), name="untrained", input_shape=(3, 32, 32),
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), labels=[f"c{i}" for i in range(10)], trained=False)
    for name in os.listdir(directory):
        s3.upload_file(str(directory / name), BUCKET, f"models/resnet18/{name}")
    return f"s3://{BUCKET}/models/resnet18/"


def test_every_uploaded_image_gets_exactly_one_row(moto_server_url, load_handler, tmp_path):
    from job.cli import main
    from job.sample_data import foolbox_cifar10

    wheels = glob.glob(os.path.join(REPO, "build", "data", "foolbox-3.3.4-*.whl"))
    assert wheels, "run `make data` (make test does): the CIFAR-10 sample images come from the foolbox wheel"
    aws = aws_clients()
    create_function_resources(aws)
    model_uri = _upload_model_package(aws.s3, tmp_path)
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    queue_url = queue_uploads_to_sqs(aws, prefix="incoming/")
    keys = []
    for position, (name, data, _) in enumerate(foolbox_cifar10(wheels[0])):
        key = f"incoming/holiday photos/{'café ' if position % 3 == 0 else ''}{name}"  # URL-encoded in the events
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=data)
        keys.append(key)
    handler = load_handler(base_environment(CLUSTER_ID=cluster_id, MODEL_URI=model_uri))

    response = handler.lambda_handler(receive_lambda_event(aws.sqs, queue_url), FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    (step,) = submitted_steps(aws.emr, cluster_id)
    arguments = emr_step.job_arguments(step)
    output = str(tmp_path / "results")
    arguments[arguments.index("--output") + 1] = output
    assert main(arguments + ["--s3-endpoint-url", moto_server_url]) == 0
    rows = pq.read_table(os.path.join(output, "predictions")).to_pylist()
    assert sorted(row["source"] for row in rows) == sorted(f"s3://{BUCKET}/{key}" for key in keys)
    assert all(row["status"] == "ok" for row in rows)
