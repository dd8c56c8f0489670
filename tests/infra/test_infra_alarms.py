"""The alarms a user is told about: each one's metric, threshold and action in the template, and the permissions that
let CloudWatch and EventBridge publish to the encrypted topic.

What a template cannot prove: that CloudWatch really publishes (the topic and key policies are checked as written, not
evaluated by IAM), that EMR's cluster event carries these fields for a real failure (the pattern follows EMR's
documented event), and what an e-mail looks like.
"""

from __future__ import annotations

import pytest
from infra_helpers import STACK_ID, as_list, logical_id

from infra.alarms import CLOUDWATCH_PRINCIPAL

TOPIC_TYPE = "AWS::SNS::Topic"


def alarm(variant, construct) -> dict:
    return variant.resources[logical_id(variant, construct)]["Properties"]


def topic_ref(variant) -> dict:
    topic_id, _ = variant.only(TOPIC_TYPE)
    return {"Ref": topic_id}


def test_dead_letter_queue_alarm_fires_on_one_parked_message_and_tells_the_topic(variant):
    properties = alarm(variant, variant.stack.alarms.dead_letter_alarm)
    dead_letter_queue = logical_id(variant, variant.stack.trigger.dead_letter_queue)
    assert properties["Namespace"] == "AWS/SQS"
    assert properties["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert properties["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": [dead_letter_queue, "QueueName"]}}
    ]
    assert (properties["Statistic"], properties["Period"], properties["EvaluationPeriods"]) == ("Maximum", 300, 1)
    assert (properties["ComparisonOperator"], properties["Threshold"]) == ("GreaterThanThreshold", 0)
    assert properties["TreatMissingData"] == "notBreaching"
    assert properties["AlarmActions"] == [topic_ref(variant)]


def test_trigger_function_errors_alarm_fires_on_one_error_and_tells_the_topic(variant):
    properties = alarm(variant, variant.stack.alarms.function_errors_alarm)
    function = logical_id(variant, variant.stack.trigger.function)
    assert (properties["Namespace"], properties["MetricName"]) == ("AWS/Lambda", "Errors")
    assert properties["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": function}}]
    assert (properties["Statistic"], properties["Period"], properties["EvaluationPeriods"]) == ("Sum", 300, 1)
    assert (properties["ComparisonOperator"], properties["Threshold"]) == ("GreaterThanThreshold", 0)
    assert properties["TreatMissingData"] == "notBreaching"
    assert properties["AlarmActions"] == [topic_ref(variant)]


def test_alarms_are_named_after_the_stack(variant):
    for construct in (variant.stack.alarms.dead_letter_alarm, variant.stack.alarms.function_errors_alarm):
        assert alarm(variant, construct)["AlarmName"].startswith(f"{STACK_ID}-")


def test_topic_policy_lets_cloudwatch_publish_for_this_stacks_alarms_only(variant):
    """CDK's TLS statement replaces SNS's default topic policy, so without this statement no alarm would arrive."""
    _, policy = variant.only("AWS::SNS::TopicPolicy")
    (statement,) = [
        s for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s.get("Principal") == {"Service": CLOUDWATCH_PRINCIPAL}
    ]  # fmt: skip
    assert (statement["Effect"], statement["Action"], statement["Resource"]) == (
        "Allow", "sns:Publish", topic_ref(variant)
    )  # fmt: skip
    source_arn = statement["Condition"]["ArnLike"]["aws:SourceArn"]["Fn::Join"][1]
    assert source_arn[-1] == f":alarm:{STACK_ID}-*"
    assert ":cloudwatch:" in source_arn
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


@pytest.mark.parametrize("principal", [CLOUDWATCH_PRINCIPAL, "events.amazonaws.com"])
def test_key_lets_the_publishers_encrypt_for_the_topic(variant, principal):
    _, key = variant.only("AWS::KMS::Key")
    statements = [
        s for s in key["Properties"]["KeyPolicy"]["Statement"]
        if principal in as_list(s.get("Principal", {}).get("Service", []))
    ]  # fmt: skip
    actions = {action for s in statements for action in as_list(s["Action"])}
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= actions


def test_a_cluster_of_this_stack_that_terminated_with_errors_is_announced(variant):
    rule = variant.resources[logical_id(variant, variant.stack.alarms.cluster_failure_rule)]["Properties"]
    cluster_name = variant.stack.cluster.job_flow["Name"]
    assert rule["EventPattern"] == {
        "source": ["aws.emr"],
        "detail-type": ["EMR Cluster State Change"],
        "detail": {"state": ["TERMINATED_WITH_ERRORS"], "name": [cluster_name]},
    }
    (target,) = rule["Targets"]
    assert target["Arn"] == topic_ref(variant)
    parts = target["InputTransformer"]["InputTemplate"]["Fn::Join"][1]
    template = "".join(part if isinstance(part, str) else "<ref>" for part in parts)
    assert cluster_name in template and "<detail-message>" in template
    assert "/emr/<detail-clusterId>/" in template


def test_the_cluster_rule_matches_the_persistent_clusters_name(synth):
    """EMR's cluster event carries the name, not the tags. Launched clusters get their name from the same definition
    the persistent cluster is rendered from (test_infra_stack)."""
    variant = synth(cluster_mode="persistent")
    _, cluster = variant.only("AWS::EMR::Cluster")
    rule = variant.resources[logical_id(variant, variant.stack.alarms.cluster_failure_rule)]["Properties"]
    assert rule["EventPattern"]["detail"]["name"] == [cluster["Properties"]["Name"]]


def test_failed_steps_have_one_path_the_step_status_rule(variant):
    """Alarms watch no steps: failed steps are announced by the trigger's step-status rule and nothing else."""
    step_rules = [
        body for body in variant.resources_of_type("AWS::Events::Rule").values()
        if body["Properties"]["EventPattern"]["detail-type"] == ["EMR Step Status Change"]
        and "FAILED" in body["Properties"]["EventPattern"]["detail"]["state"]
    ]  # fmt: skip
    assert len(step_rules) == 1
    assert not [
        body for body in variant.resources_of_type("AWS::CloudWatch::Alarm").values()
        if body["Properties"].get("Namespace") == "AWS/ElasticMapReduce"
    ]  # fmt: skip
