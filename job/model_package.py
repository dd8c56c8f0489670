"""``python -m job.model_package`` (installed as ``mxnet-infer-package``): the package tools' command line.

Commands::

    python -m job.model_package export-zoo --out DIR [--input-size 32] [--classes 10]   # untrained model-zoo ResNet-18
    python -m job.model_package to-onnx --package DIR --out DIR                         # same model, ONNX format
    python -m job.model_package add-onnx --package URI --held-out-manifest URI [--out DIR]   # checked ONNX twin
    python -m job.model_package quantize --package URI --calibration URI --out DIR      # calibrated INT8, gated
    python -m job.model_package inspect --package URI    # the operators the job's session runs here, and how fast
    python -m job.model_package init --onnx model.onnx --labels labels.txt --preset imagenet-torchvision --out DIR
    python -m job.model_package validate --package URI --images PATH [PATH ...]   # what the job does to an image

Each sub-command imports its tool only when it runs: ``export-zoo`` and ``to-onnx`` are :mod:`job.convert`,
``quantize`` :mod:`job.quantize` (it exits 3 without writing anything when the INT8 model's top-1 agreement with the
FP32 package is below ``--min-agreement``, and 2 on bad arguments), ``add-onnx`` :mod:`job.onnx_twin` (it exits 2
without writing anything when ONNX Runtime and MXNet disagree on a held-out image), ``inspect``
:mod:`job.inspect_package`, ``init`` and ``validate`` :mod:`job.package_init`. The format itself is
:mod:`job.package_format` and reading a package :mod:`job.package_store`; their names are importable from here too,
for existing callers (the job's run path imports them from those modules, never from here), and so are the
converters, loaded on first use.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Optional

from job.package_format import (CHANNEL_ORDERS, DEFAULT_CROP_FRACTION, DEFAULT_INPUT_NAME, FORMAT_VERSION,  # noqa: F401
                                FORMATS, INPUT_DTYPES, INTERPOLATIONS, LAYOUTS, MANIFEST_NAME, MAX_FILES,
                                MAX_INPUT_SIDE, MAX_LABEL_CHARS, MAX_LABELS, MAX_MANIFEST_BYTES, MAX_ONNX_NESTING,
                                OUTPUTS, RESIZE_MODES, ModelChanged, ModelOutputError, ModelPackage,
                                ModelPackageError, Preprocessing, check_onnx_file, onnx_external_locations,
                                parse_manifest, twin_package, write_manifest)
from job.package_store import download_package, read_package  # noqa: F401
from job.storage import ObjectNotFound, Storage, local_path

# The converters need MXNet (and onnx): loaded when a caller first asks for them, so that a node's job.zip can
# leave job/convert.py out and still run `python -m job.model_package inspect`.
_CONVERTERS = ("export_gluon", "export_onnx", "zoo_resnet18", "ONNX_OPSET")


def __getattr__(name: str):
    if name in _CONVERTERS:
        from job import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _add_quantize_parser(commands) -> None:
    from job.quantize_defaults import (DEFAULT_CALIBRATION_IMAGES, DEFAULT_HELD_OUT_IMAGES, DEFAULT_MIN_AGREEMENT,
                                       MIN_HELD_OUT_IMAGES)

    quantize = commands.add_parser(
        "quantize", help="calibrated INT8 onnx package of an FP32 package, written only if it agrees with it")
    quantize.add_argument("--package", required=True, metavar="URI", help="the FP32 package (mxnet or onnx)")
    images = quantize.add_mutually_exclusive_group(required=True)
    images.add_argument("--calibration", action="append", default=[], metavar="URI",
                        help="real images like the job's inputs: directory, S3 prefix or object; repeatable")
    images.add_argument("--calibration-manifest", metavar="URI", help="a manifest of such images, as the job's")
    quantize.add_argument("--out", required=True, metavar="DIR", help="local directory for the INT8 package")
    quantize.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                          help=f"images that set the activation ranges (default {DEFAULT_CALIBRATION_IMAGES})")
    quantize.add_argument("--held-out-images", type=int, default=DEFAULT_HELD_OUT_IMAGES, metavar="N",
                          help=f"at most this many other images measure the agreement (default "
                               f"{DEFAULT_HELD_OUT_IMAGES}, at least {MIN_HELD_OUT_IMAGES})")
    quantize.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT, metavar="F",
                          help=f"least top-1 agreement with the FP32 package on the held-out images, 0 to 1 "
                               f"(default {DEFAULT_MIN_AGREEMENT})")
    quantize.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")


def _refuse_used_out(out: str, package: str, written: str = "the INT8 package") -> Optional[str]:
    """Why ``--out`` cannot take the package ``written``, or ``None``: it must be a new or empty directory, so that no
    other package's files are overwritten or mixed with it (the FP32 package's own directory is refused by quantize;
    add-onnx writes there in place)."""
    if "://" in out or not os.path.lexists(out):
        return None
    if not os.path.isdir(out):
        return f"--out {out} is a file; give a new or empty directory for {written}"
    if os.listdir(out) and os.path.realpath(out) != os.path.realpath(local_path(package)):
        return (f"--out {out} already holds files ({', '.join(sorted(os.listdir(out))[:3])}...): {written}'s "
                "model.json and model.onnx would be written among them; give a new or empty directory")
    return None


def _quantize(args) -> int:
    from job.quantize import AgreementTooLow, quantize_package

    refusal = _refuse_used_out(args.out, args.package)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        result = quantize_package(
            args.package, args.out, calibration_inputs=args.calibration, calibration_manifest=args.calibration_manifest,
            calibration_images=args.calibration_images, held_out_images=args.held_out_images,
            min_agreement=args.min_agreement, s3_endpoint_url=args.s3_endpoint_url)
    except AgreementTooLow as error:
        print(f"refused: {error}", file=sys.stderr)
        return 3  # not 1: a script must tell the gate's refusal from a crash
    except (ValueError, ObjectNotFound) as error:  # ModelPackageError and NoInputError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = ""
    if result.skipped_inputs:
        skipped = (f"; skipped {result.skipped_inputs} input{'s' if result.skipped_inputs > 1 else ''} that "
                   f"{'are not decodable images' if result.skipped_inputs > 1 else 'is not a decodable image'}")
    print(f"calibrated on {result.calibration_images} images{skipped}; {result.agreement.describe()}")
    print(f"wrote {os.path.join(result.package_dir, MANIFEST_NAME)}")
    return 0


def _add_onnx_parser(commands) -> None:
    from job.quantize_defaults import DEFAULT_HELD_OUT_IMAGES, MIN_HELD_OUT_IMAGES

    add_onnx = commands.add_parser(
        "add-onnx", help="embed an mxnet package's ONNX conversion, checked to agree with MXNet on held-out images, "
                         "so that the job can run it with ONNX Runtime (--runtime)",
        epilog="example: python -m job.model_package add-onnx --package build/zoo --held-out-manifest held-out.json")
    add_onnx.add_argument("--package", required=True, metavar="URI", help="the mxnet package: directory or S3 prefix")
    images = add_onnx.add_mutually_exclusive_group(required=True)
    images.add_argument("--held-out", action="append", default=[], metavar="URI",
                        help="images like the job's inputs, not trained on: directory, S3 prefix or object; "
                             "repeatable")
    images.add_argument("--held-out-manifest", metavar="URI", help="a manifest of such images, as the job's")
    add_onnx.add_argument("--held-out-images", type=int, default=DEFAULT_HELD_OUT_IMAGES, metavar="N",
                          help=f"at most this many of them are compared (default {DEFAULT_HELD_OUT_IMAGES}, at least "
                               f"{MIN_HELD_OUT_IMAGES})")
    add_onnx.add_argument("--out", metavar="DIR", help="new or empty local directory for the package with its twin "
                                                       "(default: the package's own directory; required for S3)")
    add_onnx.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")


def _add_onnx(args) -> int:
    from job.onnx_twin import TwinDisagrees, add_onnx_twin, describe

    refusal = _refuse_used_out(args.out, args.package, "the package with its twin") if args.out else None
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    try:
        result = add_onnx_twin(args.package, held_out_inputs=args.held_out, held_out_manifest=args.held_out_manifest,
                               held_out_images=args.held_out_images, out_dir=args.out,
                               s3_endpoint_url=args.s3_endpoint_url)
    except TwinDisagrees as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    except (ValueError, ObjectNotFound) as error:  # ModelPackageError and NoInputError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2
    skipped = f"; skipped {result.skipped_inputs} inputs that are not decodable images" if result.skipped_inputs else ""
    print(f"{describe(result.agreement)}{skipped}")
    print(f"wrote {os.path.join(result.package_dir, MANIFEST_NAME)}: the job runs it with ONNX Runtime "
          "(--runtime auto, the default)")
    return 0


def _positive(kind):
    """An argparse type: a number of ``kind`` above 0 (argparse names the option and exits 2 otherwise)."""
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse's message for a non-number: "invalid int value: 'x'"
    return parse


def _inspect(args) -> int:
    from job.inspect_package import inspect_session
    from job.package_store import local_copy

    storage = Storage(args.s3_endpoint_url)
    try:
        package = read_package(args.package, storage)
        if package.onnx_twin is not None:  # what the job's --runtime auto runs for it
            package = twin_package(package)
        with tempfile.TemporaryDirectory(prefix="inspect-") as scratch:
            report = inspect_session(package, local_copy(package, storage, scratch), threads=args.threads,
                                     batch_size=args.batch_size, seconds=args.seconds)
    except (ValueError, ObjectNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.describe(package))
    return 0


def _add_byo_parsers(commands) -> None:
    from job.package_init import PRESETS

    init = commands.add_parser(
        "init", help="an onnx package from any ONNX file: input name, shape, layout and dtype read from the graph",
        epilog="example: python -m job.model_package init --onnx resnet50.onnx --labels imagenet.txt "
               "--preset imagenet-torchvision --out build/resnet50")
    init.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX model (local file)")
    init.add_argument("--labels", required=True, metavar="FILE",
                      help="class names, one a line, in the order of the model's outputs")
    init.add_argument("--out", required=True, metavar="DIR", help="new or empty local directory for the package")
    init.add_argument("--preset", choices=sorted(PRESETS),
                      help="the preprocessing the model was trained with (docs/bring-your-own-model.md)")
    init.add_argument("--input-size", type=_positive(int), metavar="N",
                      help="height and width when the graph leaves them free (default: the preset's)")
    init.add_argument("--mean", type=float, nargs=3, metavar="M", help="per model channel, on pixels / 255")
    init.add_argument("--std", type=float, nargs=3, metavar="S", help="per model channel, on pixels / 255")
    init.add_argument("--resize", choices=RESIZE_MODES, help="overrides the preset's (default stretch)")
    init.add_argument("--crop-fraction", type=float, metavar="F",
                      help=f"with --resize center_crop: the centre's share (default {DEFAULT_CROP_FRACTION})")
    init.add_argument("--interpolation", choices=INTERPOLATIONS, help="overrides the preset's (default bilinear)")
    init.add_argument("--channel-order", choices=CHANNEL_ORDERS, help="overrides the preset's (default RGB)")
    init.add_argument("--output", choices=OUTPUTS, help="what the model returns (default: the preset's, else logits)")
    init.add_argument("--name", help="the package's name (default: the ONNX file's name)")
    validate = commands.add_parser(
        "validate", help="run a package once on a few images and print what it does to each, and the top labels",
        epilog="example: python -m job.model_package validate --package build/resnet50 --images cat.jpg dog.png")
    validate.add_argument("--package", required=True, metavar="URI", help="the package: directory or S3 prefix")
    validate.add_argument("--images", required=True, nargs="+", metavar="URI", help="image files or S3 objects")
    validate.add_argument("--top-k", type=_positive(int), default=5, metavar="K",
                          help="labels shown per image (default 5)")
    validate.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")


def _init(args) -> int:
    from job.package_init import init_package

    try:
        package = init_package(
            args.onnx, args.labels, args.out, preset=args.preset, input_size=args.input_size, mean=args.mean,
            std=args.std, resize=args.resize, crop_fraction=args.crop_fraction, interpolation=args.interpolation,
            channel_order=args.channel_order, output=args.output, name=args.name)
    except (ValueError, OSError) as error:  # ModelPackageError is a ValueError; OSError: a missing --onnx or --labels
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(args.out, MANIFEST_NAME)}: input {package.input_name!r} "
          f"{package.preprocessing.input_dtype} {package.preprocessing.layout} {list(package.input_shape)}, "
          f"{len(package.labels)} labels; check it with: python -m job.model_package validate --package {args.out} "
          "--images IMAGE ...")
    return 0


def _validate(args) -> int:
    from job.package_init import validate_package

    try:
        report, failed = validate_package(args.package, args.images, top_k=args.top_k,
                                          s3_endpoint_url=args.s3_endpoint_url)
    except (ValueError, ObjectNotFound) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 2 if failed else 0


EPILOG = """exit codes: 0 done; 2 bad arguments, a missing or malformed package, an image validate could not classify,
add-onnx refused (ONNX Runtime and MXNet disagreed on a held-out image; nothing written), or an AWS error on an
s3:// argument (no credentials, access denied, no such bucket, wrong region); 3 quantize
refused: the INT8 package agreed too little with the FP32 one (nothing written). Package format and examples:
docs/model-packages.md; your own model: docs/bring-your-own-model.md."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m job.model_package", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    zoo = commands.add_parser("export-zoo", help="untrained Gluon model-zoo ResNet-18 as an mxnet package",
                              epilog="example: python -m job.model_package export-zoo --out build/zoo --input-size 224")
    zoo.add_argument("--out", required=True, metavar="DIR", help="local directory for the package (created)")
    zoo.add_argument("--input-size", type=int, default=32, help="height and width of the model input (default 32)")
    zoo.add_argument("--classes", type=int, default=10, metavar="N",
                     help="outputs of the model, labelled class_0 ... (default 10)")
    zoo.add_argument("--seed", type=int, default=0, help="seed of the random (Xavier) weights (default 0)")
    to_onnx = commands.add_parser(
        "to-onnx", help="convert a local mxnet package to an onnx package",
        epilog="example: python -m job.model_package to-onnx --package build/demo/model --out build/demo/model-onnx")
    to_onnx.add_argument("--package", required=True, metavar="URI", help="the mxnet package: directory or S3 prefix")
    to_onnx.add_argument("--out", required=True, metavar="DIR", help="local directory for the onnx package")
    _add_onnx_parser(commands)
    _add_quantize_parser(commands)
    inspect = commands.add_parser("inspect", help="which operators the job's ONNX Runtime session runs for an onnx "
                                                  "package (or an mxnet package's ONNX twin) on this CPU (integer or "
                                                  "float convolutions), and how fast")
    inspect.add_argument("--package", required=True, metavar="URI",
                         help="an onnx package, or an mxnet package with an ONNX twin: directory or S3 prefix")
    inspect.add_argument("--threads", type=_positive(int), default=1,
                         help="threads of the session, at least 1 (default 1: a Spark task's)")
    inspect.add_argument("--batch-size", type=_positive(int), default=32,
                         help="images per timed batch, at least 1 (default 32)")
    inspect.add_argument("--seconds", type=_positive(float), default=5.0,
                         help="how long to time batches, more than 0 (default 5)")
    inspect.add_argument("--s3-endpoint-url", metavar="URL", help="S3 endpoint (e.g. a local S3-compatible server)")
    _add_byo_parsers(commands)
    return parser


def _named_uris(args) -> list[tuple[str, str]]:
    """The sub-command's (option, URI) pairs, for naming the one an AWS error is about."""
    pairs = [("--package", getattr(args, "package", None)),
             ("--calibration-manifest", getattr(args, "calibration_manifest", None))]
    pairs += [("--calibration", uri) for uri in getattr(args, "calibration", None) or []]
    pairs += [("--held-out-manifest", getattr(args, "held_out_manifest", None))]
    pairs += [("--held-out", uri) for uri in getattr(args, "held_out", None) or []]
    pairs += [("--images", uri) for uri in getattr(args, "images", None) or []]
    return [(flag, uri) for flag, uri in pairs if uri]


def _run(args) -> int:
    if args.command == "quantize":
        return _quantize(args)
    if args.command == "add-onnx":
        return _add_onnx(args)
    if args.command == "inspect":
        return _inspect(args)
    if args.command == "init":
        return _init(args)
    if args.command == "validate":
        return _validate(args)
    from job.convert import export_gluon, export_onnx, zoo_resnet18

    if args.command == "export-zoo":
        path = export_gluon(
            zoo_resnet18(args.classes, args.seed), args.out, name="resnet18_v1-untrained",
            input_shape=(3, args.input_size, args.input_size), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            labels=[f"class_{index}" for index in range(args.classes)], trained=False,
            provenance={"source": "gluon model zoo resnet18_v1", "weights": f"random (Xavier, seed {args.seed})"},
        )
    else:
        try:
            path = export_onnx(read_package(args.package, Storage()), args.out)
        except (ModelPackageError, ObjectNotFound) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    arguments = _named_uris(args)
    requests = None
    if any(uri.startswith("s3://") for _, uri in arguments):
        from job import aws_errors
        from job.storage import s3_client

        requests = aws_errors.watch(s3_client(getattr(args, "s3_endpoint_url", None)))
    try:
        return _run(args)
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("job."):
            raise
        # A node's job.zip may ship the run path and `inspect` without the tools that need MXNet or onnx.
        print(f"error: {args.command}: its tool ({error.name}) is not installed here; run it in the development "
              "environment (make venv) and upload the package it writes", file=sys.stderr)
        return 2
    except Exception as error:
        from job import aws_errors

        message = aws_errors.describe(error, requests, arguments)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

