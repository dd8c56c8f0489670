"""`make demo`: train a small model on real images, run the job on local Spark, print what it found.

1. Trains the model-zoo ResNet-18 on scikit-learn's digits (held-out 20% never seen) and exports an mxnet package.
2. Writes the held-out digits as PNG and JPEG files and as one CIFAR-10 binary batch (whose records carry the true
   labels), plus one corrupt file, so every input path and the failure path are visible in one run.
3. Runs ``python -m job`` on them (real local Spark) and prints predictions, accuracy and throughput from the output,
   and where the run report (``report.html``) is.
4. Makes the INT8 package of the trained model (``python -m job.model_package quantize``, calibrated on digits the
   model trained on, gated on others of them), runs the job with it on the same inputs, and prints both runs'
   accuracies side by side with how often their top-1 labels agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

from job.sample_data import cifar_batch_bytes, digits_32x32, encode_jpeg, encode_png
from job.train_digits import DEFAULT_EPOCHS, train

SHOWN_ROWS = 12


def write_inputs(directory: str, held_out) -> int:
    images, labels = digits_32x32()
    os.makedirs(directory, exist_ok=True)
    for position, index in enumerate(held_out):
        encode = encode_png if position % 2 == 0 else encode_jpeg
        suffix = "png" if position % 2 == 0 else "jpg"
        with open(os.path.join(directory, f"digit_{index:04d}_true_{labels[index]}.{suffix}"), "wb") as file:
            file.write(encode(images[index]))
    with open(os.path.join(directory, "held_out_digits.bin"), "wb") as file:
        file.write(cifar_batch_bytes(images[held_out], labels[held_out]))
    with open(os.path.join(directory, "corrupt.png"), "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    return len(held_out) * 2 + 1


def write_calibration(directory: str, held_out) -> int:
    """The digits the model trained on, as PNG files: the INT8 package is calibrated and gated on these, never on the
    held-out inputs the job classifies."""
    images, labels = digits_32x32()
    os.makedirs(directory, exist_ok=True)
    trained_on = np.setdiff1d(np.arange(len(images)), held_out)
    for index in trained_on:
        with open(os.path.join(directory, f"digit_{index:04d}_true_{labels[index]}.png"), "wb") as file:
            file.write(encode_png(images[index]))
    return len(trained_on)


def _rows(output: str) -> list[dict]:
    table = pq.read_table(os.path.join(output, "predictions")).sort_by([("source", "ascending"), ("index", "ascending")])
    return table.to_pylist()


def _file_accuracy(rows: list[dict]) -> tuple[int, int]:
    """(correct, graded) over the PNG/JPEG files, whose names carry the true digit (the job only knows CIFAR labels)."""
    graded = [row for row in rows if row["status"] == "ok" and "_true_" in row["source"]]
    return sum(row["label_name"] == row["source"].rsplit("_true_", 1)[1][0] for row in graded), len(graded)


def show(output: str) -> None:
    with open(os.path.join(output, "summary.json")) as file:
        summary = json.load(file)
    rows = _rows(output)
    print(f"\n{'source':<34} {'index':>5}  {'status':<6} {'label':<5} {'prob':>6}  {'true':<4}  error")
    chosen = [row for row in rows if row["source"].endswith(".bin")][:SHOWN_ROWS // 2]
    chosen += [row for row in rows if not row["source"].endswith(".bin") and row["status"] == "ok"][:SHOWN_ROWS // 2]
    chosen += [row for row in rows if row["status"] == "error"]
    for row in chosen:
        probability = f"{row['probability']:.3f}" if row["probability"] is not None else ""
        true_label = "" if row["true_label"] is None else str(row["true_label"])
        print(f"{os.path.basename(row['source']):<34} {row['index']:>5}  {row['status']:<6} {row['label_name'] or '':<5} "
              f"{probability:>6}  {true_label:<4}  {row['error'] or ''}")
    file_correct, graded_files = _file_accuracy(rows)
    counts = summary["counts"]
    print(f"\n{counts['total']} inputs: {counts['ok']} classified, {counts['error']} failed "
          f"({', '.join(f'{reason}: {n}' for reason, n in summary['failures_by_reason'].items()) or 'none'})")
    if summary["accuracy"]:
        accuracy = summary["accuracy"]
        print(f"accuracy on the CIFAR-10 batch's labelled records: {accuracy['accuracy']:.1%} "
              f"({accuracy['correct']}/{accuracy['images_with_ground_truth']})")
    if graded_files:
        print(f"accuracy on the PNG/JPEG files (true digit from the file name): {file_correct / graded_files:.1%} "
              f"({file_correct}/{graded_files})")
    seconds = summary["seconds"]
    print(f"throughput: {summary['images_per_s']:.0f} images/s over {seconds['processing']:.1f} s of Spark work "
          f"(session start {seconds['session_start']:.1f} s; a few hundred images are too few to amortise the model "
          "load: see `make bench` for steady-state numbers)")
    print(f"output: {os.path.join(output, 'predictions')} (Parquet) and {os.path.join(output, 'summary.json')}")
    report = summary["report"]
    if report["uri"]:
        print(f"report: {report['uri']} (open it in a browser: one self-contained page)")
    else:
        print(f"report: not written ({report['error']})")


def compare(fp32_output: str, int8_output: str) -> None:
    """Both runs' accuracies side by side, and how often their top-1 labels agree on the same inputs."""
    runs = {"FP32 (MXNet)": fp32_output, "INT8 (ONNX Runtime)": int8_output}
    rows = {name: _rows(output) for name, output in runs.items()}
    cifar = {}
    for name, output in runs.items():
        with open(os.path.join(output, "summary.json")) as file:
            accuracy = json.load(file)["accuracy"]
        cifar[name] = (accuracy["correct"], accuracy["images_with_ground_truth"])
    files = {name: _file_accuracy(run_rows) for name, run_rows in rows.items()}

    def cell(correct_and_total):
        correct, total = correct_and_total
        return f"{correct / total:.1%} ({correct}/{total})"

    print(f"\n{'':<36}" + "".join(f"{name:>22}" for name in runs))
    for title, measured in (("accuracy on the CIFAR-10 records", cifar), ("accuracy on the PNG/JPEG files", files)):
        print(f"{title:<36}" + "".join(f"{cell(measured[name]):>22}" for name in runs))
    fp32_rows, int8_rows = ({(row["source"], row["index"]): row for row in run_rows} for run_rows in rows.values())
    both = [key for key, row in fp32_rows.items() if row["status"] == int8_rows[key]["status"] == "ok"]
    agreeing = sum(fp32_rows[key]["label"] == int8_rows[key]["label"] for key in both)
    print(f"top-1 agreement of the two runs: {agreeing / len(both):.2%} ({agreeing}/{len(both)} inputs classified by "
          "both; none of them was used to calibrate or gate the INT8 package)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m job.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", default="build/demo")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    args = parser.parse_args(argv)
    model_dir = os.path.join(args.work_dir, "model")
    inputs_dir = os.path.join(args.work_dir, "inputs")
    output_dir = os.path.join(args.work_dir, "output")
    calibration_dir = os.path.join(args.work_dir, "calibration")
    int8_model_dir = os.path.join(args.work_dir, "model-int8")
    int8_output_dir = os.path.join(args.work_dir, "output-int8")
    for directory in (model_dir, inputs_dir, calibration_dir, int8_model_dir):
        shutil.rmtree(directory, ignore_errors=True)

    print(f"[demo] training ResNet-18 on scikit-learn's digits ({args.epochs} epochs, about a minute on 2 cores)...")
    trained = train(model_dir, epochs=args.epochs)
    print(f"[demo] trained in {trained.train_seconds:.0f} s; accuracy on {len(trained.held_out_indices)} held-out "
          f"digits: {trained.held_out_accuracy:.1%} (measured in the training process)")
    count = write_inputs(inputs_dir, trained.held_out_indices)
    print(f"[demo] wrote {count} inputs to {inputs_dir}: held-out digits as PNG/JPEG files, the same digits as one "
          "CIFAR-10 binary batch, and one corrupt file")
    returncode = _run_job(inputs_dir, model_dir, output_dir)
    if returncode:
        return returncode
    show(output_dir)

    count = write_calibration(calibration_dir, trained.held_out_indices)
    print(f"\n[demo] wrote the {count} digits the model trained on to {calibration_dir}, to calibrate and gate the "
          "INT8 package")
    command = [sys.executable, "-m", "job.model_package", "quantize", "--package", model_dir, "--calibration",
               calibration_dir, "--out", int8_model_dir]
    print("[demo] " + " ".join(command[1:]))
    completed = subprocess.run(command)
    if completed.returncode != 0:
        print(f"[demo] no INT8 package (quantize exited with {completed.returncode}); the FP32 results above stand",
              file=sys.stderr)
        return completed.returncode
    returncode = _run_job(inputs_dir, int8_model_dir, int8_output_dir)
    if returncode:
        return returncode
    compare(output_dir, int8_output_dir)
    return 0


def _run_job(inputs_dir: str, model_dir: str, output_dir: str) -> int:
    command = [sys.executable, "-m", "job", "--input", inputs_dir, "--model", model_dir, "--output", output_dir,
               "--overwrite", "--max-failure-ratio", "0.05"]
    print("[demo] " + " ".join(command[1:]))
    completed = subprocess.run(command)
    if completed.returncode != 0:
        print(f"[demo] the job exited with {completed.returncode}", file=sys.stderr)
    return completed.returncode


if __name__ == "__main__":
    raise SystemExit(main())
