"""What the run report costs on a large run: the job on N images (default 100,000) through its command line on local
Spark, then the summary's own timings, printed with the report's share.

    python -m tests.benchmark.report_cost [--images 100000] [--work-dir build/report-cost]

The inputs are CIFAR-10 binary batches of scikit-learn's digits (cheap to make: 3,073 bytes a record, no encoding),
10,000 records a file, so the report's thumbnails are ranged reads as on a real CIFAR upload. The model is the demo's
ResNet-18, trained for one epoch once and kept in the work directory: the report's work does not depend on how good
the weights are, only on the rows. One run on a shared machine: read the share, not the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from job.sample_data import cifar_batch_bytes, digits_32x32

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECORDS_PER_FILE = 10_000


def write_batches(directory: str, images: int) -> None:
    """``images`` digit records in CIFAR-10 batch files, made once per count."""
    done = directory.rstrip("/") + ".complete"  # beside the inputs: inside, the job would count it as skipped
    if os.path.exists(done) and open(done).read() == str(images):
        return
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    pixels, labels = digits_32x32()
    order = np.random.default_rng(0).integers(0, len(labels), size=images)
    for number, start in enumerate(range(0, images, RECORDS_PER_FILE)):
        chosen = order[start:start + RECORDS_PER_FILE]
        with open(os.path.join(directory, f"digits_{number:03d}.bin"), "wb") as file:
            file.write(cifar_batch_bytes(pixels[chosen], labels[chosen]))
    with open(done, "w") as file:
        file.write(str(images))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmark.report_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--work-dir", default=os.path.join(REPO, "build", "report-cost"))
    args = parser.parse_args(argv)
    inputs = os.path.join(args.work_dir, "inputs")
    model = os.path.join(args.work_dir, "model")
    output = os.path.join(args.work_dir, "output")
    write_batches(inputs, args.images)
    if not os.path.exists(os.path.join(model, "model.json")):
        from job.train_digits import train

        train(model, epochs=1)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "job", "--input", inputs, "--model", model, "--output", output,
                    "--overwrite"], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    process_s = time.perf_counter() - started
    with open(os.path.join(output, "summary.json")) as file:
        summary = json.load(file)
    seconds = summary["seconds"]
    phases_s = sum(seconds.values())
    report_s = seconds["report"]
    print(f"\n{summary['counts']['total']:,} images, {summary['report']['thumbnails']} thumbnails; "
          f"report.html is {os.path.getsize(os.path.join(output, 'report.html')) / 1024:.0f} KiB")
    for name, value in seconds.items():
        print(f"  {name:<14} {value:8.1f} s")
    print(f"report: {report_s:.1f} s = {report_s / phases_s:.1%} of the run's timed phases ({phases_s:.1f} s), "
          f"{report_s / process_s:.1%} of the whole `python -m job` process ({process_s:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
