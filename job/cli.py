"""``python -m job``: parse the command line, run the job, print a one-screen result; exit codes as in README.md."""

from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from job.config import ConfigError, parse_args
from job.model_package import ModelPackageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def main(argv: Optional[Sequence[str]] = None, use_spark_submit_master: bool = False) -> int:
    try:
        config = parse_args(argv)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Imported after argument parsing so that `--help` and bad arguments answer without loading Spark.
    from job.pipeline import DEFAULT_LOCAL_MASTER, JobFailed, run

    master = None if use_spark_submit_master else (config.master or DEFAULT_LOCAL_MASTER)
    try:
        summary = run(config, master=master)
    except (ConfigError, ModelPackageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobFailed as error:
        print(f"error: job failed: {error}; see {config.output}/summary.json and the error column", file=sys.stderr)
        return EXIT_FAILED
    counts = summary["counts"]
    print(json.dumps({"status": summary["status"], "counts": counts, "images_per_s": round(summary["images_per_s"], 1),
                      "output": summary["output"], "report": summary["report"]["uri"]}))
    return EXIT_OK
