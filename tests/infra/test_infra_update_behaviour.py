"""CloudFormation's update rules, applied offline: what changing a setting does to a deployed persistent cluster.

For each setting a user may change on a deployed persistent stack, the stack is synthesized before and after, and the
change to the ``AWS::EMR::Cluster`` is classified with CloudFormation's documented update behaviour of each changed
property (``PROPERTY_RULES``, each with its source): no change, no interruption, some interruption, or replacement (a
new cluster: about 15 minutes of boot, both billed meanwhile, running steps cancelled and retried). The result must
equal ``EXPECTED``, the table the docs quote ("Changing settings on a running stack"): a code change that turns an
in-place change into a replacement, or a table row that no longer holds, fails here.

Sources: the AWS CloudFormation Template Reference pages per property (URLs in ``PROPERTY_RULES``), and for the
top-level properties the resource type's registry schema as the pinned cfn-lint ships it (``createOnlyProperties``:
a change replaces the resource), checked against the table below. Where the pages say nothing for a nested property,
the rule is the safe side (replacement) and says so. What CloudFormation and EMR really do needs an account: run
``cdk diff`` (it prints "replace" per resource) before a change to a running stack.

The cluster's properties are rendered with the CfnCluster's own property renderer (what the template gets), without a
full synthesis per variant; one test checks that rendering against the synthesized template.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from infra_helpers import REPO_ROOT, STACK_ID, cdk_json_context

from infra.settings import CONTEXT_KEY, Settings
from infra.stack import InferenceStack

NO_CHANGE, NO_INTERRUPTION, SOME_INTERRUPTION, REPLACEMENT = "no change", "no interruption", "some interruption", (
    "replacement"
)
SEVERITY = [NO_CHANGE, NO_INTERRUPTION, SOME_INTERRUPTION, REPLACEMENT]

DOCS = "https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/"
CLUSTER_PAGE = DOCS + "aws-resource-emr-cluster.html"
FLEET_PAGE = DOCS + "aws-properties-emr-cluster-instancefleetconfig.html"
TAG_PAGE = DOCS + "aws-properties-emr-cluster-tag.html"
SCALING_PAGE = DOCS + "aws-properties-emr-cluster-managedscalingpolicy.html"
BOOTSTRAP_PAGE = DOCS + "aws-properties-emr-cluster-bootstrapactionconfig.html"
INSTANCES_PAGE = DOCS + "aws-properties-emr-cluster-jobflowinstancesconfig.html"
SCHEMA = "cfn-lint's AWS::EMR::Cluster registry schema, createOnlyProperties"

# (property path pattern, behaviour, source), the first match wins. Paths are CloudFormation property names joined by
# "/", list items by their index.
PROPERTY_RULES: list[tuple[str, str, str]] = [
    ("Tags*", NO_INTERRUPTION, TAG_PAGE + " (Key, Value: No interruption)"),
    ("ManagedScalingPolicy*", NO_INTERRUPTION, SCALING_PAGE + " (ComputeLimits: No interruption)"),
    ("AutoTerminationPolicy*", NO_INTERRUPTION, CLUSTER_PAGE + "; not in " + SCHEMA),
    ("StepConcurrencyLevel", NO_INTERRUPTION, CLUSTER_PAGE + "; not in " + SCHEMA),
    ("VisibleToAllUsers", NO_INTERRUPTION, CLUSTER_PAGE + "; not in " + SCHEMA),
    *(
        (f"Instances/*InstanceFleet*/{name}*", NO_INTERRUPTION, FLEET_PAGE + f" ({name}: No interruption)")
        for name in (
            "TargetOnDemandCapacity", "TargetSpotCapacity", "InstanceTypeConfigs", "LaunchSpecifications",
            "ResizeSpecifications", "Name",
        )  # fmt: skip
    ),
    # A task fleet added or removed: the pages document no behaviour for it; the safe side.
    ("Instances/TaskInstanceFleets", REPLACEMENT, INSTANCES_PAGE + " (undocumented: the safe side)"),
    ("Instances/*", REPLACEMENT, INSTANCES_PAGE + " (other instance settings, undocumented here: the safe side)"),
    ("BootstrapActions*", REPLACEMENT, BOOTSTRAP_PAGE + " (Name, ScriptBootstrapAction: Replacement); " + SCHEMA),
    # The EMRConfiguration page says "Some interruptions" for a classification's properties and "Replacement" for
    # nested configurations; the registry schema makes the whole property create-only. The safe side: replacement.
    ("Configurations*", REPLACEMENT, SCHEMA + "; " + DOCS + "aws-properties-emr-cluster-emrconfiguration.html"),
    *(
        (name, REPLACEMENT, CLUSTER_PAGE + "; " + SCHEMA)
        for name in (
            "Name", "ReleaseLabel", "Applications*", "EbsRootVolumeSize", "SecurityConfiguration", "ServiceRole",
            "JobFlowRole", "LogUri", "ScaleDownBehavior",
        )  # fmt: skip
    ),
]

# setting -> (settings before, settings after, behaviour). The base is the default persistent stack.
PERSISTENT = {"cluster_mode": "persistent"}
SCALED = {**PERSISTENT, "managed_scaling_max_instance_count": 10}
EXPECTED: dict[str, tuple[dict, dict, str]] = {
    "core_instance_count": (PERSISTENT, {**PERSISTENT, "core_instance_count": 2}, NO_INTERRUPTION),
    "task_instance_count (2 -> 4)": (PERSISTENT, {**PERSISTENT, "task_instance_count": 4}, NO_INTERRUPTION),
    "task_instance_count (2 -> 0: no Spot)": (PERSISTENT, {**PERSISTENT, "task_instance_count": 0}, REPLACEMENT),
    "core_instance_types": (
        PERSISTENT, {**PERSISTENT, "core_instance_types": ["c6i.2xlarge", "c5.2xlarge"]}, NO_INTERRUPTION,
    ),
    "spot_timeout_minutes": (PERSISTENT, {**PERSISTENT, "spot_timeout_minutes": 30}, NO_INTERRUPTION),
    "managed_scaling_max_instance_count (on)": (PERSISTENT, SCALED, NO_INTERRUPTION),
    "managed_scaling_max_instance_count (10 -> 20)": (
        SCALED, {**SCALED, "managed_scaling_max_instance_count": 20}, NO_INTERRUPTION,
    ),
    "managed_scaling_min_instance_count": (
        {**SCALED, "core_instance_count": 2},
        {**SCALED, "core_instance_count": 2, "managed_scaling_min_instance_count": 1},
        NO_INTERRUPTION,
    ),
    "idle_timeout_minutes": (PERSISTENT, {**PERSISTENT, "idle_timeout_minutes": 120}, NO_INTERRUPTION),
    "step_concurrency_level": (
        PERSISTENT, {**PERSISTENT, "step_concurrency_level": 4, "max_active_steps": 200}, NO_INTERRUPTION,
    ),
    "step_timeout_minutes": (PERSISTENT, {**PERSISTENT, "step_timeout_minutes": 60}, NO_CHANGE),
    "step_timeout_minutes (with managed scaling)": (SCALED, {**SCALED, "step_timeout_minutes": 60}, NO_CHANGE),
    "job_batch_size, model_input_size, job_top_k": (
        PERSISTENT, {**PERSISTENT, "job_batch_size": 64, "model_input_size": 32, "job_top_k": 3}, NO_CHANGE,
    ),
    "max_active_steps, trigger_batch_size": (
        PERSISTENT, {**PERSISTENT, "max_active_steps": 50, "trigger_batch_size": 100}, NO_CHANGE,
    ),
    "release_label": (PERSISTENT, {**PERSISTENT, "release_label": "emr-7.12.0"}, REPLACEMENT),
    "input_locations": (PERSISTENT, {**PERSISTENT, "input_locations": ["s3://amzn-s3-demo-bucket2/photos/"]}, NO_CHANGE),
}  # fmt: skip

_rendered: dict[str, tuple[InferenceStack, dict]] = {}


def cluster_properties(tmp_path_factory, settings: dict) -> dict:
    """The AWS::EMR::Cluster's properties as the template would hold them (intrinsics unresolved)."""
    key = json.dumps(settings, sort_keys=True)
    if key not in _rendered:
        context = cdk_json_context()
        context[CONTEXT_KEY] = {**context[CONTEXT_KEY], **settings}
        app = cdk.App(context=context)
        stack = InferenceStack(
            app, STACK_ID, settings=Settings.from_context(context[CONTEXT_KEY]), source_root=REPO_ROOT,
            staging_dir=Path(tmp_path_factory.mktemp("update-behaviour")),
        )  # fmt: skip
        cluster = stack.cluster.cfn_cluster
        _rendered[key] = (stack, stack.resolve(cluster._render_properties(cluster._cfn_properties)))
    return _rendered[key][1]


def changed_paths(before: Any, after: Any, path: str = "") -> list[str]:
    if isinstance(before, dict) and isinstance(after, dict):
        return [
            changed
            for key in sorted(set(before) | set(after))
            for changed in changed_paths(before.get(key), after.get(key), f"{path}/{key}" if path else key)
        ]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = enumerate(zip(before, after))
        return [changed for i, (b, a) in pairs for changed in changed_paths(b, a, f"{path}/{i}")]
    return [] if before == after else [path]


def rule_for(path: str) -> tuple[str, str, str]:
    for rule in PROPERTY_RULES:
        if fnmatch.fnmatchcase(path, rule[0]):
            return rule
    raise AssertionError(f"no update rule for {path!r}: add one to PROPERTY_RULES with its documented source")


def classify(before: dict, after: dict) -> tuple[str, dict[str, str]]:
    """The update behaviour of a change, and each changed path's behaviour."""
    behaviours = {path: rule_for(path)[1] for path in changed_paths(before, after)}
    worst = max(behaviours.values(), key=SEVERITY.index, default=NO_CHANGE)
    return worst, behaviours


@pytest.mark.parametrize("setting", sorted(EXPECTED))
def test_changing_a_setting_on_a_running_persistent_stack_does_what_the_table_says(tmp_path_factory, setting):
    before, after, expected = EXPECTED[setting]
    old, new = cluster_properties(tmp_path_factory, before), cluster_properties(tmp_path_factory, after)
    behaviour, paths = classify(old, new)
    assert behaviour == expected, f"{setting}: {behaviour} (changed: {json.dumps(paths, indent=1)}), table: {expected}"


def test_the_rules_agree_with_the_registry_schemas_create_only_properties():
    """Every top-level property a rule calls a replacement is create-only in the registry schema (as the pinned
    cfn-lint ships it), and every other top-level rule names a property that is not."""
    from cfnlint.schema import PROVIDER_SCHEMA_MANAGER

    schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema("us-east-1", "AWS::EMR::Cluster").schema
    create_only = {path.removeprefix("/properties/") for path in schema["createOnlyProperties"]}
    for pattern, behaviour, _ in PROPERTY_RULES:
        top = pattern.split("/")[0].rstrip("*")
        if top == "Instances":
            assert top not in create_only  # updatable as a whole; its parts follow their own pages
            continue
        assert top in schema["properties"], pattern
        assert (top in create_only) == (behaviour == REPLACEMENT), (pattern, behaviour)


def test_every_property_the_stack_sets_has_a_rule(tmp_path_factory):
    """A property the stack starts setting needs its documented behaviour in the table (a leaf of each property)."""
    def leaves(value: Any, path: str) -> list[str]:
        if isinstance(value, dict) and value and not next(iter(value)).startswith(("Ref", "Fn::")):
            return [leaf for key, child in value.items() for leaf in leaves(child, f"{path}/{key}" if path else key)]
        if isinstance(value, list):
            return [leaf for i, child in enumerate(value) for leaf in leaves(child, f"{path}/{i}")]
        return [path]

    for path in leaves(cluster_properties(tmp_path_factory, SCALED), ""):
        rule_for(path)


def test_the_fast_rendering_is_the_synthesized_templates(synth, tmp_path_factory):
    """The classification reads CfnCluster's own property rendering; it must be what the template holds."""
    variant = synth(cluster_mode="persistent")
    _, cluster = variant.only("AWS::EMR::Cluster")
    assert cluster_properties(tmp_path_factory, PERSISTENT) == cluster["Properties"]


def test_the_classifier_sees_a_replacement_and_an_in_place_change():
    before = {"Tags": [{"Key": "a", "Value": "1"}], "ReleaseLabel": "emr-7.12.0"}
    assert classify(before, {**before, "Tags": [{"Key": "a", "Value": "2"}]})[0] == NO_INTERRUPTION
    assert classify(before, {**before, "ReleaseLabel": "emr-7.13.0"})[0] == REPLACEMENT
    assert classify(before, before)[0] == NO_CHANGE
    with pytest.raises(AssertionError, match="no update rule for 'KerberosAttributes'"):
        classify(before, {**before, "KerberosAttributes": {"Realm": "X"}})
