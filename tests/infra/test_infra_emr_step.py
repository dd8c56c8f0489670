"""The EMR step the stack and the trigger submit: client deploy mode, and a wall-clock limit that a setting controls.

The standalone-cluster test (tests/cluster) runs these exact arguments through spark-submit; here the shape of the step
and the `timeout` wrapper are checked on their own. What cannot run here: command-runner.jar and YARN.
"""

from __future__ import annotations

import json
import os
import subprocess

from infra_helpers import logical_id

from infra.trigger_function.emr_step import (
    DEFAULT_STEP_TIMEOUT_MINUTES,
    MIN_IMAGES_PER_EXECUTOR_SLOT,
    JobArtifacts,
    JobOptions,
    build_step,
    job_arguments,
    max_executors,
)
from infra.cluster_definition import JOB_DECODED_BYTES_PER_PIXEL, MAX_BATCH_BYTES, batch_size_limit, job_max_batch_bytes
from infra.settings import DEFAULT_STEP_TIMEOUT_MINUTES as SETTINGS_DEFAULT_STEP_TIMEOUT_MINUTES
from job.config import DECODED_BYTES_PER_PIXEL, DEFAULT_MAX_BATCH_BYTES, images_per_batch, parse_args

ARTIFACTS = JobArtifacts(py_files_uri="s3://bucket/artifacts/job.zip", entry_point_uri="s3://bucket/artifacts/entry.py")


def step(**options) -> dict:
    return build_step(
        name="stack-batch-1",
        artifacts=ARTIFACTS,
        manifest_uri="s3://bucket/manifests/1.json",
        model_uri="s3://bucket/models/default/",
        output_uri="s3://bucket/results/1/",
        options=JobOptions(**options),
    )


def spark_submit_arguments(args: list[str]) -> list[str]:
    return args[args.index("spark-submit") :]


def test_driver_runs_in_client_mode_on_the_primary():
    """Cluster mode would put the driver in a YARN container on a worker: on a GPU node it takes the vcore an executor
    needs, and with one core node the step would wait forever."""
    submit = spark_submit_arguments(step()["HadoopJarStep"]["Args"])
    assert submit[1:3] == ["--deploy-mode", "client"]
    assert "cluster" not in submit


def test_the_whole_step_runs_under_a_time_limit_from_the_options():
    args = step(timeout_minutes=90)["HadoopJarStep"]["Args"]
    assert args[: args.index("spark-submit")] == ["timeout", "--kill-after", "120s", "90m"]


def test_the_stack_and_the_step_builder_share_one_default_limit():
    assert DEFAULT_STEP_TIMEOUT_MINUTES == SETTINGS_DEFAULT_STEP_TIMEOUT_MINUTES == JobOptions().timeout_minutes


def test_job_arguments_are_what_follows_the_entry_point():
    args = job_arguments(step())
    assert args[:2] == ["--manifest", "s3://bucket/manifests/1.json"]
    assert ARTIFACTS.entry_point_uri not in args


def test_coreutils_timeout_accepts_the_wrapper_and_passes_the_commands_exit_code_on(tmp_path):
    """The wrapper runs the real coreutils `timeout` (EMR nodes have the same) around a stand-in spark-submit: the
    arguments parse, the command runs, and its exit code (a failed job's 1) becomes the step's."""
    fake = tmp_path / "spark-submit"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/called"\nexit 1\n')
    fake.chmod(0o755)
    args = step(timeout_minutes=5)["HadoopJarStep"]["Args"]
    environment = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    completed = subprocess.run(args, env=environment, timeout=60)
    assert completed.returncode == 1
    assert (tmp_path / "called").read_text().split() == args[args.index("spark-submit") + 1 :]


def test_step_timeout_setting_reaches_the_lambda_and_the_example_step(synth):
    variant = synth(step_timeout_minutes=45)
    function = variant.resources[logical_id(variant, variant.stack.trigger.function)]
    job_options = json.loads(function["Properties"]["Environment"]["Variables"]["JOB_OPTIONS"])
    assert job_options["timeout_minutes"] == 45
    example = variant.stack.resolve(variant.template.to_json()["Outputs"]["ExampleStep"]["Value"])
    assert '\\"45m\\"' in json.dumps(example) or '"45m"' in json.dumps(example)


def test_the_clusters_slots_reach_spark_through_the_step_not_the_clusters_configurations():
    """Review 2, #6: spark.default.parallelism is a --conf of spark-submit (before the application), so a resize that
    changes the slot count changes JOB_OPTIONS, not the cluster's create-only Configurations."""
    args = step(default_parallelism=24, executor_task_slots=4)["HadoopJarStep"]["Args"]
    submit = spark_submit_arguments(args)
    conf_at = submit.index("--conf")
    assert submit[conf_at : conf_at + 2] == ["--conf", "spark.default.parallelism=24"]
    assert conf_at < submit.index("--py-files") < submit.index(ARTIFACTS.entry_point_uri)
    assert "--conf" not in spark_submit_arguments(step()["HadoopJarStep"]["Args"])  # unknown slots: Spark's default
    assert job_arguments(step(default_parallelism=24))[:2] == ["--manifest", "s3://bucket/manifests/1.json"]


def max_executors_conf(image_count: int, **options) -> list[str]:
    args = build_step(
        name="stack-batch-1", artifacts=ARTIFACTS, manifest_uri="s3://bucket/manifests/1.json",
        model_uri="s3://bucket/models/default/", output_uri="s3://bucket/results/1/", options=JobOptions(**options),
        image_count=image_count,
    )["HadoopJarStep"]["Args"]  # fmt: skip
    return [a for a in args if a.startswith("spark.dynamicAllocation.maxExecutors=")]


def test_a_small_batch_asks_for_no_more_executors_than_its_images_need():
    """Review 2, #8: a 150-image batch on a cluster that may scale to 160 slots asked YARN for ~38 executors, and
    managed scaling added Spot nodes that came after the work was done. One executor per MIN_IMAGES_PER_EXECUTOR_SLOT
    images per slot, capped by the cluster's slots. (Managed scaling's reaction to the demand needs an account.)"""
    cpu = {"default_parallelism": 160, "executor_task_slots": 4}
    assert max_executors_conf(150, **cpu) == ["spark.dynamicAllocation.maxExecutors=1"]
    per_executor = MIN_IMAGES_PER_EXECUTOR_SLOT * 4
    assert max_executors_conf(5 * per_executor, **cpu) == ["spark.dynamicAllocation.maxExecutors=5"]
    assert max_executors_conf(5 * per_executor + 1, **cpu) == ["spark.dynamicAllocation.maxExecutors=6"]
    assert max_executors_conf(10**7, **cpu) == ["spark.dynamicAllocation.maxExecutors=40"]  # 160 slots / 4
    gpu = {"default_parallelism": 10, "executor_task_slots": 1}
    assert max_executors_conf(1, **gpu) == ["spark.dynamicAllocation.maxExecutors=1"]
    assert max_executors_conf(10**6, **gpu) == ["spark.dynamicAllocation.maxExecutors=10"]
    assert max_executors_conf(0) == ["spark.dynamicAllocation.maxExecutors=1"]
    assert max_executors(150, JobOptions(**cpu)) == 1


def test_the_stack_gives_each_step_the_clusters_slots_and_its_executors_slots(synth):
    """The default cluster: 1 core + 2 task c5.2xlarge-sized nodes of 8 vCPUs = 24 slots, 4 per executor."""
    job_options = json.loads(environment_of(synth())["JOB_OPTIONS"])
    assert (job_options["default_parallelism"], job_options["executor_task_slots"]) == (24, 4)
    gpu_options = json.loads(environment_of(synth(compute="gpu", cluster_mode="persistent"))["JOB_OPTIONS"])
    assert (gpu_options["default_parallelism"], gpu_options["executor_task_slots"]) == (3, 1)


def environment_of(variant) -> dict:
    function = variant.resources[logical_id(variant, variant.stack.trigger.function)]
    return function["Properties"]["Environment"]["Variables"]


def test_the_batch_byte_budget_reaches_the_jobs_own_option_so_a_larger_model_gets_fewer_images():
    """cluster.md item 7: the stack lowers --batch-size for model_input_size, but a package whose input is larger than
    that setting would still decode batches of that many images. With max_batch_bytes the job's own --max-batch-bytes
    caps each batch for the package's real input size. Parsed by the job's real parser."""
    budget = 20 * 2**20
    config = parse_args(job_arguments(step(batch_size=27, max_batch_bytes=budget)))
    assert config.max_batch_bytes == budget
    assert images_per_batch(config, 224, 224) == 27  # the stack's figure at the size the setting names
    assert images_per_batch(config, 448, 448) == budget // (448 * 448 * DECODED_BYTES_PER_PIXEL) < 27
    assert "--max-batch-bytes" not in job_arguments(step())  # unset: the job's default
    assert parse_args(job_arguments(step())).max_batch_bytes == DEFAULT_MAX_BATCH_BYTES


def test_a_float_batch_budget_scaled_to_the_jobs_decoded_bytes_gives_the_stacks_batch_size_at_every_input_size():
    """The stack budgets float32 input only (12 bytes per pixel, cluster_definition.MAX_BATCH_BYTES); the job counts
    the decoded uint8 pixels too (DECODED_BYTES_PER_PIXEL = 15). The stack's max_batch_bytes is therefore its budget
    x 15 / 12 (20 MiB on cpu, 80 MiB on gpu): the job then takes exactly the stack's batch size at the model_input_size
    it was deployed with, and fewer images only for a larger input."""
    for compute, budget in MAX_BATCH_BYTES.items():
        job_budget = budget * DECODED_BYTES_PER_PIXEL // (3 * 4)
        assert job_budget == {"cpu": 20 * 2**20, "gpu": 80 * 2**20}[compute]
        config = parse_args(job_arguments(step(batch_size=10**6, max_batch_bytes=job_budget)))
        for size in range(8, 1025):
            assert images_per_batch(config, size, size) == batch_size_limit(compute, size), (compute, size)


def test_the_stacks_job_batch_budget_counts_bytes_as_the_job_does():
    """infra/ and job/ share no code: the stack's copy of the job's bytes per decoded pixel, and the budget it passes
    (``job_max_batch_bytes``), are the job's own count and the figures above."""
    assert JOB_DECODED_BYTES_PER_PIXEL == DECODED_BYTES_PER_PIXEL
    assert {compute: job_max_batch_bytes(compute) for compute in MAX_BATCH_BYTES} == {"cpu": 20 * 2**20,
                                                                                        "gpu": 80 * 2**20}


def test_the_run_record_option_is_passed_only_when_given_and_the_job_accepts_it():
    assert "--run-record" not in job_arguments(step())
    args = job_arguments(
        build_step(
            name="stack-batch-1",
            artifacts=ARTIFACTS,
            manifest_uri="s3://bucket/manifests/1.json",
            model_uri="s3://bucket/models/default/",
            output_uri="s3://bucket/results/1/",
            run_record_uri="s3://bucket/runs/1.json",
            options=JobOptions(),
        )
    )
    assert args[args.index("--run-record") + 1] == "s3://bucket/runs/1.json"
    assert parse_args(args).run_record == "s3://bucket/runs/1.json"  # the job's own parser takes the step's arguments
