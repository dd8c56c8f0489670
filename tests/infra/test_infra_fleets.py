"""Instance fleets, Spot, managed scaling, idle auto-termination and Graviton in the synthesized stack; the one cluster
definition behind both modes; settings given with -c reaching the template.

Real CDK synthesis; nothing here talks to AWS. What only a real account shows is in the README ("What a real account
must confirm"): that EMR finds Spot capacity in these pools, places the ApplicationMaster as configured, and accepts
RunJobFlow's policies with the permissions this stack grants.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import botocore.session
import moto
import pytest
from botocore.validate import ParamValidator
from infra_helpers import (
    REPO_ROOT,
    as_list,
    cdk_json_context,
    deploy_time_values_as_placeholders,
    logical_id,
    role_statements,
    shipped_job_flow,
    synthesize,
)

from infra.artifacts import JOB_FLOW_DEFINITION_NAME
from infra.instance_types import ARM64, architecture
from infra.settings import (
    DEFAULT_PRIMARY_INSTANCE_TYPES,
    DEFAULT_RELEASE_LABEL,
    DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES,
    DEFAULT_WORKER_INSTANCE_TYPES,
    MIN_RELEASE_MINOR,
)
from infra.stack import CLUSTER_TAG_KEY
from infra.trigger_function.emr_step import JobArtifacts, JobOptions, build_step

MOTO_EMR_INSTANCE_TYPES = Path(moto.__file__).parent / "emr" / "resources" / "instance-types-emr-{release}.json.gz"


def cluster_properties(variant) -> dict:
    _, cluster = variant.only("AWS::EMR::Cluster")
    return cluster["Properties"]


def environment(variant) -> dict:
    function = variant.resources[logical_id(variant, variant.stack.trigger.function)]
    return function["Properties"]["Environment"]["Variables"]


def cfn_cluster_as_run_job_flow(properties: dict) -> dict:
    """AWS::EMR::Cluster properties in RunJobFlow's shape, by the correspondence CloudFormation documents: the same
    names, except that the fleets are three properties of Instances and a configuration's properties are
    ConfigurationProperties. Written here independently of infra.cluster_definition.to_cfn_cluster_properties."""

    def configuration(cfn: dict) -> dict:
        request = {"Classification": cfn["Classification"], "Properties": cfn.get("ConfigurationProperties", {})}
        if "Configurations" in cfn:
            request["Configurations"] = [configuration(child) for child in cfn["Configurations"]]
        return request

    instances = dict(properties["Instances"])
    fleets = [
        {**instances.pop("MasterInstanceFleet"), "InstanceFleetType": "MASTER"},
        {**instances.pop("CoreInstanceFleet"), "InstanceFleetType": "CORE"},
        *({**fleet, "InstanceFleetType": "TASK"} for fleet in instances.pop("TaskInstanceFleets", [])),
    ]
    return {
        **properties,
        "Instances": {**instances, "InstanceFleets": fleets},
        "Configurations": [configuration(c) for c in properties["Configurations"]],
    }


def tags_sorted(request: dict) -> dict:
    """Tags are a set to EMR; CDK sorts a resource's tags by key."""
    return {**request, "Tags": sorted(request["Tags"], key=lambda tag: tag["Key"])}


# --- one definition ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_transient_launch_and_persistent_cluster_are_the_same_cluster(synth, compute):
    """What the trigger launches in transient mode (the shipped RunJobFlow JSON) and what CloudFormation creates in
    persistent mode are one cluster: every field equal, deploy-time values aside (bucket, role, subnet names)."""
    settings = {"compute": compute, "idle_timeout_minutes": 30, "managed_scaling_max_instance_count": 5}
    transient = shipped_job_flow(synth(cluster_mode="transient", **settings), JOB_FLOW_DEFINITION_NAME)
    persistent = cfn_cluster_as_run_job_flow(cluster_properties(synth(cluster_mode="persistent", **settings)))
    assert tags_sorted(deploy_time_values_as_placeholders(persistent)) == tags_sorted(transient)


def test_the_comparison_sees_a_difference_in_the_definition(synth):
    """The comparison above can fail: two definitions that differ only in the Spot timeout are told apart."""
    settings = {"idle_timeout_minutes": 30, "managed_scaling_max_instance_count": 5}
    transient = shipped_job_flow(
        synth(cluster_mode="transient", spot_timeout_minutes=20, **settings), JOB_FLOW_DEFINITION_NAME
    )
    persistent = cfn_cluster_as_run_job_flow(cluster_properties(synth(cluster_mode="persistent", **settings)))
    assert tags_sorted(deploy_time_values_as_placeholders(persistent)) != tags_sorted(transient)


def test_shipped_definition_is_a_valid_run_job_flow_request(synth):
    """botocore's own validation of the EMR API's RunJobFlow input shape (names, types, nesting), with a step added as
    the trigger adds it. What EMR checks beyond the shape (types offered in the region, limits) needs an account."""
    request = shipped_job_flow(synth(compute="gpu", managed_scaling_max_instance_count=6), JOB_FLOW_DEFINITION_NAME)
    step = build_step(
        name="stack-batch-1",
        artifacts=JobArtifacts(py_files_uri="s3://b/artifacts/job.zip", entry_point_uri="s3://b/artifacts/e.py"),
        manifest_uri="s3://b/manifests/1.json",
        model_uri="s3://b/models/default/",
        output_uri="s3://b/results/1/",
        options=JobOptions(),
    )
    shape = botocore.session.get_session().get_service_model("emr").operation_model("RunJobFlow").input_shape
    report = ParamValidator().validate({**request, "Steps": [step]}, shape)
    assert not report.has_errors(), report.generate_report()


# --- fleets, Spot, scaling, idle --------------------------------------------------------------------------------------


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_persistent_cluster_has_an_on_demand_primary_and_core_and_a_spot_task_fleet(synth, compute):
    instances = cluster_properties(synth(compute=compute, cluster_mode="persistent"))["Instances"]
    workers = DEFAULT_WORKER_INSTANCE_TYPES[(compute, "x86_64")]
    assert [c["InstanceType"] for c in instances["MasterInstanceFleet"]["InstanceTypeConfigs"]] == list(
        DEFAULT_PRIMARY_INSTANCE_TYPES["x86_64"]
    )
    assert [c["InstanceType"] for c in instances["CoreInstanceFleet"]["InstanceTypeConfigs"]] == list(workers)
    (task,) = instances["TaskInstanceFleets"]
    assert [c["InstanceType"] for c in task["InstanceTypeConfigs"]] == list(workers)
    assert instances["CoreInstanceFleet"]["TargetSpotCapacity"] == 0 and task["TargetOnDemandCapacity"] == 0
    assert task["LaunchSpecifications"]["SpotSpecification"] == {
        "AllocationStrategy": "price-capacity-optimized", "TimeoutAction": "SWITCH_TO_ON_DEMAND",
        "TimeoutDurationMinutes": 10,
    }  # fmt: skip


def test_node_counts_become_fleet_capacity_in_task_slots(synth):
    instances = cluster_properties(
        synth(cluster_mode="persistent", core_instance_count=3, task_instance_count=5, spot_timeout_minutes=30)
    )["Instances"]
    (task,) = instances["TaskInstanceFleets"]
    assert instances["CoreInstanceFleet"]["TargetOnDemandCapacity"] == 3 * 8  # c5.2xlarge-sized: 8 vCPUs
    assert task["TargetSpotCapacity"] == 5 * 8
    assert task["LaunchSpecifications"]["SpotSpecification"]["TimeoutDurationMinutes"] == 30


def test_no_task_fleet_when_no_task_nodes(synth):
    instances = cluster_properties(synth(cluster_mode="persistent", task_instance_count=0))["Instances"]
    assert "TaskInstanceFleets" not in instances


def test_a_new_vpc_offers_the_cluster_every_private_subnet(synth):
    variant = synth(cluster_mode="persistent")
    subnets = cluster_properties(variant)["Instances"]["Ec2SubnetIds"]
    assert len(subnets) == 2 and len({json.dumps(s) for s in subnets}) == 2
    assert subnets == variant.stack.resolve(list(variant.stack.network.subnet_ids))


def test_managed_scaling_of_the_persistent_cluster_adds_only_spot_task_capacity(synth):
    properties = cluster_properties(
        synth(cluster_mode="persistent", managed_scaling_max_instance_count=10, managed_scaling_min_instance_count=1)
    )
    assert properties["ManagedScalingPolicy"]["ComputeLimits"] == {
        "UnitType": "InstanceFleetUnits", "MinimumCapacityUnits": 8, "MaximumCapacityUnits": 80,
        "MaximumCoreCapacityUnits": 8, "MaximumOnDemandCapacityUnits": 8,
    }  # fmt: skip
    assert properties["ScaleDownBehavior"] == "TERMINATE_AT_TASK_COMPLETION"


def test_no_managed_scaling_policy_unless_asked(variant):
    assert "ManagedScalingPolicy" not in variant.stack.resolve(variant.stack.cluster.job_flow)


def test_parallelism_plans_for_the_largest_cluster_scaling_may_reach(synth):
    """The slots go into each step (JOB_OPTIONS), not into the cluster's Configurations (review 2, #6)."""
    variant = synth(cluster_mode="persistent", managed_scaling_max_instance_count=10)
    assert json.loads(environment(variant)["JOB_OPTIONS"])["default_parallelism"] == 10 * 8
    assert "spark.default.parallelism" not in json.dumps(variant.stack.resolve(variant.stack.cluster.job_flow))


def test_persistent_cluster_runs_until_destroyed_by_default(synth):
    variant = synth(cluster_mode="persistent")
    assert "AutoTerminationPolicy" not in cluster_properties(variant)
    assert environment(variant)["CLUSTER_MODE"] == "persistent" and "CLUSTER_ID" in environment(variant)


def test_transient_clusters_end_after_the_default_idle_timeout(synth):
    shipped = shipped_job_flow(synth(cluster_mode="transient"), JOB_FLOW_DEFINITION_NAME)
    assert shipped["AutoTerminationPolicy"] == {"IdleTimeout": DEFAULT_TRANSIENT_IDLE_TIMEOUT_MINUTES * 60}
    assert shipped["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True


def test_a_persistent_cluster_that_can_end_idle_is_relaunched_by_the_trigger(synth):
    """With an idle timeout the stack's own cluster may be gone when a batch comes: the trigger then finds clusters by
    the stack's tag (the CloudFormation cluster carries it) and launches one from the shipped definition."""
    variant = synth(cluster_mode="persistent", idle_timeout_minutes=120)
    properties = cluster_properties(variant)
    assert properties["AutoTerminationPolicy"] == {"IdleTimeout": 120 * 60}
    assert {"Key": CLUSTER_TAG_KEY, "Value": variant.stack.cluster_tag_value} in properties["Tags"]
    env = environment(variant)
    assert env["CLUSTER_MODE"] == "transient"
    assert env["JOB_FLOW_DEFINITION_KEY"] == "artifacts/" + JOB_FLOW_DEFINITION_NAME and "CLUSTER_ID" not in env
    shipped = shipped_job_flow(variant, JOB_FLOW_DEFINITION_NAME)
    persistent = deploy_time_values_as_placeholders(cfn_cluster_as_run_job_flow(properties))
    assert tags_sorted(persistent) == tags_sorted(shipped)
    statements = role_statements(variant, variant.stack.trigger.function.role)
    actions = {action for statement in statements for action in as_list(statement["Action"])}
    assert {"elasticmapreduce:RunJobFlow", "elasticmapreduce:PutAutoTerminationPolicy"} <= actions


def test_the_trigger_may_put_the_scaling_policy_only_when_the_definition_has_one(synth):
    def actions(variant) -> set[str]:
        statements = role_statements(variant, variant.stack.trigger.function.role)
        return {action for s in statements for action in as_list(s["Action"])}

    assert "elasticmapreduce:PutManagedScalingPolicy" in actions(synth(managed_scaling_max_instance_count=6))
    assert "elasticmapreduce:PutManagedScalingPolicy" not in actions(synth(cluster_mode="transient"))


# --- Graviton ---------------------------------------------------------------------------------------------------------


def test_graviton_cluster_uses_arm64_types_for_every_node(synth):
    instances = cluster_properties(synth(architecture="arm64", cluster_mode="persistent"))["Instances"]
    fleets = [instances["MasterInstanceFleet"], instances["CoreInstanceFleet"], *instances["TaskInstanceFleets"]]
    types = [c["InstanceType"] for fleet in fleets for c in fleet["InstanceTypeConfigs"]]
    assert types and all(architecture(instance_type) == ARM64 for instance_type in types)


def test_graviton_offline_wheelhouse_must_hold_aarch64_wheels(tmp_path):
    source_root = tmp_path / "repo"
    source_root.mkdir()
    for name in ("job", "bootstrap"):
        (source_root / name).symlink_to(REPO_ROOT / name)
    x86_only = source_root / "build" / "wheelhouse" / "cpu" / "x86_64"
    x86_only.mkdir(parents=True)
    (x86_only / "example-1.0-py3-none-any.whl").write_bytes(b"only its presence is used")
    with pytest.raises(FileNotFoundError, match=r"cpu/aarch64 holds no wheels; build it with: .*--build-wheelhouse cpu "
                       r".*/wheelhouse/cpu aarch64"):  # fmt: skip
        synthesize(tmp_path / "staging", source_root=source_root, offline_wheelhouse=True, architecture="arm64")


@pytest.mark.parametrize("release", [f"7.{MIN_RELEASE_MINOR}.0", DEFAULT_RELEASE_LABEL.removeprefix("emr-")])
def test_every_default_instance_type_is_one_emr_supports(release):
    """moto ships AWS's ListSupportedInstanceTypes answer per EMR release; a default EMR did not offer would fail
    every launch."""
    listing = Path(str(MOTO_EMR_INSTANCE_TYPES).format(release=release))
    supported = set(json.loads(gzip.decompress(listing.read_bytes())))
    defaults = {t for types in [*DEFAULT_PRIMARY_INSTANCE_TYPES.values(), *DEFAULT_WORKER_INSTANCE_TYPES.values()]
                for t in types}  # fmt: skip
    assert sorted(defaults - supported) == []


# --- settings the CDK way ---------------------------------------------------------------------------------------------


def test_command_line_settings_reach_the_template(tmp_path):
    """app.py run as `cdk synth -c compute=gpu -c cluster_mode=persistent -c core_instance_count=2` runs it: the CLI
    puts each -c value, as a string, at the top of the context it passes in CDK_CONTEXT_JSON."""
    context = {**cdk_json_context(), "compute": "gpu", "cluster_mode": "persistent", "core_instance_count": "2"}
    env = {
        **os.environ,
        "CDK_OUTDIR": str(tmp_path / "cdk.out"),
        "CDK_CONTEXT_JSON": json.dumps(context),
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    }
    result = subprocess.run(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    template = json.loads((tmp_path / "cdk.out" / "MxnetSparkInference.template.json").read_text())
    (cluster,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::EMR::Cluster"]
    core = cluster["Properties"]["Instances"]["CoreInstanceFleet"]
    gpu_types = list(DEFAULT_WORKER_INSTANCE_TYPES[("gpu", "x86_64")])
    assert [c["InstanceType"] for c in core["InstanceTypeConfigs"]] == gpu_types
    assert core["TargetOnDemandCapacity"] == 2  # two one-GPU nodes


def test_the_launch_may_set_the_clusters_policies_under_either_of_the_tags_emr_may_read(synth):
    """EMR authorizes PutAutoTerminationPolicy (and PutManagedScalingPolicy) as part of the RunJobFlow that carries them;
    whether it reads the new cluster's tags or the request's is not documented. Both are allowed, each only for this
    stack's tag. What IAM really evaluates needs an account; the statements are what is checked here."""
    variant = synth(cluster_mode="transient", managed_scaling_max_instance_count=6)
    tag = f"{CLUSTER_TAG_KEY}"
    statements = role_statements(variant, variant.stack.trigger.function.role)
    policy_actions = {"elasticmapreduce:PutAutoTerminationPolicy", "elasticmapreduce:PutManagedScalingPolicy"}
    conditions = sorted(
        json.dumps(s["Condition"], sort_keys=True)
        for s in statements
        if policy_actions <= set(as_list(s["Action"]))
    )
    assert conditions == sorted(
        json.dumps({"StringEquals": {f"aws:{kind}/{tag}": variant.stack.cluster_tag_value}}, sort_keys=True)
        for kind in ("RequestTag", "ResourceTag")
    )
