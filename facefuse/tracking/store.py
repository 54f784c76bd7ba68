"""Access to the MLflow tracking store: URI resolution, redaction, opening, lookup, paged search.

Every command and library module that reads or writes the store goes through here, so that the
same URI means the same store everywhere (relative sqlite paths are made absolute once, in the
process that reads the user's input) and a missing or dead store fails in seconds with one line
that says what to do.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar

from facefuse.errors import ConfigError, FacefuseError

if TYPE_CHECKING:  # mlflow costs seconds to import; commands that fail early should not pay it
    from mlflow import MlflowClient
    from mlflow.entities import Run

#: Seconds a tracking-server request may take before a reading command gives up.
HTTP_TIMEOUT_S = 10
HTTP_MAX_RETRIES = 1
#: Runs asked for per page; search_runs pages until the store says there are no more.
PAGE_SIZE = 1000
DEFAULT_URI = "sqlite:///mlflow.db"

T = TypeVar("T")


class TrackingError(FacefuseError):
    """The tracking store cannot be opened or does not answer."""


def redact_uri(uri: str) -> str:
    """Returns the URI with any user:password@ part replaced, for logs and state files."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", uri)


def resolve_tracking_uri(uri: Optional[str] = None, cwd: Optional[Path] = None) -> str:
    """Returns an absolute tracking URI: given, else $MLFLOW_TRACKING_URI, else <cwd>/mlflow.db.

    ``cwd`` defaults to the current directory: the one rule every command and the sweep driver
    apply, so that a relative sqlite path means the same file in Ray workers (whose working
    directory moves) as in the shell that started them.
    """
    base = Path(cwd) if cwd is not None else Path.cwd()
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        rest = uri[len("sqlite:///"):]
        # sqlite:////abs has an absolute path after three slashes; anything else is relative.
        if not rest.startswith("/"):
            return "sqlite:///" + str((base / rest).resolve())
        return uri
    if "://" not in uri:  # a bare directory or file path
        path = Path(os.path.expanduser(uri))
        return str(path if path.is_absolute() else (base / path).resolve())
    return uri


def sqlite_path(uri: str) -> Optional[Path]:
    """Returns the database file of a sqlite:/// URI, None for any other store."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])


def _check_http(uri: str) -> None:
    # MLflow retries a dead server with exponential backoff for minutes (7 retries, 120 s
    # timeout by default); a reading command should fail in seconds. A user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_MAX_RETRIES))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(HTTP_TIMEOUT_S))
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310
            response.read(64)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # an authenticating proxy answered: the server is there
        raise TrackingError(f"tracking server {uri} answered {exc.code} on /health -- check "
                            f"--tracking-uri / MLFLOW_TRACKING_URI") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"cannot reach the MLflow tracking server at {uri} ({reason}) -- "
                            f"start it (mlflow server ...) or pass --tracking-uri / set "
                            f"MLFLOW_TRACKING_URI") from None


def open_tracking(tracking_uri: Optional[str] = None) -> "MlflowClient":
    """Returns an MlflowClient for the resolved URI, after checking the store is there."""
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        _check_http(uri)
    sqlite = sqlite_path(uri)
    if sqlite is not None and not sqlite.is_file():
        # Reading must not create an empty store somewhere the user did not mean.
        raise TrackingError(f"no MLflow tracking store at {sqlite} -- run a sweep first, run "
                            f"from the directory that holds mlflow.db, or pass --tracking-uri")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def writer_client(tracking_uri: str) -> "MlflowClient":
    """Returns an MlflowClient for the sweep driver, which buffers and retries writes itself."""
    # MLflow's own HTTP retries (7 tries, exponential backoff) would block Tune's event loop for
    # minutes during an outage; the operation queue does the retrying instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def tracking_call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Returns ``fn(*args, **kwargs)``; an MLflow error becomes a one-line TrackingError."""
    from mlflow.exceptions import MlflowException

    try:
        return fn(*args, **kwargs)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"tracking store error while {what}: {first}") from None


def experiment_ids(client: "MlflowClient", experiment: Optional[str] = None) -> dict[str, str]:
    """Returns {experiment_id: name}: the named experiment, or every active one."""
    if experiment is not None:
        exp = tracking_call("looking up the experiment", client.get_experiment_by_name,
                            experiment)
        if exp is None:
            known = sorted(e.name for e in tracking_call(
                "listing experiments", client.search_experiments))
            raise ConfigError(None, f"no experiment named {experiment!r}", field="experiment",
                              fix=f"use one of: {', '.join(known) or '(none)'}")
        return {exp.experiment_id: exp.name}
    exps = tracking_call("listing experiments", client.search_experiments)
    return {e.experiment_id: e.name for e in exps}


def search_all_runs(client: "MlflowClient", ids: Iterable[str], filter_string: str,
                    order_by: Optional[list[str]] = None) -> list["Run"]:
    """Returns every run of the experiments matching the filter (all pages)."""
    ids = list(ids)
    if not ids:
        return []
    runs: list[Run] = []
    token = None
    while True:
        page = tracking_call("searching runs", client.search_runs, ids, filter_string,
                             max_results=PAGE_SIZE, order_by=order_by, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
