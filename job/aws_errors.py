"""One line a user can act on for the AWS errors a command meets on its ``s3://`` arguments, instead of a traceback.

Used by the command lines (``python -m job`` and ``python -m job.model_package``): missing or refused credentials,
access denied, a bucket that does not exist, a bucket in another region, an unreachable endpoint. The command exits 2,
as for any bad start-up input. Which URI failed is read from the request itself: :func:`watch` records the bucket and
key of each S3 call the process's shared client (:func:`job.storage.s3_client`) makes.
"""

from __future__ import annotations

from typing import Optional, Sequence

# Operation -> the IAM action it needs, for the access-denied hint.
ACTIONS = {"ListObjectsV2": "s3:ListBucket", "ListObjects": "s3:ListBucket", "HeadBucket": "s3:ListBucket",
           "GetObject": "s3:GetObject", "HeadObject": "s3:GetObject", "PutObject": "s3:PutObject",
           "DeleteObject": "s3:DeleteObject", "DeleteObjects": "s3:DeleteObject",
           "CreateMultipartUpload": "s3:PutObject", "UploadPart": "s3:PutObject"}
REFUSED_CREDENTIALS = ("ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "InvalidToken",
                       "SignatureDoesNotMatch", "InvalidClientTokenId")
DENIED = ("AccessDenied", "AllAccessDisabled", "403")
WRONG_REGION = ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException", "301")
CREDENTIALS_FIX = ("set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or run `aws configure` or "
                   "`aws sso login`")


class RequestLog:
    """The bucket and key of the last S3 call made through a watched client (``None`` before the first)."""

    def __init__(self) -> None:
        self.bucket: Optional[str] = None
        self.key: Optional[str] = None
        self.region: Optional[str] = None

    def record(self, params=None, **_) -> None:
        self.bucket = (params or {}).get("Bucket")
        self.key = (params or {}).get("Key", (params or {}).get("Prefix"))


_logs: dict[int, RequestLog] = {}


def watch(client) -> RequestLog:
    """Record every call of ``client`` (a boto3 S3 client) in the returned log; one log per client, however often
    a command is run in one process."""
    if id(client) not in _logs:
        log = _logs[id(client)] = RequestLog()
        log.region = client.meta.region_name
        client.meta.events.register("before-call.s3", log.record)
    return _logs[id(client)]


def _where(log: RequestLog, arguments: Sequence[tuple[str, str]]) -> str:
    """The argument that named the failed object (``--input s3://b/p/``), or the object itself, or every s3://
    argument when no call was recorded."""
    s3_arguments = [(flag, uri) for flag, uri in arguments if uri and uri.startswith("s3://")]
    if log.bucket is None:
        return ", ".join(f"{flag} {uri}" for flag, uri in s3_arguments) or "S3"
    requested = f"s3://{log.bucket}/{log.key or ''}"
    matching = [(flag, uri) for flag, uri in s3_arguments
                if requested.startswith(uri) or uri.rstrip("/").startswith(requested.rstrip("/"))]
    if matching:
        flag, uri = max(matching, key=lambda pair: len(pair[1]))
        return f"{flag} {uri}"
    return requested


def describe(error: BaseException, log: Optional[RequestLog], arguments: Sequence[tuple[str, str]]) -> Optional[str]:
    """The one-line message for ``error``, or ``None`` when it is not an AWS error this module explains.

    ``arguments``: the command's (option, URI) pairs, e.g. ``[("--input", "s3://b/incoming/")]``.
    """
    from botocore.exceptions import (ClientError, CredentialRetrievalError, EndpointConnectionError,
                                     NoCredentialsError, PartialCredentialsError)

    log = log or RequestLog()
    where = _where(log, arguments)
    if isinstance(error, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return f"{where}: no AWS credentials were found ({error}); {CREDENTIALS_FIX}"
    if isinstance(error, EndpointConnectionError):
        return (f"{where}: cannot reach the S3 endpoint ({error.kwargs.get('endpoint_url')}); check the network, "
                "the region, and --s3-endpoint-url if given")
    if not isinstance(error, ClientError):
        return None
    details = error.response.get("Error", {})
    code = str(details.get("Code", ""))
    operation = error.operation_name
    if code in REFUSED_CREDENTIALS:
        return f"{where}: AWS refused the credentials ({code}); renew them ({CREDENTIALS_FIX}) and run again"
    if code in DENIED:
        action = ACTIONS.get(operation, f"the permission for {operation}")
        return (f"{where}: access denied ({operation}); the identity running this (see `aws sts get-caller-identity`) "
                f"needs {action} on it")
    if code == "NoSuchBucket":
        bucket = details.get("BucketName") or log.bucket
        return f"{where}: there is no bucket named {bucket!r}; check the name (`aws s3 ls` lists your buckets)"
    if code in WRONG_REGION:
        headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        region = details.get("Region") or headers.get("x-amz-bucket-region")
        if region:
            return (f"{where}: the bucket is in region {region}, not {log.region or 'the configured one'}; "
                    f"set AWS_REGION={region} and run again")
        return f"{where}: the bucket is in another region than {log.region}; set AWS_REGION to the bucket's region"
    return None
