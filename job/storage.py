"""The only code that knows about URIs: s3:// objects (boto3) and local files (plain paths or file://).

One S3 client per process and endpoint (clients are thread-safe; creating one costs milliseconds and a connection pool),
shared by the fetch threads of a Python worker.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

from job.package_format import safe_relative_name

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
S3_MAX_POOL_CONNECTIONS = 64
# Model files are streamed to disk in pieces of this size, never held whole.
DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024


class ObjectNotFound(FileNotFoundError):
    """The URI names no object."""


class ObjectChanged(RuntimeError):
    """The object is no longer the version the run pinned (its ETag or version differs): it was overwritten."""


class ObjectTooLarge(ValueError):
    """The object is larger than the reader allows; nothing of it was read."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: Optional[str] = None  # S3's ETag as S3 returns it (quoted); None for local files


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")``, the key exactly as written.

    No URL parsing: an S3 key may hold ``#``, ``?``, ``%``, tabs, newlines and ``//``, which ``urlparse`` would cut
    off, delete or decode, so that another object (or none) would be read.
    """
    if not is_s3(uri):
        raise ValueError(f"{uri!r} is not an S3 URI: expected s3://BUCKET/KEY")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI {uri!r} has no bucket: expected s3://BUCKET/KEY")
    return bucket, key


def contained_path(directory: str, name: str) -> str:
    """``directory/name`` when ``name`` is a safe relative name that resolves (symbolic links followed) inside
    ``directory``; raise ValueError otherwise. Nothing is created."""
    if not safe_relative_name(name):
        raise ValueError(f"file name {name!r} is not a plain relative name (no absolute path, no empty, '.' or '..' "
                         "segment, no backslash)")
    root = os.path.realpath(directory)
    target = os.path.realpath(os.path.join(root, *name.split("/")))
    if not target.startswith(root + os.sep):
        raise ValueError(f"file name {name!r} resolves to {target}, outside {root}")
    return target


def local_path(uri: str) -> str:
    return uri[len(FILE_SCHEME):] if uri.startswith(FILE_SCHEME) else uri


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


@functools.lru_cache(maxsize=None)
def s3_client(endpoint_url: Optional[str]):
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=S3_MAX_POOL_CONNECTIONS,
        retries={"mode": "standard", "max_attempts": 5},
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


def _error_code(error) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


def _is_missing(error) -> bool:
    return _error_code(error) in ("404", "NoSuchKey", "NotFound", "NoSuchVersion")


def _is_changed(error) -> bool:
    return _error_code(error) in ("412", "PreconditionFailed")


def _pin_arguments(uri: str, etag: Optional[str], version_id: Optional[str]) -> dict:
    """GetObject's arguments that make S3 refuse any other version than the pinned one."""
    if not is_s3(uri):
        if etag is not None or version_id is not None:
            raise ValueError(f"{uri}: an etag or version_id can pin s3:// objects only")
        return {}
    extra = {}
    if etag is not None:
        extra["IfMatch"] = etag
    if version_id is not None:
        extra["VersionId"] = version_id
    return extra


class Storage:
    """Reads and writes objects named by URI; ``endpoint_url`` applies to s3:// URIs only."""

    def __init__(self, endpoint_url: Optional[str] = None):
        self.endpoint_url = endpoint_url

    @property
    def _s3(self):
        return s3_client(self.endpoint_url)

    def list_objects(self, uri: str) -> list[ObjectInfo]:
        """Every object at or below ``uri`` (a single object, a prefix or a directory), sorted by URI."""
        if is_s3(uri):
            return sorted(self._list_s3(uri), key=lambda info: info.uri)
        path = local_path(uri)
        if os.path.isfile(path):
            return [ObjectInfo(uri, os.path.getsize(path))]
        if not os.path.isdir(path):
            raise ObjectNotFound(f"{uri}: no such file or directory")
        found = []
        for directory, _, names in os.walk(path):
            for name in names:
                file_path = os.path.join(directory, name)
                found.append(ObjectInfo(file_path, os.path.getsize(file_path)))
        return sorted(found, key=lambda info: info.uri)

    def _list_s3(self, uri: str) -> Iterator[ObjectInfo]:
        bucket, key = split_s3(uri)
        paginator = self._s3.get_paginator("list_objects_v2")
        # A key that is itself an object is listed as one; "prefix/" style listing otherwise.
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                object_key = item["Key"]
                if object_key.endswith("/"):
                    continue  # console-made "folder" markers
                if object_key == key or not key or key.endswith("/") or object_key.startswith(key + "/"):
                    yield ObjectInfo(f"s3://{bucket}/{object_key}", item["Size"], item.get("ETag"))

    def stat(self, uri: str) -> ObjectInfo:
        """The object's size and (s3://) ETag, from one HEAD; raise :class:`ObjectNotFound` when there is none."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                head = self._s3.head_object(Bucket=bucket, Key=key)
            except Exception as error:  # botocore's ClientError; imported lazily with boto3
                if _is_missing(error):
                    raise ObjectNotFound(f"{uri}: no such object") from error
                raise
            return ObjectInfo(uri, head["ContentLength"], head.get("ETag"))
        path = local_path(uri)
        if not os.path.isfile(path):
            raise ObjectNotFound(f"{uri}: no such file")
        return ObjectInfo(uri, os.path.getsize(path))

    def size(self, uri: str) -> int:
        return self.stat(uri).size

    def read(self, uri: str, start: int = 0, length: Optional[int] = None, *, etag: Optional[str] = None,
             version_id: Optional[str] = None, max_bytes: Optional[int] = None,
             reserve: Optional[Callable[[int], None]] = None) -> bytes:
        """The object's bytes, or ``length`` bytes from ``start`` (one ranged GET on S3).

        ``etag``/``version_id`` (s3:// only) pin the version to read: another version raises :class:`ObjectChanged`.
        ``max_bytes`` bounds what is read: a larger object (or range) raises :class:`ObjectTooLarge` after S3's
        response headers, before any of its body is read (the size is ``Content-Length``; locally, the file's size).
        """
        if is_s3(uri):
            bucket, key = split_s3(uri)
            extra = _pin_arguments(uri, etag, version_id)
            if start or length is not None:
                end = "" if length is None else str(start + length - 1)
                extra["Range"] = f"bytes={start}-{end}"
            try:
                response = self._s3.get_object(Bucket=bucket, Key=key, **extra)
            except Exception as error:
                if _is_missing(error):
                    raise ObjectNotFound(f"{uri}: no such object") from error
                if _is_changed(error):
                    raise ObjectChanged(f"{uri}: the object is no longer version {etag or version_id}") from error
                raise
            body = response["Body"]
            size = response.get("ContentLength")
            if max_bytes is not None and size is not None and size > max_bytes:
                body.close()  # drops the connection instead of reading the body
                raise ObjectTooLarge(f"{uri} is {size} bytes; at most {max_bytes} are read")
            if reserve is not None:
                try:
                    # S3 always sends Content-Length; without one, what max_bytes lets through is reserved.
                    reserve(size if size is not None else (max_bytes or 0))
                except BaseException:
                    body.close()
                    raise
            with body:
                data = body.read() if max_bytes is None else body.read(max_bytes + 1)
            if max_bytes is not None and len(data) > max_bytes:
                raise ObjectTooLarge(f"{uri} is more than {max_bytes} bytes; at most {max_bytes} are read")
            return data
        _pin_arguments(uri, etag, version_id)
        path = local_path(uri)
        try:
            with open(path, "rb") as file:
                available = os.fstat(file.fileno()).st_size - start
                wanted = available if length is None else min(length, available)
                if max_bytes is not None and wanted > max_bytes:
                    raise ObjectTooLarge(f"{uri} is {wanted} bytes; at most {max_bytes} are read")
                if reserve is not None:
                    reserve(max(0, wanted))
                if start:
                    file.seek(start)
                return file.read() if length is None else file.read(length)
        except (FileNotFoundError, IsADirectoryError) as error:
            raise ObjectNotFound(f"{uri}: no such file") from error

    def write(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """``content_type`` is the S3 object's: the console and presigned URLs serve it with that type (a page
        stored without one downloads instead of opening)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
            return
        path = local_path(uri)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as file:
            file.write(data)

    def exists_below(self, uri: str) -> bool:
        """Whether anything exists at ``uri`` or below it."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            prefix = key.rstrip("/") + "/" if key else ""
            response = self._s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
            return response.get("KeyCount", 0) > 0
        path = local_path(uri)
        return os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))

    def download_files(self, base: str, names: dict[str, Optional[str]], destination: str) -> None:
        """Copy the objects ``base/NAME`` for each NAME of ``names`` into ``destination/NAME``.

        ``names`` maps each relative name to the ETag it must still have (s3:// only; None: any version), so that a
        package replaced while a run goes on fails clearly (:class:`ObjectChanged`) instead of mixing two models. A
        name that is absolute, has an empty, ``.`` or ``..`` segment, or resolves outside ``destination`` is refused
        before anything is written. Objects are streamed to disk, never held whole.
        """
        targets = {name: contained_path(destination, name) for name in names}  # every name checked before any write
        for name, target in targets.items():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            uri = join(base, name)
            if not is_s3(uri):
                with open(target, "wb") as file:
                    file.write(self.read(uri))
                continue
            bucket, key = split_s3(uri)
            try:
                response = self._s3.get_object(Bucket=bucket, Key=key, **_pin_arguments(uri, names[name], None))
            except Exception as error:
                if _is_missing(error):
                    raise ObjectNotFound(f"{uri}: no such object") from error
                if _is_changed(error):
                    raise ObjectChanged(
                        f"{uri} changed after the run started (ETag is no longer {names[name]}): the model package "
                        "was replaced during the run; upload packages under a new prefix instead") from error
                raise
            with response["Body"] as body, open(target, "wb") as file:
                for chunk in iter(lambda: body.read(DOWNLOAD_CHUNK_BYTES), b""):
                    file.write(chunk)
