"""Each contender of `make bench`, run in a process of its own: ``python -m tests.benchmark.contenders NAME ARGS_JSON``.

Prints one JSON line with what it measured. Thread settings are fixed through the environment before any framework is
imported, which is why every contender gets a fresh process.
"""


import json
import math
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


def decode_parts(args: dict) -> dict:
    """Issue 20's ways to make decoding cheaper, side by side on one core, bytes already in memory; microseconds per
    image, each the best of ``repeats``:

    - ``job_decode``: the job's decoder (job.decode.decode_image) straight into the batch buffer, as the workers do;
    - ``per_image_arrays``: the same decoder into an array per image, then copied into the batch (before 2026-12-04);
    - ``opencv_only``: OpenCV's own ``imdecode`` call alone, what is left if everything the job does in Python around
      it per image (header and EXIF check, reduction choice, BGR to RGB into the buffer) were batched away: the most
      that decoding a whole batch in one call could save;
    - ``simplejpeg``: libjpeg-turbo through simplejpeg (RGB straight from the decoder; DCT scaling would apply only to
      sources at least twice the model's size, and these are at its size), falling back to the job's decoder for the
      JPEGs it refuses (``simplejpeg_refused``), with how many images come out exactly as the job's pixels
      (``simplejpeg_identical``);
    - ``normalise``: the batch to the package's float input (channel order, layout, mean and std), per image;
    - ``uint8_input``: the batch to a uint8 input in the same layout, what a model with its mean and std folded in
      would take instead (job.decode.Normalizer with input_dtype uint8).
    """
    import cv2
    import numpy as np

    from job.decode import Normalizer, decode_image
    from job.model_package import read_package
    from job.storage import Storage
    from job.worker import model_input

    package = read_package(args["package"], Storage())
    payloads = []
    for path in _image_paths(args["manifest"]):
        with open(path, "rb") as file:
            payloads.append(file.read())
    height, width = package.height, package.width
    batch_size = args.get("batch_size", 256)
    images = np.empty((batch_size, height, width, 3), dtype=np.uint8)
    normalize = model_input(package)
    as_uint8 = Normalizer(package.mean, package.std, channel_order=package.preprocessing.channel_order,
                          layout=package.preprocessing.layout, input_dtype="uint8")

    def per_image(step) -> float:
        def measure() -> float:
            started = time.perf_counter()
            for position, data in enumerate(payloads):
                step(position % batch_size, data)
            return time.perf_counter() - started
        return min(measure() for _ in range(args.get("repeats", REPEATS))) / len(payloads) * 1e6

    def per_batch(convert) -> float:
        def measure() -> float:
            started = time.perf_counter()
            for _ in range(0, len(payloads), batch_size):
                convert(images)
            return time.perf_counter() - started
        batches = math.ceil(len(payloads) / batch_size)
        return min(measure() for _ in range(args.get("repeats", REPEATS))) / (batches * batch_size) * 1e6

    def into_batch(position, data):
        decode_image(data, height, width, out=images[position])

    def into_own_array(position, data):
        images[position] = decode_image(data, height, width)

    parts = {"job_decode": per_image(into_batch), "per_image_arrays": per_image(into_own_array),
             "opencv_only": per_image(lambda _, data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)),
             "normalise": per_batch(normalize), "uint8_input": per_batch(as_uint8)}
    try:
        import simplejpeg
    except ImportError:  # requirements.lock pins it for make bench; a bench without it says so
        parts["simplejpeg"] = None
    else:
        def turbo(data: bytes) -> np.ndarray:
            try:
                return simplejpeg.decode_jpeg(data, colorspace="RGB")
            except ValueError:  # a JPEG TurboJPEG's header reader refuses (e.g. an unusual subsampling)
                return decode_image(data, height, width)  # what a job using it would fall back to

        refused = 0
        for data in payloads:
            try:
                simplejpeg.decode_jpeg(data, colorspace="RGB")
            except ValueError:
                refused += 1
        parts["simplejpeg"] = per_image(lambda _, data: turbo(data))
        parts["simplejpeg_refused"] = refused
        parts["simplejpeg_identical"] = sum(np.array_equal(turbo(data), decode_image(data, height, width))
                                            for data in payloads)
    parts["images"] = len(payloads)
    return parts


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


def jvm_start(args: dict) -> dict:
    """What a step's JVM pays before any image, in a fresh process: the Spark session (a new driver JVM), the first
    SQL job writing Parquet (no Python: class loading, code generation, the writer), then the first Python job
    (``mapInArrow`` writing Parquet: Python workers start and Arrow gets going). ``jvm_options``: the driver JVM's
    options (in local mode it is also the executor); None for the job's own (job.local_jvm)."""
    from job import pipeline

    started = time.perf_counter()
    spark = pipeline.spark_session(args["master"], args["jvm_options"])
    timings = {"session_s": time.perf_counter() - started,
               "options": spark.sparkContext.getConf().get("spark.driver.extraJavaOptions", "")}
    started = time.perf_counter()
    spark.range(1000).write.mode("overwrite").parquet(os.path.join(args["output"], "sql"))
    timings["first_sql_write_s"] = time.perf_counter() - started

    def same(batches):
        yield from batches

    started = time.perf_counter()
    spark.range(1000).mapInArrow(same, "id long").write.mode("overwrite").parquet(os.path.join(args["output"], "py"))
    timings["first_python_write_s"] = time.perf_counter() - started
    return timings


CONTENDERS = {"jvm_start": jvm_start, "limit": limit, "decode": decode, "decode_parts": decode_parts, "job": job,
              "seed": seed, "predict_batch_udf": predict_batch_udf}

if __name__ == "__main__":
    name, arguments = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(CONTENDERS[name](arguments)))
