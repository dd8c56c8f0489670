"""Each contender of `make bench`, run in a process of its own: ``python -m tests.benchmark.contenders NAME ARGS_JSON``.

Prints one JSON line with what it measured. Thread settings are fixed through the environment before any framework is
imported, which is why every contender gets a fresh process.
"""


import json
import os
import sys
import threading
import time

# Shared machines are noisy: the model alone and decoding are timed this many times and the best kept.
REPEATS = 3


def _image_paths(manifest: str) -> list[str]:
    with open(manifest) as file:
        return json.load(file)


def limit(args: dict) -> dict:
    """The model alone, batched, images already decoded and normalised in memory.

    ``layout = "threads"``: one model instance using every core (OMP threads = cores).
    ``layout = "instances"``: one instance per core, each fed by its own thread, OMP threads = 1 each (the caller sets
    MXNET_CPU_WORKER_NTHREADS to the core count so that the instances really run side by side).
    """
    import numpy as np

    from job.model_package import read_package
    from job.predictor import Device, load_predictor
    from job.storage import Storage

    package = read_package(args["package"], Storage())
    batch = np.random.default_rng(0).standard_normal((args["batch_size"], *package.input_shape)).astype(np.float32)
    instances = 1 if args["layout"] == "threads" else args["cores"]
    predictors = [load_predictor(package, args["package"], Device("cpu")) for _ in range(instances)]
    for predict in predictors:  # warm-up: memory plans, kernel selection
        predict(batch)
    per_instance = max(1, args["images"] // (instances * len(batch)))

    def drive(predict):
        for _ in range(per_instance):
            predict(batch)

    def measure() -> float:
        threads = [threading.Thread(target=drive, args=(predict,)) for predict in predictors]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    seconds = min(measure() for _ in range(args.get("repeats", REPEATS)))
    return {"images": per_instance * len(batch) * instances, "seconds": seconds}


def decode(args: dict) -> dict:
    """Batched decoding alone on one core, as the job's workers decode for ``package`` (its resize, crop,
    interpolation, channel order, layout, dtype, mean and std): bytes already in memory -> one model input batch per
    ``batch_size`` images (256 unless given). ``part``/``parts``: this process decodes every ``parts``-th image from
    the ``part``-th, so that processes started together share the images (decode_alone on the pipeline's cores).
    ``into_batch`` false decodes each image into an array of its own first, as the job did before: the two side by
    side give the gain of decoding straight into the batch buffer."""
    import numpy as np

    from job.decode import decode_image
    from job.model_package import read_package
    from job.storage import Storage
    from job.worker import model_input

    package = read_package(args["package"], Storage())
    payloads = []
    for path in _image_paths(args["manifest"])[args.get("part", 0)::args.get("parts", 1)]:
        with open(path, "rb") as file:
            payloads.append(file.read())
    normalize = model_input(package)
    preprocessing = package.preprocessing
    resize = (preprocessing.resize, preprocessing.crop_fraction, preprocessing.interpolation)
    batch_size = args.get("batch_size", 256)
    into_batch = args.get("into_batch", True)
    images = np.empty((batch_size, package.height, package.width, 3), dtype=np.uint8)

    def measure() -> float:
        started = time.perf_counter()
        for first in range(0, len(payloads), batch_size):
            chunk = payloads[first:first + batch_size]
            for position, data in enumerate(chunk):
                if into_batch:  # as the job's workers decode
                    decode_image(data, package.height, package.width, *resize, out=images[position])
                else:  # as they did before 2026-12-04: an array per image, then copied into the batch
                    images[position] = decode_image(data, package.height, package.width, *resize)
            normalize(images[:len(chunk)])
        return time.perf_counter() - started

    return {"images": len(payloads), "seconds": min(measure() for _ in range(args.get("repeats", REPEATS)))}


def _local_spark(master: str):
    from job.pipeline import spark_session

    return spark_session(master)


def _timed_runs(session_s: float, run_once, runs: list) -> dict:
    """Run ``[label, manifest]`` pairs in order in this one Spark application; a label run more than once keeps its
    fastest time (shared machines are noisy)."""
    timings = {"session_s": session_s}
    for label, manifest in runs:
        seconds = run_once(manifest, label)
        timings[label] = min(seconds, timings.get(label, float("inf")))
    return timings


def job(args: dict) -> dict:
    """The real job (`job.pipeline.run`, what `python -m job` calls) on local Spark; its processing time per run."""
    from job.config import parse_args
    from job.pipeline import run, spark_session

    started = time.perf_counter()
    spark_session(args["master"])
    session_s = time.perf_counter() - started
    summaries = {}

    def run_once(manifest, label):
        summary = run(parse_args(["--manifest", manifest, "--model", args["package"], "--output",
                                  os.path.join(args["output"], label), "--overwrite", "--device", "cpu",
                                  "--batch-size", str(args["batch_size"]), "--report-thumbnails", "0"]),
                      master=args["master"])
        summaries[label] = summary
        return summary["seconds"]["processing"]

    timings = _timed_runs(session_s, run_once, args["runs"])
    timings["summaries"] = {label: {key: summary[key] for key in (
        "worker_seconds", "worker_peak_rss_mb", "tasks", "seconds", "model_load_per_worker_s", "summary_counted_from")}
        for label, summary in summaries.items()}
    return timings


def seed(args: dict) -> dict:
    """The 2017 seed's method (awslabs/deeplearning-emr, mxnet-spark), re-implemented for Python 3 and local files.

    Kept as it was: keys padded with duplicates to whole batches; one partition per batch; a multiprocessing pool per
    partition for the downloads, one read per image; PIL decode and resize per image; an MXNet Module bound to the fixed
    batch size; top-5 formatted as strings; every prediction collected to the driver and written to one text file.
    Not reproduced, which only favours the seed: a new S3 client per image (these are local files).
    """
    from tests.benchmark import seed_method

    started = time.perf_counter()
    spark = _local_spark(args["master"])
    session_s = time.perf_counter() - started
    package_dir, size = args["package"], args["size"]

    def run_once(manifest, label):
        keys = _image_paths(manifest)
        n_keys = len(keys)
        batch = min(args["seed_batch"], n_keys)
        if n_keys % batch:
            keys = keys + keys[:batch - n_keys % batch]
        started = time.perf_counter()
        rdd = spark.sparkContext.parallelize(keys, len(keys) // batch)
        rdd = rdd.mapPartitions(seed_method.download_objects).mapPartitions(
            lambda images: seed_method.load_images(images, size))
        rdd = rdd.mapPartitions(lambda images: seed_method.predict(images, package_dir, batch, size))
        output = rdd.collect()[:n_keys]
        with open(os.path.join(args["output"], f"{label}.txt"), "w") as file:
            for key, prediction in zip(keys, output):
                file.write(f"Key {key}: Prediction: {prediction}\n")
        return time.perf_counter() - started

    os.makedirs(args["output"], exist_ok=True)
    return _timed_runs(session_s, run_once, args["runs"])


def predict_batch_udf(args: dict) -> dict:
    """A straightforward `pyspark.ml.functions.predict_batch_udf` pipeline: binaryFile -> decode UDF -> predict UDF ->
    Parquet, with the job's own decoder and model loader so that only the Spark wiring differs.

    One adjustment any careful user makes: binaryFile packs small files by `openCostInBytes` (4 MB each), which makes a
    task of every 32 images; the input is coalesced to two tasks per core instead.
    """
    import numpy as np
    import pandas as pd
    from pyspark.ml.functions import predict_batch_udf as make_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    started = time.perf_counter()
    spark = _local_spark(args["master"])
    session_s = time.perf_counter() - started
    package_dir = args["package"]

    from job.model_package import read_package
    from job.storage import Storage

    package = read_package(package_dir, Storage())

    @F.pandas_udf(ArrayType(FloatType()))
    def decode_udf(content: pd.Series) -> pd.Series:
        from job.decode import Normalizer, decode_image

        normalize = Normalizer(package.mean, package.std)
        return pd.Series([normalize(decode_image(bytes(data), package.height, package.width)[None]).ravel()
                          for data in content])

    def make_predict_fn():
        from job.predictor import Device, load_predictor

        predict = load_predictor(package, package_dir, Device("cpu"))

        def predict_fn(inputs: np.ndarray) -> np.ndarray:
            return predict(inputs.astype(np.float32))

        return predict_fn

    classify = make_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=args["batch_size"],
                        input_tensor_shapes=[list(package.input_shape)])
    def run_once(manifest, label):
        started = time.perf_counter()
        (spark.read.format("binaryFile").load(_image_paths(manifest))
         .coalesce(2 * spark.sparkContext.defaultParallelism)
         .select("path", classify(decode_udf("content")).alias("probabilities"))
         .write.mode("overwrite").parquet(os.path.join(args["output"], label)))
        return time.perf_counter() - started

    return _timed_runs(session_s, run_once, args["runs"])


CONTENDERS = {"limit": limit, "decode": decode, "job": job, "seed": seed, "predict_batch_udf": predict_batch_udf}

if __name__ == "__main__":
    name, arguments = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(CONTENDERS[name](arguments)))
