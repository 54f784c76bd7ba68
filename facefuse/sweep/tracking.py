"""MLflow tracking from the sweep driver: one parent run per sweep, one nested run per trial.

``MlflowTrackingCallback`` is a driver-side Ray Tune callback (only the driver writes to the
store, so a local sqlite file is safe). Schema (DESIGN.md, "Tracking schema"):

- parent run: tags ``facefuse.kind=sweep``, ``facefuse.sweep_id``; the resolved job as an
  artifact; FINISHED when the experiment ends.
- trial run: ``mlflow.parentRunId``, ``facefuse.kind=trial``, ``facefuse.sweep_id``,
  ``facefuse.trial_id``, ``facefuse.datasets``, ``facefuse.quality``, ``facefuse.objective``,
  backbone hashes, git commit, ``facefuse.variant``; every hyperparameter as a param; every
  reported metric with step = epoch; on completion ``facefuse.full_budget`` and, when ASHA
  stopped it early, ``facefuse.stopped_by_asha``; on error status FAILED with ``facefuse.error``;
  retried attempts counted in ``facefuse.failed_attempts``.

Resume never duplicates: the trial-to-run map is persisted (atomically) in the sweep's storage
directory, and runs are also found by their tags (sweep id + trial id) when the map is gone.
Metrics already logged for an epoch are not logged again when a resumed trial repeats it.

Outages never fail a sweep: every write is an operation in a FIFO queue. When the store does
not answer, the queue is kept (in memory and in ``tracking_backlog.json`` beside the map, so a
killed driver loses nothing), a warning is logged, and the queue is retried with exponential
backoff on later Tune events; the experiment end waits up to ``flush_timeout_s`` for it. What is
still unsent then stays in the backlog file and is replayed when the same sweep runs again.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import numbers
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from ray.tune import Callback

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

RUN_MAP_FILE = "mlflow_runs.json"
BACKLOG_FILE = "tracking_backlog.json"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
#: Result keys Tune fills in itself; they are bookkeeping, not metrics of the model.
TUNE_AUTO_KEYS = frozenset({
    "done", "training_iteration", "trial_id", "date", "timestamp", "time_total_s", "pid",
    "hostname", "node_ip", "time_since_restore", "iterations_since_restore", "experiment_tag",
    "checkpoint_dir_name", "should_checkpoint", "config", "episodes_total", "timesteps_total",
    "timesteps_since_restore", "experiment_id",
})
#: Param names that could carry a credential; never logged.
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|api[_-]?key|credential)", re.I)
_SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DATABRICKS_TOKEN")
#: Substrings of errors that mean "the store is unreachable or busy": retried without limit.
_TRANSIENT = ("connection", "max retries exceeded", "timed out", "timeout", "temporarily",
              "database is locked", "503", "502", "504", "remote end closed", "broken pipe",
              "name or service not known", "connection refused", "reset by peer")
MAX_PERMANENT_ATTEMPTS = 3
MAX_TAG_CHARS = 5000
MAX_BATCH_METRICS = 1000


def redact_uri(uri: str) -> str:
    """Returns the URI with any user:password@ part replaced, for logs and state files."""
    return re.sub(r"(://)[^/@]+@", r"\1***@", uri)


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def _is_transient(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = type(cur).__name__.lower()
        if "connection" in name or "timeout" in name:
            return True
        text = str(cur).lower()
        if any(s in text for s in _TRANSIENT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Returns the config a trainable really uses: nested dict entries merged over the top level.

    A grid entry such as the ablation's (``{"__ablation": {"variant": ..., "beta": ...}}``) is
    merged by the trainable before use, so its keys are the run's params.
    """
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for value in config.values():
        if isinstance(value, dict):
            flat.update(flat_config(value))
    return flat


def dotted_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Returns nested mappings flattened to dotted keys ({"asha": {"max_t": 3}} -> "asha.max_t")."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(dotted_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def safe_params(config: dict[str, Any], dotted: bool = False) -> dict[str, str]:
    """Returns the flat params to log: values as strings, credentials left out.

    Trial configs merge nested entries (``flat_config``); ``dotted`` keeps the nesting in the
    key instead (the sweep's own settings: ``asha.max_t``).

    A key that names a secret, or a value equal to a secret environment variable's value, is
    dropped (with a warning) so that credentials never reach the store.
    """
    secrets = {os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}
    out: dict[str, str] = {}
    for key, value in (dotted_config(config) if dotted else flat_config(config)).items():
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        if _SECRET_NAME.search(str(key)) or (text and text in secrets):
            logger.warning("not logging param %r: it looks like a credential", key)
            continue
        out[str(key)] = text[:6000]
    return out


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Returns the numeric, finite model metrics of a Tune result (Tune's bookkeeping dropped)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in TUNE_AUTO_KEYS or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            out[key] = float(value)
    if "time_this_iter_s" in out:
        out["time/epoch_s"] = out.pop("time_this_iter_s")
    return out


def result_step(result: dict[str, Any]) -> int:
    """Returns the epoch of a result (its "epoch" key, else Tune's training_iteration)."""
    epoch = result.get("epoch")
    if isinstance(epoch, numbers.Real) and not isinstance(epoch, bool) and math.isfinite(epoch):
        return int(epoch)
    return int(result.get("training_iteration", 0))


def error_text(trial: "Trial") -> tuple[str, str]:
    """Returns (one-line reason, traceback tail) of a trial's latest error."""
    trace = ""
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        try:
            trace = Path(path).read_text(errors="replace")
        except OSError:
            trace = ""
    if not trace:
        trace = str(getattr(trial, "error_msg", "") or "unknown error (no error file)")
    lines = [ln.strip() for ln in trace.strip().splitlines() if ln.strip()]
    # The last "SomeError: message" line of a chained traceback is the root message.
    reason = next((ln for ln in reversed(lines) if re.match(r"^[\w.]+(Error|Exception|Exit|"
                                                            r"Interrupt)\b.*:", ln)),
                  lines[-1] if lines else "unknown error")
    return reason[:MAX_TAG_CHARS], trace[-MAX_TAG_CHARS:]


class MlflowTrackingCallback(Callback):
    """Driver-side Tune callback writing the sweep to MLflow (see the module docstring)."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_id: str, state_dir: str,
                 sweep_tags: Optional[dict[str, str]] = None,
                 trial_tags: Optional[dict[str, str]] = None,
                 sweep_params: Optional[dict[str, Any]] = None,
                 sweep_artifacts: Iterable[str] = (),
                 trial_context: Optional[dict[str, Any]] = None,
                 full_budget_epochs: Optional[int] = None,
                 artifact_location: Optional[str] = None,
                 flush_timeout_s: float = 120.0, initial_backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.sweep_id = sweep_id
        self.state_dir = str(state_dir)
        self.sweep_tags = dict(sweep_tags or {})
        self.trial_tags = dict(trial_tags or {})
        self.sweep_params = dict(sweep_params or {})
        self.sweep_artifacts = list(sweep_artifacts)
        self.trial_context = dict(trial_context or {})
        self.full_budget_epochs = full_budget_epochs
        self.artifact_location = artifact_location
        self.flush_timeout_s = flush_timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._init_runtime()

    # ------------------------------------------------------------------ state
    def _init_runtime(self) -> None:
        self._client: Optional["MlflowClient"] = None
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._map: dict[str, Any] = {}
        self._enqueued_step: dict[str, int] = {}
        self._next_try = 0.0
        self._backoff = self.initial_backoff_s
        self._outage_since: Optional[float] = None
        self._loaded = False
        self._ops_done = 0
        self._started = False
        self.final_trials: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the RunConfig (and so this callback) into tuner.pkl: keep only settings.
        state = {k: v for k, v in self.__dict__.items()
                 if not k.startswith("_") and k != "final_trials"}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def get_state(self) -> Optional[dict]:
        return None  # persisted in our own files, which survive a killed driver

    @property
    def map_path(self) -> Path:
        return Path(self.state_dir) / RUN_MAP_FILE

    @property
    def backlog_path(self) -> Path:
        return Path(self.state_dir) / BACKLOG_FILE

    @property
    def parent_run_id(self) -> Optional[str]:
        """Returns the sweep's parent run id once created."""
        return self._map.get("parent_run_id")

    def run_id_of(self, trial_id: str) -> Optional[str]:
        """Returns the MLflow run id of a trial once created."""
        return self._map.get("trials", {}).get(trial_id, {}).get("run_id")

    @property
    def pending_operations(self) -> int:
        """Returns how many writes wait for the store."""
        return len(self._queue)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        shown = redact_uri(self.tracking_uri)
        fresh = {"sweep_id": self.sweep_id, "tracking_uri": shown, "trials": {}}
        try:
            data = json.loads(self.map_path.read_text())
        except FileNotFoundError:
            data = fresh
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable %s (%s); runs are looked up by tags instead",
                           self.map_path, exc)
            data = fresh
        if data.get("tracking_uri") != shown or data.get("sweep_id") != self.sweep_id:
            # Another store: the ids in the map mean nothing there; tags find runs instead.
            data = fresh
        self._map = data
        try:
            backlog = json.loads(self.backlog_path.read_text())
            if backlog.get("tracking_uri") == shown:
                self._queue.extend(backlog.get("ops", []))
                logger.warning("replaying %d tracking operations left from an earlier run of "
                               "this sweep", len(self._queue))
        except FileNotFoundError:
            pass
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable tracking backlog %s (%s)", self.backlog_path, exc)
        for tid, entry in self._map.get("trials", {}).items():
            self._enqueued_step[tid] = int(entry.get("last_step", 0))
        for op in self._queue:
            if op["op"] == "metrics":
                self._enqueued_step[op["trial"]] = max(self._enqueued_step.get(op["trial"], 0),
                                                       op["step"])

    def _save_map(self) -> None:
        _atomic_write_json(self.map_path, self._map)

    def _save_backlog(self) -> None:
        if self._queue:
            _atomic_write_json(self.backlog_path, {"tracking_uri": redact_uri(self.tracking_uri),
                                                   "ops": list(self._queue)})
        else:
            try:
                self.backlog_path.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ MLflow access
    def client(self) -> "MlflowClient":
        """Returns the MLflow client (created on first use, in the driver)."""
        if self._client is None:
            # MLflow's own HTTP retries (7 tries, exponential backoff) would block Tune's event
            # loop for minutes during an outage; our queue does the retrying instead.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment_id(self) -> str:
        exp_id = self._map.get("experiment_id")
        if exp_id:
            return exp_id
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            exp_id = client.create_experiment(self.experiment_name,
                                              artifact_location=self.artifact_location)
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
        self._map["experiment_id"] = exp_id
        self._save_map()
        return exp_id

    def _find_run(self, kind: str, trial_id: Optional[str]) -> Optional[str]:
        filt = (f"tags.`facefuse.sweep_id` = '{self.sweep_id}' and "
                f"tags.`facefuse.kind` = '{kind}'")
        if trial_id is not None:
            filt += f" and tags.`facefuse.trial_id` = '{trial_id}'"
        runs = self.client().search_runs([self._experiment_id()], filter_string=filt,
                                         max_results=2, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _ensure_parent(self) -> str:
        run_id = self._map.get("parent_run_id")
        if run_id:
            return run_id
        from mlflow.entities import Param

        run_id = self._find_run(KIND_SWEEP, None)
        client = self.client()
        if run_id is None:
            tags = {"facefuse.kind": KIND_SWEEP, "facefuse.sweep_id": self.sweep_id,
                    "mlflow.runName": self.sweep_id, **self.sweep_tags}
            run = client.create_run(self._experiment_id(), tags=tags, run_name=self.sweep_id)
            run_id = run.info.run_id
            params = [Param(k, v) for k, v in safe_params(self.sweep_params, dotted=True).items()]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=params[i:i + 100])
            for path in self.sweep_artifacts:
                if os.path.exists(path):
                    client.log_artifact(run_id, path)
        else:
            client.update_run(run_id, status="RUNNING")
        self._map["parent_run_id"] = run_id
        self._save_map()
        return run_id

    def _ensure_trial(self, trial_id: str, params: dict[str, Any], tags: dict[str, str],
                      reopen: bool) -> str:
        from mlflow.entities import Param, RunTag

        trials = self._map.setdefault("trials", {})
        entry = trials.get(trial_id)
        client = self.client()
        if entry and entry.get("run_id"):
            if reopen:
                client.update_run(entry["run_id"], status="RUNNING")
            self._sync_last_step(trial_id, entry["run_id"])
            return entry["run_id"]
        parent = self._ensure_parent()
        run_id = self._find_run(KIND_TRIAL, trial_id)
        created = run_id is None
        if run_id is None:
            all_tags = {"mlflow.parentRunId": parent, "facefuse.kind": KIND_TRIAL,
                        "facefuse.sweep_id": self.sweep_id, "facefuse.trial_id": trial_id,
                        **self.trial_tags, **tags}
            run = client.create_run(self._experiment_id(), tags=all_tags,
                                    run_name=f"{self.sweep_id}:{trial_id}")
            run_id = run.info.run_id
            items = [Param(k, v) for k, v in safe_params(params).items()]
            for i in range(0, len(items), 100):
                client.log_batch(run_id, params=items[i:i + 100])
            logger.debug("created MLflow run %s for trial %s", run_id, trial_id)
        reused = run_id is not None and not created
        if reused:
            logger.info("reusing MLflow run %s for trial %s", run_id, trial_id)
            if reopen:
                client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag("facefuse.trial_id", trial_id)])
        trials[trial_id] = {"run_id": run_id,
                            "last_step": int(trials.get(trial_id, {}).get("last_step", 0))}
        if reused:
            self._sync_last_step(trial_id, run_id)
        self._save_map()
        return run_id

    def _sync_last_step(self, trial_id: str, run_id: str) -> None:
        """Raises the trial's last logged step to what the store holds (once per process).

        A driver killed between ``log_batch`` and saving the map would otherwise log that epoch
        a second time after the resume; the store itself knows the last step it has.
        """
        synced = self.__dict__.setdefault("_synced_trials", set())
        if trial_id in synced:
            return
        history = self.client().get_metric_history(run_id, "epoch")
        entry = self._map["trials"][trial_id]
        entry["last_step"] = max([int(entry.get("last_step", 0)), *(int(m.step) for m in history)])
        synced.add(trial_id)
        self._save_map()

    def _run_for(self, trial_id: Optional[str]) -> str:
        if trial_id is None:
            return self._ensure_parent()
        run_id = self.run_id_of(trial_id)
        if run_id is None:
            # Only reachable when the ensure op was dropped: create a bare run rather than lose data.
            run_id = self._ensure_trial(trial_id, {}, {}, reopen=False)
        return run_id

    def _execute(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        kind = op["op"]
        client = self.client()
        if kind == "parent":
            self._ensure_parent()
        elif kind == "trial":
            self._ensure_trial(op["trial"], op["params"], op["tags"], op.get("reopen", False))
        elif kind == "metrics":
            entry = self._map.setdefault("trials", {}).get(op["trial"], {})
            if op["step"] <= int(entry.get("last_step", 0)):
                return  # already logged before a restart
            run_id = self._run_for(op["trial"])
            metrics = [Metric(k, v, op["ts"], op["step"]) for k, v in op["metrics"].items()]
            for i in range(0, len(metrics), MAX_BATCH_METRICS):
                client.log_batch(run_id, metrics=metrics[i:i + MAX_BATCH_METRICS])
            self._map["trials"][op["trial"]]["last_step"] = op["step"]
            self._save_map()
        elif kind == "tags":
            run_id = self._run_for(op.get("trial"))
            client.log_batch(run_id, tags=[RunTag(k, str(v)[:MAX_TAG_CHARS])
                                           for k, v in op["tags"].items()])
        elif kind == "artifact":
            if os.path.exists(op["path"]):
                run_id = self._run_for(op.get("trial"))
                if os.path.isdir(op["path"]):
                    client.log_artifacts(run_id, op["path"], op.get("artifact_path"))
                else:
                    client.log_artifact(run_id, op["path"], op.get("artifact_path"))
        elif kind == "orphans":
            self._relabel_orphans(set(op["keep"]))
        elif kind == "status":
            client.update_run(self._run_for(op.get("trial")), status=op["status"])
        elif kind == "end":
            run_id = self._run_for(op.get("trial"))
            client.set_terminated(run_id, status=op["status"], end_time=op["ts"])
        else:  # pragma: no cover - ops are built in this module
            raise ValueError(f"unknown tracking operation {kind!r}")

    def _relabel_orphans(self, keep: set[str]) -> None:
        """Marks trial runs of this sweep whose trial Tune no longer knows (KILLED, kind orphan).

        A driver killed between starting a trial and saving Tune's experiment state leaves a run
        for a trial that the restored experiment does not contain (it samples a new trial in its
        place). Relabelled, such runs drop out of ``facefuse.kind = 'trial'`` queries, so one
        run per trial remains; their data is kept for inspection.
        """
        from mlflow.entities import RunTag

        client = self.client()
        filt = (f"tags.`facefuse.sweep_id` = '{self.sweep_id}' and "
                f"tags.`facefuse.kind` = '{KIND_TRIAL}'")
        for run in client.search_runs([self._experiment_id()], filter_string=filt,
                                      max_results=50000):
            tid = run.data.tags.get("facefuse.trial_id")
            if tid in keep:
                continue
            logger.warning("trial %s of sweep %s is not part of the restored experiment; "
                           "marking its run %s as orphaned", tid, self.sweep_id, run.info.run_id)
            client.log_batch(run.info.run_id, tags=[RunTag("facefuse.kind", "orphaned_trial"),
                                                    RunTag("facefuse.orphaned", "true")])
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")
            self._map.get("trials", {}).pop(tid, None)
        self._save_map()

    # ------------------------------------------------------------------ the queue
    def _enqueue(self, op: dict[str, Any]) -> None:
        self._queue.append(op)
        if self._outage_since is not None:
            self._save_backlog()  # while the store is down, a killed driver must lose nothing

    def _drain(self, force: bool = False) -> bool:
        """Returns True when the queue is empty after sending what the store accepts."""
        self._load()
        if not self._queue:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        sent = 0
        while self._queue:
            op = self._queue[0]
            try:
                self._execute(op)
            except Exception as exc:  # noqa: BLE001 - tracking must never fail the sweep
                if _is_transient(exc):
                    self._note_outage(exc)
                    self._save_backlog()
                    return False
                op["attempts"] = op.get("attempts", 0) + 1
                if op["attempts"] < MAX_PERMANENT_ATTEMPTS:
                    logger.warning("tracking operation %s failed (%s: %s); will retry",
                                   op["op"], type(exc).__name__, exc)
                    self._note_outage(exc, quiet=True)
                    self._save_backlog()
                    return False
                logger.error("dropping tracking operation %s for trial %s after %d attempts: "
                             "%s: %s", op["op"], op.get("trial"), op["attempts"],
                             type(exc).__name__, exc)
            self._queue.popleft()
            sent += 1
            self._ops_done += 1
        if self._outage_since is not None:
            logger.warning("tracking store %s answers again after %.0fs; sent %d buffered "
                           "operations", redact_uri(self.tracking_uri),
                           time.monotonic() - self._outage_since,
                           sent)
        self._outage_since = None
        self._backoff = self.initial_backoff_s
        self._next_try = 0.0
        self._save_backlog()
        return True

    def _note_outage(self, exc: BaseException, quiet: bool = False) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            if not quiet:
                logger.warning("tracking store %s does not answer (%s: %s); buffering %d "
                               "operations and retrying with backoff; the sweep goes on",
                               redact_uri(self.tracking_uri), type(exc).__name__,
                               redact_uri(str(exc))[:200],
                               len(self._queue))
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)

    def flush(self, timeout_s: Optional[float] = None) -> bool:
        """Returns True when every buffered write reached the store within the timeout."""
        deadline = time.monotonic() + (self.flush_timeout_s if timeout_s is None else timeout_s)
        while True:
            if self._drain(force=True):
                return True
            # The sweep is over and waits for us: poll at least every 5 s, not at the backoff.
            self._next_try = min(self._next_try, time.monotonic() + 5.0)
            wait = min(self._next_try, deadline) - time.monotonic()
            if time.monotonic() >= deadline:
                logger.warning("tracking store %s still unreachable; %d operations kept in %s "
                               "and replayed when this sweep runs again",
                               redact_uri(self.tracking_uri),
                               len(self._queue), self.backlog_path)
                return False
            time.sleep(max(0.05, wait))

    # ------------------------------------------------------------------ Tune hooks
    def start(self) -> None:
        """Creates the experiment and the parent run (buffered if the store is down)."""
        self._load()
        if self._started:
            return
        self._started = True
        if "parent_run_id" not in self._map and not any(op["op"] == "parent" for op in self._queue):
            self._enqueue({"op": "parent"})
        else:
            # The same sweep runs again (resume): the parent is running again until it ends.
            self._enqueue({"op": "status", "trial": None, "status": "RUNNING"})
            self._enqueue({"op": "tags", "trial": None, "tags": {"facefuse.resumed": "true"}})
        self._drain(force=True)

    def setup(self, stop: Any = None, num_samples: Optional[int] = None,
              total_num_samples: Optional[int] = None, **info: Any) -> None:
        self.start()

    def _trial_started(self, trial: "Trial", reopen: bool) -> None:
        self._load()
        tid = trial.trial_id
        if self.run_id_of(tid) is not None and not reopen:
            return
        if any(op["op"] == "trial" and op["trial"] == tid for op in self._queue):
            return
        flat = flat_config(dict(trial.config))
        tags = {"facefuse.trial_name": str(trial)}
        if flat.get("variant") is not None:
            tags["facefuse.variant"] = str(flat["variant"])
        if flat.get("seed") is not None:
            tags["facefuse.seed"] = str(flat["seed"])
        self._enqueue({"op": "trial", "trial": tid, "params": dict(trial.config), "tags": tags,
                       "reopen": reopen})
        self._drain()

    def on_trial_start(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        # A trial that is started again after a driver restart has a run already: reopen it.
        self._trial_started(trial, reopen=self.run_id_of(trial.trial_id) is not None)

    def on_trial_restore(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self._trial_started(trial, reopen=True)

    def on_trial_result(self, iteration: int, trials: list, trial: "Trial", result: dict,
                        **info: Any) -> None:
        self._load()
        tid = trial.trial_id
        if self.run_id_of(tid) is None and not any(
                op["op"] == "trial" and op["trial"] == tid for op in self._queue):
            self._trial_started(trial, reopen=False)
        step = result_step(result)
        if step <= self._enqueued_step.get(tid, 0):
            logger.debug("trial %s repeated epoch %d after a restart; not logged twice", tid, step)
            return
        self._enqueued_step[tid] = step
        self._enqueue({"op": "metrics", "trial": tid, "step": step,
                       "ts": int(time.time() * 1000), "metrics": result_metrics(result)})
        self._drain()

    def on_trial_recover(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        reason, trace = error_text(trial)
        self._enqueue({"op": "tags", "trial": trial.trial_id, "tags": {
            "facefuse.failed_attempts": str(int(trial.num_failures)),
            "facefuse.last_attempt_error": reason}})
        self._drain()

    def on_trial_complete(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self._finish_trial(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self._finish_trial(trial, failed=True)

    def _finish_trial(self, trial: "Trial", failed: bool) -> None:
        self._load()
        tid = trial.trial_id
        if self.run_id_of(tid) is None and not any(
                op["op"] == "trial" and op["trial"] == tid for op in self._queue):
            self._trial_started(trial, reopen=False)
        epochs_done = self._enqueued_step.get(tid, 0)
        full = self.full_budget_epochs is not None and epochs_done >= self.full_budget_epochs
        tags = {"facefuse.full_budget": str(bool(full)).lower(),
                "facefuse.epochs_done": str(epochs_done),
                "facefuse.failed_attempts": str(int(trial.num_failures))}
        if failed:
            reason, trace = error_text(trial)
            tags.update({"facefuse.error": reason, "facefuse.error_trace": trace})
        elif not full:
            tags["facefuse.stopped_by_asha"] = "true"
        self._enqueue({"op": "tags", "trial": tid, "tags": tags})
        for path, artifact_path in self._trial_artifacts(trial):
            self._enqueue({"op": "artifact", "trial": tid, "path": path,
                           "artifact_path": artifact_path})
        self._enqueue({"op": "end", "trial": tid, "status": "FAILED" if failed else "FINISHED",
                       "ts": int(time.time() * 1000)})
        self._drain()

    def _trial_artifacts(self, trial: "Trial") -> list[tuple[str, Optional[str]]]:
        """Returns (local path, artifact dir) pairs: resolved config, ROC files, best checkpoint."""
        out: list[tuple[str, Optional[str]]] = []
        trial_dir = Path(trial.local_path or "")
        cfg_dir = Path(self.state_dir) / "trial_configs"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = cfg_dir / f"{trial.trial_id}.json"
        _atomic_write_json(cfg_path, {"config": dict(trial.config), "context": self.trial_context,
                                      "sweep_id": self.sweep_id, "trial_id": trial.trial_id})
        out.append((str(cfg_path), "config"))
        if trial_dir.is_dir():
            for p in sorted(trial_dir.glob("roc_*.npz")) + sorted(trial_dir.glob("roc_*.png")):
                out.append((str(p), "roc"))
            if (trial_dir / "best_checkpoint").is_dir():
                out.append((str(trial_dir / "best_checkpoint"), "best_checkpoint"))
        # The real trainable keeps its best model and ROC data inside each Tune checkpoint.
        ckpt = getattr(trial, "checkpoint", None)
        best = Path(ckpt.path) / "best" if ckpt is not None and getattr(ckpt, "path", None) else None
        if best is not None and best.is_dir() and not (trial_dir / "best_checkpoint").is_dir():
            out.append((str(best), "best_checkpoint"))
            for p in sorted(best.glob("roc_*.npz")) + sorted(best.glob("roc_*.png")):
                out.append((str(p), "roc"))
        return out

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._queue:
            self._drain()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._load()
        self.final_trials = list(trials)
        failed = sum(1 for t in trials if t.status == "ERROR")
        self._enqueue({"op": "orphans", "keep": sorted(t.trial_id for t in trials)})
        self._enqueue({"op": "tags", "trial": None, "tags": {
            "facefuse.trials_total": str(len(trials)), "facefuse.trials_failed": str(failed)}})
        self._enqueue({"op": "end", "trial": None, "status": "FINISHED",
                       "ts": int(time.time() * 1000)})
        self.flush()
