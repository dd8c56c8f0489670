"""Helpers for the trigger Lambda's tests, and for the integration test that runs a submitted step through the real job.

``submitted_steps`` returns what the handler submitted to (moto's) EMR in the shape ``emr_step.build_step`` returns, so
``emr_step.job_arguments(step)`` gives the job's own command line.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

FIXTURES = Path(__file__).parent / "fixtures"
TRIGGER_FUNCTION_DIR = Path(__file__).resolve().parents[2] / "infra" / "trigger_function"
# The function's modules, imported as top-level names as in the Lambda runtime (its folder is the code root).
TRIGGER_FUNCTION_MODULES = (
    "handler", "submitter", "claims", "runs", "step_events", "uploads", "trigger_settings", "emr_step"
)
# The bucket name AWS reserves for documentation examples: it is nobody's real bucket.
BUCKET = "amzn-s3-demo-bucket"
REGION = "us-east-1"
CLUSTER_TAG = {"Key": "inference-stack", "Value": "trigger-tests"}
DEFINITION_TAG = {"Key": "inference-stack:definition", "Value": "definition-1"}
STACK_CLUSTER_TAGS = [CLUSTER_TAG, DEFINITION_TAG]  # a cluster launched from the stack's current definition
# The stack names its clusters "<stack>-<compute>" and tags them with the stack's name (CLUSTER_TAG's value).
STACK_CLUSTER_NAME = f"{CLUSTER_TAG['Value']}-cpu"
# The function's timeout plus a margin, as infra/trigger.py derives it.
CLAIM_LEASE_SECONDS = 180
QUEUE_URL = f"https://sqs.{REGION}.amazonaws.com/123456789012/trigger-uploads"
# JOB_OPTIONS as the stack writes it (every field of emr_step.JobOptions), for a cpu cluster of 24 task slots.
JOB_OPTIONS = {
    "device": "cpu", "batch_size": 128, "top_k": 3, "max_failure_ratio": 0.05, "timeout_minutes": 60,
    "default_parallelism": 24, "executor_task_slots": 4, "max_batch_bytes": 20 * 2**20,
}  # fmt: skip


def transient_environment(definition_key: str, **changes: str) -> dict[str, str]:
    """The function's environment in transient mode (``changes`` replace variables)."""
    transient = {
        "CLUSTER_MODE": "transient",
        "JOB_FLOW_DEFINITION_KEY": definition_key,
        "CLUSTER_TAG_KEY": CLUSTER_TAG["Key"],
        "CLUSTER_TAG_VALUE": CLUSTER_TAG["Value"],
        "CLUSTER_DEFINITION_TAG_KEY": DEFINITION_TAG["Key"],
        "CLUSTER_DEFINITION_TAG_VALUE": DEFINITION_TAG["Value"],
    }
    return base_environment(**{**transient, **changes})
CLAIMS_TABLE = "trigger-claims"
TOPIC_NAME = "trigger-notifications"
# moto's default account: AWS's documentation example id, nobody's real account.
TOPIC_ARN = f"arn:aws:sns:{REGION}:123456789012:{TOPIC_NAME}"
MAX_STEP_ATTEMPTS = 3


@dataclass(frozen=True)
class AwsClients:
    s3: object
    emr: object
    sqs: object
    dynamodb: object
    sns: object


def aws_clients(**client_kwargs) -> AwsClients:
    """Clients for every service the function uses, plus SQS (uploads reach the function through a queue)."""
    import boto3

    return AwsClients(
        **{name: boto3.client(name, **client_kwargs) for name in ("s3", "emr", "sqs", "dynamodb", "sns")}
    )


def create_function_resources(aws: AwsClients) -> None:
    """What the stack creates for the function: the data bucket, the claims table (with its TTL) and the topic."""
    aws.s3.create_bucket(Bucket=BUCKET)
    aws.dynamodb.create_table(
        TableName=CLAIMS_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    aws.dynamodb.update_time_to_live(
        TableName=CLAIMS_TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )
    assert aws.sns.create_topic(Name=TOPIC_NAME)["TopicArn"] == TOPIC_ARN


@dataclass(frozen=True)
class FakeLambdaContext:
    function_name: str = "trigger"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:123456789012:function:trigger"
    aws_request_id: str = "52fdfc07-2182-454f-963f-5f0f9a621d72"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000


def import_trigger_handler(module_name: str = "handler", *, forget_siblings: bool = True) -> ModuleType:
    """Import the trigger function's handler afresh from its file, as Lambda does at a cold start.

    Its module-level settings and clients are built now: set the environment and start moto first. Loading by path keeps
    another function's ``handler.py`` on sys.path from being picked instead. A second ``module_name`` (with
    ``forget_siblings=False``) gives a second function instance: its own clients, claim store and batch processor.
    """
    if str(TRIGGER_FUNCTION_DIR) not in sys.path:
        sys.path.insert(0, str(TRIGGER_FUNCTION_DIR))
    if forget_siblings:
        forget_trigger_modules()
    spec = importlib.util.spec_from_file_location(module_name, TRIGGER_FUNCTION_DIR / "handler.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def forget_trigger_modules() -> None:
    for name in TRIGGER_FUNCTION_MODULES:
        sys.modules.pop(name, None)


def load_event(name: str) -> dict:
    """An SQS event fixture (real shape: the S3 notification is a JSON string in each record's body)."""
    return json.loads((FIXTURES / name).read_text())


def bodies(event: dict) -> list[dict]:
    return [json.loads(record["body"]) for record in event["Records"]]


def sqs_event(message_bodies: list[dict | str], *, first_message_number: int = 1) -> dict:
    """An SQS event with one record per body, shaped like the fixture's record; message ids are ``msg-<n>``."""
    template = load_event("sqs_s3_put_image.json")["Records"][0]
    records = []
    for number, body in enumerate(message_bodies, start=first_message_number):
        record = copy.deepcopy(template)
        record["messageId"] = f"msg-{number}"
        record["body"] = body if isinstance(body, str) else json.dumps(body)
        records.append(record)
    return {"Records": records}


def s3_notification(key: str, etag: str, sequencer: str, *, encoded_key: str | None = None) -> dict:
    """An S3 ObjectCreated:Put notification for one object, shaped like the fixture's (the key as S3 sends it: encoded)."""
    template = json.loads(load_event("sqs_s3_put_image.json")["Records"][0]["body"])
    record = template["Records"][0]
    record["s3"]["object"].update({"key": encoded_key or key, "eTag": etag, "sequencer": sequencer})
    return template


def upload(s3, key: str, body: bytes, *, sequence: int) -> dict:
    """Put an object into moto's S3 and return the notification S3 would send for it (its real ETag)."""
    etag = s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"].strip('"')
    return s3_notification(key, etag, f"{sequence:018X}")


def failed_message_ids(response: dict) -> list[str]:
    return sorted(item["itemIdentifier"] for item in response["batchItemFailures"])


def read_json(s3, key: str):
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def object_keys(s3, prefix: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def stack_definition(**changes) -> dict:
    """The stack's transient RunJobFlow request, without Steps, as the stack uploads it (``changes`` replace keys)."""
    definition = {
        "Name": STACK_CLUSTER_NAME,
        "ReleaseLabel": "emr-7.5.0",
        "Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": False},
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "Tags": list(STACK_CLUSTER_TAGS),
    }
    definition.update(changes)
    return definition


def create_cluster(emr, *, keep_alive: bool, tags: list[dict] | None = None, name: str = STACK_CLUSTER_NAME) -> str:
    """A cluster in moto's EMR (moto starts it WAITING)."""
    return emr.run_job_flow(
        Name=name,
        ReleaseLabel="emr-7.5.0",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": keep_alive},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
        Tags=tags if tags is not None else STACK_CLUSTER_TAGS,
    )["JobFlowId"]


def submitted_steps(emr, cluster_id: str) -> list[dict]:
    """The cluster's steps, oldest first, as ``emr_step.build_step`` shapes them (Name, ActionOnFailure, HadoopJarStep)."""
    steps = []
    for page in emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
        steps.extend(page["Steps"])
    return [
        {
            "Name": step["Name"],
            "ActionOnFailure": step["ActionOnFailure"],
            "HadoopJarStep": {"Jar": step["Config"]["Jar"], "Args": step["Config"]["Args"]},
        }
        for step in reversed(steps)  # ListSteps returns the newest first
    ]


def queue_uploads_to_sqs(aws: AwsClients, *, prefix: str) -> str:
    """Make moto's S3 send ObjectCreated notifications for keys under ``prefix`` to a new queue; return its URL."""
    queue_url = aws.sqs.create_queue(QueueName="trigger-uploads")["QueueUrl"]
    queue_arn = aws.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    aws.s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )
    return queue_url


def receive_lambda_event(sqs, queue_url: str) -> dict:
    """Drain the queue into one event shaped like the one Lambda's SQS poller delivers."""
    template = load_event("sqs_s3_put_image.json")["Records"][0]
    records = []
    while messages := sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for message in messages:
            record = copy.deepcopy(template)
            record.update(messageId=message["MessageId"], receiptHandle=message["ReceiptHandle"], body=message["Body"])
            records.append(record)
    return {"Records": records}


def base_environment(**overrides: str) -> dict[str, str]:
    """The function's environment as the stack sets it, with ``overrides`` (None removes a variable)."""
    if str(TRIGGER_FUNCTION_DIR) not in sys.path:
        sys.path.insert(0, str(TRIGGER_FUNCTION_DIR))
    from trigger_settings import EMR_MAX_ACTIVE_STEPS

    environment = {
        "DATA_BUCKET": BUCKET,
        "INCOMING_PREFIX": "incoming/",
        "MANIFESTS_PREFIX": "manifests/",
        "RESULTS_PREFIX": "results/",
        "MODEL_URI": f"s3://{BUCKET}/models/resnet18/",
        "JOB_PY_FILES_URI": f"s3://{BUCKET}/artifacts/job.zip",
        "JOB_ENTRY_POINT_URI": f"s3://{BUCKET}/artifacts/spark_entry.py",
        "JOB_OPTIONS": json.dumps(JOB_OPTIONS),
        "STEP_NAME_PREFIX": "mxnet-inference-",
        "CLUSTER_MODE": "persistent",
        "MAX_ACTIVE_STEPS": str(EMR_MAX_ACTIVE_STEPS),
        "CLAIMS_TABLE": CLAIMS_TABLE,
        "CLAIM_RETENTION_DAYS": "30",
        "NOTIFICATION_TOPIC_ARN": TOPIC_ARN,
        "MAX_STEP_ATTEMPTS": str(MAX_STEP_ATTEMPTS),
        "CLAIM_LEASE_SECONDS": str(CLAIM_LEASE_SECONDS),
        "UPLOAD_QUEUE_URL": QUEUE_URL,
    }
    environment.update(overrides)
    return {name: value for name, value in environment.items() if value is not None}


def step_status_event(step_name: str, state: str, *, cluster_id: str, step_id: str = "s-ZYXWVUTSRQPON") -> dict:
    """An EventBridge "EMR Step Status Change" event as the stack's rule delivers it to the queue (the fixture's shape)."""
    event = json.loads((FIXTURES / "eventbridge_emr_step_status.json").read_text())
    event["detail"].update(name=step_name, state=state, clusterId=cluster_id, stepId=step_id)
    return event


def manifest_entries(s3, step: dict) -> list:
    """The entries of the manifest a step (as ``submitted_steps`` returns it) points at, as written."""
    import emr_step

    arguments = emr_step.job_arguments(step)
    manifest_uri = arguments[arguments.index("--manifest") + 1]
    return read_json(s3, manifest_uri.removeprefix(f"s3://{BUCKET}/"))["objects"]


def entry_uris(entries: list) -> list[str]:
    """The object URIs of manifest entries: plain URI strings, or objects {"uri", "etag", "version_id"}."""
    return [entry["uri"] if isinstance(entry, dict) else entry for entry in entries]


def manifest_objects(s3, step: dict) -> list[str]:
    """The object URIs listed by the manifest a step (as ``submitted_steps`` returns it) points at."""
    return entry_uris(manifest_entries(s3, step))


def step_output(step: dict) -> str:
    import emr_step

    arguments = emr_step.job_arguments(step)
    return arguments[arguments.index("--output") + 1]


def runs_per_object(aws: AwsClients, *cluster_ids: str) -> dict[str, int]:
    """How many submitted steps list each object, over the given clusters: exactly once means every value is 1."""
    counts: dict[str, int] = {}
    for cluster_id in cluster_ids:
        for step in submitted_steps(aws.emr, cluster_id):
            for uri in manifest_objects(aws.s3, step):
                counts[uri] = counts.get(uri, 0) + 1
    return counts


def claims_table_items(dynamodb) -> list[dict]:
    items = []
    for page in dynamodb.get_paginator("scan").paginate(TableName=CLAIMS_TABLE, ConsistentRead=True):
        items.extend(page["Items"])
    return items


def claimed_by(dynamodb) -> dict[str, str]:
    """Upload claims: object key -> the batch id that owns it."""
    return {
        item["object_key"]["S"]: item["batch_id"]["S"]
        for item in claims_table_items(dynamodb)
        if item["pk"]["S"].startswith("upload#")
    }


def batch_records(dynamodb) -> dict[str, dict]:
    """Batch records: batch id -> {state, attempt, step_name, cluster_id, manifest_key}."""
    return {
        item["pk"]["S"].removeprefix("batch#"): {
            "state": item["state"]["S"],
            "attempt": int(item["attempt"]["N"]),
            "step_name": item["step_name"]["S"],
            "cluster_id": item["cluster_id"]["S"],
            "manifest_key": item["manifest_key"]["S"],
        }
        for item in claims_table_items(dynamodb)
        if item["pk"]["S"].startswith("batch#")
    }



def count_requests(handler) -> dict[str, int]:
    """Count the API calls the handler's clients make, per service and operation (botocore's before-call event).
    The claim store calls from several threads at once: the lock keeps every increment."""
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def count(event_name, **_):
        _, service, operation = event_name.split(".")
        with lock:
            counts[f"{service}.{operation}"] = counts.get(f"{service}.{operation}", 0) + 1

    for client in (
        handler.s3_client, handler.emr_client, handler.emr_submit_client, handler.dynamodb_client, handler.sns_client
    ):
        client.meta.events.register("before-call.*.*", count)
    return counts


class SimulatedCrash(BaseException):
    """The invocation dies here (timeout, out of memory): nothing after it runs and no response is returned."""


def crash(*_args, **_kwargs):
    """A stand-in for a call of the function's that the invocation never returns from."""
    raise SimulatedCrash
