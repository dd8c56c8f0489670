"""``python -m job`` (installed as ``mxnet-infer``): parse the command line, run the job, print a one-line result.

Exit codes (docs/job.md): 0 the run succeeded; 1 the job ran but failed (too many inputs failed, or a crash);
2 bad start-up input, reported before Spark starts: bad arguments, a missing or malformed model package, an existing
output, no inputs, or an AWS error on an s3:// argument (no credentials, access denied, no such bucket, wrong region).
"""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from job.config import DEFAULT_LOCAL_MASTER, ConfigError, JobConfig, parse_args
from job.package_format import ModelPackageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def named_uris(config: JobConfig) -> list[tuple[str, str]]:
    """The command's (option, URI) pairs, for naming the one an AWS error is about."""
    pairs = [("--model", config.model), ("--output", config.output), ("--manifest", config.manifest)]
    return [("--input", uri) for uri in config.inputs] + [(flag, uri) for flag, uri in pairs if uri]


def main(argv: Optional[Sequence[str]] = None, use_spark_submit_master: bool = False) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Imported after argument parsing so that `--help` and bad arguments answer without loading Spark.
    from job import aws_errors
    from job.pipeline import JobFailed, run
    from job.storage import s3_client

    arguments = named_uris(config)
    requests = None
    if any(uri.startswith("s3://") for _, uri in arguments):
        requests = aws_errors.watch(s3_client(config.s3_endpoint_url))
    master = None if use_spark_submit_master else (config.master or DEFAULT_LOCAL_MASTER)
    try:
        summary = run(config, master=master)
    except (ConfigError, ModelPackageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobFailed as error:
        print(f"error: job failed: {error}; see {config.output}/summary.json and the error column", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:
        message = aws_errors.describe(error, requests, arguments)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    counts = summary["counts"]
    print(json.dumps({"status": summary["status"], "counts": counts, "images_per_s": round(summary["images_per_s"], 1),
                      "output": summary["output"], "report": summary["report"]["uri"]}))
    return EXIT_OK
