"""CDK assertions on the synthesized stack, for every compute x cluster_mode variant and for the settings that change it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from infra_helpers import (
    REPO_ROOT,
    STACK_ID,
    as_list,
    deploy_time_values_as_placeholders,
    deployment_resource,
    logical_id,
    role_statements,
    synthesize,
)

from infra.cluster_definition import MAX_BATCH_BYTES, PYTHON, batch_size_limit
from infra.network import EMR_MANAGED_POLICY_TAG
from infra.artifacts import JOB_FLOW_DEFINITION_NAME
from infra.stack import CLUSTER_DEFINITION_TAG_KEY, CLUSTER_TAG_KEY
from infra.trigger import FUNCTION_TIMEOUT, MAX_RECEIVE_COUNT
from infra.trigger_function.emr_step import build_step

COMMON_ENVIRONMENT = {
    "DATA_BUCKET", "INCOMING_PREFIX", "MANIFESTS_PREFIX", "RESULTS_PREFIX", "MODEL_URI", "JOB_PY_FILES_URI",
    "JOB_ENTRY_POINT_URI", "JOB_OPTIONS", "STEP_NAME_PREFIX", "CLUSTER_MODE", "CLUSTER_TAG_KEY", "CLUSTER_TAG_VALUE",
    "MAX_ACTIVE_STEPS", "POWERTOOLS_SERVICE_NAME", "CLAIMS_TABLE", "CLAIM_RETENTION_DAYS", "NOTIFICATION_TOPIC_ARN",
    "MAX_STEP_ATTEMPTS", "STAGED_PREFIX", "CLAIM_LEASE_SECONDS", "UPLOAD_QUEUE_URL", "RUNS_PREFIX",
}  # fmt: skip
# The definition to launch from is set in both modes: a persistent cluster that ended is replaced from it.
LAUNCH_ENVIRONMENT = {"JOB_FLOW_DEFINITION_KEY", "CLUSTER_DEFINITION_TAG_KEY", "CLUSTER_DEFINITION_TAG_VALUE"}
MODE_ENVIRONMENT = {"persistent": {"CLUSTER_ID", *LAUNCH_ENVIRONMENT}, "transient": LAUNCH_ENVIRONMENT}


def trigger_function(variant) -> dict:
    return variant.resources[logical_id(variant, variant.stack.trigger.function)]


def environment(variant) -> dict:
    return trigger_function(variant)["Properties"]["Environment"]["Variables"]


# --- storage ---------------------------------------------------------------------------------------------------------


def test_both_buckets_block_public_access_and_encrypt(variant):
    buckets = variant.resources_of_type("AWS::S3::Bucket")
    assert len(buckets) == 2
    for bucket in buckets.values():
        properties = bucket["Properties"]
        assert properties["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True,
        }  # fmt: skip
        assert properties["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]


def test_both_buckets_deny_requests_without_tls(variant):
    policies = variant.resources_of_type("AWS::S3::BucketPolicy")
    denied = [
        policy
        for policy in policies.values()
        if any(
            s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
            for s in policy["Properties"]["PolicyDocument"]["Statement"]
        )
    ]
    assert len(denied) == 2


def test_logs_expire_after_the_retention_setting(synth):
    variant = synth(log_retention_days=9)
    logs_bucket = variant.resources[logical_id(variant, variant.stack.storage.logs_bucket)]
    rules = logs_bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    assert [rule["ExpirationInDays"] for rule in rules if "ExpirationInDays" in rule] == [9]


def test_data_bucket_access_is_logged_to_the_logs_bucket(variant):
    data_bucket = variant.resources[logical_id(variant, variant.stack.storage.data_bucket)]
    logging = data_bucket["Properties"]["LoggingConfiguration"]
    assert logging["DestinationBucketName"] == {"Ref": logical_id(variant, variant.stack.storage.logs_bucket)}


# --- cluster ---------------------------------------------------------------------------------------------------------


def test_persistent_mode_owns_one_long_running_cluster_and_transient_mode_none(variant):
    clusters = variant.resources_of_type("AWS::EMR::Cluster")
    if variant.stack.settings.cluster_mode == "persistent":
        (cluster,) = clusters.values()
        assert cluster["Properties"]["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    else:
        assert clusters == {}


def test_persistent_cluster_is_rendered_from_the_one_definition(synth):
    variant = synth(compute="gpu", cluster_mode="persistent")
    _, cluster = variant.only("AWS::EMR::Cluster")
    definition = variant.stack.resolve(variant.stack.cluster.job_flow)
    assert cluster["Properties"]["ReleaseLabel"] == definition["ReleaseLabel"] == "emr-7.13.0"
    assert [(c["Classification"], c["ConfigurationProperties"]) for c in cluster["Properties"]["Configurations"]] == [
        (c["Classification"], c["Properties"]) for c in definition["Configurations"]
    ]
    assert [a["Name"] for a in cluster["Properties"]["BootstrapActions"]] == [
        a["Name"] for a in definition["BootstrapActions"]
    ]


@pytest.mark.parametrize("mode", ["transient", "persistent"])
def test_the_definition_is_shipped_as_json_for_the_lambda_in_both_modes(synth, mode):
    """Review 2, #10: in persistent mode too, so that the trigger can replace a persistent cluster that ended (an
    unchanged `cdk deploy` does nothing: CloudFormation touches only changed resources)."""
    variant = synth(cluster_mode=mode)
    assembly = variant.app.synth()
    deployment = deployment_resource(variant, variant.stack.artifacts.job_deployment)
    assert environment(variant)["JOB_FLOW_DEFINITION_KEY"] == "artifacts/" + JOB_FLOW_DEFINITION_NAME
    # Each source is an asset directory in the cloud assembly (the CLI zips it when publishing).
    asset_dirs = [
        Path(assembly.directory) / f"asset.{key.removesuffix('.zip')}"
        for key in deployment["Properties"]["SourceObjectKeys"]
    ]
    (definition_file,) = [d / JOB_FLOW_DEFINITION_NAME for d in asset_dirs if (d / JOB_FLOW_DEFINITION_NAME).is_file()]
    text = definition_file.read_text()
    # Deploy-time values (bucket names, role names...) are markers the deployment replaces with quoted strings.
    shipped = json.loads(re.sub(r"<<marker:0x[0-9a-f]+:\d+>>", '"deploy-time value"', text))
    # Kept between steps, ended by EMR's idle timeout (README, "Idle clusters").
    assert shipped["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    if mode == "transient":
        assert shipped["AutoTerminationPolicy"]["IdleTimeout"] > 0
    else:  # the persistent cluster's own definition; the trigger adds an idle timeout to a replacement it launches
        # (submitter.REPLACEMENT_IDLE_TIMEOUT_SECONDS), which runs outside CloudFormation
        assert "AutoTerminationPolicy" not in shipped
        assert environment(variant)["CLUSTER_ID"] == {"Ref": variant.only("AWS::EMR::Cluster")[0]}
    assert shipped["Configurations"] == deploy_time_values_as_placeholders(
        variant.stack.resolve(variant.stack.cluster.job_flow["Configurations"])
    )
    assert "Steps" not in shipped


def test_cluster_carries_the_tag_the_lambda_looks_for(variant):
    tags = variant.stack.cluster.job_flow["Tags"]
    assert {"Key": CLUSTER_TAG_KEY, "Value": STACK_ID} in tags
    assert {"Key": EMR_MANAGED_POLICY_TAG[0], "Value": EMR_MANAGED_POLICY_TAG[1]} in tags
    assert (environment(variant)["CLUSTER_TAG_KEY"], environment(variant)["CLUSTER_TAG_VALUE"]) == (
        CLUSTER_TAG_KEY,
        STACK_ID,
    )


def test_a_transient_cluster_is_tagged_with_the_definition_and_bootstrap_it_boots_with(synth, tmp_path):
    """The trigger gives steps only to a cluster carrying the function's definition tag (review of the redeploy path):
    the tag must change with the definition or with any bootstrap script, and only then."""
    variant = synth(cluster_mode="transient")
    value = environment(variant)["CLUSTER_DEFINITION_TAG_VALUE"]
    assert environment(variant)["CLUSTER_DEFINITION_TAG_KEY"] == CLUSTER_DEFINITION_TAG_KEY
    assert {"Key": CLUSTER_DEFINITION_TAG_KEY, "Value": value} in variant.stack.cluster.job_flow["Tags"]

    source_root = tmp_path / "source"
    for directory in ("job", "bootstrap"):
        shutil.copytree(REPO_ROOT / directory, source_root / directory, ignore=shutil.ignore_patterns("__pycache__"))
    assert definition_tag(tmp_path / "same", source_root) == value
    (source_root / "bootstrap" / "install-mxnet.sh").write_text(
        (source_root / "bootstrap" / "install-mxnet.sh").read_text() + "\n# a changed pin\n"
    )
    assert definition_tag(tmp_path / "bootstrap-changed", source_root) != value
    assert environment(synth(cluster_mode="transient", core_instance_count=3))["CLUSTER_DEFINITION_TAG_VALUE"] != value


def definition_tag(staging_dir: Path, source_root: Path) -> str:
    variant = synthesize(staging_dir, source_root=source_root, cluster_mode="transient")
    return environment(variant)["CLUSTER_DEFINITION_TAG_VALUE"]


def test_security_configuration_encrypts_at_rest_and_local_disks_and_requires_imdsv2(variant):
    _, configuration = variant.only("AWS::EMR::SecurityConfiguration")
    document = configuration["Properties"]["SecurityConfiguration"]
    at_rest = document["EncryptionConfiguration"]["AtRestEncryptionConfiguration"]
    assert document["EncryptionConfiguration"]["EnableAtRestEncryption"] is True
    assert at_rest["S3EncryptionConfiguration"] == {"EncryptionMode": "SSE-S3"}
    assert at_rest["LocalDiskEncryptionConfiguration"]["EncryptionKeyProviderType"] == "AwsKms"
    assert at_rest["LocalDiskEncryptionConfiguration"]["EnableEbsEncryption"] is True
    assert document["InstanceMetadataServiceConfiguration"]["MinimumInstanceMetadataServiceVersion"] == 2


def test_service_role_uses_the_v2_managed_policy(variant):
    role = variant.resources[logical_id(variant, variant.stack.cluster.service_role)]
    (managed,) = role["Properties"]["ManagedPolicyArns"]
    assert managed["Fn::Join"][1][-1].endswith("service-role/AmazonEMRServicePolicy_v2")


def test_service_role_passes_only_the_instance_role(variant):
    statements = [
        s
        for s in role_statements(variant, variant.stack.cluster.service_role)
        if "iam:PassRole" in as_list(s["Action"])
    ]
    instance_role_arn = {"Fn::GetAtt": [logical_id(variant, variant.stack.cluster.instance_role), "Arn"]}
    assert [s["Resource"] for s in statements] == [instance_role_arn]
    # StringLike with a trailing *, as AWS's own EMR policies: the service name is ec2.amazonaws.com.cn in aws-cn.
    assert [s["Condition"] for s in statements] == [{"StringLike": {"iam:PassedToService": "ec2.amazonaws.com*"}}]


def test_security_configuration_is_named_after_its_content(variant):
    """CloudFormation replaces a security configuration on any change and cannot replace a custom-named resource whose
    name stays the same: the name carries a hash of the content as deployed (resolved)."""
    from infra.cluster import _content_hash

    _, configuration = variant.only("AWS::EMR::SecurityConfiguration")
    properties = configuration["Properties"]
    assert properties["Name"] == f"{STACK_ID}-{_content_hash(properties['SecurityConfiguration'])}"
    assert _content_hash({"a": 1}) != _content_hash({"a": 2})


def test_clusters_name_their_security_configuration_literally_so_the_definition_tag_follows_it(variant):
    """Review 2, #11: with a Ref the definition hash saw a token, so a new security configuration left the definition
    tag unchanged and old clusters kept receiving steps. The literal name is in the hashed definition."""
    _, configuration = variant.only("AWS::EMR::SecurityConfiguration")
    definition = variant.stack.resolve(variant.stack.cluster.job_flow)
    assert definition["SecurityConfiguration"] == configuration["Properties"]["Name"]
    if variant.stack.cluster.cfn_cluster is not None:
        _, cluster = variant.only("AWS::EMR::Cluster")
        assert cluster["Properties"]["SecurityConfiguration"] == configuration["Properties"]["Name"]
        # Named, not referenced: the cluster must still be created after (and deleted before) the configuration.
        assert variant.stack.resolve(variant.stack.get_logical_id(variant.stack.cluster.security_configuration)) in (
            cluster["DependsOn"]
        )


def test_subnets_and_security_groups_carry_the_emr_managed_policy_tag(variant):
    tag = {"Key": EMR_MANAGED_POLICY_TAG[0], "Value": EMR_MANAGED_POLICY_TAG[1]}
    groups = variant.resources_of_type("AWS::EC2::SecurityGroup")
    emr_groups = [g for g in groups.values() if tag in g["Properties"].get("Tags", [])]
    assert len(emr_groups) == 3
    private_subnets = [
        s
        for s in variant.resources_of_type("AWS::EC2::Subnet").values()
        if s["Properties"]["MapPublicIpOnLaunch"] is False
    ]
    assert private_subnets and all(tag in s["Properties"]["Tags"] for s in private_subnets)


def test_new_vpc_reaches_s3_through_a_gateway_endpoint(variant):
    _, endpoint = variant.only("AWS::EC2::VPCEndpoint")
    assert endpoint["Properties"]["VpcEndpointType"] == "Gateway"
    assert "s3" in json.dumps(endpoint["Properties"]["ServiceName"])


def test_no_nat_gateway_means_isolated_private_subnets(offline_wheelhouse_variant):
    assert offline_wheelhouse_variant.resources_of_type("AWS::EC2::NatGateway") == {}
    assert offline_wheelhouse_variant.resources_of_type("AWS::EC2::VPCEndpoint")


def endpoint_services(variant) -> dict[str, dict]:
    """VPC endpoints by the service name's last part (s3, kms)."""
    return {
        json.dumps(body["Properties"]["ServiceName"]).rsplit(".", 1)[-1].strip('"]}'): body
        for body in variant.resources_of_type("AWS::EC2::VPCEndpoint").values()
    }


def test_without_nat_the_nodes_reach_kms_through_an_interface_endpoint_in_the_clusters_subnet(
    offline_wheelhouse_variant,
):
    """Local-disk encryption makes every node call KMS at boot; without NAT only a VPC endpoint reaches it. What only a
    real deployment shows: that EMR's nodes need nothing else outside S3 and KMS (per the EMR private-subnet docs)."""
    variant = offline_wheelhouse_variant
    endpoints = endpoint_services(variant)
    assert set(endpoints) == {"s3", "kms"}
    kms = endpoints["kms"]["Properties"]
    assert (kms["VpcEndpointType"], kms["PrivateDnsEnabled"]) == ("Interface", True)
    assert kms["SubnetIds"] == [variant.stack.resolve(variant.stack.network.subnet_ids[0])]


def test_with_nat_there_is_no_kms_endpoint(variant):
    assert set(endpoint_services(variant)) == {"s3"}


def test_missing_wheelhouse_is_named_with_the_command_that_builds_it(tmp_path):
    source_root = tmp_path / "repo"  # the real job and scripts, but no build/wheelhouse/
    source_root.mkdir()
    for name in ("job", "bootstrap"):
        (source_root / name).symlink_to(REPO_ROOT / name)
    with pytest.raises(FileNotFoundError, match=r"holds no wheels; build it with: bootstrap/install-mxnet.sh --build-"):
        synthesize(tmp_path / "staging", source_root=source_root, offline_wheelhouse=True)


def test_existing_vpc_creates_no_network(synth):
    subnet_ids = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    variant = synth(vpc_id="vpc-0123456789abcdef0", subnet_ids=subnet_ids, cluster_mode="persistent")
    assert variant.resources_of_type("AWS::EC2::VPC") == {}
    _, cluster = variant.only("AWS::EMR::Cluster")
    assert cluster["Properties"]["Instances"]["Ec2SubnetIds"] == subnet_ids


def test_instance_role_reads_inputs_and_writes_only_results_run_records_and_logs(variant):
    statements = role_statements(variant, variant.stack.cluster.instance_role)
    writes = [s for s in statements if any(a in ("s3:PutObject", "s3:DeleteObject") for a in as_list(s["Action"]))]
    written = sorted(json.dumps(resource) for s in writes for resource in as_list(s["Resource"]))
    assert len(written) == 3
    assert all(any(suffix in resource for resource in written) for suffix in ("/results/*", "/runs/*", "/emr/*"))
    # Run records are written, never deleted (each step writes its own runs/<run id>.json).
    run_record_actions = {a for s in writes if any("/runs/*" in json.dumps(r) for r in as_list(s["Resource"]))
                          for a in as_list(s["Action"])}  # fmt: skip
    assert run_record_actions == {"s3:PutObject"}
    assert not any(action in ("s3:*", "*") for s in statements for action in as_list(s["Action"]))


def test_cluster_logs_to_the_logs_bucket_and_uses_the_step_concurrency_setting(synth):
    variant = synth(cluster_mode="persistent", step_concurrency_level=4, max_active_steps=100)
    _, cluster = variant.only("AWS::EMR::Cluster")
    logs_bucket_id = logical_id(variant, variant.stack.storage.logs_bucket)
    assert cluster["Properties"]["LogUri"] == {"Fn::Join": ["", ["s3://", {"Ref": logs_bucket_id}, "/emr/"]]}
    assert cluster["Properties"]["StepConcurrencyLevel"] == 4


def test_python_3_11_is_what_pyspark_runs(variant):
    assert (
        variant.stack.cluster.job_flow["Configurations"][0]["Configurations"][0]["Properties"]["PYSPARK_PYTHON"]
        == PYTHON
    )


# --- packaged job ----------------------------------------------------------------------------------------------------


def test_artifacts_are_deployed_under_the_artifacts_prefix(variant):
    deployment = deployment_resource(variant, variant.stack.artifacts.job_deployment)
    assert deployment["Properties"]["DestinationBucketKeyPrefix"] == "artifacts/"
    assert deployment["Properties"]["Prune"] is True
    # Pruning artifacts/ leaves the bootstrap scripts and the wheelhouse, which have deployments of their own (the
    # scripts under a digest path each cluster keeps reading: infra/artifacts.py).
    assert sorted(deployment["Properties"]["Exclude"]) == ["bootstrap/*", "wheelhouse/*"]


def test_offline_wheelhouse_is_deployed_and_passed_to_the_install_script(offline_wheelhouse_variant):
    variant = offline_wheelhouse_variant
    deployment = deployment_resource(variant, variant.stack.artifacts.wheelhouse_deployment)
    assert deployment["Properties"]["DestinationBucketKeyPrefix"] == "artifacts/wheelhouse/cpu/"
    install_args = variant.stack.cluster.job_flow["BootstrapActions"][-1]["ScriptBootstrapAction"]["Args"]
    assert (
        install_args[0] == "cpu"
        and variant.stack.resolve(install_args[1])["Fn::Join"][1][-1] == "/artifacts/wheelhouse/cpu/"
    )


# --- trigger ---------------------------------------------------------------------------------------------------------


def test_lambda_environment_has_exactly_the_agreed_names(variant):
    expected = COMMON_ENVIRONMENT | MODE_ENVIRONMENT[variant.stack.settings.cluster_mode]
    assert set(environment(variant)) == expected


def test_lambda_environment_values_follow_the_settings(synth):
    variant = synth(
        job_top_k=3,
        job_batch_size=64,
        model_input_size=32,
        job_device="cpu",
        job_max_failure_ratio=0.5,
        max_active_steps=17,
        step_timeout_minutes=30,
    )
    env = environment(variant)
    assert json.loads(env["JOB_OPTIONS"]) == {
        "device": "cpu", "batch_size": 64, "top_k": 3, "max_failure_ratio": 0.5, "timeout_minutes": 30,
        "default_parallelism": 24, "executor_task_slots": 4, "max_batch_bytes": 20 * 2**20,
    }  # fmt: skip
    assert (env["MAX_ACTIVE_STEPS"], env["CLUSTER_MODE"], env["STEP_NAME_PREFIX"]) == (
        "17",
        "transient",
        f"{STACK_ID}-batch-",
    )
    assert env["MODEL_URI"]["Fn::Join"][1][-1] == "/models/default/"


@pytest.mark.parametrize(("compute", "model_input_size", "batch_size"), [
    ("cpu", 224, 27),  # 16 MiB / (3 x 224 x 224 x 4 B)
    ("cpu", 32, 256),  # the setting: 256 CIFAR-size images are 3 MiB
    ("gpu", 224, 111),  # 64 MiB / 602,112 B
])  # fmt: skip
def test_the_batch_size_is_lowered_to_the_bytes_the_executors_are_sized_for(synth, compute, model_input_size, batch_size):
    """Review 2, #4: 256 images of 224 x 224 are a 154 MB float batch per Python worker, with three batches alive and
    four workers per CPU executor; the executors are sized for MAX_BATCH_BYTES (tests/infra/test_infra_executor_memory.py
    measures a worker at this batch size)."""
    variant = synth(compute=compute, model_input_size=model_input_size, cluster_mode="persistent")
    assert json.loads(environment(variant)["JOB_OPTIONS"])["batch_size"] == batch_size
    assert batch_size_limit(compute, model_input_size) * 3 * model_input_size**2 * 4 <= MAX_BATCH_BYTES[compute]


def test_persistent_lambda_targets_the_stacks_cluster(synth):
    variant = synth(cluster_mode="persistent")
    cluster_id, _ = variant.only("AWS::EMR::Cluster")
    assert environment(variant)["CLUSTER_ID"] == {"Ref": cluster_id}


def test_lambda_runs_python_3_11_without_layers(variant):
    properties = trigger_function(variant)["Properties"]
    assert (properties["Runtime"], properties["Handler"]) == ("python3.11", "handler.lambda_handler")
    assert "Layers" not in properties  # the SDK and Powertools are in its asset (tests/infra/test_infra_trigger.py)


def test_queue_feeds_the_lambda_in_batches_with_partial_failures(synth):
    variant = synth(trigger_batch_size=500, trigger_batching_window_seconds=30)
    variant.template.has_resource_properties(
        "AWS::Lambda::EventSourceMapping",
        {
            "BatchSize": 500,
            "MaximumBatchingWindowInSeconds": 30,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "ScalingConfig": {"MaximumConcurrency": 2},
        },
    )


def test_queue_visibility_outlasts_six_function_timeouts_and_parks_poison_messages(synth):
    variant = synth(trigger_batching_window_seconds=20)
    queue = variant.resources[logical_id(variant, variant.stack.trigger.queue)]["Properties"]
    assert queue["VisibilityTimeout"] == 6 * FUNCTION_TIMEOUT.to_seconds() + 20
    assert queue["RedrivePolicy"]["maxReceiveCount"] == MAX_RECEIVE_COUNT
    assert queue["SqsManagedSseEnabled"] is True


def test_only_uploads_under_incoming_notify_the_queue(variant):
    _, notifications = variant.only("Custom::S3BucketNotifications")
    (queue_configuration,) = notifications["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert queue_configuration["Filter"] == {"Key": {"FilterRules": [{"Name": "prefix", "Value": "incoming/"}]}}
    assert queue_configuration["Events"] == ["s3:ObjectCreated:*"]


def test_step_status_rule_announces_only_this_stacks_steps_that_ran_to_their_end(variant):
    variant.template.has_resource_properties(
        "AWS::Events::Rule",
        {
            "EventPattern": {
                "source": ["aws.emr"],
                "detail-type": ["EMR Step Status Change"],
                "detail": {"state": ["COMPLETED", "FAILED"], "name": [{"prefix": f"{STACK_ID}-batch-"}]},
            }
        },
    )


def test_notification_topic_is_encrypted_and_tls_only(variant):
    _, topic = variant.only("AWS::SNS::Topic")
    assert "KmsMasterKeyId" in topic["Properties"]
    _, policy = variant.only("AWS::SNS::TopicPolicy")
    assert any(
        s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
    )


@pytest.mark.parametrize("email, subscriptions", [(None, 0), ("ops@example.com", 1)])
def test_email_subscription_only_when_an_address_is_set(synth, email, subscriptions):
    variant = synth(notification_email=email)
    assert len(variant.resources_of_type("AWS::SNS::Subscription")) == subscriptions


def emr_statements(variant) -> list[dict]:
    return [
        s
        for s in role_statements(variant, variant.stack.trigger.function.role)
        if any(action.startswith("elasticmapreduce:") for action in as_list(s["Action"]))
    ]


def test_persistent_lambda_may_replace_its_cluster_with_the_same_grants_as_transient_mode(synth):
    """Review 2, #10: the trigger falls back to launching from the definition when CLUSTER_ID no longer accepts steps,
    so persistent mode has the launch grants (the persistent cluster carries the stack tag they are conditioned on)."""
    persistent, transient = synth(cluster_mode="persistent"), synth(cluster_mode="transient")

    def launch_statements(variant) -> list[str]:
        statements = role_statements(variant, variant.stack.trigger.function.role)
        return sorted(
            json.dumps(s, sort_keys=True)
            for s in statements
            if any(action.startswith(("elasticmapreduce:", "iam:")) for action in as_list(s["Action"]))
        )

    assert launch_statements(persistent) == launch_statements(transient)
    assert any("elasticmapreduce:RunJobFlow" in statement for statement in launch_statements(persistent))
    _, cluster = persistent.only("AWS::EMR::Cluster")
    assert {"Key": CLUSTER_TAG_KEY, "Value": STACK_ID} in cluster["Properties"]["Tags"]


def test_transient_lambda_launches_only_tagged_clusters_with_only_the_stacks_roles(synth):
    variant = synth(cluster_mode="transient")
    statements = role_statements(variant, variant.stack.trigger.function.role)
    (run,) = [s for s in statements if "elasticmapreduce:RunJobFlow" in as_list(s["Action"])]
    assert (run["Resource"], run["Condition"]) == ("*", {"StringEquals": {f"aws:RequestTag/{CLUSTER_TAG_KEY}": STACK_ID}})
    (steps,) = [s for s in statements if "elasticmapreduce:AddJobFlowSteps" in as_list(s["Action"])]
    assert steps["Condition"] == {"StringEquals": {f"aws:ResourceTag/{CLUSTER_TAG_KEY}": STACK_ID}}
    (pass_role,) = [s for s in statements if "iam:PassRole" in as_list(s["Action"])]
    assert sorted(json.dumps(r) for r in pass_role["Resource"]) == sorted(
        json.dumps({"Fn::GetAtt": [logical_id(variant, role), "Arn"]})
        for role in (variant.stack.cluster.service_role, variant.stack.cluster.instance_role)
    )
    assert pass_role["Condition"] == {
        "StringLike": {"iam:PassedToService": ["elasticmapreduce.amazonaws.com*", "ec2.amazonaws.com*"]}
    }


def test_transient_lambda_may_tag_the_clusters_it_launches_with_the_definitions_tag_keys_only(synth):
    """A RunJobFlow with tags needs elasticmapreduce:AddTags too (EMR Management Guide, "IAM policies for tag-based
    access to clusters", https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-fine-grained-cluster-access.html).
    Which tag condition EMR evaluates for it inside RunJobFlow is not documented, so both the request's and the
    resource's tag variants must be there, each limited to the shipped definition's tag keys. IAM's evaluation itself is
    not run here (no account): the statements' shape is what is checked."""
    variant = synth(cluster_mode="transient")
    statements = role_statements(variant, variant.stack.trigger.function.role)
    add_tags = [s for s in statements if "elasticmapreduce:AddTags" in as_list(s["Action"])]
    definition_keys = sorted(tag["Key"] for tag in variant.stack.cluster.job_flow["Tags"])
    assert definition_keys == sorted([CLUSTER_TAG_KEY, CLUSTER_DEFINITION_TAG_KEY, EMR_MANAGED_POLICY_TAG[0]])
    assert sorted(json.dumps(s["Condition"], sort_keys=True) for s in add_tags) == sorted(
        json.dumps(
            {
                "StringEquals": {f"aws:{kind}/{CLUSTER_TAG_KEY}": STACK_ID},
                "ForAllValues:StringEquals": {"aws:TagKeys": definition_keys},
            },
            sort_keys=True,
        )
        for kind in ("RequestTag", "ResourceTag")
    )
    assert all(as_list(s["Action"]) == ["elasticmapreduce:AddTags"] for s in add_tags)
    assert all(":cluster/*" in json.dumps(s["Resource"]) for s in add_tags)


def test_transient_lambda_may_create_emrs_cleanup_role_in_a_fresh_account(synth):
    """EMR creates AWSServiceRoleForEMRCleanup at an account's first cluster, as the RunJobFlow caller: without this
    the first transient cluster fails. Scoped as AmazonEMRFullAccessPolicy_v2's ElasticMapReduceServiceLinkedRole.
    IAM's evaluation of it is not run here (no account); the statement's shape is what is checked."""
    variant = synth(cluster_mode="transient")
    statements = role_statements(variant, variant.stack.trigger.function.role)
    (create,) = [s for s in statements if "iam:CreateServiceLinkedRole" in as_list(s["Action"])]
    resource = json.dumps(create["Resource"])
    assert "role/aws-service-role/elasticmapreduce.amazonaws.com*/AWSServiceRoleForEMRCleanup*" in resource
    assert create["Condition"] == {
        "StringEquals": {"iam:AWSServiceName": ["elasticmapreduce.amazonaws.com", "elasticmapreduce.amazonaws.com.cn"]}
    }


def test_lambda_writes_only_manifests(variant):
    statements = role_statements(variant, variant.stack.trigger.function.role)
    writes = [s for s in statements if "s3:PutObject" in as_list(s["Action"])]
    assert [json.dumps(s["Resource"]) for s in writes] == [
        json.dumps(
            {
                "Fn::Join": [
                    "",
                    [{"Fn::GetAtt": [logical_id(variant, variant.stack.storage.data_bucket), "Arn"]}, "/manifests/*"],
                ]
            }
        )
    ]


# --- outputs ---------------------------------------------------------------------------------------------------------


def test_outputs_give_upload_commands_prefixes_and_results_location(variant):
    outputs = variant.template.to_json()["Outputs"]
    expected = {
        "DataBucketName",
        "UploadModelCommand",
        "UploadImagesCommand",
        "ResultsLocation",
        "IncomingPrefix",
        "ExampleStep",
    }
    assert expected <= set(outputs)
    assert ("ClusterId" in outputs) == (variant.stack.settings.cluster_mode == "persistent")
    assert "aws s3 sync ./model-package s3://" in json.dumps(outputs["UploadModelCommand"]["Value"])


def test_example_step_output_is_the_trigger_step_builders(variant):
    outputs = variant.template.to_json()["Outputs"]
    stack = variant.stack
    step = build_step(
        name=f"{STACK_ID}-batch-<batch-id>",
        artifacts=stack.job_artifacts,
        manifest_uri=stack.storage.data_bucket.s3_url_for_object("manifests/<batch-id>.json"),
        model_uri=stack.model_uri,
        output_uri=stack.storage.data_bucket.s3_url_for_object("results/<batch-id>/"),
        run_record_uri=stack.storage.data_bucket.s3_url_for_object("runs/<batch-id>.json"),
        options=stack.job_options,
    )
    assert outputs["ExampleStep"]["Value"] == stack.resolve(stack.to_json_string(step))
