"""The one EMR cluster definition (a pure function) and its CloudFormation rendering."""

from __future__ import annotations

import re

import pytest
from infra_helpers import REPO_ROOT

from infra.cluster_definition import (
    GPU_CGROUP_ROOT,
    GPU_CGROUP_SCRIPT_NAME,
    GPU_DISCOVERY_SCRIPT,
    GPU_DISCOVERY_SCRIPT_NAME,
    MXNET_BOOTSTRAP_SCRIPT_NAME,
    GPU_EXECUTOR_SIZING,
    YARN_AM_SIZING,
    ClusterInputs,
    InstanceGroup,
    build_job_flow,
    task_slots,
    to_cfn_cluster_properties,
)
from infra.instance_types import vcpus

BOOTSTRAP_PREFIX = "s3://data-bucket/artifacts/bootstrap/"


def inputs(
    compute: str = "cpu", *, keep_alive: bool = False, wheelhouse_uri=None, task_count: int = 0
) -> ClusterInputs:
    worker_type = "g4dn.xlarge" if compute == "gpu" else "c5.2xlarge"
    groups = [InstanceGroup("MASTER", "Primary", "m5.xlarge", 1), InstanceGroup("CORE", "Core", worker_type, 2)]
    if task_count:
        groups.append(InstanceGroup("TASK", "Task", worker_type, task_count))
    return ClusterInputs(
        name="stack-cpu",
        release_label="emr-7.13.0",
        region="eu-west-1",
        compute=compute,
        instance_groups=tuple(groups),
        subnet_id="subnet-1",
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
        keep_alive_when_no_steps=keep_alive,
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
    assert names == {"spark-env", "spark-defaults"}
    assert not any("gpu" in key for key in classification(job_flow, "spark-defaults")["Properties"])


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


@pytest.mark.parametrize("keep_alive", [True, False])
def test_keep_alive_follows_the_cluster_mode(keep_alive):
    assert build_job_flow(inputs(keep_alive=keep_alive))["Instances"]["KeepJobFlowAliveWhenNoSteps"] is keep_alive


def test_definition_has_no_steps_and_carries_the_stack_tag():
    job_flow = build_job_flow(inputs())
    assert "Steps" not in job_flow
    assert job_flow["Tags"] == [{"Key": "stack-tag", "Value": "stack-name"}]


def test_cfn_rendering_keeps_groups_configurations_and_bootstrap_actions():
    job_flow = build_job_flow(inputs("gpu", task_count=2))
    cfn = to_cfn_cluster_properties(job_flow)
    assert cfn["instances"]["masterInstanceGroup"]["instanceType"] == "m5.xlarge"
    assert cfn["instances"]["coreInstanceGroup"]["instanceCount"] == 2
    assert [g["instanceCount"] for g in cfn["instances"]["taskInstanceGroups"]] == [2]
    assert [c["classification"] for c in cfn["configurations"]] == [
        c["Classification"] for c in job_flow["Configurations"]
    ]
    assert [c["configurationProperties"] for c in cfn["configurations"]] == [
        c["Properties"] for c in job_flow["Configurations"]
    ]
    assert [a["scriptBootstrapAction"]["path"] for a in cfn["bootstrap_actions"]] == [
        a["ScriptBootstrapAction"]["Path"] for a in job_flow["BootstrapActions"]
    ]
    assert (cfn["step_concurrency_level"], cfn["security_configuration"]) == (3, "security-configuration")


@pytest.mark.parametrize(
    ("compute", "task_count", "slots"),
    [
        ("cpu", 0, 16),  # 2 x c5.2xlarge: 8 vCPUs each, one task per vCPU
        ("cpu", 3, 40),
        ("gpu", 0, 2),  # 2 x g4dn.xlarge: one T4 each, one task per GPU
        ("gpu", 1, 3),
    ],
)
def test_spark_plans_for_every_slot_of_the_workers_not_for_an_empty_start(compute, task_count, slots):
    """EMR starts an application under dynamic allocation with no executors, where Spark's defaultParallelism is 2; the
    job plans its tasks from spark.default.parallelism, so it must hold the workers' slots (the primary has none)."""
    job_flow = build_job_flow(inputs(compute, task_count=task_count))
    assert classification(job_flow, "spark-defaults")["Properties"]["spark.default.parallelism"] == str(slots)


def test_multi_gpu_nodes_count_one_slot_per_gpu():
    groups = [InstanceGroup("MASTER", "Primary", "m5.xlarge", 1), InstanceGroup("CORE", "Core", "g5.12xlarge", 2)]
    assert task_slots("gpu", groups) == 8


def test_gpu_executor_and_the_yarn_application_master_fit_on_one_g4dn_xlarge():
    """In client mode the driver runs on the primary, but Spark still puts a YARN ApplicationMaster on a worker; with
    the DominantResourceCalculator (GPU scheduling) its vcores count. An executor that asked for all of a g4dn.xlarge's
    4 vcores could never run on that node: with one core node no executor would ever start. What YARN does with real
    NodeManagers is not run here; this checks the arithmetic the sizing relies on (YARN vcores = the type's vCPUs)."""
    node_vcores = vcpus("g4dn.xlarge")
    spark_defaults = classification(build_job_flow(inputs("gpu")), "spark-defaults")["Properties"]
    executor_cores = int(spark_defaults["spark.executor.cores"])
    assert executor_cores + int(spark_defaults["spark.yarn.am.cores"]) <= node_vcores
    assert spark_defaults["spark.task.cpus"] == GPU_EXECUTOR_SIZING["spark.task.cpus"] == str(executor_cores)
    assert spark_defaults["spark.yarn.am.cores"] == YARN_AM_SIZING["spark.yarn.am.cores"]


@pytest.mark.parametrize("compute", ["cpu", "gpu"])
def test_driver_and_executors_use_the_stacks_region_for_aws_calls(compute):
    """Without a region boto3 calls the us-east-1 global S3 endpoint, which an S3 gateway endpoint in another region
    does not route. The driver (client mode) reads spark-env.sh; executors get spark.executorEnv.*. That the node's
    boto3 then resolves eu-west-1's endpoint is botocore's documented behaviour, not run here."""
    job_flow = build_job_flow(inputs(compute))
    export = classification(job_flow, "spark-env")["Configurations"][0]["Properties"]
    spark_defaults = classification(job_flow, "spark-defaults")["Properties"]
    assert export["AWS_DEFAULT_REGION"] == spark_defaults["spark.executorEnv.AWS_DEFAULT_REGION"] == "eu-west-1"
