"""The one definition of the EMR cluster, as a pure function.

:func:`build_job_flow` returns the ``RunJobFlow`` request (boto3's shape). The stack uses it twice:
- ``persistent`` mode: :func:`to_cfn_cluster_properties` maps it onto ``AWS::EMR::Cluster`` (a long-running cluster);
- ``transient`` mode: it is written as JSON to the data bucket, and the trigger Lambda calls ``RunJobFlow`` with it
  (plus its steps), so every transient cluster is exactly the cluster the stack would have created.
Values may be CDK tokens (bucket names, role names): they are resolved at deploy time in both paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from infra.instance_types import gpus, vcpus

PYTHON = "/usr/bin/python3.11"  # EMR 7.1+ ships Python 3.11 beside the default 3.9; the job needs 3.11.
# Installed on every GPU node by bootstrap/getGpusResources.sh --install (EMR ships Spark's copy under /usr/lib/spark
# only with the RAPIDS accelerator, which this stack does not enable).
GPU_DISCOVERY_SCRIPT = "/usr/local/bin/getGpusResources.sh"
GPU_DISCOVERY_SCRIPT_NAME = "getGpusResources.sh"
# EMR 7 runs Amazon Linux 2023 with cgroup v2; YARN's GPU isolation needs the cgroup v1 devices controller, which
# bootstrap/configure-gpu-cgroups.sh mounts under this root (the set-up the EMR Spark-RAPIDS guide gives for 7.x).
# The yarn-site and container-executor configurations below must name the same root (a test checks the script).
GPU_CGROUP_ROOT = "/spark-rapids-cgroup"
GPU_CGROUP_SCRIPT_NAME = "configure-gpu-cgroups.sh"
LINUX_CONTAINER_EXECUTOR = "org.apache.hadoop.yarn.server.nodemanager.LinuxContainerExecutor"
DOMINANT_RESOURCE_CALCULATOR = "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"
MXNET_BOOTSTRAP_SCRIPT_NAME = "install-mxnet.sh"
# Room for the CUDA build of MXNet and its libraries on the root volume (EMR's default root volume is 15 GiB).
EBS_ROOT_VOLUME_GIB = 40

# Executor sizing per compute kind, sized for the default worker types (c5.2xlarge: 8 vCPU, YARN ~12 GiB;
# g4dn.xlarge: 4 vCPU, YARN ~12 GiB, one T4). The Python workers (model + decoded batches) live outside the JVM
# heap, so the overhead is large and the heap small: the JVM only moves bytes and Arrow batches.
CPU_EXECUTOR_SIZING = {
    "spark.executor.cores": "4",  # two executors per c5.2xlarge
    "spark.executor.memory": "3g",
    "spark.executor.memoryOverhead": "2560m",
}
# Even in client mode Spark runs a small YARN ApplicationMaster (the ExecutorLauncher) in a container on a worker, and
# with the DominantResourceCalculator that GPU scheduling needs, its vcore counts. An executor asking for all 4 vcores of
# a g4dn.xlarge could never share a node with it: with one core node the step would wait forever, with two one GPU would
# idle. Three vcores per executor leave room for the ApplicationMaster on whichever node YARN puts it.
YARN_AM_SIZING = {
    "spark.yarn.am.cores": "1",
    "spark.yarn.am.memory": "512m",
}
GPU_EXECUTOR_SIZING = {
    "spark.executor.cores": "3",  # one executor per GPU; the node's 4th vcore is left for the ApplicationMaster
    "spark.task.cpus": "3",  # one task at a time on the GPU, with the executor's vCPUs for fetch and decode threads
    "spark.executor.memory": "4g",
    "spark.executor.memoryOverhead": "6g",
}

@dataclass(frozen=True)
class InstanceGroup:
    role: str  # MASTER | CORE | TASK
    name: str
    instance_type: str
    count: int


@dataclass(frozen=True)
class ClusterInputs:
    """What the definition needs from the rest of the stack (strings may be CDK tokens)."""

    name: str
    release_label: str
    region: str  # the stack's region: boto3 and the AWS CLI on the nodes must use its S3 endpoint
    compute: str  # cpu | gpu
    instance_groups: tuple[InstanceGroup, ...]
    subnet_id: str
    primary_security_group_id: str
    worker_security_group_id: str
    service_access_security_group_id: str
    service_role_name: str
    instance_profile_name: str
    security_configuration_name: str
    log_uri: str
    bootstrap_uri_prefix: str  # s3://bucket/artifacts/bootstrap/ (ends with '/')
    wheelhouse_uri: Optional[str]  # s3://.../wheelhouse/<compute>/: nodes install MXNet from it, not from PyPI
    step_concurrency_level: int
    keep_alive_when_no_steps: bool
    tags: Mapping[str, str]


def task_slots(compute: str, instance_groups: Sequence[InstanceGroup]) -> int:
    """How many tasks the cluster's workers run at once: their vCPUs (cpu, one vCPU per task), or their GPUs (gpu, one
    task per GPU). The primary node runs the driver and no executors."""
    workers = [group for group in instance_groups if group.role != "MASTER"]
    per_node = gpus if compute == "gpu" else vcpus
    return sum(group.count * per_node(group.instance_type) for group in workers)


def spark_configurations(compute: str, *, task_slots: int, region: str) -> list[dict[str, Any]]:
    """EMR ``Configurations`` (classifications) for the inference job on ``compute`` (cpu | gpu).

    ``task_slots`` becomes ``spark.default.parallelism``, from which the job plans its tasks. EMR turns on dynamic
    allocation, so a Spark application starts with no executors and Spark's own default would be 2: two tasks for the
    whole cluster. With the cluster's real slot count the job plans enough tasks, and dynamic allocation asks YARN for
    an executor for each of them.
    """
    spark_defaults = {
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
        "spark.python.worker.reuse": "true",  # keeps each worker's loaded model for the next task
        # A second attempt would find the first attempt's partial output and stop (the job refuses to overwrite).
        "spark.yarn.maxAppAttempts": "1",
        "spark.default.parallelism": str(task_slots),
        # boto3 in the executors' Python workers has no region otherwise, and would call the us-east-1 global S3
        # endpoint, which an S3 gateway endpoint in another region does not route.
        "spark.executorEnv.AWS_DEFAULT_REGION": region,
        **YARN_AM_SIZING,
        **(GPU_EXECUTOR_SIZING if compute == "gpu" else CPU_EXECUTOR_SIZING),
    }
    configurations: list[dict[str, Any]] = [
        {
            "Classification": "spark-env",
            "Properties": {},
            "Configurations": [
                {
                    "Classification": "export",
                    # spark-submit sources spark-env.sh: the driver (client mode, on the primary) gets the region too.
                    "Properties": {
                        "PYSPARK_PYTHON": PYTHON,
                        "PYSPARK_DRIVER_PYTHON": PYTHON,
                        "AWS_DEFAULT_REGION": region,
                    },
                }
            ],
        },
    ]
    if compute == "gpu":
        spark_defaults.update(
            {
                "spark.executor.resource.gpu.discoveryScript": GPU_DISCOVERY_SCRIPT,
                "spark.executor.resource.gpu.amount": "1",
                "spark.task.resource.gpu.amount": "1",
            }
        )
        configurations += [
            {
                "Classification": "yarn-site",
                "Properties": {
                    "yarn.nodemanager.resource-plugins": "yarn.io/gpu",
                    "yarn.resource-types": "yarn.io/gpu",
                    "yarn.nodemanager.resource-plugins.gpu.allowed-gpu-devices": "auto",
                    "yarn.nodemanager.resource-plugins.gpu.path-to-discovery-executables": "/usr/bin",
                    "yarn.nodemanager.linux-container-executor.cgroups.mount": "true",
                    "yarn.nodemanager.linux-container-executor.cgroups.mount-path": GPU_CGROUP_ROOT,
                    "yarn.nodemanager.linux-container-executor.cgroups.hierarchy": "yarn",
                    "yarn.nodemanager.container-executor.class": LINUX_CONTAINER_EXECUTOR,
                },
            },
            {
                "Classification": "container-executor",
                "Properties": {},
                "Configurations": [
                    {"Classification": "gpu", "Properties": {"module.enabled": "true"}},
                    {"Classification": "cgroups", "Properties": {"root": GPU_CGROUP_ROOT, "yarn-hierarchy": "yarn"}},
                ],
            },
            {
                # YARN counts GPUs only with the dominant resource calculator (the default one sees memory alone).
                "Classification": "capacity-scheduler",
                "Properties": {"yarn.scheduler.capacity.resource-calculator": DOMINANT_RESOURCE_CALCULATOR},
            },
        ]
    configurations.append({"Classification": "spark-defaults", "Properties": spark_defaults})
    return configurations


def bootstrap_actions(compute: str, bootstrap_uri_prefix: str, wheelhouse_uri: Optional[str]) -> list[dict[str, Any]]:
    """Bootstrap actions, in the order they must run on every node."""
    actions = []
    if compute == "gpu":
        actions.append(
            {
                "Name": "Mount cgroup v1 devices for YARN GPU isolation",
                "ScriptBootstrapAction": {"Path": bootstrap_uri_prefix + GPU_CGROUP_SCRIPT_NAME, "Args": []},
            }
        )
        actions.append(
            {
                "Name": "Install the Spark GPU discovery script",
                "ScriptBootstrapAction": {
                    "Path": bootstrap_uri_prefix + GPU_DISCOVERY_SCRIPT_NAME,
                    "Args": ["--install", GPU_DISCOVERY_SCRIPT],
                },
            }
        )
    actions.append(
        {
            "Name": f"Install MXNet ({compute})",
            "ScriptBootstrapAction": {
                "Path": bootstrap_uri_prefix + MXNET_BOOTSTRAP_SCRIPT_NAME,
                "Args": [compute] + ([wheelhouse_uri] if wheelhouse_uri else []),
            },
        }
    )
    return actions


def build_job_flow(inputs: ClusterInputs) -> dict[str, Any]:
    """The ``RunJobFlow`` request for the inference cluster (no steps: they are added per batch)."""
    return {
        "Name": inputs.name,
        "ReleaseLabel": inputs.release_label,
        "LogUri": inputs.log_uri,
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Configurations": spark_configurations(
            inputs.compute, task_slots=task_slots(inputs.compute, inputs.instance_groups), region=inputs.region
        ),
        "BootstrapActions": bootstrap_actions(inputs.compute, inputs.bootstrap_uri_prefix, inputs.wheelhouse_uri),
        "Instances": {
            "InstanceGroups": [
                {
                    "Name": group.name,
                    "InstanceRole": group.role,
                    "Market": "ON_DEMAND",
                    "InstanceType": group.instance_type,
                    "InstanceCount": group.count,
                }
                for group in inputs.instance_groups
            ],
            "Ec2SubnetId": inputs.subnet_id,
            "EmrManagedMasterSecurityGroup": inputs.primary_security_group_id,
            "EmrManagedSlaveSecurityGroup": inputs.worker_security_group_id,
            "ServiceAccessSecurityGroup": inputs.service_access_security_group_id,
            "KeepJobFlowAliveWhenNoSteps": inputs.keep_alive_when_no_steps,
            "TerminationProtected": False,
        },
        "ServiceRole": inputs.service_role_name,
        "JobFlowRole": inputs.instance_profile_name,
        "SecurityConfiguration": inputs.security_configuration_name,
        "StepConcurrencyLevel": inputs.step_concurrency_level,
        "EbsRootVolumeSize": EBS_ROOT_VOLUME_GIB,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": key, "Value": value} for key, value in inputs.tags.items()],
    }


def _cfn_configuration(configuration: Mapping[str, Any]) -> dict[str, Any]:
    cfn: dict[str, Any] = {
        "classification": configuration["Classification"],
        "configurationProperties": dict(configuration.get("Properties", {})),
    }
    if configuration.get("Configurations"):
        cfn["configurations"] = [_cfn_configuration(child) for child in configuration["Configurations"]]
    return cfn


def _cfn_instance_group(group: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": group["Name"],
        "instanceType": group["InstanceType"],
        "instanceCount": group["InstanceCount"],
        "market": group["Market"],
    }


def to_cfn_cluster_properties(job_flow: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``aws_emr.CfnCluster`` equivalent to the ``RunJobFlow`` request ``job_flow``.

    Top-level names are Python keyword arguments; nested structures are passed as-is to jsii, so they use the
    CloudFormation property names in camelCase.
    """
    instances = job_flow["Instances"]
    groups_by_role: dict[str, list[Mapping[str, Any]]] = {}
    for group in instances["InstanceGroups"]:
        groups_by_role.setdefault(group["InstanceRole"], []).append(group)
    cfn_instances: dict[str, Any] = {
        "masterInstanceGroup": _cfn_instance_group(groups_by_role["MASTER"][0]),
        "coreInstanceGroup": _cfn_instance_group(groups_by_role["CORE"][0]),
        "ec2SubnetId": instances["Ec2SubnetId"],
        "emrManagedMasterSecurityGroup": instances["EmrManagedMasterSecurityGroup"],
        "emrManagedSlaveSecurityGroup": instances["EmrManagedSlaveSecurityGroup"],
        "serviceAccessSecurityGroup": instances["ServiceAccessSecurityGroup"],
        "keepJobFlowAliveWhenNoSteps": instances["KeepJobFlowAliveWhenNoSteps"],
        "terminationProtected": instances["TerminationProtected"],
    }
    task_groups: Optional[list] = groups_by_role.get("TASK")
    if task_groups:
        cfn_instances["taskInstanceGroups"] = [_cfn_instance_group(group) for group in task_groups]
    return {
        "name": job_flow["Name"],
        "release_label": job_flow["ReleaseLabel"],
        "log_uri": job_flow["LogUri"],
        "applications": [{"name": application["Name"]} for application in job_flow["Applications"]],
        "configurations": [_cfn_configuration(configuration) for configuration in job_flow["Configurations"]],
        "bootstrap_actions": [
            {
                "name": action["Name"],
                "scriptBootstrapAction": {
                    "path": action["ScriptBootstrapAction"]["Path"],
                    "args": list(action["ScriptBootstrapAction"]["Args"]),
                },
            }
            for action in job_flow["BootstrapActions"]
        ],
        "instances": cfn_instances,
        "service_role": job_flow["ServiceRole"],
        "job_flow_role": job_flow["JobFlowRole"],
        "security_configuration": job_flow["SecurityConfiguration"],
        "step_concurrency_level": job_flow["StepConcurrencyLevel"],
        "ebs_root_volume_size": job_flow["EbsRootVolumeSize"],
        "visible_to_all_users": job_flow["VisibleToAllUsers"],
        "tags": [{"key": tag["Key"], "value": tag["Value"]} for tag in job_flow["Tags"]],
    }
