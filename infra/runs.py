"""Find and redo runs (issue 18, part 3): ``python -m infra.runs list | which | rerun``.

- ``list``: every run with its id, state, image count, failures, source and report, from ``results/*/summary.json``
  (what the job wrote) and the claims table's batch records (what the trigger submitted: runs still queued, running,
  retried or given up have no summary yet).
- ``which s3://BUCKET/incoming/run-1/cat.jpg``: the runs whose batch manifest listed that object (reads
  ``manifests/*.json``); the predictions table then gives its labels (docs/job.md, "Which run classified this key?").
- ``rerun RUN_ID``: writes a copy of the run's batch manifest to ``incoming/runs/<name>/part-00001.json`` (default name
  ``rerun-<run id>``), so it goes through the trigger as any uploaded manifest and gets a new run id. The copy is
  written only if it does not exist (``If-None-Match: *``): one rerun per name.

Imports no CDK. Exit codes: 0 done, 2 bad input or an AWS error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from botocore.exceptions import BotoCoreError, ClientError

from infra.submit_run import (
    EXIT_USAGE,
    INCOMING_RUNS_PREFIX,
    RUN_NAME_PATTERN,
    RunError,
    aws_error_line,
    manifest_key,
    put_if_absent,
    s3_client,
    stack_output,
)

RESULTS_PREFIX = "results/"
MANIFESTS_PREFIX = "manifests/"
SUMMARY_NAME = "summary.json"
BATCH_KEY_PREFIX = "batch#"  # the claims table's batch records (infra/trigger_function/claims.py)
BATCH_ID_LENGTH = 20  # infra/trigger_function/trigger_settings.py


@dataclass(frozen=True)
class Run:
    """One attempt at a batch, as the listing shows it."""

    run_id: str
    state: str  # succeeded/failed (the job's summary), or the trigger's: submitting, submitted, retried, gave_up...
    images: int | None
    failures: int | None
    source: dict | None
    report: str | None


def parse_run_id(text: str) -> tuple[str, int] | None:
    """``(batch_id, attempt)`` of a run id (``<batch id>`` or ``<batch id>-<n>``, n >= 2), else None."""
    batch_id, separator, attempt = text.partition("-")
    if len(batch_id) != BATCH_ID_LENGTH or not batch_id.isalnum():
        return None
    if not separator:
        return batch_id, 1
    if not attempt.isdigit() or int(attempt) < 2 or attempt != str(int(attempt)):
        return None
    return batch_id, int(attempt)


def run_id(batch_id: str, attempt: int) -> str:
    return batch_id if attempt == 1 else f"{batch_id}-{attempt}"


def _read_json(s3, bucket: str, key: str):
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    except ValueError:
        return None


def _batch_records(dynamodb, table: str) -> dict[str, dict]:
    records = {}
    scan = dynamodb.get_paginator("scan").paginate(
        TableName=table,
        FilterExpression="begins_with(pk, :batch)",
        ExpressionAttributeValues={":batch": {"S": BATCH_KEY_PREFIX}},
        ConsistentRead=True,
    )
    for page in scan:
        for item in page.get("Items", []):
            records[item["pk"]["S"][len(BATCH_KEY_PREFIX) :]] = {
                "state": item.get("state", {}).get("S", ""),
                "attempt": int(item.get("attempt", {}).get("N", "1")),
                "manifest_key": item.get("manifest_key", {}).get("S", ""),
            }
    return records


def _result_run_ids(s3, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=RESULTS_PREFIX, Delimiter="/")
    folders = [common["Prefix"] for page in pages for common in page.get("CommonPrefixes", [])]
    return [folder[len(RESULTS_PREFIX) :].rstrip("/") for folder in folders]


def list_runs(s3, dynamodb, *, bucket: str, claims_table: str) -> list[Run]:
    """Every run the results folder or the claims table knows, ordered by run id (batch ids begin with their time)."""
    records = _batch_records(dynamodb, claims_table)
    run_ids = set(_result_run_ids(s3, bucket))
    for batch_id, record in records.items():
        run_ids.update(run_id(batch_id, attempt) for attempt in range(1, record["attempt"] + 1))
    runs = []
    for identifier in sorted(run_ids):
        summary = _read_json(s3, bucket, f"{RESULTS_PREFIX}{identifier}/{SUMMARY_NAME}")
        parsed = parse_run_id(identifier)
        record = records.get(parsed[0]) if parsed else None
        if isinstance(summary, dict):
            counts = summary.get("counts") or {}
            report = summary.get("report") or {}
            runs.append(
                Run(
                    run_id=identifier,
                    state=str(summary.get("status")),
                    images=counts.get("total"),
                    failures=counts.get("error"),
                    source=summary.get("source"),
                    report=report.get("uri") if isinstance(report, dict) else None,
                )
            )
            continue
        source = None
        state = "unknown (no summary, no batch record)"
        if record is not None and parsed is not None:
            manifest = _read_json(s3, bucket, record["manifest_key"]) if record["manifest_key"] else None
            source = manifest.get("source") if isinstance(manifest, dict) else None
            if parsed[1] < record["attempt"]:
                state = f"retried as {run_id(parsed[0], parsed[1] + 1)}"
            else:
                # submitted: queued or running, or its step ended before the job wrote a summary (see the step's
                # e-mail or EMR's step state).
                state = record["state"]
        runs.append(Run(run_id=identifier, state=state, images=None, failures=None, source=source, report=None))
    return runs


def runs_of_object(s3, *, bucket: str, uri: str) -> list[str]:
    """The batch ids whose manifest under manifests/ lists ``uri``."""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=MANIFESTS_PREFIX)
    found = []
    for page in pages:
        for item in page.get("Contents", []):
            manifest = _read_json(s3, bucket, item["Key"])
            entries = manifest.get("objects") if isinstance(manifest, dict) else None
            if isinstance(entries, list) and any(
                (entry.get("uri") if isinstance(entry, dict) else entry) == uri for entry in entries
            ):
                found.append(item["Key"][len(MANIFESTS_PREFIX) :].removesuffix(".json"))
    return sorted(found)


def rerun(s3, *, bucket: str, run: str, run_name: str | None) -> str | None:
    """Write a copy of the run's batch manifest under incoming/runs/; return its key, or None when that rerun name
    was already written."""
    parsed = parse_run_id(run)
    if parsed is None:
        raise RunError(f"run id {run!r}: expected a batch id of {BATCH_ID_LENGTH} letters and digits, or it and -<n>")
    name = run_name or f"rerun-{run}"
    if not RUN_NAME_PATTERN.match(name):
        raise RunError(f"--run-name {name!r}: expected 1-100 letters, digits, '.', '_', '-' (first a letter or digit)")
    manifest = _read_json(s3, bucket, f"{MANIFESTS_PREFIX}{parsed[0]}.json")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("objects"), list):
        raise RunError(f"run {run}: no batch manifest s3://{bucket}/{MANIFESTS_PREFIX}{parsed[0]}.json")
    original = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    source = {"kind": "rerun", "rerun_of": run, "run_name": name}
    # What the first run came from, in one field: the submitted input, else the uploaded manifest or upload folder.
    came_from = original.get("input") or original.get("manifest") or original.get("prefix")
    if isinstance(came_from, str):
        source["input"] = came_from
    key = manifest_key(name, 1)
    body = json.dumps({"objects": manifest["objects"], "source": source}).encode()
    return key if put_if_absent(s3, bucket=bucket, key=key, body=body) else None


def _format(run: Run) -> str:
    source = run.source or {}
    came_from = source.get("input") or source.get("manifest") or source.get("prefix") or "-"
    kind = source.get("kind", "-")
    extra = f" (rerun of {source['rerun_of']})" if source.get("rerun_of") else ""
    numbers = f"{'-' if run.images is None else run.images:>8} {'-' if run.failures is None else run.failures:>8}"
    return f"{run.run_id:<24} {run.state:<12} {numbers}  {kind}:{came_from}{extra}  {run.report or '-'}"


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infra.runs", description="List, find and rerun the stack's runs.")
    parser.add_argument("--data-bucket", help="the stack's data bucket (its DataBucketName output)")
    parser.add_argument("--claims-table", help="the stack's claims table (its ClaimsTableName output)")
    parser.add_argument("--stack-outputs", help="a `cdk deploy --outputs-file` JSON file to read both from")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every run: id, state, images, failures, source, report")
    listing.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    which = commands.add_parser("which", help="the runs whose manifest listed an object")
    which.add_argument("uri", metavar="URI", help="s3://bucket/key of the object")
    again = commands.add_parser("rerun", help="run a run's manifest again, into a new run id")
    again.add_argument("run_id", metavar="RUN_ID")
    again.add_argument("--run-name", help="names the copy incoming/runs/<name>/part-00001.json (default rerun-RUN_ID)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import boto3

    arguments = _argument_parser().parse_args(argv)
    try:
        bucket = stack_output(arguments, "data_bucket", "DataBucketName", "--data-bucket")
        s3 = s3_client()
        if arguments.command == "list":
            table = stack_output(arguments, "claims_table", "ClaimsTableName", "--claims-table")
            dynamodb = boto3.session.Session().client("dynamodb")
            runs = list_runs(s3, dynamodb, bucket=bucket, claims_table=table)
            if not arguments.json:
                print(f"{'RUN ID':<24} {'STATE':<12} {'IMAGES':>8} {'FAILURES':>8}  SOURCE  REPORT")
            for run in runs:
                print(json.dumps(asdict(run)) if arguments.json else _format(run))
        elif arguments.command == "which":
            for batch_id in runs_of_object(s3, bucket=bucket, uri=arguments.uri):
                print(batch_id)
        else:
            key = rerun(s3, bucket=bucket, run=arguments.run_id, run_name=arguments.run_name)
            if key is None:
                name = arguments.run_name or f"rerun-{arguments.run_id}"
                print(f"rerun {name} was already submitted: s3://{bucket}/{INCOMING_RUNS_PREFIX}{name}/")
            else:
                print(f"submitted s3://{bucket}/{key}")
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, BotoCoreError) as error:
        print(aws_error_line(error, f"runs {arguments.command}"), file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
