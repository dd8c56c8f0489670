"""The 2017 seed's per-partition functions (awslabs/deeplearning-emr, mxnet-spark/mxinfer.py and utils.py), kept in a
module of their own so that Spark workers and the seed's multiprocessing pool can import them by name."""

import os

def download_object(path):
    with open(path, "rb") as file:
        return bytearray(file.read())


def download_objects(paths):
    import multiprocessing

    pool = multiprocessing.Pool(min(100, multiprocessing.cpu_count()))
    results = pool.map(download_object, list(paths))
    pool.close()
    pool.join()
    return results


def load_images(images, size):
    import io

    import numpy as np
    from PIL import Image

    batch = []
    for image_bytes in images:
        image = Image.open(io.BytesIO(bytearray(image_bytes))).convert("RGB").resize((size, size), Image.LANCZOS)
        image = np.swapaxes(np.swapaxes(np.asarray(image), 0, 2), 1, 2)
        batch.append(image[np.newaxis, :])
    return np.concatenate(batch)


_seed_module = None


def predict(image_batch, package_dir, batch, size):
    from collections import namedtuple

    import mxnet as mx
    import numpy as np

    global _seed_module
    if _seed_module is None:
        symbol = mx.symbol.load(os.path.join(package_dir, "model-symbol.json"))
        saved = mx.nd.load(os.path.join(package_dir, "model-0000.params"))
        arg_params = {k.split(":", 1)[1]: v for k, v in saved.items() if k.startswith("arg:")}
        aux_params = {k.split(":", 1)[1]: v for k, v in saved.items() if k.startswith("aux:")}
        module = mx.mod.Module(symbol=symbol, label_names=None)
        module.bind(for_training=False, data_shapes=[("data", (batch, 3, size, size))], label_shapes=None)
        module.set_params(arg_params, aux_params, allow_missing=True)
        _seed_module = module
    images = np.asarray(list(image_batch))
    _seed_module.forward(namedtuple("Batch", ["data"])([mx.nd.array(images)]))
    probabilities = _seed_module.get_outputs()[0].asnumpy()
    results = []
    for row in probabilities:
        order = np.argsort(row)[::-1]
        results.append([f"probability={row[i]:f}, class={i}" for i in order[:5]])
    return results
