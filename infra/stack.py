"""The stack: storage, network, cluster, job artifacts, trigger, cleanup, results catalog, alarms and outputs, composed
from one Settings object."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from aws_cdk import CfnOutput, CustomResourceProviderBase, Stack
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct, IConstruct

from infra.alarms import Alarms
from infra.artifacts import DEPLOYMENT_FUNCTION_ID_PREFIX, Artifacts, wheelhouse_uri
from infra.catalog import ResultsCatalog
from infra.cleanup import ClusterCleanup
from infra.cluster import Cluster, stack_key
from infra.cluster_definition import (
    PYTHON_WORKERS_PER_EXECUTOR,
    InstanceFleet,
    ManagedScaling,
    batch_size_limit,
    job_max_batch_bytes,
    task_slots,
)
from infra.input_locations import grant_read_input_locations
from infra.network import Network
from infra.packaging import bootstrap_digest
from infra.settings import Settings
from infra.storage import (
    ARTIFACTS_PREFIX,
    EMR_LOGS_PREFIX,
    INCOMING_PREFIX,
    MANIFESTS_PREFIX,
    MODELS_PREFIX,
    RESULTS_PREFIX,
    MODEL_PUBLISHER_TAG_KEY,
    RUNS_PREFIX,
    STAGED_PREFIX,
    Storage,
    UploadAccess,
)
from infra.trigger import Trigger
from infra.trigger_function.emr_step import JobOptions, build_step

CLUSTER_TAG_KEY = "mxnet-spark-inference:stack"
# On every cluster of the stack: a hash of the definition and bootstrap scripts it was launched with (infra/cluster.py).
CLUSTER_DEFINITION_TAG_KEY = "mxnet-spark-inference:definition"
# CDK's provider of the buckets' auto-delete custom resources (a child of the stack).
AUTO_DELETE_PROVIDER_ID = "Custom::S3AutoDeleteObjectsCustomResourceProvider"


class InferenceStack(Stack):
    """Distributed MXNet inference on EMR: upload a model and images, get Parquet predictions and a notification."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        source_root: Path,
        staging_dir: Path,
        description: str = "Distributed MXNet inference on Spark/EMR, triggered by uploads",
    ) -> None:
        super().__init__(scope, construct_id, description=description)
        self.settings = settings
        self.step_name_prefix = f"{self.stack_name}-batch-"
        self.cluster_tag_value = self.stack_name
        persistent = settings.cluster_mode == "persistent"
        # The trigger finds clusters by tag in transient mode, and in persistent mode when the stack's cluster can end
        # idle (it may be gone when the next batch comes); otherwise it uses the persistent cluster by id.
        by_tag = settings.finds_clusters_by_tag

        self.storage = Storage(
            self, "Storage", retain_data=settings.retain_data_on_destroy, log_retention_days=settings.log_retention_days
        )
        data_bucket, logs_bucket = self.storage.data_bucket, self.storage.logs_bucket
        self.key = stack_key(self, "Key")
        self.wheelhouse_uri = wheelhouse_uri(data_bucket, settings.compute) if settings.offline_wheelhouse else None
        self.network = Network(
            self, "Network", vpc_id=settings.vpc_id, subnet_ids=settings.subnet_ids, nat_gateways=settings.nat_gateways
        )
        fleets, managed_scaling = _instance_fleets(settings), _managed_scaling(settings)
        self.cluster = Cluster(
            self,
            "Emr",
            compute=settings.compute,
            release_label=settings.release_label,
            fleets=fleets,
            spot_timeout_minutes=settings.spot_timeout_minutes,
            managed_scaling=managed_scaling,
            idle_timeout_minutes=settings.resolved_idle_timeout_minutes,
            step_concurrency_level=settings.step_concurrency_level,
            persistent=persistent,
            network=self.network,
            data_bucket=data_bucket,
            logs_bucket=logs_bucket,
            key=self.key,
            tag_key=CLUSTER_TAG_KEY,
            tag_value=self.cluster_tag_value,
            definition_tag_key=CLUSTER_DEFINITION_TAG_KEY,
            bootstrap_digest=bootstrap_digest(source_root),
            wheelhouse_uri=self.wheelhouse_uri,
        )

        grant_read_input_locations(self.cluster.instance_role, settings.input_locations or ())

        self.artifacts = Artifacts(
            self,
            "Artifacts",
            data_bucket=data_bucket,
            source_root=source_root,
            staging_dir=staging_dir,
            # Shipped in every mode: a persistent cluster that ended (lost primary, terminated by hand) is replaced
            # by the trigger from this definition, not fed batches that go to the dead-letter queue (review 2, #10).
            job_flow=self.cluster.job_flow,
            compute=settings.compute,
            architecture=settings.architecture,
            offline_wheelhouse=settings.offline_wheelhouse,
        )
        job_flow_definition_key = self.artifacts.job_flow_definition_key
        self.job_artifacts = self.artifacts.job_artifacts
        if self.cluster.cfn_cluster is not None:
            # The bootstrap scripts (and wheelhouse) must be in S3 before the cluster boots; and on destroy the cluster
            # goes first, before the logs bucket it writes to is emptied and deleted (its auto-delete resource too).
            self.cluster.cfn_cluster.node.add_dependency(
                self.artifacts, *_bucket_resources(logs_bucket), *_bucket_resources(data_bucket)
            )

        self.job_options = JobOptions(
            device=settings.job_device,
            # The executors are sized for batches of at most MAX_BATCH_BYTES of the model's input size.
            batch_size=min(settings.job_batch_size, batch_size_limit(settings.compute, settings.model_input_size)),
            top_k=settings.job_top_k,
            max_failure_ratio=settings.job_max_failure_ratio,
            timeout_minutes=settings.step_timeout_minutes,
            default_parallelism=task_slots(settings.compute, fleets, managed_scaling),
            executor_task_slots=PYTHON_WORKERS_PER_EXECUTOR[settings.compute],
            # ... and the job cuts a larger model's batches to the same bytes (a model bigger than model_input_size).
            max_batch_bytes=job_max_batch_bytes(settings.compute),
        )
        self.model_uri = data_bucket.s3_url_for_object(f"{MODELS_PREFIX}{settings.model_name}/")
        environment = {
            "DATA_BUCKET": data_bucket.bucket_name,
            "INCOMING_PREFIX": INCOMING_PREFIX,
            "MANIFESTS_PREFIX": MANIFESTS_PREFIX,
            "STAGED_PREFIX": STAGED_PREFIX,
            "RESULTS_PREFIX": RESULTS_PREFIX,
            "RUNS_PREFIX": RUNS_PREFIX,
            "MODEL_URI": self.model_uri,
            "JOB_PY_FILES_URI": self.job_artifacts.py_files_uri,
            "JOB_ENTRY_POINT_URI": self.job_artifacts.entry_point_uri,
            "JOB_OPTIONS": json.dumps(dataclasses.asdict(self.job_options), sort_keys=True),
            "STEP_NAME_PREFIX": self.step_name_prefix,
            # How the trigger finds the cluster: the stack's own by id ("persistent"), or by tag ("transient"); in
            # both, it launches one from the shipped definition when its cluster does not accept steps.
            "CLUSTER_MODE": "transient" if by_tag else "persistent",
            "CLUSTER_TAG_KEY": CLUSTER_TAG_KEY,
            "CLUSTER_TAG_VALUE": self.cluster_tag_value,
            "MAX_ACTIVE_STEPS": str(settings.max_active_steps),
        }
        environment["JOB_FLOW_DEFINITION_KEY"] = job_flow_definition_key
        environment["CLUSTER_DEFINITION_TAG_KEY"] = CLUSTER_DEFINITION_TAG_KEY
        environment["CLUSTER_DEFINITION_TAG_VALUE"] = self.cluster.definition_tag_value
        if not by_tag:
            environment["CLUSTER_ID"] = self.cluster.cluster_id
        if settings.input_locations:
            # Manifests may list objects there too (the trigger refuses every other bucket and prefix).
            environment["INPUT_LOCATIONS"] = json.dumps(list(settings.input_locations))

        self.trigger = Trigger(
            self,
            "Trigger",
            data_bucket=data_bucket,
            key=self.key,
            environment=environment,
            job_flow_definition_key=job_flow_definition_key,
            step_name_prefix=self.step_name_prefix,
            batch_size=settings.trigger_batch_size,
            batching_window_seconds=settings.trigger_batching_window_seconds,
            notification_email=settings.notification_email,
            emr_logs_uri=logs_bucket.s3_url_for_object(EMR_LOGS_PREFIX),
            results_uri=data_bucket.s3_url_for_object(RESULTS_PREFIX),
            # Beside the artifacts' staging folder (which is emptied at every synth), shared by this machine's synths.
            function_zip_path=staging_dir.parent / "trigger-function" / "trigger-function.zip",
        )
        self.cluster.grant_step_submission(self.trigger.function)
        network = self.network
        self.cleanup = ClusterCleanup(
            self,
            "ClusterCleanup",
            tag_key=CLUSTER_TAG_KEY,
            tag_value=self.cluster_tag_value,
            security_groups=[
                network.primary_security_group,
                network.worker_security_group,
                network.service_access_security_group,
            ],
            access_logged_bucket=None if settings.retain_data_on_destroy else data_bucket,
        )
        # On destroy the cleanup runs after the clusters stopped being fed (the trigger and the persistent cluster go
        # first) and before everything a cluster uses: roles, security configuration, network, buckets, key.
        self.cleanup.node.add_dependency(
            network,
            self.cluster.instance_role,
            self.cluster.instance_profile,
            self.cluster.service_role,
            self.cluster.security_configuration,
            self.artifacts,
            *_bucket_resources(data_bucket),
            *_bucket_resources(logs_bucket),
            self.key,
        )
        self.trigger.node.add_dependency(self.cleanup)
        if self.cluster.cfn_cluster is not None:
            self.cluster.cfn_cluster.node.add_dependency(self.cleanup)
        self.catalog = ResultsCatalog(
            self, "ResultsCatalog", data_bucket=data_bucket, scan_limit_gb=settings.athena_scan_limit_gb
        )
        self.alarms = Alarms(
            self,
            "Alarms",
            topic=self.trigger.topic,
            key=self.key,
            dead_letter_queue=self.trigger.dead_letter_queue,
            trigger_function=self.trigger.function,
            cluster_name=self.cluster.job_flow["Name"],
            emr_logs_uri=logs_bucket.s3_url_for_object(EMR_LOGS_PREFIX),
        )
        self.upload_access = UploadAccess(
            self,
            "UploadAccess",
            data_bucket=data_bucket,
            stack_name=self.stack_name,
            artifact_writer_arns=self._artifact_writer_arns(),
            model_publisher_arns=settings.model_publisher_arns or (),
        )
        # The bucket policy admits the deployments' roles to artifacts/: a deployment whose role is new (a first
        # offline wheelhouse, a CDK upgrade) must not write before the policy naming it is in place (final review I2).
        for deployment in self.artifacts.deployments:
            deployment.node.add_dependency(data_bucket.policy)
        self._outputs()

    def _artifact_writer_arns(self) -> list[str]:
        """The roles that write artifacts/ (CDK's bucket-deployment functions, one per memory size) and that empty the
        bucket on destroy (CDK's auto-delete provider, unless the data is retained)."""
        arns = [
            child.role.role_arn
            for child in self.node.children
            if child.node.id.startswith(DEPLOYMENT_FUNCTION_ID_PREFIX) and isinstance(child, lambda_.Function)
        ]
        if not arns:
            raise RuntimeError("no bucket-deployment function found: artifacts/ would have no writer")
        auto_delete = self.node.try_find_child(AUTO_DELETE_PROVIDER_ID)
        if isinstance(auto_delete, CustomResourceProviderBase):
            arns.append(auto_delete.role_arn)
        return arns

    def _outputs(self) -> None:
        data_bucket = self.storage.data_bucket
        bucket = data_bucket.bucket_name
        model_name = self.settings.model_name
        CfnOutput(self, "DataBucketName", value=bucket, description="Models, uploads, manifests, results, artifacts")
        CfnOutput(self, "LogsBucketName", value=self.storage.logs_bucket.bucket_name, description="EMR and S3 logs")
        for name, prefix in (
            ("ModelsPrefix", MODELS_PREFIX),
            ("IncomingPrefix", INCOMING_PREFIX),
            ("StagedPrefix", STAGED_PREFIX),
            ("ManifestsPrefix", MANIFESTS_PREFIX),
            ("ResultsPrefix", RESULTS_PREFIX),
            ("ArtifactsPrefix", ARTIFACTS_PREFIX),
        ):
            CfnOutput(self, name, value=data_bucket.s3_url_for_object(prefix))
        if self.cluster.cluster_id:
            CfnOutput(self, "ClusterId", value=self.cluster.cluster_id, description="The persistent EMR cluster")
        CfnOutput(
            self,
            "UploadModelCommand",
            value=f"aws s3 sync ./model-package s3://{bucket}/{MODELS_PREFIX}{model_name}/",
            description="Upload a model package (a folder with model.json) before any images",
        )
        CfnOutput(
            self,
            "UploadImagesCommand",
            value=f"aws s3 cp ./images s3://{bucket}/{INCOMING_PREFIX}my-run/ --recursive",
            description="Upload images (or CIFAR-10 .bin batches, or a manifest .json): each upload batch is one run",
        )
        CfnOutput(
            self,
            "ResultsLocation",
            value=f"s3://{bucket}/{RESULTS_PREFIX}<run id>/",
            description="Parquet predictions, summary.json and report.html per run; the run id (the batch id, -<n> for "
            "the n-th attempt) ends the step's name",
        )
        CfnOutput(self, "NotificationTopicArn", value=self.trigger.topic.topic_arn)
        CfnOutput(
            self,
            "ClaimsTableName",
            value=self.trigger.claims_table.table_name,
            description="Which batch owns each upload; item batch#<batch id> names its cluster and step",
        )
        CfnOutput(
            self,
            "ResultsDatabase",
            value=self.catalog.database.database_name,
            description="Glue database of the predictions table (one partition per run id, named in each query)",
        )
        CfnOutput(
            self, "ResultsWorkgroup", value=self.catalog.workgroup.ref, description="Athena workgroup to query in"
        )
        CfnOutput(
            self,
            "UploaderPolicyArn",
            value=self.upload_access.uploader_policy.managed_policy_arn,
            description=f"Attach to whoever uploads inputs: writes {INCOMING_PREFIX} and {STAGED_PREFIX} only",
        )
        CfnOutput(
            self,
            "ModelPublisherPolicyArn",
            value=self.upload_access.model_publisher_policy.managed_policy_arn,
            description=f"Attach to whoever publishes models (writes {MODELS_PREFIX}); the principal also needs the tag "
            f"{MODEL_PUBLISHER_TAG_KEY}={self.stack_name}",
        )
        CfnOutput(
            self,
            "ResultsReaderPolicyArn",
            value=self.catalog.reader_policy.managed_policy_arn,
            description="Attach to a user or role that queries and reads results (nothing else of the stack)",
        )
        example_batch_id = "<batch-id>"
        example_step = build_step(
            name=self.step_name_prefix + example_batch_id,
            artifacts=self.job_artifacts,
            manifest_uri=data_bucket.s3_url_for_object(f"{MANIFESTS_PREFIX}{example_batch_id}.json"),
            model_uri=self.model_uri,
            output_uri=data_bucket.s3_url_for_object(f"{RESULTS_PREFIX}{example_batch_id}/"),
            run_record_uri=data_bucket.s3_url_for_object(f"{RUNS_PREFIX}{example_batch_id}.json"),
            options=self.job_options,
        )
        CfnOutput(
            self,
            "ExampleStep",
            value=self.to_json_string(example_step),
            description="The EMR step the trigger submits for one batch (emr_step.build_step)",
        )


def _bucket_resources(bucket: s3.Bucket) -> list[IConstruct]:
    """The bucket, its policy and its auto-delete resource, without its event notifications (which depend on the
    trigger's queue: depending on them would make a cycle)."""
    children = ("Resource", "Policy", "AutoDeleteObjectsCustomResource")
    return [child for child in (bucket.node.try_find_child(name) for name in children) if child is not None]


def _instance_fleets(settings: Settings) -> list[InstanceFleet]:
    fleets = [
        InstanceFleet("MASTER", "Primary", settings.resolved_primary_instance_types, 1),
        InstanceFleet("CORE", "Core", settings.resolved_core_instance_types, settings.core_instance_count),
    ]
    if settings.has_task_fleet:
        fleets.append(
            InstanceFleet("TASK", "Task", settings.resolved_task_instance_types, settings.task_instance_count, spot=True)
        )
    return fleets


def _managed_scaling(settings: Settings) -> ManagedScaling | None:
    if not settings.managed_scaling:
        return None
    return ManagedScaling(
        min_instance_count=settings.managed_scaling_min_instance_count or settings.core_instance_count,
        max_instance_count=settings.managed_scaling_max_instance_count,
    )
