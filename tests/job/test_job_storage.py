"""Storage, the only code that knows URIs: keys exactly as written, reads bounded and pinned, downloads confined.

S3 parts run against moto in-process. What the mock cannot prove: that real S3 sends ``Content-Length`` before the
body (it does for every GetObject) and evaluates ``If-Match`` as moto does (both documented S3 behaviour).
"""

import os

import boto3
import pytest
from moto import mock_aws

from job.storage import (ObjectChanged, ObjectNotFound, ObjectTooLarge, Storage, contained_path, safe_relative_name,
                         split_s3)

BUCKET = "storage-test-bucket"


@pytest.mark.parametrize("uri, bucket, key", [
    ("s3://b/incoming/dog#1.png", "b", "incoming/dog#1.png"),
    ("s3://b/incoming/cat.png?v=2.png", "b", "incoming/cat.png?v=2.png"),
    ("s3://b/incoming/tab\there.png", "b", "incoming/tab\there.png"),
    ("s3://b/incoming/new\nline.png", "b", "incoming/new\nline.png"),
    ("s3://b/incoming/100%25 sure+plus.png", "b", "incoming/100%25 sure+plus.png"),
    ("s3://b/models/default//tmp/x", "b", "models/default//tmp/x"),
    ("s3://b//leading", "b", "/leading"),
    ("s3://b/", "b", ""),
    ("s3://b", "b", ""),
])
def test_split_s3_keeps_the_key_exactly_as_written(uri, bucket, key):
    assert split_s3(uri) == (bucket, key)


@pytest.mark.parametrize("uri", ["s3:///key", "http://b/key", "b/key"])
def test_split_s3_refuses_what_is_not_an_s3_uri(uri):
    with pytest.raises(ValueError, match="S3 URI|not an S3 URI"):
        split_s3(uri)


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


@pytest.mark.parametrize("key", ["incoming/dog#1.png", "incoming/cat.png?v=2.png", "incoming/tab\there.png"])
def test_keys_with_url_characters_read_their_own_object(s3, key):
    """Each key's neighbour (what urlparse would have read) exists too, with other bytes."""
    neighbours = {"incoming/dog#1.png": "incoming/dog", "incoming/cat.png?v=2.png": "incoming/cat.png",
                  "incoming/tab\there.png": "incoming/tabhere.png"}
    s3.put_object(Bucket=BUCKET, Key=neighbours[key], Body=b"the wrong object")
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"the right object")
    assert Storage().read(f"s3://{BUCKET}/{key}") == b"the right object"


def test_an_object_over_max_bytes_is_refused_from_its_headers(s3):
    s3.put_object(Bucket=BUCKET, Key="big.png", Body=b"x" * 1001)
    s3.put_object(Bucket=BUCKET, Key="fits.png", Body=b"x" * 1000)
    reserved = []
    with pytest.raises(ObjectTooLarge, match="1001 bytes; at most 1000"):
        Storage().read(f"s3://{BUCKET}/big.png", max_bytes=1000, reserve=reserved.append)
    assert reserved == []  # refused before any of the body was reserved or read
    assert Storage().read(f"s3://{BUCKET}/fits.png", max_bytes=1000, reserve=reserved.append) == b"x" * 1000
    assert reserved == [1000]


def test_a_local_file_over_max_bytes_is_refused(tmp_path):
    (tmp_path / "big.png").write_bytes(b"x" * 11)
    with pytest.raises(ObjectTooLarge):
        Storage().read(str(tmp_path / "big.png"), max_bytes=10)


def test_a_pinned_read_of_an_overwritten_object_fails_as_changed(s3):
    s3.put_object(Bucket=BUCKET, Key="a.png", Body=b"version 1")
    etag = Storage().stat(f"s3://{BUCKET}/a.png").etag
    assert Storage().read(f"s3://{BUCKET}/a.png", etag=etag) == b"version 1"
    s3.put_object(Bucket=BUCKET, Key="a.png", Body=b"version 2")
    with pytest.raises(ObjectChanged):
        Storage().read(f"s3://{BUCKET}/a.png", etag=etag)


def test_a_version_id_reads_that_version(s3):
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    first = s3.put_object(Bucket=BUCKET, Key="a.png", Body=b"version 1")["VersionId"]
    s3.put_object(Bucket=BUCKET, Key="a.png", Body=b"version 2")
    assert Storage().read(f"s3://{BUCKET}/a.png", version_id=first) == b"version 1"


@pytest.mark.parametrize("name, safe", [
    ("model.onnx", True), ("weights/part-1.bin", True), ("../x", False), ("a/../../x", False), ("/etc/passwd", False),
    ("a//b", False), ("./a", False), ("a/", False), ("", False), ("a\\..\\b", False), ("a\0b", False),
])
def test_safe_relative_names(name, safe):
    assert safe_relative_name(name) is safe


def test_a_symlink_out_of_the_directory_is_not_contained(tmp_path):
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError, match="outside"):
        contained_path(str(tmp_path / "inside"), "link/escaped")
    assert contained_path(str(tmp_path / "inside"), "a/b") == str(tmp_path / "inside" / "a" / "b")


@pytest.mark.parametrize("name", ["/tmp/x", "../../../../tmp/y", "a//b"])
def test_download_files_refuses_names_outside_the_destination_before_writing(s3, tmp_path, name):
    """Keys S3 allows under a package prefix; the review wrote them to /tmp with the old download_prefix."""
    s3.put_object(Bucket=BUCKET, Key="models/default/model.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key=f"models/default/{name}", Body=b"payload")
    destination = tmp_path / "package"
    destination.mkdir()
    with pytest.raises(ValueError, match="not a plain relative name"):
        Storage().download_files(f"s3://{BUCKET}/models/default", {"model.json": None, name: None}, str(destination))
    assert os.listdir(destination) == []


def test_download_files_copies_exactly_the_named_files_at_their_etags(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="models/m/model.onnx", Body=b"onnx")
    s3.put_object(Bucket=BUCKET, Key="models/m/unrelated.txt", Body=b"not named")
    etag = Storage().stat(f"s3://{BUCKET}/models/m/model.onnx").etag
    Storage().download_files(f"s3://{BUCKET}/models/m", {"model.onnx": etag}, str(tmp_path))
    assert os.listdir(tmp_path) == ["model.onnx"] and (tmp_path / "model.onnx").read_bytes() == b"onnx"
    s3.put_object(Bucket=BUCKET, Key="models/m/model.onnx", Body=b"replaced")
    with pytest.raises(ObjectChanged, match="changed after the run started"):
        Storage().download_files(f"s3://{BUCKET}/models/m", {"model.onnx": etag}, str(tmp_path / "again"))
    with pytest.raises(ObjectNotFound):
        Storage().download_files(f"s3://{BUCKET}/models/m", {"gone.onnx": None}, str(tmp_path / "gone"))
