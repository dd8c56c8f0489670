"""The one definition of the EMR step that runs the inference job.

Both the trigger Lambda (which submits steps) and the stack (which documents the command in its outputs) build the step
here, so the job's command line - the contract documented in README.md ("The job's command line") - has a single writer.
This module imports nothing outside the standard library: it runs inside the Lambda.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMAND_RUNNER_JAR = "command-runner.jar"
# EMR rejects a step whose strings add up to more than this many characters; a manifest URI keeps us far below it.
MAX_STEP_STRING_CHARS = 10_240


@dataclass(frozen=True)
class JobArtifacts:
    """Where the stack uploaded the packaged job (see README, "Packaged job")."""

    py_files_uri: str  # s3://bucket/artifacts/job.zip: the `job` package at the zip's root
    entry_point_uri: str  # s3://bucket/artifacts/spark_entry.py


@dataclass(frozen=True)
class JobOptions:
    """The job's tuning arguments that the stack fixes at deploy time (validated by the stack's settings)."""

    device: str = "auto"  # cpu | gpu | auto
    batch_size: int = 256
    top_k: int = 5
    max_failure_ratio: float = 0.01


def build_step(
    *,
    name: str,
    artifacts: JobArtifacts,
    manifest_uri: str,
    model_uri: str,
    output_uri: str,
    options: JobOptions,
    action_on_failure: str = "CONTINUE",
) -> dict:
    """Return an EMR ``StepConfig`` (the shape ``AddJobFlowSteps`` and ``RunJobFlow`` take) that runs the job on a manifest.

    The step points at a manifest instead of listing objects because EMR limits a step's strings to 10,240 characters.
    """
    args = [
        "spark-submit",
        "--deploy-mode",
        "cluster",
        "--py-files",
        artifacts.py_files_uri,
        artifacts.entry_point_uri,
        "--manifest",
        manifest_uri,
        "--model",
        model_uri,
        "--output",
        output_uri,
        "--device",
        options.device,
        "--batch-size",
        str(options.batch_size),
        "--top-k",
        str(options.top_k),
        "--max-failure-ratio",
        str(options.max_failure_ratio),
    ]
    step_chars = len(name) + sum(len(arg) for arg in args)
    if step_chars > MAX_STEP_STRING_CHARS:
        raise ValueError(
            f"EMR step {name!r} has {step_chars} characters of strings; EMR accepts at most {MAX_STEP_STRING_CHARS}. "
            "Shorten the bucket prefixes or the model URI."
        )
    return {
        "Name": name,
        "ActionOnFailure": action_on_failure,
        "HadoopJarStep": {"Jar": COMMAND_RUNNER_JAR, "Args": args},
    }


def job_arguments(step: dict) -> list[str]:
    """The job's own arguments inside a step built by :func:`build_step` (everything after the entry point)."""
    args = step["HadoopJarStep"]["Args"]
    entry_point_index = args.index("--py-files") + 2
    return args[entry_point_index + 1 :]
