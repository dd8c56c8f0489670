"""Measure one trigger invocation carrying many uploads, against a moto server in its own process on loopback.

    .venv/bin/python tests/trigger/measure_uploads.py --uploads 10000

Prints the invocation's wall time, the CPU time this process spent (the function's own share: parsing, signing requests,
its threads), and the API requests it made per operation, for a first delivery and for a second delivery of the same
records (every upload then a duplicate). The moto server runs in a separate process so that its work is not counted as
the function's CPU time; on AWS, DynamoDB answers a PutItem in single-digit milliseconds, moto in a few milliseconds of
Python, so the wall time here is moto's more than the function's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "infra" / "trigger_function")]

from trigger_helpers import (  # noqa: E402  (needs the path above)
    REGION,
    FakeLambdaContext,
    aws_clients,
    base_environment,
    count_requests,
    create_cluster,
    create_function_resources,
    import_trigger_handler,
    s3_notification,
    sqs_event,
)


@contextmanager
def moto_server_process():
    """``python -m moto.server`` on a free loopback port; stopped by its process id."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def timed_invocation(handler, event: dict, counts: dict[str, int]) -> dict:
    counts.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    response = handler.lambda_handler(event, FakeLambdaContext())
    return {
        "wall_s": round(time.perf_counter() - wall, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "failed_records": len(response["batchItemFailures"]),
        "requests": dict(sorted(counts.items())),
    }


def measure(uploads: int, endpoint_url: str, set_environment: Callable[[str, str], None]) -> dict:
    """One invocation with ``uploads`` image records, then the same records again; return both measurements.

    ``set_environment(name, value)`` sets a variable of this process (moto's endpoint and credentials, the function's
    environment) before the handler is imported.
    """
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }.items():
        set_environment(name, value)
    aws = aws_clients()
    create_function_resources(aws)
    cluster_id = create_cluster(aws.emr, keep_alive=True)
    for name, value in base_environment(CLUSTER_ID=cluster_id).items():
        set_environment(name, value)
    handler = import_trigger_handler()
    counts = count_requests(handler)
    # Notifications as S3 sends them; the function reads no image, so the objects need not exist.
    event = sqs_event(
        [
            s3_notification(f"incoming/run/img-{index:05d}.png", f"{index:032x}", f"{index + 1:018X}")
            for index in range(uploads)
        ]
    )
    return {
        "uploads": uploads,
        "first_delivery": timed_invocation(handler, event, counts),
        "second_delivery_all_duplicates": timed_invocation(handler, event, counts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=10_000)
    args = parser.parse_args(argv)
    with moto_server_process() as endpoint_url:
        os.environ.pop("AWS_PROFILE", None)
        print(json.dumps(measure(args.uploads, endpoint_url, os.environ.__setitem__), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
