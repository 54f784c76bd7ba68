"""The typed MLflow writer of a sweep: one parent run per sweep, one nested run per trial.

``SweepWriter`` creates and finds runs, logs params, metrics, tags and artifacts, and keeps the
trial-to-run map in ``mlflow_runs.json`` (atomically) in the sweep's state directory, so that a
resumed sweep reuses its runs instead of duplicating them; when the map is gone, runs are found
by their tags (sweep id + trial id). ``execute`` runs one queued operation (see
``facefuse.tracking.queue``); the tag and run names it writes are those of
``facefuse.tracking.schema``.

Every operation the store accepted is appended to ``tracking_journal.jsonl`` next to the map.
When the map names an experiment or runs the store does not have (the store was lost, replaced
by an empty database, or the job now points at another one), the writer logs a warning naming
the store, forgets the stale ids and replays the journal, so the store ends up with every run,
param, tag and metric of the sweep once; writes are never dropped because their run vanished.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from facefuse import storage
from facefuse.tracking import schema as S
from facefuse.data._io import atomic_write_json
from facefuse.tracking.queue import Operation
from facefuse.tracking.store import redact_uri, search_all_runs, writer_client

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

RUN_MAP_FILE = "mlflow_runs.json"
JOURNAL_FILE = "tracking_journal.jsonl"
#: Set in the map while the journal still has to be replayed into the store (survives a crash).
_REPLAY_KEY = "replay_pending"
MAX_TAG_CHARS = 5000
MAX_PARAM_CHARS = 6000
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
#: Param names that could carry a credential; never logged.
_SECRET_NAME = re.compile(r"(password|passwd|secret|token|api[_-]?key|credential)", re.I)
_SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
               "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DATABRICKS_TOKEN")


def safe_params(config: dict[str, Any], dotted: bool = False) -> dict[str, str]:
    """Returns the flat params to log: values as strings, credentials left out.

    Trial configs merge nested entries (``schema.flat_config``); ``dotted`` keeps the nesting in
    the key instead (the sweep's own settings: ``asha.max_t``).

    A key that names a secret, or a value equal to a secret environment variable's value, is
    dropped (with a warning) so that credentials never reach the store.
    """
    secrets = {os.environ[k] for k in _SECRET_ENV if os.environ.get(k)}
    out: dict[str, str] = {}
    flat = S.dotted_config(config) if dotted else S.flat_config(config)
    for key, value in flat.items():
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        if _SECRET_NAME.search(str(key)) or (text and text in secrets):
            logger.warning("not logging param %r: it looks like a credential", key)
            continue
        out[str(key)] = text[:MAX_PARAM_CHARS]
    return out


class SweepWriter:
    """Writes one sweep's runs to an MLflow store (see the module docstring)."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_id: str, state_dir: str,
                 sweep_tags: Optional[dict[str, str]] = None,
                 trial_tags: Optional[dict[str, str]] = None,
                 sweep_params: Optional[dict[str, Any]] = None,
                 sweep_artifacts: Iterable[str] = (),
                 artifact_location: Optional[str] = None) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.sweep_id = sweep_id
        self.state_dir = Path(state_dir)
        self.sweep_tags = dict(sweep_tags or {})
        self.trial_tags = dict(trial_tags or {})
        self.sweep_params = dict(sweep_params or {})
        self.sweep_artifacts = list(sweep_artifacts)
        self.artifact_location = artifact_location
        #: op kind -> function(writer, op) for operations of higher layers (set by the callback)
        self.handlers: dict[str, Callable[["SweepWriter", Operation], None]] = {}
        self._client: Optional[MlflowClient] = None
        self._map: dict[str, Any] = {}
        self._synced: set[str] = set()
        self._checked = False

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the callback that holds this writer: settings only, no client or map.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client = None
        self._map = {}
        self._synced = set()
        self._checked = False

    # ------------------------------------------------------------------ the run map
    @property
    def map_path(self) -> Path:
        return self.state_dir / RUN_MAP_FILE

    def load_map(self) -> None:
        """Reads the trial-to-run map (a map for another store or sweep is ignored)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
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
        if data is fresh and self.journal_path.exists():
            # Operations were sent to some store before: replay them (runs that the store has
            # are found by their tags and not duplicated; the others are created).
            data[_REPLAY_KEY] = True
        self._map = data

    @property
    def journal_path(self) -> Path:
        return self.state_dir / JOURNAL_FILE

    def _journal(self, op: Operation) -> None:
        # Appending one line per accepted write: rewriting the whole journal each time would
        # cost O(history) per write. A torn last line (killed mid-write) is skipped on reading.
        line = json.dumps({k: v for k, v in op.items() if k != "attempts"}, default=str)
        with open(self.journal_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _journal_ops(self) -> list[Operation]:
        ops: list[Operation] = []
        try:
            lines = self.journal_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return ops
        for line in lines:
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("skipping a torn line of %s", self.journal_path)
        return ops

    def _save_map(self) -> None:
        atomic_write_json(self.map_path, self._map)

    @property
    def parent_run_id(self) -> Optional[str]:
        """Returns the sweep's parent run id once created."""
        return self._map.get("parent_run_id")

    @property
    def known_experiment_id(self) -> Optional[str]:
        """Returns the experiment's id once looked up (None before)."""
        return self._map.get("experiment_id")

    def run_id_of(self, trial_id: str) -> Optional[str]:
        """Returns the MLflow run id of a trial once created."""
        return self._map.get("trials", {}).get(trial_id, {}).get("run_id")

    def last_steps(self) -> dict[str, int]:
        """Returns {trial id: last epoch logged} from the map."""
        return {tid: int(entry.get("last_step", 0))
                for tid, entry in self._map.get("trials", {}).items()}

    # ------------------------------------------------------------------ MLflow access
    def client(self) -> "MlflowClient":
        """Returns the MLflow client (created on first use, in the driver)."""
        if self._client is None:
            # the sweep summary downloads the search space: no progress bar in the console
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            self._client = writer_client(self.tracking_uri)
        return self._client

    def experiment_id(self) -> str:
        """Returns the experiment's id, creating (or restoring) the experiment when needed."""
        exp_id = self._map.get("experiment_id")
        if exp_id:
            return exp_id
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment_name)
        from facefuse.tracking.names import (EXPERIMENT_KIND, EXPERIMENT_KIND_TAG,
                                             ensure_experiment_kind)

        if exp is None:
            exp_id = client.create_experiment(self.experiment_name,
                                              artifact_location=self.artifact_location,
                                              tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        else:
            exp_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp_id)
            ensure_experiment_kind(client, exp_id, dict(exp.tags))
        self._map["experiment_id"] = exp_id
        self._save_map()
        return exp_id

    def _find_run(self, kind: str, trial_id: Optional[str]) -> Optional[str]:
        runs = self.client().search_runs([self.experiment_id()],
                                         filter_string=S.sweep_filter(self.sweep_id, kind, trial_id),
                                         max_results=2, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_BATCH_PARAMS):
            self.client().log_batch(run_id, params=items[i:i + MAX_BATCH_PARAMS])

    def ensure_parent(self) -> str:
        """Returns the sweep's parent run id, creating the run (or reopening it) once."""
        run_id = self._map.get("parent_run_id")
        if run_id:
            return run_id
        run_id = self._find_run(S.KIND_SWEEP, None)
        client = self.client()
        if run_id is None:
            tags = {S.TAG_KIND: S.KIND_SWEEP, S.TAG_SWEEP_ID: self.sweep_id,
                    S.TAG_RUN_NAME: self.sweep_id, **self.sweep_tags}
            run = client.create_run(self.experiment_id(), tags=tags, run_name=self.sweep_id)
            run_id = run.info.run_id
            self._log_params(run_id, safe_params(self.sweep_params, dotted=True))
            for path in self.sweep_artifacts:
                if os.path.exists(path):
                    client.log_artifact(run_id, path)
        else:
            client.update_run(run_id, status="RUNNING")
        self._map["parent_run_id"] = run_id
        self._save_map()
        return run_id

    def ensure_trial(self, trial_id: str, params: dict[str, Any], tags: dict[str, str],
                     reopen: bool) -> str:
        """Returns the trial's run id: from the map, found by its tags, or newly created."""
        from mlflow.entities import RunTag

        trials = self._map.setdefault("trials", {})
        entry = trials.get(trial_id)
        client = self.client()
        if entry and entry.get("run_id"):
            if reopen:
                client.update_run(entry["run_id"], status="RUNNING")
            self._sync_last_step(trial_id, entry["run_id"])
            return entry["run_id"]
        parent = self.ensure_parent()
        run_id = self._find_run(S.KIND_TRIAL, trial_id)
        created = run_id is None
        if run_id is None:
            all_tags = {S.TAG_PARENT_RUN: parent, S.TAG_KIND: S.KIND_TRIAL,
                        S.TAG_SWEEP_ID: self.sweep_id, S.TAG_TRIAL_ID: trial_id,
                        **self.trial_tags, **tags}
            # the callback names trials after their searched values (facefuse.tracking.names)
            run_name = tags.get(S.TAG_RUN_NAME) or f"{self.sweep_id}:{trial_id}"
            run = client.create_run(self.experiment_id(), tags=all_tags, run_name=run_name)
            run_id = run.info.run_id
            self._log_params(run_id, safe_params(params))
            logger.debug("created MLflow run %s for trial %s", run_id, trial_id)
        else:
            logger.info("reusing MLflow run %s for trial %s", run_id, trial_id)
            if reopen:
                client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag(S.TAG_TRIAL_ID, trial_id)])
        trials[trial_id] = {"run_id": run_id,
                            "last_step": int(trials.get(trial_id, {}).get("last_step", 0))}
        if not created:
            self._sync_last_step(trial_id, run_id)
        self._save_map()
        return run_id

    def _sync_last_step(self, trial_id: str, run_id: str) -> None:
        """Raises the trial's last logged step to what the store holds (once per process).

        A driver killed between ``log_batch`` and saving the map would otherwise log that epoch
        a second time after the resume; the store itself knows the last step it has.
        """
        if trial_id in self._synced:
            return
        history = self.client().get_metric_history(run_id, S.METRIC_EPOCH)
        entry = self._map["trials"][trial_id]
        entry["last_step"] = max([int(entry.get("last_step", 0)), *(int(m.step) for m in history)])
        self._synced.add(trial_id)
        self._save_map()

    def _run_for(self, trial_id: Optional[str]) -> str:
        if trial_id is None:
            return self.ensure_parent()
        run_id = self.run_id_of(trial_id)
        if run_id is None:
            # Only reachable when the ensure op was dropped: create a bare run rather than lose data.
            run_id = self.ensure_trial(trial_id, {}, {}, reopen=False)
        return run_id

    # ------------------------------------------------------------------ typed writes
    def log_metrics(self, trial_id: str, step: int, timestamp_ms: int,
                    metrics: dict[str, float]) -> None:
        """Logs one epoch's metrics of a trial, unless that epoch is logged already."""
        from mlflow.entities import Metric

        entry = self._map.setdefault("trials", {}).get(trial_id, {})
        if step <= int(entry.get("last_step", 0)):
            return  # already logged before a restart
        run_id = self._run_for(trial_id)
        items = [Metric(k, v, timestamp_ms, step) for k, v in metrics.items()]
        for i in range(0, len(items), MAX_BATCH_METRICS):
            self.client().log_batch(run_id, metrics=items[i:i + MAX_BATCH_METRICS])
        self._map["trials"][trial_id]["last_step"] = step
        self._save_map()

    def set_tags(self, trial_id: Optional[str], tags: dict[str, str]) -> None:
        """Sets tags on a trial's run (the parent's when ``trial_id`` is None)."""
        from mlflow.entities import RunTag

        self.client().log_batch(self._run_for(trial_id), tags=[
            RunTag(k, str(v)[:MAX_TAG_CHARS]) for k, v in tags.items()])

    def log_artifact(self, trial_id: Optional[str], path: str,
                     artifact_path: Optional[str]) -> None:
        """Uploads a file or directory to a run (nothing when it no longer exists).

        ``path`` may be a store URI (a checkpoint in the job's s3:// storage): it is read
        through ``facefuse.storage`` into a temporary folder first.
        """
        if storage.is_remote(path):
            if not storage.exists(path):
                return
            with tempfile.TemporaryDirectory(prefix="facefuse-artifact-") as tmp:
                self.log_artifact(trial_id, str(storage.download(path, tmp)), artifact_path)
            return
        if not os.path.exists(path):
            return
        run_id = self._run_for(trial_id)
        if os.path.isdir(path):
            self.client().log_artifacts(run_id, path, artifact_path)
        else:
            self.client().log_artifact(run_id, path, artifact_path)

    def set_status(self, trial_id: Optional[str], status: str) -> None:
        """Sets a run's status (RUNNING when a resumed sweep reopens it)."""
        self.client().update_run(self._run_for(trial_id), status=status)

    def end(self, trial_id: Optional[str], status: str, timestamp_ms: int) -> None:
        """Ends a run with a status (FINISHED, FAILED)."""
        self.client().set_terminated(self._run_for(trial_id), status=status,
                                     end_time=timestamp_ms)

    def relabel_orphans(self, keep: set[str], confirmation: bool = False) -> None:
        """Marks trial runs of this sweep whose trial Tune no longer knows (KILLED, kind orphan).

        Only the runs of the round that ended are looked at (``confirmation``: the confirmation
        round's, else the main round's): each round is its own Tune experiment and knows only
        its own trials.

        A driver killed between starting a trial and saving Tune's experiment state leaves a run
        for a trial that the restored experiment does not contain (it samples a new trial in its
        place). Relabelled, such runs drop out of ``facefuse.kind = 'trial'`` queries, so one
        run per trial remains; their data is kept for inspection.
        """
        from mlflow.entities import RunTag

        client = self.client()
        runs = search_all_runs(client, [self.experiment_id()],
                               S.sweep_filter(self.sweep_id, S.KIND_TRIAL))
        for run in runs:
            tid = run.data.tags.get(S.TAG_TRIAL_ID)
            if tid in keep or (run.data.tags.get(S.TAG_CONFIRMATION) == "true") != confirmation:
                continue
            logger.warning("trial %s of sweep %s is not part of the restored experiment; "
                           "marking its run %s as orphaned", tid, self.sweep_id, run.info.run_id)
            client.log_batch(run.info.run_id, tags=[RunTag(S.TAG_KIND, S.KIND_ORPHANED_TRIAL),
                                                    RunTag(S.TAG_ORPHANED, "true")])
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status="KILLED")
            self._map.get("trials", {}).pop(tid, None)
        self._save_map()

    def run_for(self, trial_id: Optional[str]) -> str:
        """Returns the run id of a trial (the parent's for None), creating it when needed."""
        return self._run_for(trial_id)

    def run_handler(self, kind: str, op: Operation) -> None:
        """Runs a handed-in operation; its failures other than an outage are logged, not retried.

        A model that cannot be exported or a summary plot that fails must not hold up the queue
        of the sweep's metrics behind it.
        """
        from facefuse.tracking.queue import is_transient

        try:
            self.handlers[kind](self, op)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            if is_transient(exc):
                raise
            logger.warning("tracking operation %s for trial %s failed (%s: %s); the sweep's "
                           "runs are tracked regardless", kind, op.get("trial"),
                           type(exc).__name__, exc)

    # ------------------------------------------------------------------ queued operations
    def execute(self, op: Operation) -> None:
        """Performs one queued operation (built by the Tune callback; see ``ops`` there).

        Before the first one, checks that the store still has what the map names; an operation
        whose run or experiment the store does not have makes the writer recreate the sweep's
        runs from the journal and then performs it.
        """
        if not self._map:
            self.load_map()
        if not self._checked:
            if self._map.get(_REPLAY_KEY) is None and self._map_is_stale():
                self._forget_stale("it does not have the experiment or parent run that "
                                   f"{self.map_path} names")
            self._checked = True
        if self._map.get(_REPLAY_KEY):
            self._replay()
        try:
            self._apply(op)
        except Exception as exc:
            if not _missing_resource(exc):
                raise
            self._forget_stale(f"{type(exc).__name__}: {redact_uri(str(exc))[:200]}")
            self._replay()
            self._apply(op)
        self._journal(op)

    def _map_is_stale(self) -> bool:
        """Returns whether the store lacks the experiment or the parent run the map names."""
        client = self.client()
        try:
            exp_id = self._map.get("experiment_id")
            if exp_id:
                exp = client.get_experiment(exp_id)
                if exp.name != self.experiment_name:
                    return True
            if self._map.get("parent_run_id"):
                client.get_run(self._map["parent_run_id"])
        except Exception as exc:
            if _missing_resource(exc):
                return True
            raise
        return False

    def _forget_stale(self, why: str) -> None:
        """Resets the map (the store lost or never had its ids) and schedules the replay."""
        logger.warning("tracking store %s does not hold this sweep's runs (%s): the store was "
                       "lost or replaced; recreating the runs of sweep %s there from %s",
                       redact_uri(self.tracking_uri), why, self.sweep_id, self.journal_path)
        self._map = {"sweep_id": self.sweep_id, "tracking_uri": redact_uri(self.tracking_uri),
                     "trials": {}, _REPLAY_KEY: True}
        self._synced = set()
        self._save_map()

    def _replay(self) -> None:
        """Sends every journaled operation again (idempotent: runs are found before created)."""
        ops = self._journal_ops()
        if ops:
            logger.warning("replaying %d journaled tracking operations of sweep %s into %s",
                           len(ops), self.sweep_id, redact_uri(self.tracking_uri))
        for past in ops:
            self._apply(past)
        self._map.pop(_REPLAY_KEY, None)
        self._save_map()

    def _apply(self, op: Operation) -> None:
        kind = op["op"]
        trial = op.get("trial")
        if kind == "parent":
            self.ensure_parent()
        elif kind == "trial":
            self.ensure_trial(op["trial"], op["params"], op["tags"], op.get("reopen", False))
        elif kind == "metrics":
            self.log_metrics(op["trial"], op["step"], op["ts"], op["metrics"])
        elif kind == "tags":
            self.set_tags(trial, op["tags"])
        elif kind == "artifact":
            self.log_artifact(trial, op["path"], op.get("artifact_path"))
        elif kind == "orphans":
            self.relabel_orphans(set(op["keep"]), bool(op.get("confirmation", False)))
        elif kind == "status":
            self.set_status(trial, op["status"])
        elif kind == "end":
            self.end(trial, op["status"], op["ts"])
        elif kind == "inputs":
            from facefuse.tracking.inputs import log_inputs, refs_from_json

            log_inputs(self.client(), self._run_for(trial), refs_from_json(op["refs"]))
        elif kind in self.handlers:
            # "model", "summary": written by code of higher layers, handed in by the callback
            self.run_handler(kind, op)
        else:  # pragma: no cover - ops are built by the callback
            raise ValueError(f"unknown tracking operation {kind!r}")


def _missing_resource(exc: BaseException) -> bool:
    """Returns whether an MLflow error says a run or experiment does not exist in the store."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"
