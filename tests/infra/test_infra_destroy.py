"""What `cdk destroy` removes, and in which order (read from the synthesized template's policies and dependencies)."""

from __future__ import annotations

from infra_helpers import logical_id

AUTO_DELETE_TYPE = "Custom::S3AutoDeleteObjects"
CLEANUP_TYPE = "Custom::EmrClusterCleanup"


def depends_on(synthesized, resource_id: str) -> set[str]:
    return set(synthesized.resources[resource_id].get("DependsOn", []))


def auto_delete_of(synthesized, bucket) -> str:
    bucket_id = logical_id(synthesized, bucket)
    (resource_id,) = [
        name
        for name, body in synthesized.resources_of_type(AUTO_DELETE_TYPE).items()
        if body["Properties"]["BucketName"] == {"Ref": bucket_id}
    ]
    return resource_id


def test_every_resource_is_deleted_by_default(variant):
    retained = {
        name: (body.get("DeletionPolicy"), body.get("UpdateReplacePolicy"))
        for name, body in variant.resources.items()
        if "Retain" in (body.get("DeletionPolicy"), body.get("UpdateReplacePolicy"))
    }
    assert retained == {}


def test_buckets_are_emptied_before_deletion_by_default(variant):
    storage = variant.stack.storage
    for bucket in (storage.data_bucket, storage.logs_bucket):
        assert variant.resources[logical_id(variant, bucket)]["DeletionPolicy"] == "Delete"
        assert auto_delete_of(variant, bucket)


def test_retention_keeps_both_buckets_and_their_objects(synth):
    variant = synth(retain_data_on_destroy=True)
    for bucket in (variant.stack.storage.data_bucket, variant.stack.storage.logs_bucket):
        assert variant.resources[logical_id(variant, bucket)]["DeletionPolicy"] == "Retain"
    assert variant.resources_of_type(AUTO_DELETE_TYPE) == {}


def test_lambda_log_groups_belong_to_the_stack(variant):
    for function in (variant.stack.trigger.function, variant.stack.cleanup.function):
        log_group = variant.resources[logical_id(variant, function)]["Properties"]["LoggingConfig"]["LogGroup"]
        assert variant.resources[log_group["Ref"]]["DeletionPolicy"] == "Delete"


def test_persistent_cluster_is_deleted_before_the_logs_bucket_is_emptied(synth):
    variant = synth(cluster_mode="persistent")
    cluster_id, _ = variant.only("AWS::EMR::Cluster")
    logs_bucket = variant.stack.storage.logs_bucket
    assert {auto_delete_of(variant, logs_bucket), logical_id(variant, logs_bucket)} <= depends_on(variant, cluster_id)


def test_persistent_cluster_boots_after_its_bootstrap_scripts_are_uploaded(synth):
    variant = synth(cluster_mode="persistent")
    cluster_id, _ = variant.only("AWS::EMR::Cluster")
    children = variant.stack.artifacts.job_deployment.node.children
    (deployment,) = [child for child in children if child.node.id.startswith("CustomResource-")]
    assert logical_id(variant, deployment) in depends_on(variant, cluster_id)


def test_persistent_cluster_boots_after_its_wheelhouse_is_uploaded(persistent_offline_wheelhouse_variant):
    variant = persistent_offline_wheelhouse_variant
    cluster_id, _ = variant.only("AWS::EMR::Cluster")
    children = variant.stack.artifacts.wheelhouse_deployment.node.children
    (deployment,) = [child for child in children if child.node.id.startswith("CustomResource-")]
    assert logical_id(variant, deployment) in depends_on(variant, cluster_id)


def test_cleanup_runs_before_what_the_clusters_use_is_deleted(variant):
    cleanup_id, _ = variant.only(CLEANUP_TYPE)
    stack = variant.stack
    network = stack.network
    required = {
        logical_id(variant, construct)
        for construct in (
            stack.cluster.instance_role,
            stack.cluster.service_role,
            stack.cluster.security_configuration,
            stack.cluster.instance_profile,
            network.primary_security_group,
            network.worker_security_group,
            network.service_access_security_group,
            stack.storage.data_bucket,
            stack.storage.logs_bucket,
            stack.key,
        )
    } | {auto_delete_of(variant, stack.storage.logs_bucket), auto_delete_of(variant, stack.storage.data_bucket)}
    assert required <= depends_on(variant, cleanup_id)


def test_trigger_is_deleted_before_the_cleanup_so_no_cluster_starts_meanwhile(variant):
    cleanup_id, _ = variant.only(CLEANUP_TYPE)
    assert cleanup_id in depends_on(variant, logical_id(variant, variant.stack.trigger.function))


def test_persistent_cluster_is_deleted_before_the_cleanup_untangles_its_groups(synth):
    variant = synth(cluster_mode="persistent")
    cluster_id, _ = variant.only("AWS::EMR::Cluster")
    cleanup_id, _ = variant.only(CLEANUP_TYPE)
    assert cleanup_id in depends_on(variant, cluster_id)


def test_cleanup_is_told_the_stacks_tag_and_security_groups(variant):
    _, cleanup = variant.only(CLEANUP_TYPE)
    network = variant.stack.network
    groups = (network.primary_security_group, network.worker_security_group, network.service_access_security_group)
    assert cleanup["Properties"]["TagValue"] == variant.stack.cluster_tag_value
    assert cleanup["Properties"]["SecurityGroupIds"] == [
        {"Fn::GetAtt": [logical_id(variant, group), "GroupId"]} for group in groups
    ]


def test_logs_bucket_is_emptied_only_after_the_data_bucket_was(variant):
    """Emptying the data bucket writes access-log records into the logs bucket (aws-cdk#21776): the logs bucket's
    emptying must come after the data bucket's, which CloudFormation orders by DependsOn (dependents go first)."""
    storage = variant.stack.storage
    data_emptying = auto_delete_of(variant, storage.data_bucket)
    assert auto_delete_of(variant, storage.logs_bucket) in depends_on(variant, data_emptying)


def test_cleanup_stops_the_data_buckets_access_logging_before_it_is_emptied(variant):
    storage = variant.stack.storage
    (cleanup_id, cleanup_body), = variant.resources_of_type(CLEANUP_TYPE).items()
    assert cleanup_body["Properties"]["AccessLoggedBucket"] == {"Ref": logical_id(variant, storage.data_bucket)}
    # Deleted before the data bucket's emptying: the cleanup depends on it.
    assert auto_delete_of(variant, storage.data_bucket) in depends_on(variant, cleanup_id)
