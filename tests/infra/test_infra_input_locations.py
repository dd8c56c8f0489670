"""input_locations (issue 18, part 1): validated in the house style, granted read-only to exactly those prefixes,
cdk-nag clean, and passed to the trigger. Real CDK synthesis and cdk-nag; what it cannot show: that S3 in a real
account lets the nodes read another account's bucket (that bucket's policy must allow the instance role) or objects
encrypted with a customer key (its key policy must allow kms:Decrypt)."""

from __future__ import annotations

import json

import pytest
from infra_helpers import role_statements
from test_infra_compliance import unacknowledged_findings

from infra.settings import Settings, SettingsError

LOCATIONS = ["s3://amzn-s3-demo-bucket2/photos/", "s3://amzn-s3-demo-bucket2/more/2026/", "s3://amzn-s3-demo-bucket3/"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s3://b-c-d/x/", r"input_locations: 's3://b-c-d/x/' is not allowed; allowed: null or a list of 1 to 20"),
        ([], r"input_locations: \[\] is not allowed"),
        (["s3://Bad_Bucket/photos/"], r"'s3://Bad_Bucket/photos/' is not an s3://<bucket>/ URI with a valid bucket"),
        (["https://bucket-a/photos/"], r"'https://bucket-a/photos/' is not an s3://<bucket>/ URI"),
        (["s3://bucket-a/photos"], r"'s3://bucket-a/photos' does not end with '/'"),
        (["s3://bucket-a/photos/*/"], r"'s3://bucket-a/photos/\*/' holds an IAM wildcard or policy variable"),
        (["s3://bucket-a/ph?tos/"], r"holds an IAM wildcard"),
        (["s3://bucket-a/${aws:username}/"], r"holds an IAM wildcard"),
        (["s3://bucket-a/photos//"], r"has an empty, '.' or '..' path segment"),
        (["s3://bucket-a/../models/"], r"has an empty, '.' or '..' path segment"),
        (["s3://bucket-a/a\nb/"], r"holds a control character"),
        ([7], r"input_locations: 7 is a int, not a string"),
        (["s3://bucket-a/p/", "s3://bucket-a/p/"], r"names a location twice"),
    ],
)
def test_an_invalid_input_location_is_refused_naming_key_value_and_allowed(value, message):
    with pytest.raises(SettingsError, match=message) as raised:
        Settings.from_context({"input_locations": value})
    assert "allowed:" in str(raised.value)


def test_every_bad_input_location_is_listed_at_once():
    with pytest.raises(SettingsError, match=r"\(3 problem\(s\)\)") as raised:
        Settings.from_context({"input_locations": ["s3://bucket-a/ok/", "s3://bucket-a/a*/", "s3://x/", "s3://b-b/p"]})
    for shown in ("'s3://bucket-a/a*/'", "'s3://x/'", "'s3://b-b/p'"):
        assert shown in str(raised.value)


def test_input_locations_are_accepted_from_cdk_json_and_the_command_line():
    assert Settings.from_context({"input_locations": LOCATIONS}).input_locations == tuple(LOCATIONS)
    from_command_line = Settings.from_cdk_context({"input_locations": ",".join(LOCATIONS)})
    assert from_command_line.input_locations == tuple(LOCATIONS)
    assert Settings.from_context({}).input_locations is None


@pytest.fixture(scope="module")
def with_locations(synth):
    return synth(input_locations=LOCATIONS)


def _input_statements(synthesized) -> list[dict]:
    resolved = synthesized.stack.resolve(role_statements(synthesized, synthesized.stack.cluster.instance_role))
    return [statement for statement in resolved if "InputLocation" in statement.get("Sid", "")]


def _arn(text: str) -> dict:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, f":s3:::{text}"]]}


def test_the_nodes_may_read_exactly_the_input_locations_and_list_only_their_prefixes(with_locations):
    statements = {statement["Sid"]: statement for statement in _input_statements(with_locations)}

    read = statements.pop("ReadInputLocations")
    assert sorted(read["Action"]) == ["s3:GetObject", "s3:GetObjectVersion"]
    assert sorted(json.dumps(arn) for arn in read["Resource"]) == sorted(
        json.dumps(_arn(location.removeprefix("s3://") + "*")) for location in LOCATIONS
    )
    listed = {json.dumps(statement["Resource"]): statement for statement in statements.values()}
    assert set(listed) == {json.dumps(_arn("amzn-s3-demo-bucket2")), json.dumps(_arn("amzn-s3-demo-bucket3"))}
    for statement in listed.values():
        assert statement["Action"] == "s3:ListBucket"
    prefixes = {
        bucket: listed[json.dumps(_arn(bucket))]["Condition"]["StringLike"]["s3:prefix"]
        for bucket in ("amzn-s3-demo-bucket2", "amzn-s3-demo-bucket3")
    }
    assert prefixes == {"amzn-s3-demo-bucket2": ["photos/*", "more/2026/*"], "amzn-s3-demo-bucket3": ["*"]}


def test_input_location_grants_are_acknowledged_per_resource_so_cdk_nag_is_clean(with_locations):
    assert unacknowledged_findings(with_locations.app, with_locations.stack) == []


def test_the_trigger_is_told_the_input_locations(with_locations, synth):
    def trigger_environment(synthesized) -> dict:
        function = synthesized.stack.trigger.function
        resource = synthesized.resources[synthesized.stack.get_logical_id(function.node.default_child)]
        return resource["Properties"]["Environment"]["Variables"]

    assert json.loads(trigger_environment(with_locations)["INPUT_LOCATIONS"]) == LOCATIONS
    assert "INPUT_LOCATIONS" not in trigger_environment(synth(compute="cpu", cluster_mode="transient"))


def test_without_input_locations_the_nodes_read_no_other_bucket(synth):
    assert _input_statements(synth(compute="cpu", cluster_mode="transient")) == []

