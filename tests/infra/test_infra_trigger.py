"""CDK assertions on the trigger's claims table, its retries of cancelled steps, the function's access to both, and the
function's asset (its modules with the SDK and Powertools pinned in requirements.lock).

What synthesis cannot show: that DynamoDB enforces the conditional writes and deletes items after their TTL, and that
EventBridge delivers the step events to the queue (the handler's behaviour with both is tested in tests/trigger).
"""

from __future__ import annotations

import dataclasses
import email
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest
from infra_helpers import REPO_ROOT, STACK_ID, as_list, logical_id, role_statements
from packaging.utils import canonicalize_name

import infra.function_asset as function_asset_module
from infra.function_asset import (
    LAMBDA_UNZIPPED_LIMIT_BYTES,
    FunctionAssetError,
    build_function_zip,
    locked_versions,
    runtime_distributions,
)

from infra.settings import DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES
from infra.storage import RUNS_PREFIX, STAGED_PREFIX
from infra.trigger import (
    CLAIM_LEASE_MARGIN,
    CLAIM_RETENTION_DAYS,
    CLAIM_TTL_ATTRIBUTE,
    DLQ_RETENTION,
    FUNCTION_DIR,
    FUNCTION_TIMEOUT,
    MAX_STEP_ATTEMPTS,
    STEP_RETRIED_STATES,
)
from infra.trigger_function.emr_step import JobOptions


def trigger_function_module(name: str):
    """A module of the function's code, imported as the Lambda runtime does (its folder is the code root)."""
    folder = str(REPO_ROOT / "infra" / "trigger_function")
    if folder not in sys.path:
        sys.path.append(folder)
    return __import__(name)


def environment(variant) -> dict:
    return variant.resources[logical_id(variant, variant.stack.trigger.function)]["Properties"]["Environment"][
        "Variables"
    ]


def claims_table(variant) -> tuple[str, dict]:
    return variant.only("AWS::DynamoDB::Table")


def test_claims_table_is_on_demand_encrypted_with_the_stack_key_expiring_and_removed_on_destroy(variant):
    table_id, table = claims_table(variant)
    properties = table["Properties"]
    assert properties["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["SSESpecification"] == {
        "KMSMasterKeyId": {"Fn::GetAtt": [logical_id(variant, variant.stack.key), "Arn"]},
        "SSEEnabled": True,
        "SSEType": "KMS",
    }
    assert properties["TimeToLiveSpecification"] == {"AttributeName": CLAIM_TTL_ATTRIBUTE, "Enabled": True}
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert (table["DeletionPolicy"], table["UpdateReplacePolicy"]) == ("Delete", "Delete")
    assert environment(variant)["CLAIMS_TABLE"] == {"Ref": table_id}
    assert variant.template.to_json()["Outputs"]["ClaimsTableName"]["Value"] == {"Ref": table_id}


def test_claims_outlive_every_message_that_can_repeat_an_upload(variant):
    assert CLAIM_RETENTION_DAYS > 2 * DLQ_RETENTION.to_days()
    assert environment(variant)["CLAIM_RETENTION_DAYS"] == str(CLAIM_RETENTION_DAYS)
    assert trigger_function_module("trigger_settings").MAX_CLAIM_RETENTION_DAYS >= CLAIM_RETENTION_DAYS
    assert trigger_function_module("claims").TTL_ATTRIBUTE == CLAIM_TTL_ATTRIBUTE


def test_function_may_use_only_four_item_operations_on_the_claims_table(variant):
    table_id, _ = claims_table(variant)
    statements = [
        s
        for s in role_statements(variant, variant.stack.trigger.function.role)
        if any(action.startswith("dynamodb:") for action in as_list(s["Action"]))
    ]
    (statement,) = statements
    assert sorted(as_list(statement["Action"])) == [
        "dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
    ]  # fmt: skip
    assert as_list(statement["Resource"]) == [{"Fn::GetAtt": [table_id, "Arn"]}]


def test_function_may_publish_only_to_the_stacks_topic(variant):
    topic_id, _ = variant.only("AWS::SNS::Topic")
    (statement,) = [
        s for s in role_statements(variant, variant.stack.trigger.function.role) if "sns:Publish" in as_list(s["Action"])
    ]
    assert statement["Resource"] == {"Ref": topic_id}
    assert environment(variant)["NOTIFICATION_TOPIC_ARN"] == {"Ref": topic_id}


def test_cancelled_and_interrupted_steps_of_this_stack_go_back_to_the_upload_queue(variant):
    queue_id = logical_id(variant, variant.stack.trigger.queue)
    rule_id = logical_id(variant, variant.stack.trigger.step_retry_rule)
    rule = variant.resources[rule_id]["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.emr"],
        "detail-type": ["EMR Step Status Change"],
        "detail": {"state": list(STEP_RETRIED_STATES), "name": [{"prefix": f"{STACK_ID}-batch-"}]},
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [queue_id, "Arn"]} and "Input" not in target  # the whole event
    # Only this rule may send to the queue on EventBridge's behalf.
    statements = [
        statement
        for policy in variant.resources_of_type("AWS::SQS::QueuePolicy").values()
        if {"Ref": queue_id} in policy["Properties"]["Queues"]
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement.get("Principal") == {"Service": "events.amazonaws.com"}
    ]
    (statement,) = statements
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}}


def test_a_finished_step_is_announced_with_the_run_reports_location(variant):
    """The job writes OUTPUT/report.html beside summary.json (README, "Run report"); the message names it."""
    rule = variant.resources[logical_id(variant, variant.stack.trigger.step_status_rule)]["Properties"]
    (target,) = rule["Targets"]
    message = json.dumps(target["InputTransformer"]["InputTemplate"])
    assert "/results/RUN_ID/report.html" in message and "summary.json" in message
    # Every <name> in the template is one of the event's fields, which EventBridge fills in.
    assert set(re.findall(r"<([^>]*)>", message)) == set(target["InputTransformer"]["InputPathsMap"])


def test_the_claim_lease_is_the_function_timeout_plus_a_margin_and_ends_before_the_first_redelivery(variant):
    """aws-validity-review-2 #12: a 960 s lease against a 780 s visibility timeout spent 3 of 5 receives per crash."""
    lease = int(environment(variant)["CLAIM_LEASE_SECONDS"])
    queue = variant.resources[logical_id(variant, variant.stack.trigger.queue)]["Properties"]

    assert lease == FUNCTION_TIMEOUT.to_seconds() + CLAIM_LEASE_MARGIN.to_seconds()
    assert FUNCTION_TIMEOUT.to_seconds() < lease < queue["VisibilityTimeout"]
    assert lease <= trigger_function_module("trigger_settings").MAX_CLAIM_LEASE_SECONDS


def test_the_function_may_shorten_the_visibility_of_its_queues_messages(variant):
    stack = variant.stack
    assert environment(variant)["UPLOAD_QUEUE_URL"] == {"Ref": logical_id(variant, stack.trigger.queue)}
    statements = role_statements(variant, stack.trigger.function.role)
    queue_arn = {"Fn::GetAtt": [logical_id(variant, stack.trigger.queue), "Arn"]}
    assert any(
        "sqs:ChangeMessageVisibility" in as_list(statement["Action"]) and queue_arn in as_list(statement["Resource"])
        for statement in statements
    )


def test_the_function_retries_exactly_the_states_the_rule_sends_within_its_attempt_limit(variant):
    step_events = trigger_function_module("step_events")
    trigger_settings = trigger_function_module("trigger_settings")
    assert step_events.RETRIED_STATES == STEP_RETRIED_STATES
    assert 1 <= MAX_STEP_ATTEMPTS <= trigger_settings.MAX_STEP_ATTEMPTS_LIMIT
    assert environment(variant)["MAX_STEP_ATTEMPTS"] == str(MAX_STEP_ATTEMPTS)


# --- the function's asset: its modules with the SDK and Powertools of requirements.lock ---------------------------------


def function_asset(synthesized) -> zipfile.ZipFile:
    """The trigger function's code as CDK staged it in the cloud assembly."""
    code_key = synthesized.resources[logical_id(synthesized, synthesized.stack.trigger.function)]["Properties"]["Code"][
        "S3Key"
    ]
    return zipfile.ZipFile(Path(synthesized.app.synth().directory) / f"asset.{code_key}")


def bundled_versions(asset: zipfile.ZipFile) -> dict[str, str]:
    """Name -> version of every distribution in the asset, read from its METADATA as importlib.metadata would."""
    versions = {}
    for name in asset.namelist():
        if name.endswith(".dist-info/METADATA"):
            metadata = email.message_from_bytes(asset.read(name))
            versions[canonicalize_name(metadata["Name"])] = metadata["Version"]
    return versions


def test_function_asset_holds_exactly_the_locked_sdk_and_powertools_and_the_functions_modules(synth):
    asset = function_asset(synth())
    names = asset.namelist()
    locked = locked_versions(REPO_ROOT / "requirements.lock")

    bundled = bundled_versions(asset)

    assert {"boto3", "botocore", "aws-lambda-powertools"} <= set(bundled)
    assert bundled == {name: locked[name] for name in bundled}
    assert {path.name for path in FUNCTION_DIR.glob("*.py")} <= set(names)  # at the root: Lambda's code root
    assert not [name for name in names if name.endswith(".pyc") or "__pycache__" in name]
    assert sum(info.file_size for info in asset.infolist()) < LAMBDA_UNZIPPED_LIMIT_BYTES


def test_function_asset_bundles_no_optional_extra():
    """Powertools' and botocore's extras (pydantic, awscrt, ...) are not what the function imports."""
    names = {canonicalize_name(dist.metadata["Name"]) for dist in runtime_distributions()}

    assert names == {
        "aws-lambda-powertools", "boto3", "botocore", "jmespath", "python-dateutil", "s3transfer", "six",
        "typing-extensions", "urllib3",
    }  # fmt: skip


def test_function_asset_is_the_same_zip_for_the_same_inputs(tmp_path):
    first = build_function_zip(FUNCTION_DIR, tmp_path / "a" / "function.zip", REPO_ROOT / "requirements.lock")
    second = build_function_zip(FUNCTION_DIR, tmp_path / "b" / "function.zip", REPO_ROOT / "requirements.lock")

    assert first.read_bytes() == second.read_bytes()


def test_the_handler_imports_from_the_asset_alone_and_logs_botocores_version_at_cold_start(synth, tmp_path):
    """Without site-packages (python -S), only the standard library and the asset are importable: the handler imports
    and logs the botocore it runs with, the locked one. What this cannot show: Lambda's own runtime placing the code
    root first on sys.path (documented by AWS), on Amazon Linux."""
    function_asset(synth()).extractall(tmp_path / "asset")
    environment = {
        "PATH": os.environ["PATH"], "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "DATA_BUCKET": "amzn-s3-demo-bucket", "INCOMING_PREFIX": "incoming/",
        "MANIFESTS_PREFIX": "manifests/", "RESULTS_PREFIX": "results/", "MODEL_URI": "s3://amzn-s3-demo-bucket/models/m/",
        "JOB_PY_FILES_URI": "s3://amzn-s3-demo-bucket/artifacts/job.zip",
        "JOB_ENTRY_POINT_URI": "s3://amzn-s3-demo-bucket/artifacts/spark_entry.py",
        "JOB_OPTIONS": json.dumps(dataclasses.asdict(JobOptions())), "STEP_NAME_PREFIX": "stack-batch-",
        "CLUSTER_MODE": "persistent", "CLUSTER_ID": "j-2AXXXXXXGAPLF", "MAX_ACTIVE_STEPS": "200",
        "CLAIMS_TABLE": "claims", "CLAIM_RETENTION_DAYS": "30", "MAX_STEP_ATTEMPTS": "3", "CLAIM_LEASE_SECONDS": "180",
        "UPLOAD_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/123456789012/uploads",
        "NOTIFICATION_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:topic", "POWERTOOLS_SERVICE_NAME": "trigger",
    }  # fmt: skip
    code = f"import sys; sys.path.insert(0, {str(tmp_path / 'asset')!r}); import handler, botocore; print(botocore.__file__)"

    result = subprocess.run(
        [sys.executable, "-S", "-c", code], env=environment, capture_output=True, text=True, timeout=120, check=True
    )

    (cold_start,) = [json.loads(line) for line in result.stdout.splitlines() if '"Cold start"' in line]
    locked = locked_versions(REPO_ROOT / "requirements.lock")
    assert (cold_start["botocore_version"], cold_start["boto3_version"]) == (locked["botocore"], locked["boto3"])
    assert result.stdout.splitlines()[-1].startswith(str(tmp_path / "asset"))


def test_a_distribution_installed_at_another_version_than_locked_stops_the_synth(tmp_path):
    lock = (REPO_ROOT / "requirements.lock").read_text()
    installed = distribution("botocore").version
    stale_lock = tmp_path / "requirements.lock"
    stale_lock.write_text(re.sub(r"(?m)^botocore==.*$", "botocore==1.0.0", lock))

    with pytest.raises(FunctionAssetError, match=rf"botocore {re.escape(installed)} is installed, but requirements.lock pins 1.0.0"):
        build_function_zip(FUNCTION_DIR, tmp_path / "function.zip", stale_lock)


def test_a_distribution_missing_from_the_lock_stops_the_synth(tmp_path):
    lock = (REPO_ROOT / "requirements.lock").read_text()
    without_six = tmp_path / "requirements.lock"
    without_six.write_text(re.sub(r"(?m)^six==.*\n", "", lock))

    with pytest.raises(FunctionAssetError, match=r"six .* requirements.lock pins nothing.*add(ing)? six to requirements.in"):
        build_function_zip(FUNCTION_DIR, tmp_path / "function.zip", without_six)


def test_an_asset_over_lambdas_unzipped_limit_stops_the_synth(tmp_path, monkeypatch):
    monkeypatch.setattr(function_asset_module, "LAMBDA_UNZIPPED_LIMIT_BYTES", 1024 * 1024)

    with pytest.raises(FunctionAssetError, match=r"the trigger function's code is \d+ MiB unzipped; Lambda accepts at most 1 MiB"):
        build_function_zip(FUNCTION_DIR, tmp_path / "function.zip", REPO_ROOT / "requirements.lock")


def test_the_trigger_reads_the_staged_prefix_the_stack_grants_and_never_notifies_on(variant):
    """Reliability review #4: the stack does not set STAGED_PREFIX, so the function's default must be the prefix the
    stack's storage names (the nodes may read it, the uploader policy writes it, no notification watches it)."""
    trigger_settings = trigger_function_module("trigger_settings")
    assert environment(variant).get("STAGED_PREFIX", trigger_settings.DEFAULT_STAGED_PREFIX) == STAGED_PREFIX


def test_the_trigger_names_the_runs_prefix_the_nodes_may_write_and_the_runs_table_reads(variant):
    assert environment(variant)["RUNS_PREFIX"] == RUNS_PREFIX
    table = variant.resources[logical_id(variant, variant.stack.catalog.runs_table)]["Properties"]["TableInput"]
    assert table["StorageDescriptor"]["Location"]["Fn::Join"][1][-1] == f"/{RUNS_PREFIX}"


def test_a_replacement_of_a_persistent_cluster_idles_out_after_the_stacks_transient_default():
    """Review 2, #10: the cluster the function launches when the persistent one ended lives outside CloudFormation;
    it ends after the same idle time as a transient cluster (a cluster's boot), not at `cdk destroy`."""
    submitter = trigger_function_module("submitter")
    assert submitter.REPLACEMENT_IDLE_TIMEOUT_SECONDS == DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES * 60
