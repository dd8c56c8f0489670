"""Submit a run over images where they are: an S3 prefix, or a manifest there (issue 18, part 1).

``python -m infra.submit_run --data-bucket BUCKET s3://their-bucket/photos/`` (or ``make run INPUT=...``) lists the
prefix with the caller's own credentials (or reads their manifest) and writes the run's manifest(s) under the stack's
``incoming/runs/<run name>/<listing digest>/part-NNNNN.json``. The trigger then carries each one as any uploaded
manifest: claims, batch manifest, step or cluster launch, retries, notification, report. Each entry names the object
and its ETag, so the job reads exactly the listed bytes (or reports ``changed_since_upload``).

Exactly once per run name and listing: the manifest keys are made from the run name and a digest of the listing (the
entries and ``--max-entries``, which decide how the parts are cut), and each is written only if it does not exist yet
(``If-None-Match: *``), so the same command run twice (or twice at once) gives one run, and a submission that stopped
part-way is completed with parts cut from the same listing. A listing that changed since gets parts of its own: every
object listed now runs, none is left out between parts cut from two listings (final review R1). It needs only
``s3:PutObject`` on the stack's ``incoming/`` (the uploader policy), besides reading the input with the caller's rights. The default run name
is made from the input URI, so repeating a command is safe; give ``--run-name`` to run the same input again.

Imports no CDK: it runs with boto3 alone. Exit codes: 0 submitted (or already submitted), 2 bad input or an AWS error
(no credentials, access denied, no such bucket or key), each as one line on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import re
import sys
import time
from collections.abc import Iterator, Sequence

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

# The same suffixes the trigger runs (infra/trigger_function/uploads.py KIND_BY_SUFFIX): images and CIFAR-10 batches.
RUNNABLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bin")
INCOMING_RUNS_PREFIX = "incoming/runs/"
# One manifest per this many entries by default: a few MB of JSON, read once by the job's driver.
DEFAULT_MAX_ENTRIES = 50_000
MAX_ENTRIES_LIMIT = 1_000_000
RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
EXIT_USAGE = 2
# Hex digits of the listing's digest in the part keys: 64 bits, so two listings of one run name never share keys.
LISTING_DIGEST_CHARS = 16
# S3 answers 409 ConditionalRequestConflict to a conditional PUT while another conditional write of the key is in
# progress: neither written nor refused yet. Asked again this many times in all, PUT_RETRY_SECONDS * 2**n apart.
PUT_ATTEMPTS = 5
PUT_RETRY_SECONDS = 0.5


class RunError(Exception):
    """A problem the user can fix; the message is one line."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key-or-prefix`` -> (bucket, key); raises :class:`RunError` for anything else."""
    if not uri.startswith("s3://") or "/" not in uri[len("s3://") :]:
        raise RunError(
            f"input {uri!r}: expected s3://bucket/prefix/ (a prefix) or s3://bucket/list.json (a manifest)"
        )
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise RunError(f"input {uri!r}: no bucket name")
    return bucket, key


def default_run_name(input_uri: str) -> str:
    """A run name made from the input URI alone: its readable tail plus a digest of the whole URI."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", input_uri.removeprefix("s3://").strip("/"))[-60:].strip("-.")
    digest = hashlib.sha256(input_uri.encode()).hexdigest()[:10]
    return f"{readable or 'run'}-{digest}".lstrip("-.")


def manifest_key(run_name: str, part: int, listing: str = "") -> str:
    """The key of a run's ``part``-th manifest (1-based): made from the run name and the ``listing``'s digest (see
    :func:`listing_digest`; "" for a single manifest that is not cut from a listing), so a repeat writes nothing."""
    folder = f"{INCOMING_RUNS_PREFIX}{run_name}/" + (f"{listing}/" if listing else "")
    return f"{folder}part-{part:05d}.json"


def listing_digest(entries: list, max_entries: int) -> str:
    """A digest of what decides a run's parts: its entries, in order, and how many go in one part."""
    text = json.dumps({"entries": entries, "max_entries": max_entries}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:LISTING_DIGEST_CHARS]


def put_if_absent(s3, *, bucket: str, key: str, body: bytes) -> bool:
    """Write ``body`` to ``key`` unless the key exists (``If-None-Match: *``); True when this call wrote it.

    A 409 ``ConditionalRequestConflict`` means another conditional write of the key is in progress, not that the key
    was written (final review R2): asked again, up to ``PUT_ATTEMPTS`` attempts, until S3 writes it or answers 412
    (written by the other). Raises :class:`RunError` when the conflict lasts."""
    for attempt in range(1, PUT_ATTEMPTS + 1):
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", IfNoneMatch="*")
        except ClientError as error:
            code = error.response["Error"]["Code"]
            if code == "PreconditionFailed":
                return False  # another submission of this run wrote it first: that one is the run
            if code != "ConditionalRequestConflict":
                raise
            if attempt < PUT_ATTEMPTS:
                pause(PUT_RETRY_SECONDS * 2 ** (attempt - 1))
            continue
        return True
    raise RunError(
        f"s3://{bucket}/{key}: another write of this key was still in progress after {PUT_ATTEMPTS} attempts "
        "(409 ConditionalRequestConflict); run the command again"
    )


def pause(seconds: float) -> None:
    """Wait between two attempts at a conditional write (a module function, so tests can skip the wait)."""
    time.sleep(seconds)


def list_entries(s3, input_uri: str) -> list:
    """The manifest entries of an input: every runnable object under a prefix ({"uri", "etag"}, keys in order), or the
    entries of a manifest object (as they are: the trigger validates them)."""
    bucket, key = parse_s3_uri(input_uri)
    if key.endswith(".json"):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        try:
            document = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunError(f"manifest {input_uri} is not JSON ({error})") from None
        entries = document.get("objects") if isinstance(document, dict) else document
        if not isinstance(entries, list) or not entries:
            raise RunError(f'manifest {input_uri}: expected a non-empty JSON list of entries or {{"objects": [...]}}')
        return entries
    if key and not key.endswith("/"):
        raise RunError(f"input {input_uri!r}: a prefix ends with '/', a manifest with '.json'")
    entries = [
        {"uri": f"s3://{bucket}/{item['Key']}", "etag": item["ETag"].strip('"')}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        for item in page.get("Contents", [])
        if posixpath.splitext(item["Key"])[1].lower() in RUNNABLE_SUFFIXES
    ]
    if not entries:
        raise RunError(f"no images ({', '.join(RUNNABLE_SUFFIXES)}) under {input_uri}")
    return entries


def chunks(entries: list, size: int) -> Iterator[list]:
    for start in range(0, len(entries), size):
        yield entries[start : start + size]


def submit(s3, *, input_uri: str, data_bucket: str, run_name: str, max_entries: int) -> list[str]:
    """Write the run's manifests; return the keys written (empty when this run name was already submitted).

    Each part is written only if its key does not exist (:func:`put_if_absent`, which needs no more than
    ``s3:PutObject``: the uploader policy's grant), so a part another submission of this run name and listing wrote is
    kept as it is, and a submission that stopped part-way is completed with the parts it lacks, cut from the same
    listing (the keys carry its digest: parts of another listing never share a key with these)."""
    entries = list_entries(s3, input_uri)
    listing = listing_digest(entries, max_entries)
    parts = list(chunks(entries, max_entries))
    written = []
    for part, objects in enumerate(parts, start=1):
        key = manifest_key(run_name, part, listing)
        source = {"kind": "run", "input": input_uri, "run_name": run_name, "part": part, "parts": len(parts)}
        body = json.dumps({"objects": objects, "source": source}).encode()
        if put_if_absent(s3, bucket=data_bucket, key=key, body=body):
            written.append(key)
    return written


def s3_client():
    """An S3 client of a new session: credentials are resolved now, from the caller's environment and profile."""
    return boto3.session.Session().client("s3")


def stack_output(arguments: argparse.Namespace, attribute: str, output: str, option: str) -> str:
    """A stack value: its option, or its output in a `cdk deploy --outputs-file` JSON file (--stack-outputs)."""
    if getattr(arguments, attribute):
        return getattr(arguments, attribute)
    if not arguments.stack_outputs:
        raise RunError(f"name the stack's {output}: {option} NAME or --stack-outputs cdk-outputs.json")
    try:
        outputs = json.loads(open(arguments.stack_outputs, encoding="utf-8").read())
    except (OSError, json.JSONDecodeError) as error:
        raise RunError(f"--stack-outputs {arguments.stack_outputs}: {error}") from None
    stacks = outputs.values() if isinstance(outputs, dict) else []
    names = [stack[output] for stack in stacks if isinstance(stack, dict) and output in stack]
    if len(names) != 1:
        raise RunError(
            f"--stack-outputs {arguments.stack_outputs}: expected one stack with a {output} output, found "
            f"{len(names)}; use {option}"
        )
    return names[0]


def aws_error_line(error: Exception, what: str) -> str:
    """One line for an AWS error: what failed, AWS's code and message, and what to do."""
    if isinstance(error, NoCredentialsError):
        return f"error: no AWS credentials for {what}: set AWS_PROFILE or run `aws configure` / `aws sso login`"
    if isinstance(error, ClientError):
        code = error.response["Error"].get("Code", "")
        message = error.response["Error"].get("Message", "")
        hints = {
            "AccessDenied": "your credentials may not do this (the stack's uploader policy writes incoming/; listing "
            "your bucket needs s3:ListBucket and s3:GetObject there)",
            "NoSuchBucket": "check the bucket name",
            "NoSuchKey": "check the manifest's key",
        }
        return f"error: {what}: {code}: {message} ({hints.get(code, 'see the AWS message')})"
    return f"error: {what}: {error}"


def _argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m infra.submit_run",
        description="Submit a run over an S3 prefix or a manifest there, through the stack's trigger.",
    )
    parser.add_argument(
        "input", metavar="INPUT", help="s3://bucket/prefix/ (every image under it) or s3://bucket/list.json"
    )
    parser.add_argument("--data-bucket", help="the stack's data bucket (its DataBucketName output)")
    parser.add_argument("--stack-outputs", help="a `cdk deploy --outputs-file` JSON file to read DataBucketName from")
    parser.add_argument(
        "--run-name",
        help="names the run's manifests incoming/runs/<run name>/<listing digest>/part-NNNNN.json; default: made "
        "from INPUT, so a repeated command over an unchanged listing submits nothing new",
    )
    parser.add_argument(
        "--max-entries",
        type=int,
        default=DEFAULT_MAX_ENTRIES,
        help=f"entries per manifest (default {DEFAULT_MAX_ENTRIES})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _argument_parser().parse_args(argv)
    try:
        if not 1 <= arguments.max_entries <= MAX_ENTRIES_LIMIT:
            raise RunError(f"--max-entries {arguments.max_entries}: expected 1 to {MAX_ENTRIES_LIMIT}")
        run_name = arguments.run_name or default_run_name(arguments.input)
        if not RUN_NAME_PATTERN.match(run_name):
            raise RunError(
                f"--run-name {run_name!r}: expected 1-100 letters, digits, '.', '_', '-' (first a letter or digit)"
            )
        parse_s3_uri(arguments.input)
        data_bucket = stack_output(arguments, "data_bucket", "DataBucketName", "--data-bucket")
        written = submit(
            s3_client(),
            input_uri=arguments.input,
            data_bucket=data_bucket,
            run_name=run_name,
            max_entries=arguments.max_entries,
        )
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, BotoCoreError) as error:
        print(aws_error_line(error, f"submitting {arguments.input}"), file=sys.stderr)
        return EXIT_USAGE
    if not written:
        print(f"run {run_name} was already submitted: s3://{data_bucket}/{INCOMING_RUNS_PREFIX}{run_name}/")
    for key in written:
        print(f"submitted s3://{data_bucket}/{key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
