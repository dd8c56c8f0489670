"""The one EMR cluster definition (a pure function) and its CloudFormation rendering."""

from __future__ import annotations

import re

import pytest
from infra_helpers import REPO_ROOT

from infra.cluster_definition import (
    DECOMMISSIONING_TIMEOUT,
    MAX_AM_RESOURCE_PERCENT,
    GPU_CGROUP_ROOT,
    GPU_CGROUP_SCRIPT_NAME,
    GPU_DISCOVERY_SCRIPT,
    GPU_DISCOVERY_SCRIPT_NAME,
    MXNET_BOOTSTRAP_SCRIPT_NAME,
    GPU_EXECUTOR_SIZING,
    SCALE_DOWN_BEHAVIOR,
    SPOT_SAFE_YARN_SITE,
    SPOT_TOLERANT_SPARK_DEFAULTS,
    YARN_AM_SIZING,
    ClusterInputs,
    InstanceFleet,
    ManagedScaling,
    build_job_flow,
    most_capacity_provisioned,
    task_slots,
    to_cfn_cluster_properties,
)
from infra.instance_types import vcpus
from infra.settings import MAX_STEP_TIMEOUT_MINUTES

BOOTSTRAP_PREFIX = "s3://data-bucket/artifacts/bootstrap/"


WORKER_TYPES = {"cpu": ("c5.2xlarge", "c6i.2xlarge"), "gpu": ("g4dn.xlarge", "g5.xlarge")}


def fleets(compute: str = "cpu", *, core_count: int = 2, task_count: int = 0, task_types=None) -> tuple:
    result = [
        InstanceFleet("MASTER", "Primary", ("m5.xlarge", "m6i.xlarge"), 1),
        InstanceFleet("CORE", "Core", WORKER_TYPES[compute], core_count),
    ]
    if task_count:
        result.append(InstanceFleet("TASK", "Task", task_types or WORKER_TYPES[compute], task_count, spot=True))
    return tuple(result)


def inputs(
    compute: str = "cpu",
    *,
    wheelhouse_uri=None,
    task_count: int = 0,
    task_types=None,
    scaling: ManagedScaling | None = None,
    idle_timeout_minutes: int | None = None,
) -> ClusterInputs:
    return ClusterInputs(
        name="stack-cpu",
        release_label="emr-7.13.0",
        region="eu-west-1",
        compute=compute,
        fleets=fleets(compute, task_count=task_count, task_types=task_types),
        spot_timeout_minutes=12,
        managed_scaling=scaling,
        idle_timeout_minutes=idle_timeout_minutes,
        subnet_ids=("subnet-1", "subnet-2"),
        primary_security_group_id="sg-primary",
        worker_security_group_id="sg-worker",
        service_access_security_group_id="sg-service",
        service_role_name="service-role",
        instance_profile_name="instance-profile",
        security_configuration_name="security-configuration",
        log_uri="s3://logs-bucket/emr/",
        bootstrap_uri_prefix=BOOTSTRAP_PREFIX,
        wheelhouse_uri=wheelhouse_uri,
        step_concurrency_level=3,
        tags={"stack-tag": "stack-name"},
    )


def classification(job_flow: dict, name: str) -> dict:
    matches = [c for c in job_flow["Configurations"] if c["Classification"] == name]
    assert len(matches) == 1, f"expected one {name} classification, found {len(matches)}"
    return matches[0]


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_pyspark_python_is_python_3_11_through_spark_env(compute):
    export = classification(build_job_flow(inputs(compute)), "spark-env")["Configurations"][0]
    assert export["Classification"] == "export"
    assert export["Properties"]["PYSPARK_PYTHON"].endswith("python3.11")


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_spark_defaults_size_the_executors(compute):
    spark_defaults = classification(build_job_flow(inputs(compute)), "spark-defaults")["Properties"]
    assert {"spark.executor.cores", "spark.executor.memory", "spark.executor.memoryOverhead"} <= set(spark_defaults)


def test_gpu_executor_owns_exactly_one_gpu_found_by_the_discovery_script():
    spark_defaults = classification(build_job_flow(inputs("gpu")), "spark-defaults")["Properties"]
    assert spark_defaults["spark.executor.resource.gpu.amount"] == "1"
    assert spark_defaults["spark.task.resource.gpu.amount"] == "1"
    assert spark_defaults["spark.executor.resource.gpu.discoveryScript"] == GPU_DISCOVERY_SCRIPT


def test_gpu_yarn_schedules_gpus_through_cgroup_isolation():
    job_flow = build_job_flow(inputs("gpu"))
    yarn_site = classification(job_flow, "yarn-site")["Properties"]
    assert yarn_site["yarn.resource-types"] == "yarn.io/gpu"
    assert yarn_site["yarn.nodemanager.resource-plugins"] == "yarn.io/gpu"
    assert yarn_site["yarn.nodemanager.linux-container-executor.cgroups.mount-path"] == GPU_CGROUP_ROOT
    executor = {
        c["Classification"]: c["Properties"] for c in classification(job_flow, "container-executor")["Configurations"]
    }
    assert executor == {
        "gpu": {"module.enabled": "true"},
        "cgroups": {"root": GPU_CGROUP_ROOT, "yarn-hierarchy": "yarn"},
    }
    calculator = classification(job_flow, "capacity-scheduler")["Properties"][
        "yarn.scheduler.capacity.resource-calculator"
    ]
    assert calculator.endswith("DominantResourceCalculator")


def test_cpu_cluster_has_no_gpu_configuration():
    job_flow = build_job_flow(inputs("cpu"))
    names = {c["Classification"] for c in job_flow["Configurations"]}
    assert names == {"spark-env", "spark-defaults", "yarn-site"}
    assert not any("gpu" in key for key in classification(job_flow, "spark-defaults")["Properties"])
    assert not any("gpu" in key for key in classification(job_flow, "yarn-site")["Properties"])


def test_cgroup_script_mounts_where_yarn_looks():
    script = (REPO_ROOT / "bootstrap" / GPU_CGROUP_SCRIPT_NAME).read_text()
    assert re.search(rf'^readonly CGROUP_ROOT="{re.escape(GPU_CGROUP_ROOT)}"$', script, re.MULTILINE)


def test_gpu_bootstrap_mounts_cgroups_and_installs_the_discovery_script_before_the_cuda_build():
    actions = build_job_flow(inputs("gpu"))["BootstrapActions"]
    assert [a["ScriptBootstrapAction"]["Path"] for a in actions] == [
        BOOTSTRAP_PREFIX + GPU_CGROUP_SCRIPT_NAME,
        BOOTSTRAP_PREFIX + GPU_DISCOVERY_SCRIPT_NAME,
        BOOTSTRAP_PREFIX + MXNET_BOOTSTRAP_SCRIPT_NAME,
    ]
    assert actions[2]["ScriptBootstrapAction"]["Args"] == ["gpu"]


def test_gpu_discovery_script_is_installed_where_spark_runs_it():
    """The path Spark runs is the one the bootstrap installs to; the script ships in bootstrap/ (so in the S3 prefix)."""
    actions = build_job_flow(inputs("gpu"))["BootstrapActions"]
    spark_defaults = classification(build_job_flow(inputs("gpu")), "spark-defaults")["Properties"]
    assert actions[1]["ScriptBootstrapAction"]["Args"] == [
        "--install", spark_defaults["spark.executor.resource.gpu.discoveryScript"]
    ]
    assert (REPO_ROOT / "bootstrap" / GPU_DISCOVERY_SCRIPT_NAME).is_file()


def test_cpu_bootstrap_installs_the_cpu_build_only():
    actions = build_job_flow(inputs("cpu"))["BootstrapActions"]
    assert [(a["ScriptBootstrapAction"]["Path"], a["ScriptBootstrapAction"]["Args"]) for a in actions] == [
        (BOOTSTRAP_PREFIX + MXNET_BOOTSTRAP_SCRIPT_NAME, ["cpu"])
    ]


def test_wheelhouse_is_passed_to_the_install_script():
    actions = build_job_flow(inputs("cpu", wheelhouse_uri="s3://data-bucket/artifacts/wheelhouse/cpu/"))[
        "BootstrapActions"
    ]
    assert actions[-1]["ScriptBootstrapAction"]["Args"] == ["cpu", "s3://data-bucket/artifacts/wheelhouse/cpu/"]


def test_both_modes_keep_the_cluster_between_steps_and_end_it_only_through_the_idle_timeout():
    """A transient cluster no longer ends with its last step (a step added then would be lost): it ends idle."""
    kept = build_job_flow(inputs(idle_timeout_minutes=10))
    assert kept["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    assert kept["AutoTerminationPolicy"] == {"IdleTimeout": 600}
    assert "AutoTerminationPolicy" not in build_job_flow(inputs(idle_timeout_minutes=None))


def test_definition_has_no_steps_and_carries_the_stack_tag():
    job_flow = build_job_flow(inputs())
    assert "Steps" not in job_flow
    assert job_flow["Tags"] == [{"Key": "stack-tag", "Value": "stack-name"}]


def test_cfn_rendering_keeps_fleets_configurations_bootstrap_actions_and_policies():
    job_flow = build_job_flow(
        inputs("gpu", task_count=2, scaling=ManagedScaling(min_instance_count=1, max_instance_count=6),
               idle_timeout_minutes=30)
    )  # fmt: skip
    cfn = to_cfn_cluster_properties(job_flow)
    fleets_by_type = {fleet["InstanceFleetType"]: fleet for fleet in job_flow["Instances"]["InstanceFleets"]}
    assert [c["instanceType"] for c in cfn["instances"]["masterInstanceFleet"]["instanceTypeConfigs"]] == [
        "m5.xlarge", "m6i.xlarge"
    ]  # fmt: skip
    assert cfn["instances"]["coreInstanceFleet"]["targetOnDemandCapacity"] == fleets_by_type["CORE"][
        "TargetOnDemandCapacity"
    ]
    (task,) = cfn["instances"]["taskInstanceFleets"]
    assert task["launchSpecifications"]["spotSpecification"] == {
        "allocationStrategy": "price-capacity-optimized", "timeoutDurationMinutes": 12,
        "timeoutAction": "SWITCH_TO_ON_DEMAND",
    }  # fmt: skip
    assert cfn["instances"]["ec2SubnetIds"] == ["subnet-1", "subnet-2"]
    assert [c["classification"] for c in cfn["configurations"]] == [
        c["Classification"] for c in job_flow["Configurations"]
    ]
    assert [c["configurationProperties"] for c in cfn["configurations"]] == [
        c["Properties"] for c in job_flow["Configurations"]
    ]
    assert [a["scriptBootstrapAction"]["path"] for a in cfn["bootstrap_actions"]] == [
        a["ScriptBootstrapAction"]["Path"] for a in job_flow["BootstrapActions"]
    ]
    assert cfn["managed_scaling_policy"]["computeLimits"]["maximumCapacityUnits"] == (
        job_flow["ManagedScalingPolicy"]["ComputeLimits"]["MaximumCapacityUnits"]
    )
    assert cfn["auto_termination_policy"] == {"idleTimeout": 1800}
    assert (cfn["step_concurrency_level"], cfn["security_configuration"]) == (3, "security-configuration")
    assert cfn["scale_down_behavior"] == SCALE_DOWN_BEHAVIOR == "TERMINATE_AT_TASK_COMPLETION"


@pytest.mark.parametrize(
    ("compute", "task_count", "slots"),
    [
        ("cpu", 0, 16),  # 2 x c5.2xlarge-sized core nodes: 8 vCPUs each, one task per vCPU
        ("cpu", 3, 40),  # + 3 task nodes
        ("gpu", 0, 2),  # 2 x g4dn.xlarge: one T4 each, one task per GPU
        ("gpu", 1, 3),
    ],
)
def test_spark_plans_for_every_slot_of_the_workers_not_for_an_empty_start(compute, task_count, slots):
    """EMR starts an application under dynamic allocation with no executors, where Spark's defaultParallelism is 2; the
    job plans its tasks from spark.default.parallelism, so it must hold the workers' slots (the primary has none). The
    stack passes task_slots to each step (JOB_OPTIONS.default_parallelism, tested in test_infra_emr_step.py)."""
    assert task_slots(compute, fleets(compute, task_count=task_count)) == slots


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_no_capacity_count_reaches_the_clusters_configurations(compute):
    """Review 2, #6: Configurations is a create-only property of AWS::EMR::Cluster (it replaces the cluster), so a
    resize (node counts, managed scaling on or its maximum) must change only the fleets' targets and the scaling
    limits."""
    small = build_job_flow(inputs(compute, task_count=1))
    large = build_job_flow(
        inputs(compute, task_count=5, scaling=ManagedScaling(min_instance_count=1, max_instance_count=40))
    )
    assert "spark.default.parallelism" not in classification(small, "spark-defaults")["Properties"]
    assert small["Configurations"] == large["Configurations"]


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_driver_and_executors_use_the_stacks_region_for_aws_calls(compute):
    """Without a region boto3 calls the us-east-1 global S3 endpoint, which an S3 gateway endpoint in another region
    does not route. The driver (client mode) reads spark-env.sh; executors get spark.executorEnv.*. That the node's
    boto3 then resolves eu-west-1's endpoint is botocore's documented behaviour, not run here."""
    job_flow = build_job_flow(inputs(compute))
    export = classification(job_flow, "spark-env")["Configurations"][0]["Properties"]
    spark_defaults = classification(job_flow, "spark-defaults")["Properties"]
    assert export["AWS_DEFAULT_REGION"] == spark_defaults["spark.executorEnv.AWS_DEFAULT_REGION"] == "eu-west-1"


# --- instance fleets, Spot, managed scaling ---------------------------------------------------------------------------


def fleet_requests(job_flow: dict) -> dict[str, dict]:
    return {fleet["InstanceFleetType"]: fleet for fleet in job_flow["Instances"]["InstanceFleets"]}


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_each_worker_type_weighs_its_task_slots_and_the_primary_one(compute):
    """Fleet capacity counts task slots: a type's WeightedCapacity is its vCPUs (cpu) or GPUs (gpu); EMR requires 1
    for the primary."""
    requests = fleet_requests(build_job_flow(inputs(compute, task_count=1)))
    assert {c["WeightedCapacity"] for c in requests["MASTER"]["InstanceTypeConfigs"]} == {1}
    expected = {"cpu": {"c5.2xlarge": 8, "c6i.2xlarge": 8}, "gpu": {"g4dn.xlarge": 1, "g5.xlarge": 1}}[compute]
    for role in ("CORE", "TASK"):
        configs = requests[role]["InstanceTypeConfigs"]
        assert {c["InstanceType"]: c["WeightedCapacity"] for c in configs} == expected


def test_primary_and_core_are_on_demand_and_the_task_fleet_is_spot_with_an_on_demand_fallback():
    requests = fleet_requests(build_job_flow(inputs("cpu", task_count=3)))
    for role in ("MASTER", "CORE"):
        assert requests[role]["TargetSpotCapacity"] == 0
        on_demand = {"OnDemandSpecification": {"AllocationStrategy": "lowest-price"}}
        assert requests[role]["LaunchSpecifications"] == on_demand
    assert (requests["MASTER"]["TargetOnDemandCapacity"], requests["CORE"]["TargetOnDemandCapacity"]) == (1, 2 * 8)
    task = requests["TASK"]
    assert (task["TargetOnDemandCapacity"], task["TargetSpotCapacity"]) == (0, 3 * 8)
    assert task["LaunchSpecifications"]["SpotSpecification"] == {
        "AllocationStrategy": "price-capacity-optimized",
        "TimeoutDurationMinutes": 12,
        "TimeoutAction": "SWITCH_TO_ON_DEMAND",
    }
    # SWITCH_TO_ON_DEMAND launches on-demand instances of the same types, by the on-demand strategy.
    assert task["LaunchSpecifications"]["OnDemandSpecification"] == {"AllocationStrategy": "lowest-price"}


def test_the_cluster_may_start_in_any_subnet_given():
    assert build_job_flow(inputs())["Instances"]["Ec2SubnetIds"] == ["subnet-1", "subnet-2"]
    assert "Ec2SubnetId" not in build_job_flow(inputs())["Instances"]


def test_spot_nodes_never_host_the_yarn_application_master():
    """With Spot task nodes the ApplicationMaster goes on on-demand nodes (emr-7.2.0's market labels); a cluster
    without Spot nodes keeps YARN's defaults."""
    with_spot = classification(build_job_flow(inputs("cpu", task_count=1)), "yarn-site")["Properties"]
    assert with_spot.items() >= SPOT_SAFE_YARN_SITE.items()
    assert with_spot["yarn.node-labels.am.default-node-label-expression"] == "ON_DEMAND"
    without_spot = classification(build_job_flow(inputs("cpu")), "yarn-site")["Properties"]
    assert not without_spot.keys() & SPOT_SAFE_YARN_SITE.keys()


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_parallel_steps_each_find_room_for_their_application_master_in_the_on_demand_partition(compute):
    """Review 2, #7 (AWS, "Using managed scaling in Amazon EMR", considerations: with node labels, set
    maximum-am-resource-percent to 1 to run applications in parallel). Set whenever there are Spot nodes, so that a
    change of step_concurrency_level changes no Configurations. YARN's scheduling itself is not run here."""
    with_spot = classification(build_job_flow(inputs(compute, task_count=1)), "capacity-scheduler")["Properties"]
    assert with_spot[MAX_AM_RESOURCE_PERCENT] == "1"
    without_spot = build_job_flow(inputs(compute))["Configurations"]
    assert all(MAX_AM_RESOURCE_PERCENT not in c["Properties"] for c in without_spot)


@pytest.mark.parametrize("task_count", [0, 1])
def test_scale_in_lets_the_longest_step_finish_before_it_removes_a_node(task_count):
    """Review 2, #7: graceful decommissioning (Hadoop's default 3,600 s) must outlast a step's time limit, or a
    scale-in cuts long tasks, which then run again. The longest limit any setting allows, on every cluster: neither a
    step_timeout_minutes change nor turning managed scaling on then changes Configurations."""
    yarn_site = classification(build_job_flow(inputs("cpu", task_count=task_count)), "yarn-site")["Properties"]
    assert int(yarn_site[DECOMMISSIONING_TIMEOUT]) >= MAX_STEP_TIMEOUT_MINUTES * 60


def test_every_resize_of_a_worker_fleet_has_its_own_timeout_and_strategies():
    """Review 2, #14: LaunchSpecifications cover the launch only; Spot replacements and managed-scaling scale-outs use
    ResizeSpecifications (API InstanceFleetConfig). EMR's behaviour on a resize timeout is not run here."""
    job_flow = build_job_flow(inputs("cpu", task_count=2))
    requests = fleet_requests(job_flow)
    assert "ResizeSpecifications" not in requests["MASTER"]  # the primary is never resized
    for role in ("CORE", "TASK"):
        assert requests[role]["ResizeSpecifications"] == {
            "OnDemandResizeSpecification": {"AllocationStrategy": "lowest-price", "TimeoutDurationMinutes": 12},
            "SpotResizeSpecification": {"AllocationStrategy": "price-capacity-optimized", "TimeoutDurationMinutes": 12},
        }
    cfn = to_cfn_cluster_properties(job_flow)["instances"]
    assert cfn["taskInstanceFleets"][0]["resizeSpecifications"]["spotResizeSpecification"] == {
        "allocationStrategy": "price-capacity-optimized", "timeoutDurationMinutes": 12,
    }  # fmt: skip
    assert "resizeSpecifications" in cfn["coreInstanceFleet"]
    assert "resizeSpecifications" not in cfn["masterInstanceFleet"]


def test_gpu_cluster_with_spot_nodes_has_one_yarn_site_with_both_the_gpu_plugin_and_the_am_placement():
    job_flow = build_job_flow(inputs("gpu", task_count=1))
    yarn_site = classification(job_flow, "yarn-site")["Properties"]
    assert yarn_site["yarn.resource-types"] == "yarn.io/gpu"
    assert yarn_site["yarn.node-labels.am.default-node-label-expression"] == "ON_DEMAND"


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_spark_keeps_emrs_decommissioning_behaviour_for_lost_nodes(compute):
    spark_defaults = classification(build_job_flow(inputs(compute, task_count=1)), "spark-defaults")["Properties"]
    assert spark_defaults.items() >= SPOT_TOLERANT_SPARK_DEFAULTS.items()
    assert spark_defaults["spark.blacklist.decommissioning.enabled"] == "true"
    # One application attempt: a lost node costs task attempts, which Spark retries; never the application.
    assert spark_defaults["spark.yarn.maxAppAttempts"] == "1"


def test_managed_scaling_grows_only_spot_task_capacity_above_an_on_demand_core():
    scaling = ManagedScaling(min_instance_count=2, max_instance_count=6)
    job_flow = build_job_flow(inputs("cpu", task_count=1, scaling=scaling))
    limits = job_flow["ManagedScalingPolicy"]["ComputeLimits"]
    core_units = 2 * 8
    assert limits == {
        "UnitType": "InstanceFleetUnits",
        "MinimumCapacityUnits": core_units,
        "MaximumCapacityUnits": core_units + (6 - 2) * 8,
        "MaximumCoreCapacityUnits": core_units,
        "MaximumOnDemandCapacityUnits": core_units,
    }
    assert job_flow["ScaleDownBehavior"] == "TERMINATE_AT_TASK_COMPLETION"
    assert "ManagedScalingPolicy" not in build_job_flow(inputs("cpu", task_count=1))


def test_scaling_limits_count_task_nodes_in_units_of_the_first_task_type():
    job_flow = build_job_flow(
        inputs("cpu", task_count=1, task_types=("c5.4xlarge", "c6i.4xlarge"),
               scaling=ManagedScaling(min_instance_count=1, max_instance_count=4))
    )  # fmt: skip
    assert job_flow["ManagedScalingPolicy"]["ComputeLimits"]["MaximumCapacityUnits"] == 2 * 8 + (4 - 2) * 16


def test_parallelism_counts_the_slots_of_the_largest_cluster_managed_scaling_may_reach():
    """Dynamic allocation starts with no executors: planning for fewer slots than the scaled-up cluster would leave
    the added nodes idle; planning for more only adds a round of tasks."""
    scaling = ManagedScaling(min_instance_count=2, max_instance_count=6)
    assert task_slots("cpu", fleets("cpu", task_count=1), scaling) == 6 * 8
    gpu_scaling = ManagedScaling(min_instance_count=1, max_instance_count=10)
    assert task_slots("gpu", fleets("gpu", task_count=1), gpu_scaling) == 10


@pytest.mark.parametrize(
    ("target", "weights", "most"),
    [
        (16, [8], 16),  # weights that divide the target: exactly the target
        (10, [8], 16),  # 8 < 10, so a second 8 is launched
        (10, [4, 8], 16),  # 4 + 4 = 8 < 10, then an 8
        (9, [4, 8], 16),  # 8 < 9, then an 8 (4 + 4 + 4 = 12 is less)
        (1, [8, 16], 16),  # the first instance may be the largest
        (0, [8], 0),
    ],
)
def test_most_capacity_provisioned_covers_ec2_fleets_overshoot(target, weights, most):
    assert most_capacity_provisioned(target, weights) == most


def test_parallelism_covers_a_fleet_that_overshoots_its_target():
    """A core fleet of 3 c5.2xlarge-sized nodes (24 units) that may also launch c5.4xlarge (16 units): it can end at
    16 + 16 = 32 slots."""
    cluster = (
        InstanceFleet("MASTER", "Primary", ("m5.xlarge",), 1),
        InstanceFleet("CORE", "Core", ("c5.2xlarge", "c5.4xlarge"), 3),
    )
    assert task_slots("cpu", cluster) == 32
