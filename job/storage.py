"""The only code that knows about URIs: s3:// objects (boto3) and local files (plain paths or file://).

One S3 client per process and endpoint (clients are thread-safe; creating one costs milliseconds and a connection pool),
shared by the fetch threads of a Python worker.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Iterator, Optional
from urllib.parse import urlparse

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
S3_MAX_POOL_CONNECTIONS = 64


class ObjectNotFound(FileNotFoundError):
    """The URI names no object."""


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")``."""
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"S3 URI {uri!r} has no bucket: expected s3://BUCKET/KEY")
    return parsed.netloc, parsed.path.lstrip("/")


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


def _is_missing(error) -> bool:
    code = getattr(error, "response", {}).get("Error", {}).get("Code", "")
    return code in ("404", "NoSuchKey", "NotFound")


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
                    yield ObjectInfo(f"s3://{bucket}/{object_key}", item["Size"])

    def size(self, uri: str) -> int:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                return self._s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
            except Exception as error:  # botocore's ClientError; imported lazily with boto3
                if _is_missing(error):
                    raise ObjectNotFound(f"{uri}: no such object") from error
                raise
        path = local_path(uri)
        if not os.path.isfile(path):
            raise ObjectNotFound(f"{uri}: no such file")
        return os.path.getsize(path)

    def read(self, uri: str, start: int = 0, length: Optional[int] = None) -> bytes:
        """The object's bytes, or ``length`` bytes from ``start`` (one ranged GET on S3)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            extra = {}
            if start or length is not None:
                end = "" if length is None else str(start + length - 1)
                extra["Range"] = f"bytes={start}-{end}"
            try:
                return self._s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
            except Exception as error:
                if _is_missing(error):
                    raise ObjectNotFound(f"{uri}: no such object") from error
                raise
        path = local_path(uri)
        try:
            with open(path, "rb") as file:
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

    def download_prefix(self, uri: str, destination: str) -> None:
        """Copy every object below ``uri`` into the local directory ``destination`` (relative names kept)."""
        base = uri.rstrip("/") + "/"
        for info in self.list_objects(uri):
            relative = info.uri[len(base):] if info.uri.startswith(base) else os.path.basename(info.uri)
            target = os.path.join(destination, relative)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if is_s3(info.uri):
                bucket, key = split_s3(info.uri)
                self._s3.download_file(bucket, key, target)
            else:
                with open(target, "wb") as file:
                    file.write(self.read(info.uri))
