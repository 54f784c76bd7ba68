"""The one filesystem layer: a URI (local path, shared mount, s3://, gs://) to a pyarrow FileSystem.

Every module that reads or writes a store by URI (the feature store, later Tune storage and
checkpoints) goes through here, so credentials, endpoints and error messages are handled once.

S3 settings come from the standard AWS environment variables. pyarrow's S3FileSystem reads the
credentials itself but not ``AWS_ENDPOINT_URL`` (nor ``AWS_ENDPOINT_URL_S3``), which names an
S3-compatible server; this module passes it on as ``endpoint_override`` so the same variable
serves pyarrow, boto3 and MLflow.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union
from urllib.parse import urlparse

import pyarrow.fs as pafs

from facefuse.data._io import atomic_write
from facefuse.errors import StorageError

logger = logging.getLogger(__name__)

URI = Union[str, "os.PathLike[str]"]

#: Environment variables that, when any is set, mean the AWS SDK has a way to find credentials.
_CREDENTIAL_HINTS = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                     "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI")
#: Opt-in for hosts whose credentials come from the EC2 instance metadata service: without it a
#: host with no credentials at all gets a clear error instead of the SDK's slow metadata probing.
INSTANCE_ROLE_ENV = "FACEFUSE_S3_INSTANCE_ROLE"

CREDENTIALS_FIX = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE); on an EC2 "
                   f"instance role set {INSTANCE_ROLE_ENV}=1")


def is_remote(uri: URI) -> bool:
    """Returns True when the URI names an object store (s3://, gs://...) rather than a path."""
    scheme = urlparse(os.fspath(uri)).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive, not a scheme


def join(uri: URI, *parts: str) -> str:
    """Returns the URI with path parts appended ('/' separated for every kind of store)."""
    out = os.fspath(uri).rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def _endpoint() -> tuple[str | None, str | None]:
    """Returns (endpoint_override, scheme) from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, None
    parsed = urlparse(url if "://" in url else f"https://{url}")
    return parsed.netloc, parsed.scheme or "https"


def _has_credentials() -> bool:
    """Returns whether the AWS SDK will find credentials without probing instance metadata."""
    if any(os.environ.get(k) for k in _CREDENTIAL_HINTS) or os.environ.get(INSTANCE_ROLE_ENV) == "1":
        return True
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or str(Path.home() / ".aws" / "credentials")
    return Path(shared).is_file()


def _s3(uri: str, bucket_and_key: str) -> tuple[pafs.FileSystem, str]:
    if not _has_credentials():
        raise StorageError(uri, "no AWS credentials in the environment", field="credentials",
                           fix=CREDENTIALS_FIX)
    endpoint, scheme = _endpoint()
    kwargs: dict = {
        "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "connect_timeout": 5.0,
        "request_timeout": 60.0,
        # an unreachable endpoint should fail in seconds, not after the SDK's long backoff
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = scheme
    return pafs.S3FileSystem(**kwargs), bucket_and_key.strip("/")


def resolve(uri: URI) -> tuple[pafs.FileSystem, str]:
    """Returns (filesystem, path inside it) for a local path, file://, s3:// or gs:// URI."""
    text = os.fspath(uri)
    if not is_remote(text):
        local = urlparse(text).path if text.startswith("file://") else text
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    parsed = urlparse(text)
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise StorageError(text, "the URI names no bucket", field="uri",
                               fix="write s3://BUCKET/PREFIX")
        return _s3(text, f"{parsed.netloc}{parsed.path}")
    try:
        return pafs.FileSystem.from_uri(text)
    except (OSError, ValueError) as exc:
        raise StorageError(text, f"cannot open this store: {exc}", field="uri",
                           fix="use a local path, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX") from exc


def _bucket(uri: str) -> str:
    return urlparse(uri).netloc


def _bucket_exists(uri: str) -> bool:
    """Returns whether the bucket of an s3:// URI exists (True when that cannot be told)."""
    try:
        fs, _ = resolve(uri)
        return fs.get_file_info(_bucket(uri)).type != pafs.FileType.NotFound
    except (OSError, StorageError):
        return True


def translate(exc: BaseException, uri: URI) -> StorageError:
    """Returns the one-line StorageError that says what a pyarrow filesystem error means."""
    text = os.fspath(uri)
    msg = str(exc)
    low = msg.lower()
    if isinstance(exc, StorageError):
        return exc
    if is_remote(text):
        endpoint, scheme = _endpoint()
        where = f"{scheme}://{endpoint}" if endpoint else "the default AWS endpoint"
        if any(s in low for s in ("couldn't connect", "could not connect", "connection refused",
                                  "curl error", "network connection", "timed out",
                                  "resolve host", "unable to connect")):
            return StorageError(text, f"the store at {where} is unreachable", field="endpoint",
                                fix="start the S3 server or fix AWS_ENDPOINT_URL")
        if "nosuchbucket" in low or "bucket does not exist" in low or \
                ("bucket" in low and "not found" in low) or "no_such_bucket" in low:
            return StorageError(text, f"bucket {_bucket(text)!r} does not exist at {where}",
                                field="bucket", fix="create the bucket first or fix the URI")
        if any(s in low for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "access_denied",
                                  "accessdenied", "forbidden", "invalid_access_key",
                                  "no credentials", "credentials")):
            return StorageError(text, f"the store refused the credentials ({msg.splitlines()[0]})",
                                field="credentials", fix=CREDENTIALS_FIX)
    if isinstance(exc, FileNotFoundError) or "path does not exist" in low or "not found" in low:
        if is_remote(text) and urlparse(text).scheme in ("s3", "s3a") and not _bucket_exists(text):
            return StorageError(text, f"bucket {_bucket(text)!r} does not exist", field="bucket",
                                fix="create the bucket first or fix the URI")
        return StorageError(text, "does not exist", field="path",
                            fix="check the URI, or build what should be there first")
    if isinstance(exc, PermissionError):
        return StorageError(text, "permission denied", field="path",
                            fix="give this user write access or choose another location")
    return StorageError(text, msg.splitlines()[0] if msg else type(exc).__name__, field="io",
                        fix="check the store and retry")


@dataclass(frozen=True)
class Entry:
    """A file in a listing: its URI, its name relative to the listed folder, its size."""

    uri: str
    name: str
    size: int


def read_bytes(uri: URI) -> bytes:
    """Returns the whole content of a file."""
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as fh:
            return fh.read()
    except OSError as exc:
        raise translate(exc, uri) from exc


def write_bytes(uri: URI, data: bytes) -> None:
    """Writes a file atomically: readers see the old content or all of the new, never a part.

    A local path goes through the project's one ``atomic_write`` (temp file + rename); on an
    object store a single PUT only becomes visible once complete.
    """
    fs, path = resolve(uri)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with atomic_write(path, "wb") as fh:
                fh.write(data)
            return
        with fs.open_output_stream(path) as fh:
            fh.write(data)
    except OSError as exc:
        raise translate(exc, uri) from exc


def info(uri: URI) -> pafs.FileInfo:
    """Returns pyarrow's FileInfo of a URI (type NotFound when it does not exist)."""
    fs, path = resolve(uri)
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise translate(exc, uri) from exc


def exists(uri: URI) -> bool:
    """Returns whether a file or folder exists at the URI."""
    return info(uri).type != pafs.FileType.NotFound


def size(uri: URI) -> int | None:
    """Returns the byte size of a file, or None when there is no file at the URI."""
    got = info(uri)
    return got.size if got.type == pafs.FileType.File else None


def listing(uri: URI, recursive: bool = False) -> list[Entry]:
    """Returns the files under a folder (empty when the folder does not exist), sorted by name."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except OSError as exc:
        raise translate(exc, uri) from exc
    base = path.rstrip("/") + "/"
    out = [Entry(join(uri, i.path[len(base):]), i.path[len(base):], i.size or 0)
           for i in infos if i.type == pafs.FileType.File]
    return sorted(out, key=lambda e: e.name)


def delete(uri: URI) -> bool:
    """Returns True after deleting the file at the URI, False when there was none."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return False
        raise translate(exc, uri) from exc


def check_writable(uri: URI) -> None:
    """Raises a StorageError unless the store at the URI can be reached and written.

    Probes with a small marker object so a bad endpoint, bucket or credential is reported before
    any real work starts.
    """
    probe = join(uri, ".facefuse-write-probe")
    write_bytes(probe, b"ok")
    delete(probe)


def free_bytes(uri: URI) -> int | None:
    """Returns the free bytes of a local store's filesystem, None for an object store."""
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize
