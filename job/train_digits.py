"""Train the Gluon model-zoo ResNet-18 on scikit-learn's digits (32x32 RGB) and export it as a model package.

No package on the registries ships CIFAR-10 or pretrained CIFAR weights, so the demo model is trained here, in about a
minute on two cores, on real labelled images; its accuracy on held-out digits it never saw is measured and stored in the
package's provenance.

    python -m job.train_digits --out DIR [--epochs 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from job.convert import export_gluon, zoo_resnet18
from job.sample_data import DIGIT_LABELS, digits_32x32, split_held_out

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
HELD_OUT_SHARE = 0.2
DEFAULT_EPOCHS = 8
BATCH_SIZE = 64
MAX_SHIFT_PIXELS = 2


@dataclass(frozen=True)
class TrainedDigits:
    package_dir: str
    held_out_accuracy: float
    held_out_indices: np.ndarray  # into digits_32x32()
    train_seconds: float


def _normalize(images_nhwc: np.ndarray) -> np.ndarray:
    batch = images_nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    return (batch - np.array(MEAN, np.float32)[None, :, None, None]) / np.array(STD, np.float32)[None, :, None, None]


def _shifted(images: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """Random translations of up to MAX_SHIFT_PIXELS: the digits are centred, real uploads need not be."""
    dy, dx = generator.integers(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS + 1, size=2)
    return np.roll(images, (dy, dx), axis=(1, 2))


def train(out_dir: str, epochs: int = DEFAULT_EPOCHS, seed: int = 0) -> TrainedDigits:
    import mxnet as mx
    from mxnet import autograd, gluon

    images, labels = digits_32x32()
    train_indices, held_out_indices = split_held_out(labels, HELD_OUT_SHARE, seed)
    generator = np.random.default_rng(seed)
    net = zoo_resnet18(len(DIGIT_LABELS), seed)
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
    loss_function = gluon.loss.SoftmaxCrossEntropyLoss()
    started = time.perf_counter()
    for _ in range(epochs):
        order = generator.permutation(train_indices)
        for first in range(0, len(order), BATCH_SIZE):
            chosen = order[first:first + BATCH_SIZE]
            data = mx.nd.array(_normalize(_shifted(images[chosen], generator)))
            target = mx.nd.array(labels[chosen])
            with autograd.record():
                loss = loss_function(net(data), target)
            loss.backward()
            trainer.step(len(chosen))
    mx.nd.waitall()  # MXNet runs asynchronously: without this the clock stops before the training does
    train_seconds = time.perf_counter() - started
    held_out_scores = net(mx.nd.array(_normalize(images[held_out_indices]))).asnumpy()
    accuracy = float((held_out_scores.argmax(axis=1) == labels[held_out_indices]).mean())
    export_gluon(
        net, out_dir, name="resnet18_v1-digits", input_shape=(3, 32, 32), mean=MEAN, std=STD, labels=DIGIT_LABELS,
        trained=True,
        provenance={
            "architecture": "gluon model zoo resnet18_v1, 10 classes",
            "data": "scikit-learn digits rendered as 32x32 RGB",
            "train_images": int(len(train_indices)),
            "held_out_images": int(len(held_out_indices)),
            "held_out_accuracy": accuracy,
            "epochs": epochs,
            "seed": seed,
        },
    )
    return TrainedDigits(out_dir, accuracy, held_out_indices, train_seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m job.train_digits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the model package")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.out, args.epochs, args.seed)
    print(f"trained in {result.train_seconds:.0f} s; held-out accuracy {result.held_out_accuracy:.1%} on "
          f"{len(result.held_out_indices)} digits; package in {result.package_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
