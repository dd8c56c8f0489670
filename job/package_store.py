"""Model packages in storage: read and validate one (local directory or S3 prefix), copy its files to a worker.

The run path's way to a package: the driver reads it once (:func:`read_package`, recording each file's ETag), and
workers copy exactly those versions (:func:`download_package`). Nothing here imports a framework.
"""

from __future__ import annotations

import json
import os
import tempfile

from job.package_format import (MANIFEST_NAME, MAX_MANIFEST_BYTES, TWIN_ROLE, ModelChanged, ModelPackage,
                                ModelPackageError, check_onnx_file, check_twin_files, parse_manifest)
from job.storage import ObjectChanged, ObjectNotFound, ObjectTooLarge, Storage, is_s3, join, local_path


def read_package(uri: str, storage: Storage, check_files: bool = True, without_twin: bool = False) -> ModelPackage:
    """Read and validate ``model.json`` at ``uri``.

    With ``check_files``, also that every file it names exists, recording each one's ETag (s3://) so that workers
    download exactly those versions, that an ONNX model (or an mxnet package's ONNX twin) reads no data from outside
    the package (:func:`check_onnx_file`), and that a twin's files are the ones its check compared
    (:func:`check_twin_files`). ``without_twin`` reads an mxnet package as if it had no ONNX twin (``add-onnx``
    checks a twin again, even one whose files changed since).
    """
    manifest_uri = join(uri, MANIFEST_NAME)
    try:
        document = json.loads(storage.read(manifest_uri, max_bytes=MAX_MANIFEST_BYTES))
    except ObjectNotFound as error:
        raise ModelPackageError(
            f"--model {uri}: no {MANIFEST_NAME} there ({error}); see docs/model-packages.md") from error
    except ObjectTooLarge as error:
        raise ModelPackageError(f"{manifest_uri} is larger than {MAX_MANIFEST_BYTES} bytes: {error}") from error
    except ValueError as error:
        raise ModelPackageError(f"{manifest_uri} is not valid JSON: {error}") from error
    if without_twin and isinstance(document, dict) and document.get("format") == "mxnet":
        document.pop("onnx_twin", None)
        if isinstance(document.get("files"), dict):
            document["files"] = {role: name for role, name in document["files"].items() if role != TWIN_ROLE}
    package = parse_manifest(document, uri)
    if not check_files:
        return package
    missing, etags = [], {}
    for file_name in package.files.values():
        try:
            etags[file_name] = storage.stat(join(uri, file_name)).etag
        except ObjectNotFound:
            missing.append(file_name)
    if missing:
        raise ModelPackageError(f"model package {uri} names files that do not exist: {missing}")
    package = ModelPackage(**{**package.__dict__, "file_etags": etags})
    if package.format == "onnx" or package.onnx_twin is not None:
        # A twin's check covers every file of the package (their SHA-256), so all of them are read, once.
        names = package.files.values() if package.onnx_twin is not None else [package.files["onnx"]]
        with tempfile.TemporaryDirectory(prefix="model-check-") as scratch:
            if is_s3(uri):
                try:
                    storage.download_files(uri, {name: etags[name] for name in names}, scratch)
                except ObjectChanged as error:
                    raise ModelChanged(str(error)) from error
                directory = scratch
            else:
                directory = local_path(uri)
            check_onnx_file(package, os.path.join(directory, *package.files["onnx"].split("/")))
            if package.onnx_twin is not None:
                check_twin_files(package, directory)
    return package


def download_package(package: ModelPackage, storage: Storage, directory: str) -> None:
    """Copy exactly the files ``model.json`` names (at the ETags the driver recorded) into ``directory``.

    Raises :class:`ModelPackageError` when a file changed since the driver checked the package, and re-checks an ONNX
    model's external data references on the copy.
    """
    try:
        storage.download_files(package.uri, {name: package.file_etags.get(name) for name in package.files.values()},
                               directory)
    except ObjectChanged as error:
        raise ModelChanged(str(error)) from error
    if package.format == "onnx":
        check_onnx_file(package, os.path.join(directory, *package.files["onnx"].split("/")))


def local_copy(package: ModelPackage, storage: Storage, scratch: str) -> str:
    """A local directory with the package's files: its own for a local package, else the files ``model.json`` names
    (and nothing else of the prefix) copied under ``scratch``."""
    if not is_s3(package.uri):
        return local_path(package.uri)
    directory = os.path.join(scratch, "source")
    download_package(package, storage, directory)
    return directory
