"""CDK assertions on the trigger's claims table and the function's access to it.

What synthesis cannot show: that DynamoDB enforces the conditional writes and deletes items after their TTL (the
handler's behaviour with conditional writes is tested in tests/trigger, against moto).
"""

from __future__ import annotations

import sys

from infra_helpers import REPO_ROOT, as_list, logical_id, role_statements

from infra.trigger import CLAIM_RETENTION_DAYS, CLAIM_TTL_ATTRIBUTE, DLQ_RETENTION


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


