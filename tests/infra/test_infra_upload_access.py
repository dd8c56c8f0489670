"""Who may write what in the data bucket (reliability review #9): the uploader and model-publisher policies the stack
outputs, and the bucket policy that keeps everyone else out of what the trigger and the nodes trust.

The statements' shapes are checked here, on the synthesized template; IAM's and S3's evaluation of them needs an account
(infra README, "What a real account must confirm": an upload with the uploader policy, a denied write to artifacts/).
"""

from __future__ import annotations

import json

from infra_helpers import as_list, logical_id, role_statements

from infra.storage import MODEL_PUBLISHER_TAG_KEY
from infra.stack import AUTO_DELETE_PROVIDER_ID


def managed_policy_statements(variant, policy) -> list[dict]:
    return variant.resources[logical_id(variant, policy)]["Properties"]["PolicyDocument"]["Statement"]


def object_prefixes(statement: dict) -> set[str]:
    """The data-bucket prefixes ("incoming/") of a statement's object resources."""
    prefixes = set()
    for resource in as_list(statement["Resource"]):
        suffix = resource["Fn::Join"][1][-1]
        assert suffix.startswith("/") and suffix.endswith("/*"), resource
        prefixes.add(suffix[1:-1])
    return prefixes


def data_bucket_deny_statements(variant) -> dict[str, dict]:
    """The data bucket policy's Deny statements on object writes, by the prefix they cover."""
    bucket_id = logical_id(variant, variant.stack.storage.data_bucket)
    (policy,) = [
        body for body in variant.resources_of_type("AWS::S3::BucketPolicy").values()
        if body["Properties"]["Bucket"] == {"Ref": bucket_id}
    ]  # fmt: skip
    denies = {}
    for statement in policy["Properties"]["PolicyDocument"]["Statement"]:
        if statement["Effect"] == "Deny" and "s3:PutObject" in as_list(statement["Action"]):
            (prefix,) = object_prefixes(statement)
            denies[prefix] = statement
    return denies


def test_the_uploader_policy_writes_incoming_and_staged_and_nothing_the_stack_trusts(variant):
    statements = managed_policy_statements(variant, variant.stack.upload_access.uploader_policy)
    assert {action for s in statements for action in as_list(s["Action"])} == {
        "s3:PutObject", "s3:AbortMultipartUpload",
    }  # fmt: skip
    assert set().union(*(object_prefixes(s) for s in statements)) == {"incoming/", "staged/"}
    assert all(s["Effect"] == "Allow" and "Condition" not in s for s in statements)


def test_the_model_publisher_policy_writes_models_only(synth):
    variant = synth()
    statements = managed_policy_statements(variant, variant.stack.upload_access.model_publisher_policy)
    object_statements = [s for s in statements if "s3:ListBucket" not in as_list(s["Action"])]
    assert set().union(*(object_prefixes(s) for s in object_statements)) == {"models/"}
    (listing,) = [s for s in statements if "s3:ListBucket" in as_list(s["Action"])]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}


def test_only_the_stacks_deployments_and_destroy_time_emptying_write_artifacts(offline_wheelhouse_variant):
    """Every bucket-deployment function of the stack (the job's and the wheelhouse's, one per memory size) and the
    auto-delete provider are the only principals not denied; a principal with s3:PutObject on the whole bucket is."""
    variant = offline_wheelhouse_variant
    stack = variant.stack
    deployment_roles = {
        json.dumps(stack.resolve(child.role.role_arn))
        for child in stack.node.children
        if child.node.id.startswith("Custom::CDKBucketDeployment")
    }
    assert len(deployment_roles) == 2  # 512 MiB (job) and 2,048 MiB (wheelhouse)
    auto_delete = json.dumps(stack.resolve(stack.node.find_child(AUTO_DELETE_PROVIDER_ID).role_arn))
    denies = data_bucket_deny_statements(variant)
    assert set(denies) == {"artifacts/", "models/"}
    for prefix, statement in denies.items():
        assert statement["Principal"] == {"AWS": "*"}
        assert sorted(as_list(statement["Action"])) == ["s3:DeleteObject", "s3:PutObject"]
        excepted = {json.dumps(arn) for arn in statement["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]}
        assert excepted == deployment_roles | {auto_delete}
    # models/: also a principal tagged as this stack's model publisher (conditions of one statement are ANDed: the
    # deny applies only to a principal that is neither).
    assert denies["models/"]["Condition"]["StringNotEquals"] == {
        f"aws:PrincipalTag/{MODEL_PUBLISHER_TAG_KEY}": stack.stack_name
    }
    assert "StringNotEquals" not in denies["artifacts/"]["Condition"]


def test_with_retained_data_there_is_no_emptying_role_to_except(synth):
    variant = synth(retain_data_on_destroy=True)
    excepted = data_bucket_deny_statements(variant)["artifacts/"]["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]
    assert len(as_list(excepted)) == 1 and "CDKBucketDeployment" in json.dumps(excepted)


def test_the_nodes_read_staged_inputs_and_staged_uploads_start_no_run(synth):
    """A manifest under incoming/ may list objects under staged/ (reliability review #4): the nodes read them, and an
    upload there notifies nothing (only incoming/ notifies the queue)."""
    variant = synth()
    statements = role_statements(variant, variant.stack.cluster.instance_role)
    (reads,) = [s for s in statements if as_list(s["Action"]) == ["s3:GetObject"] and "staged/" in json.dumps(s)]
    assert "staged/" in object_prefixes({"Resource": [r for r in reads["Resource"] if "Fn::Join" in r]})
    _, notifications = variant.only("Custom::S3BucketNotifications")
    filters = [
        rule["Value"]
        for configuration in notifications["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
        for rule in configuration["Filter"]["Key"]["FilterRules"]
    ]
    assert filters == ["incoming/"] and not any("staged/".startswith(prefix) for prefix in filters)


def test_the_policies_and_the_staged_prefix_are_outputs(synth):
    outputs = synth().template.to_json()["Outputs"]
    assert {"UploaderPolicyArn", "ModelPublisherPolicyArn", "StagedPrefix"} <= set(outputs)
    assert MODEL_PUBLISHER_TAG_KEY in outputs["ModelPublisherPolicyArn"]["Description"]


def test_named_model_publishers_may_write_models_without_the_tag(synth):
    """The deny on models/ spares the principals the model_publisher_arns setting names, beside tagged publishers: an
    IAM Identity Center role cannot carry the tag, and the README's first step after a deploy publishes a model.
    (What IAM then decides for a real principal - ArnNotLike with a wildcard - only a real account can show.)"""
    sso_role = "arn:aws:iam::111122223333:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Admin_*"
    variant = synth(model_publisher_arns=[sso_role])
    conditions = data_bucket_deny_statements(variant)["models/"]["Condition"]
    assert conditions["ArnNotLike"] == {"aws:PrincipalArn": [sso_role]}
    assert conditions["StringNotEquals"] == {f"aws:PrincipalTag/{MODEL_PUBLISHER_TAG_KEY}": variant.stack.stack_name}
    assert "ArnNotLike" not in data_bucket_deny_statements(synth())["models/"]["Condition"]
    assert "ArnNotLike" not in data_bucket_deny_statements(synth(model_publisher_arns=[sso_role]))["artifacts/"][
        "Condition"]


def test_every_deployment_waits_for_the_bucket_policy_that_admits_its_role(offline_wheelhouse_variant):
    """Final review I2: the bucket policy denies writes to artifacts/ to every role it does not name; a deployment
    whose role is new (a first offline wheelhouse, a CDK upgrade that renames the function) ran in parallel with the
    policy update and could meet the old deny. CloudFormation now creates or updates the policy first. (When IAM and
    S3 see the new policy after that is AWS's propagation, which only a real account shows.)"""
    variant = offline_wheelhouse_variant
    policy_id = logical_id(variant, variant.stack.storage.data_bucket.policy)
    assert len(variant.stack.artifacts.deployments) == 3
    deployments = variant.resources_of_type("Custom::CDKBucketDeployment")
    assert len(deployments) == 3
    for deployment_id, deployment in deployments.items():
        assert policy_id in deployment.get("DependsOn", []), deployment_id
