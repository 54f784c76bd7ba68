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
from typing import Optional, Union
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


# --------------------------------------------------------------------------- Ray and MLflow
def ray_storage(uri: URI) -> tuple[str, Optional[pafs.FileSystem]]:
    """Returns (storage_path, storage_filesystem) for a Ray Tune or Train ``RunConfig``.

    A local path or shared mount is handed to Ray as it is (no filesystem); a store URI becomes
    its path inside this module's filesystem, so Ray uses the same endpoint and credentials
    (``AWS_ENDPOINT_URL``, which Ray's own URI parsing would not pass on).
    """
    if not is_remote(uri):
        return os.fspath(uri), None
    fs, path = resolve(uri)
    return path, fs


def uri_of(fs: Optional[pafs.FileSystem], path: str) -> str:
    """Returns the URI of a path inside a pyarrow filesystem (e.g. a Ray checkpoint's)."""
    if fs is None or isinstance(fs, pafs.LocalFileSystem):
        return path
    if isinstance(fs, pafs.SubTreeFileSystem):
        return uri_of(fs.base_fs, f"{fs.base_path.rstrip('/')}/{path.lstrip('/')}")
    scheme = {"gcs": "gs"}.get(fs.type_name, fs.type_name)
    return f"{scheme}://{path.lstrip('/')}"


def download(uri: URI, dest_dir: URI) -> Path:
    """Returns the local copy, made under ``dest_dir``, of a file or folder of a store.

    A local file or folder is returned as it is (no copy).
    """
    if not is_remote(uri):
        return Path(os.fspath(uri))
    text = os.fspath(uri).rstrip("/")
    target = Path(dest_dir) / text.rsplit("/", 1)[-1]
    kind = info(text).type
    if kind == pafs.FileType.NotFound:
        raise StorageError(text, "does not exist", field="path",
                           fix="check the URI, or build what should be there first")
    files = ([Entry(text, "", 0)] if kind == pafs.FileType.File
             else listing(text, recursive=True))
    for entry in files:
        with atomic_write(target / entry.name if entry.name else target, "wb") as fh:
            fh.write(read_bytes(entry.uri))
    return target


def folders(uri: URI) -> list[str]:
    """Returns the URIs of the folders directly under a folder (empty when there is none)."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise translate(exc, uri) from exc
    names = sorted(i.path.rstrip("/").rsplit("/", 1)[-1] for i in infos
                   if i.type == pafs.FileType.Directory)
    return [join(uri, n) for n in names]


# --------------------------------------------------------------------------- mirrored folders
#: Suffix of the folder that holds an append-only file's parts in a store (one object per push).
PARTS_SUFFIX = ".parts"


class MirroredDir:
    """A local working copy of a folder kept in a store: read once, pushed after writes.

    Code that appends to files and renames them into place (the tracking state) works on the
    local copy; ``push`` uploads what changed. An append-only file is pushed as its new bytes
    only, one object per push under ``<name>.parts/<offset>``, so each push costs what was
    appended, not the whole history; ``pull`` joins the parts again.
    """

    def __init__(self, remote: str, local: URI, append_only: tuple[str, ...] = (),
                 min_interval_s: float = 5.0) -> None:
        self.remote = remote
        self.local = Path(local)
        self.append_only = append_only
        self.min_interval_s = min_interval_s
        self._pushed: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) last pushed
        self._last_push = 0.0

    def pull(self) -> None:
        """Copies the store's folder into the local copy (which it replaces file by file)."""
        self.local.mkdir(parents=True, exist_ok=True)
        parts: dict[str, list[Entry]] = {}
        for entry in listing(self.remote, recursive=True):
            head, _, tail = entry.name.partition(PARTS_SUFFIX + "/")
            if tail and head in self.append_only:
                parts.setdefault(head, []).append(entry)
                continue
            target = self.local / entry.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(target, "wb") as fh:
                fh.write(read_bytes(entry.uri))
        for name, pieces in parts.items():
            with atomic_write(self.local / name, "wb") as fh:
                for piece in sorted(pieces, key=lambda e: int(e.name.rsplit("/", 1)[-1])):
                    fh.write(read_bytes(piece.uri))
        for path in self.local.rglob("*"):
            if path.is_file():
                st = path.stat()
                self._pushed[str(path.relative_to(self.local))] = (st.st_size, st.st_mtime_ns)

    def push(self, force: bool = False) -> None:
        """Uploads the files changed since the last push (at most every min_interval_s)."""
        import time

        if not force and time.monotonic() - self._last_push < self.min_interval_s:
            return
        self._last_push = time.monotonic()
        if not self.local.is_dir():
            return
        present = set()
        for path in sorted(self.local.rglob("*")):
            if not path.is_file() or (path.name.startswith(".") and path.name.endswith(".tmp")):
                continue  # atomic_write's temporary file, renamed into place soon
            name = str(path.relative_to(self.local))
            present.add(name)
            st = path.stat()
            before = self._pushed.get(name)
            if before == (st.st_size, st.st_mtime_ns):
                continue
            data = path.read_bytes()
            if name in self.append_only:
                start = before[0] if before is not None and before[0] <= len(data) else 0
                if start == len(data):
                    continue
                write_bytes(join(self.remote, f"{name}{PARTS_SUFFIX}", f"{start:016d}"),
                            data[start:])
            else:
                write_bytes(join(self.remote, name), data)
            self._pushed[name] = (len(data), st.st_mtime_ns)
        for name in sorted(set(self._pushed) - present):
            # removed here (an emptied backlog): a stale copy must not be read back later
            if name not in self.append_only:
                delete(join(self.remote, name))
            del self._pushed[name]
