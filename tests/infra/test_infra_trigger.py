"""CDK assertions on the trigger's claims table, its retries of cancelled steps, and the function's access to both.

What synthesis cannot show: that DynamoDB enforces the conditional writes and deletes items after their TTL, and that
EventBridge delivers the step events to the queue (the handler's behaviour with both is tested in tests/trigger).
"""

from __future__ import annotations

import sys

from infra_helpers import REPO_ROOT, STACK_ID, as_list, logical_id, role_statements

from infra.trigger import (
    CLAIM_RETENTION_DAYS,
    CLAIM_TTL_ATTRIBUTE,
    DLQ_RETENTION,
    MAX_STEP_ATTEMPTS,
    STEP_RETRIED_STATES,
)


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


def test_the_function_retries_exactly_the_states_the_rule_sends_within_its_attempt_limit(variant):
    step_events = trigger_function_module("step_events")
    trigger_settings = trigger_function_module("trigger_settings")
    assert step_events.RETRIED_STATES == STEP_RETRIED_STATES
    assert 1 <= MAX_STEP_ATTEMPTS <= trigger_settings.MAX_STEP_ATTEMPTS_LIMIT
    assert environment(variant)["MAX_STEP_ATTEMPTS"] == str(MAX_STEP_ATTEMPTS)
