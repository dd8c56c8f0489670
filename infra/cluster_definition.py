"""The one definition of the EMR cluster, as a pure function.

:func:`build_job_flow` returns the ``RunJobFlow`` request (boto3's shape). The stack uses it twice:
- ``persistent`` mode: :func:`to_cfn_cluster_properties` maps it onto ``AWS::EMR::Cluster`` (a long-running cluster);
- ``transient`` mode (and a persistent cluster that can end idle): it is written as JSON to the data bucket, and the
  trigger Lambda calls ``RunJobFlow`` with it (plus its steps), so every cluster it launches is exactly the cluster the
  stack would have created.
Values may be CDK tokens (bucket names, role names, subnet ids): they are resolved at deploy time in both paths.

The nodes come in instance fleets (README, "Instance fleets"): an on-demand primary, an on-demand core and a Spot task
fleet, each a list of instance types of one shape, in every subnet given. Each worker type counts its task slots in its
fleet (``WeightedCapacity``: vCPUs for cpu, GPUs for gpu), so fleet capacities, managed-scaling limits and Spark's
``spark.default.parallelism`` are all counted in task slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from infra.instance_types import task_slots_per_node
from infra.settings import MAX_STEP_TIMEOUT_MINUTES
from infra.trigger_function.emr_step import STEP_KILL_GRACE_SECONDS

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

# Executor memory, per compute kind, for the default worker types (c5.2xlarge: 8 vCPU, YARN ~12 GiB; g4dn.xlarge:
# 4 vCPU, YARN ~12 GiB, one T4). YARN kills a container whose processes' resident memory (the executor JVM and its
# Python workers, one per task slot) exceeds spark.executor.memory + spark.executor.memoryOverhead
# (+ spark.executor.pyspark.memory). The Python workers hold the model and the decoded batches; the JVM only moves work
# items and Arrow batches, so the heap is small and the overhead holds the workers: a reserve for the JVM's own
# off-heap memory plus PYTHON_WORKER_MIB per worker. tests/infra/test_infra_executor_memory.py measures a worker's
# peak resident memory on real 224x224 JPEGs with a ResNet-18 (ONNX and MXNet packages) at the stack's batch size
# and checks that it fits.
#
# spark.executor.pyspark.memory stays unset, deliberately: Spark turns it into an RLIMIT_AS (address space, not
# resident memory) of pyspark.memory / executor cores on every Python worker (BasePythonRunner, worker.py). A worker's
# address space is far above its resident memory (thread stacks, malloc arenas, mapped libraries): measured here,
# an MXNet ResNet-18 worker with 0.57 GB resident aborts under a 1.3 GB address-space limit, and CUDA cannot start
# under any such limit. Spark's documentation: without it, "it is up to the application to avoid exceeding the
# overhead memory space shared with other non-JVM processes" - which this sizing does.
JVM_OFF_HEAP_MIB = 512  # the executor JVM's metaspace, thread stacks and Netty/Arrow buffers (Spark's own minimum: 384)
PYTHON_WORKER_MIB = {"cpu": 1024, "gpu": 5632}
EXECUTOR_HEAP = {"cpu": "1g", "gpu": "4g"}
# Python workers per executor: one per task slot (spark.executor.cores / spark.task.cpus).
PYTHON_WORKERS_PER_EXECUTOR = {"cpu": 4, "gpu": 1}
# The most bytes of one float32 batch (images x 3 x height x width x 4 B) that a worker decodes; up to
# worker.PREFETCH_BATCHES + 1 batches, their uint8 images and the model's activations for them are alive at once.
# The stack lowers job_batch_size to fit it for model_input_size (224x224: 602,112 B an image, so 27 images on cpu
# and 111 on gpu; 32x32: the default 256). A GPU batch may be larger: its activations live on the device.
MAX_BATCH_BYTES = {"cpu": 16 * 2**20, "gpu": 64 * 2**20}


def executor_overhead_mib(compute: str) -> int:
    """spark.executor.memoryOverhead in MiB: the JVM's off-heap reserve plus every Python worker's budget."""
    return JVM_OFF_HEAP_MIB + PYTHON_WORKERS_PER_EXECUTOR[compute] * PYTHON_WORKER_MIB[compute]


# The job counts a batch's bytes as its uint8 pixels plus their float32 copy, 3 x (1 + 4) = 15 bytes per pixel
# (job/worker.py, DECODED_BYTES_PER_PIXEL; the two wings share no code, a test holds them equal). MAX_BATCH_BYTES counts
# the float32 input only, 12 bytes per pixel.
JOB_DECODED_BYTES_PER_PIXEL = 15
FLOAT_INPUT_BYTES_PER_PIXEL = 12


def job_max_batch_bytes(compute: str) -> int:
    """The job's ``--max-batch-bytes``: MAX_BATCH_BYTES in the job's count of bytes (20 MiB on cpu, 80 MiB on gpu).

    The job then takes exactly :func:`batch_size_limit` images at the ``model_input_size`` the stack was deployed
    with, and fewer for a model whose input is larger, so that its workers stay within the executor's memory."""
    return MAX_BATCH_BYTES[compute] * JOB_DECODED_BYTES_PER_PIXEL // FLOAT_INPUT_BYTES_PER_PIXEL


def batch_size_limit(compute: str, model_input_size: int) -> int:
    """The most images per batch whose float32 batch of ``model_input_size`` x ``model_input_size`` RGB images fits
    MAX_BATCH_BYTES (at least 1)."""
    return max(1, MAX_BATCH_BYTES[compute] // (3 * model_input_size * model_input_size * 4))


CPU_EXECUTOR_SIZING = {
    "spark.executor.cores": str(PYTHON_WORKERS_PER_EXECUTOR["cpu"]),  # two executors per c5.2xlarge
    "spark.executor.memory": EXECUTOR_HEAP["cpu"],
    "spark.executor.memoryOverhead": f"{executor_overhead_mib('cpu')}m",
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
    "spark.executor.memory": EXECUTOR_HEAP["gpu"],
    "spark.executor.memoryOverhead": f"{executor_overhead_mib('gpu')}m",
}
# With Spot task nodes, Spark's YARN ApplicationMaster (the ExecutorLauncher of client mode) must not run on one: if its
# node is reclaimed the whole application ends, and with spark.yarn.maxAppAttempts=1 the step fails. EMR 6 and 7 place
# it on any node unless YARN node labels say otherwise; from emr-7.2.0 EMR labels nodes by market and this places the
# ApplicationMaster on on-demand nodes (the core fleet) only ("AM label awareness": AWS EMR best practices guide,
# "Optimizing resource utilization", and the AWS Big Data Blog "Enhance Amazon EMR scaling capabilities with
# Application Master Placement").
SPOT_SAFE_YARN_SITE = {
    "yarn.node-labels.enabled": "true",
    "yarn.node-labels.am.default-node-label-expression": "ON_DEMAND",
}
# How Spark on EMR lives through a lost or removed node, pinned to EMR's documented defaults so that what the README
# promises cannot change with a release (EMR Release Guide, "Configure Spark", node decommissioning): no new task goes
# to a node in YARN's decommissioning state (a Spot interruption notice or a managed-scaling scale-in), a node that
# decommissions within 20 s (Spot) has its executors' state dropped at once, and shuffle fetch failures from a
# decommissioned node do not fail the stage. The tasks that were running there are run again elsewhere; Spark does not
# count those attempts against spark.task.maxFailures (ExecutorLostFailure with exitCausedByApp false, Spark's
# TaskEndReason.scala), so losing nodes never fails the job by itself.
SPOT_TOLERANT_SPARK_DEFAULTS = {
    "spark.blacklist.decommissioning.enabled": "true",
    "spark.blacklist.decommissioning.timeout": "1h",
    "spark.decommissioning.timeout.threshold": "20",
    "spark.resourceManager.cleanupExpiredHost": "true",
    "spark.stage.attempt.ignoreOnDecommissionFetchFailure": "true",
}
# Both modes keep the cluster alive between steps: a persistent cluster waits for the next batch, and a transient one
# ends through its auto-termination policy after idle_timeout minutes instead of with its last step, so a step added a
# moment after the last one ended never meets a cluster that is already shutting down (review finding 12).
KEEP_ALIVE_WHEN_NO_STEPS = True
# Scale-in waits for the YARN containers on a node to finish before it removes the node (EMR's default from 5.1.0, set
# explicitly): managed scaling never cuts a running step short.
SCALE_DOWN_BEHAVIOR = "TERMINATE_AT_TASK_COMPLETION"
MAX_AM_RESOURCE_PERCENT = "yarn.scheduler.capacity.maximum-am-resource-percent"
DECOMMISSIONING_TIMEOUT = "yarn.resourcemanager.decommissioning.timeout"
DECOMMISSIONING_TIMEOUT_SECONDS = MAX_STEP_TIMEOUT_MINUTES * 60 + STEP_KILL_GRACE_SECONDS
SPOT_ALLOCATION_STRATEGY = "price-capacity-optimized"
ON_DEMAND_ALLOCATION_STRATEGY = "lowest-price"
SPOT_TIMEOUT_ACTION = "SWITCH_TO_ON_DEMAND"


@dataclass(frozen=True)
class InstanceFleet:
    """One instance fleet: ``instance_count`` nodes of the size of the first type, from any of ``instance_types``."""

    role: str  # MASTER | CORE | TASK
    name: str
    instance_types: tuple[str, ...]
    instance_count: int
    spot: bool = False  # Spot capacity (task fleet), on-demand after the Spot timeout


@dataclass(frozen=True)
class ManagedScaling:
    """EMR managed scaling between ``min_instance_count`` and ``max_instance_count`` worker nodes, counted in nodes of
    the first core type (up to the core) and of the first task type (above it)."""

    min_instance_count: int
    max_instance_count: int


@dataclass(frozen=True)
class ClusterInputs:
    """What the definition needs from the rest of the stack (strings may be CDK tokens)."""

    name: str
    release_label: str
    region: str  # the stack's region: boto3 and the AWS CLI on the nodes must use its S3 endpoint
    compute: str  # cpu | gpu
    fleets: tuple[InstanceFleet, ...]
    spot_timeout_minutes: int
    managed_scaling: Optional[ManagedScaling]
    idle_timeout_minutes: Optional[int]  # None: the cluster runs until it is terminated
    subnet_ids: tuple[str, ...]  # EMR launches the cluster in one of them, where the fleets find capacity
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
    tags: Mapping[str, str]


def _fleet(fleets: Sequence[InstanceFleet], role: str) -> Optional[InstanceFleet]:
    return next((fleet for fleet in fleets if fleet.role == role), None)


def fleet_weights(compute: str, fleet: InstanceFleet) -> list[int]:
    """Each type's ``WeightedCapacity``: its task slots for a worker fleet; 1 for the primary (EMR's rule)."""
    if fleet.role == "MASTER":
        return [1 for _ in fleet.instance_types]
    return [task_slots_per_node(compute, instance_type) for instance_type in fleet.instance_types]


def fleet_target(compute: str, fleet: InstanceFleet) -> int:
    """The fleet's target capacity in units: its node count times the weight of its first type."""
    return fleet.instance_count * fleet_weights(compute, fleet)[0]


def most_capacity_provisioned(target: int, weights: Sequence[int]) -> int:
    """The most capacity EMR can provision for a fleet ``target`` with these type weights.

    EC2 Fleet keeps launching while the fleet is below its target, so the last instance can overshoot it: the worst
    case is the largest sum of weights still below the target, plus the largest weight. With equal weights that divide
    the target (the defaults) it is the target itself.
    """
    if target <= 0:
        return 0
    reachable = [False] * target
    reachable[0] = True
    for capacity in range(target):
        if reachable[capacity]:
            for weight in weights:
                if capacity + weight < target:
                    reachable[capacity + weight] = True
    return max(capacity for capacity in range(target) if reachable[capacity]) + max(weights)


def compute_limits(compute: str, fleets: Sequence[InstanceFleet], scaling: ManagedScaling) -> dict[str, Any]:
    """Managed scaling's ``ComputeLimits`` in fleet units (task slots). Core units never grow (the core is the
    on-demand floor that holds the ApplicationMaster); everything added above it is Spot task capacity."""
    core, task = _fleet(fleets, "CORE"), _fleet(fleets, "TASK")
    core_units = fleet_target(compute, core)
    task_node_units = fleet_weights(compute, task)[0]
    core_node_units = fleet_weights(compute, core)[0]
    return {
        "UnitType": "InstanceFleetUnits",
        "MinimumCapacityUnits": scaling.min_instance_count * core_node_units,
        "MaximumCapacityUnits": core_units + (scaling.max_instance_count - core.instance_count) * task_node_units,
        "MaximumCoreCapacityUnits": core_units,
        "MaximumOnDemandCapacityUnits": core_units,
    }


def task_slots(compute: str, fleets: Sequence[InstanceFleet], scaling: Optional[ManagedScaling] = None) -> int:
    """The most tasks the cluster's workers can run at once: every slot of the largest capacity its core and task
    fleets can reach (their targets, or managed scaling's maximum), overshoot included. The primary node runs the
    driver and no executors. Counting more slots than exist only adds a round of tasks; counting fewer would leave
    nodes idle."""
    core, task = _fleet(fleets, "CORE"), _fleet(fleets, "TASK")
    slots = most_capacity_provisioned(fleet_target(compute, core), fleet_weights(compute, core))
    if task is not None:
        task_units = fleet_target(compute, task)
        if scaling is not None:
            limits = compute_limits(compute, fleets, scaling)
            task_units = max(task_units, limits["MaximumCapacityUnits"] - limits["MaximumCoreCapacityUnits"])
        slots += most_capacity_provisioned(task_units, fleet_weights(compute, task))
    return slots


def spark_configurations(compute: str, *, region: str, spot: bool = False) -> list[dict[str, Any]]:
    """EMR ``Configurations`` (classifications) for the inference job on ``compute`` (cpu | gpu).

    No capacity count is written here (review 2, #6): ``Configurations`` cannot change on a running CloudFormation
    cluster without replacing it, so a resize would replace the cluster. ``spark.default.parallelism`` (the cluster's
    task slots) goes into each step instead (emr_step.build_step, from JOB_OPTIONS). ``spot``: the cluster has Spot
    nodes (see SPOT_SAFE_YARN_SITE).
    """
    spark_defaults = {
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
        "spark.python.worker.reuse": "true",  # keeps each worker's loaded model for the next task
        # A second attempt would find the first attempt's partial output and stop (the job refuses to overwrite).
        "spark.yarn.maxAppAttempts": "1",
        # boto3 in the executors' Python workers has no region otherwise, and would call the us-east-1 global S3
        # endpoint, which an S3 gateway endpoint in another region does not route.
        "spark.executorEnv.AWS_DEFAULT_REGION": region,
        **YARN_AM_SIZING,
        **(GPU_EXECUTOR_SIZING if compute == "gpu" else CPU_EXECUTOR_SIZING),
        **SPOT_TOLERANT_SPARK_DEFAULTS,
    }
    # Graceful decommissioning (managed scaling's scale-in, a shrunk fleet) waits this long for a node's containers
    # before it cuts them (Hadoop's default: 3,600 s); AWS: longer than the longest application. The longest step
    # any setting allows, so that neither step_timeout_minutes nor turning managed scaling on changes Configurations
    # (which would replace a persistent cluster).
    yarn_site: dict[str, str] = {DECOMMISSIONING_TIMEOUT: str(DECOMMISSIONING_TIMEOUT_SECONDS)}
    if spot:
        yarn_site.update(SPOT_SAFE_YARN_SITE)
    capacity_scheduler: dict[str, str] = {}
    if spot:
        # With ApplicationMasters confined to the ON_DEMAND partition, steps running in parallel each need an AM there;
        # YARN's default AM share (10 % of the queue) would keep the second one pending. AWS's "Using managed scaling"
        # considerations: set it to 1 when running several applications in parallel. Set whenever there are Spot
        # nodes (harmless with one step at a time) so that step_concurrency_level stays an in-place change.
        capacity_scheduler[MAX_AM_RESOURCE_PERCENT] = "1"
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
        yarn_site.update(
            {
                "yarn.nodemanager.resource-plugins": "yarn.io/gpu",
                "yarn.resource-types": "yarn.io/gpu",
                "yarn.nodemanager.resource-plugins.gpu.allowed-gpu-devices": "auto",
                "yarn.nodemanager.resource-plugins.gpu.path-to-discovery-executables": "/usr/bin",
                "yarn.nodemanager.linux-container-executor.cgroups.mount": "true",
                "yarn.nodemanager.linux-container-executor.cgroups.mount-path": GPU_CGROUP_ROOT,
                "yarn.nodemanager.linux-container-executor.cgroups.hierarchy": "yarn",
                "yarn.nodemanager.container-executor.class": LINUX_CONTAINER_EXECUTOR,
            }
        )
    configurations.append({"Classification": "yarn-site", "Properties": yarn_site})
    if compute == "gpu":
        configurations += [
            {
                "Classification": "container-executor",
                "Properties": {},
                "Configurations": [
                    {"Classification": "gpu", "Properties": {"module.enabled": "true"}},
                    {"Classification": "cgroups", "Properties": {"root": GPU_CGROUP_ROOT, "yarn-hierarchy": "yarn"}},
                ],
            },
        ]
        # YARN counts GPUs only with the dominant resource calculator (the default one sees memory alone).
        capacity_scheduler["yarn.scheduler.capacity.resource-calculator"] = DOMINANT_RESOURCE_CALCULATOR
    if capacity_scheduler:
        configurations.append({"Classification": "capacity-scheduler", "Properties": capacity_scheduler})
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


def _fleet_request(compute: str, fleet: InstanceFleet, spot_timeout_minutes: int) -> dict[str, Any]:
    target = fleet_target(compute, fleet)
    request: dict[str, Any] = {
        "Name": fleet.name,
        "InstanceFleetType": fleet.role,
        "TargetOnDemandCapacity": 0 if fleet.spot else target,
        "TargetSpotCapacity": target if fleet.spot else 0,
        "InstanceTypeConfigs": [
            {"InstanceType": instance_type, "WeightedCapacity": weight}
            for instance_type, weight in zip(fleet.instance_types, fleet_weights(compute, fleet))
        ],
        "LaunchSpecifications": {"OnDemandSpecification": {"AllocationStrategy": ON_DEMAND_ALLOCATION_STRATEGY}},
    }
    if fleet.spot:
        request["LaunchSpecifications"]["SpotSpecification"] = {
            "AllocationStrategy": SPOT_ALLOCATION_STRATEGY,
            "TimeoutDurationMinutes": spot_timeout_minutes,
            "TimeoutAction": SPOT_TIMEOUT_ACTION,
        }
    if fleet.role != "MASTER":
        # LaunchSpecifications apply to the launch only. Every later resize of a worker fleet (managed scaling, a
        # replaced Spot node, a changed target) has its own specification: the same strategies, and the same wait
        # as the launch's Spot timeout before EMR stops trying. A resize has no on-demand fallback (API
        # SpotResizingSpecification: "the resize workflow will stop provisioning of Spot instances"); managed scaling
        # tries again at its next evaluation.
        request["ResizeSpecifications"] = {
            "OnDemandResizeSpecification": {
                "AllocationStrategy": ON_DEMAND_ALLOCATION_STRATEGY,
                "TimeoutDurationMinutes": spot_timeout_minutes,
            },
            "SpotResizeSpecification": {
                "AllocationStrategy": SPOT_ALLOCATION_STRATEGY,
                "TimeoutDurationMinutes": spot_timeout_minutes,
            },
        }
    return request


def build_job_flow(inputs: ClusterInputs) -> dict[str, Any]:
    """The ``RunJobFlow`` request for the inference cluster (no steps: they are added per batch)."""
    spot = any(fleet.spot for fleet in inputs.fleets)
    job_flow: dict[str, Any] = {
        "Name": inputs.name,
        "ReleaseLabel": inputs.release_label,
        "LogUri": inputs.log_uri,
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Configurations": spark_configurations(
            inputs.compute,
            region=inputs.region,
            spot=spot,
        ),
        "BootstrapActions": bootstrap_actions(inputs.compute, inputs.bootstrap_uri_prefix, inputs.wheelhouse_uri),
        "Instances": {
            "InstanceFleets": [
                _fleet_request(inputs.compute, fleet, inputs.spot_timeout_minutes) for fleet in inputs.fleets
            ],
            "Ec2SubnetIds": list(inputs.subnet_ids),
            "EmrManagedMasterSecurityGroup": inputs.primary_security_group_id,
            "EmrManagedSlaveSecurityGroup": inputs.worker_security_group_id,
            "ServiceAccessSecurityGroup": inputs.service_access_security_group_id,
            "KeepJobFlowAliveWhenNoSteps": KEEP_ALIVE_WHEN_NO_STEPS,
            "TerminationProtected": False,
        },
        "ServiceRole": inputs.service_role_name,
        "JobFlowRole": inputs.instance_profile_name,
        "SecurityConfiguration": inputs.security_configuration_name,
        "StepConcurrencyLevel": inputs.step_concurrency_level,
        "EbsRootVolumeSize": EBS_ROOT_VOLUME_GIB,
        "ScaleDownBehavior": SCALE_DOWN_BEHAVIOR,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": key, "Value": value} for key, value in inputs.tags.items()],
    }
    if inputs.managed_scaling is not None:
        job_flow["ManagedScalingPolicy"] = {
            "ComputeLimits": compute_limits(inputs.compute, inputs.fleets, inputs.managed_scaling)
        }
    if inputs.idle_timeout_minutes is not None:
        job_flow["AutoTerminationPolicy"] = {"IdleTimeout": inputs.idle_timeout_minutes * 60}
    return job_flow


def _cfn_configuration(configuration: Mapping[str, Any]) -> dict[str, Any]:
    cfn: dict[str, Any] = {
        "classification": configuration["Classification"],
        "configurationProperties": dict(configuration.get("Properties", {})),
    }
    if configuration.get("Configurations"):
        cfn["configurations"] = [_cfn_configuration(child) for child in configuration["Configurations"]]
    return cfn


def _camel(name: str) -> str:
    return name[0].lower() + name[1:]


def _cfn_fleet(fleet: Mapping[str, Any]) -> dict[str, Any]:
    """An InstanceFleetConfig: CloudFormation has the API's field names, camelCased for jsii, without the fleet type
    (the fleet's place in ``instances`` says it)."""
    return {
        "name": fleet["Name"],
        "targetOnDemandCapacity": fleet["TargetOnDemandCapacity"],
        "targetSpotCapacity": fleet["TargetSpotCapacity"],
        "instanceTypeConfigs": [
            {"instanceType": config["InstanceType"], "weightedCapacity": config["WeightedCapacity"]}
            for config in fleet["InstanceTypeConfigs"]
        ],
        **{
            _camel(field): {
                _camel(kind): {_camel(key): value for key, value in specification.items()}
                for kind, specification in fleet[field].items()
            }
            for field in ("LaunchSpecifications", "ResizeSpecifications")
            if field in fleet
        },
    }


def to_cfn_cluster_properties(job_flow: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``aws_emr.CfnCluster`` equivalent to the ``RunJobFlow`` request ``job_flow``.

    Top-level names are Python keyword arguments; nested structures are passed as-is to jsii, so they use the
    CloudFormation property names in camelCase.
    """
    instances = job_flow["Instances"]
    fleets_by_role: dict[str, list[Mapping[str, Any]]] = {}
    for fleet in instances["InstanceFleets"]:
        fleets_by_role.setdefault(fleet["InstanceFleetType"], []).append(fleet)
    cfn_instances: dict[str, Any] = {
        "masterInstanceFleet": _cfn_fleet(fleets_by_role["MASTER"][0]),
        "coreInstanceFleet": _cfn_fleet(fleets_by_role["CORE"][0]),
        "ec2SubnetIds": list(instances["Ec2SubnetIds"]),
        "emrManagedMasterSecurityGroup": instances["EmrManagedMasterSecurityGroup"],
        "emrManagedSlaveSecurityGroup": instances["EmrManagedSlaveSecurityGroup"],
        "serviceAccessSecurityGroup": instances["ServiceAccessSecurityGroup"],
        "keepJobFlowAliveWhenNoSteps": instances["KeepJobFlowAliveWhenNoSteps"],
        "terminationProtected": instances["TerminationProtected"],
    }
    if fleets_by_role.get("TASK"):
        cfn_instances["taskInstanceFleets"] = [_cfn_fleet(fleet) for fleet in fleets_by_role["TASK"]]
    properties: dict[str, Any] = {
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
        "scale_down_behavior": job_flow["ScaleDownBehavior"],
        "visible_to_all_users": job_flow["VisibleToAllUsers"],
        "tags": [{"key": tag["Key"], "value": tag["Value"]} for tag in job_flow["Tags"]],
    }
    if "ManagedScalingPolicy" in job_flow:
        limits = job_flow["ManagedScalingPolicy"]["ComputeLimits"]
        properties["managed_scaling_policy"] = {"computeLimits": {_camel(key): value for key, value in limits.items()}}
    if "AutoTerminationPolicy" in job_flow:
        properties["auto_termination_policy"] = {"idleTimeout": job_flow["AutoTerminationPolicy"]["IdleTimeout"]}
    return properties
