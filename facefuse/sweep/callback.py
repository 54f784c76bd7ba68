"""The driver-side Ray Tune callback that turns Tune events into tracking operations.

Only the driver writes to the store, so a local sqlite file is safe. Each Tune event becomes
one or more operations on a durable queue (``facefuse.tracking.queue``) that the typed writer
(``facefuse.tracking.writer``) executes; an unreachable store never fails the sweep, and what is
unsent when the sweep ends is replayed when it runs again. The runs, tags and metrics written
are the tracking schema of docs/architecture.md (``facefuse.tracking.schema``):

- parent run: kind ``sweep``, the sweep id, the resolved job as an artifact; FINISHED at the end.
- trial run: nested under the parent, kind ``trial``, sweep and trial ids, the job's tags; every
  hyperparameter as a param; every reported metric with step = epoch; on completion
  ``facefuse.full_budget`` and, when ASHA stopped it early, ``facefuse.stopped_by_asha``; on
  error status FAILED with ``facefuse.error``; retried attempts in ``facefuse.failed_attempts``.

Metrics already logged for an epoch are not logged again when a resumed trial repeats it.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from ray.tune import Callback
from ray.tune import result as tune_result

from facefuse import storage
from facefuse.errors import StorageError
from facefuse.tracking import schema as S
from facefuse.data._io import atomic_write_json
from facefuse.tracking.queue import OperationQueue
from facefuse.tracking.store import redact_uri
from facefuse.tracking.names import trial_label
from facefuse.train.export import model_handler
from facefuse.train.trial import BEST_DIR, train_run_best_dir
from facefuse.tracking.writer import MAX_TAG_CHARS, SweepWriter

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

BACKLOG_FILE = "tracking_backlog.json"
#: Result keys Tune fills in itself (bookkeeping, not metrics of the model). The time an
#: iteration took is kept, as ``time/epoch_s``.
TUNE_AUTO_KEYS = frozenset(
    set(tune_result.AUTO_RESULT_KEYS) | set(tune_result.DEFAULT_EXPERIMENT_INFO_KEYS)
    | {tune_result.DONE, tune_result.SHOULD_CHECKPOINT, "experiment_id"}
) - {tune_result.TIME_THIS_ITER_S}


def result_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Returns the numeric, finite model metrics of a Tune result (Tune's bookkeeping dropped)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in TUNE_AUTO_KEYS or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            out[key] = float(value)
    if tune_result.TIME_THIS_ITER_S in out:
        out[S.METRIC_EPOCH_SECONDS] = out.pop(tune_result.TIME_THIS_ITER_S)
    return out


def result_step(result: dict[str, Any]) -> int:
    """Returns the epoch of a result (its "epoch" key, else Tune's training_iteration)."""
    epoch = result.get(S.METRIC_EPOCH)
    if isinstance(epoch, numbers.Real) and not isinstance(epoch, bool) and math.isfinite(epoch):
        return int(epoch)
    return int(result.get(tune_result.TRAINING_ITERATION, 0))


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


def _now_ms() -> int:
    return int(time.time() * 1000)


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
                 max_backoff_s: float = 30.0,
                 searched_params: Optional[list[str]] = None,
                 trial_inputs: Optional[list[dict[str, str]]] = None,
                 summary_handler: Optional[Callable[..., None]] = None,
                 roc_plot: Optional[Callable[..., Optional[Path]]] = None,
                 confirmation: bool = False,
                 end_tags: Optional[dict[str, str]] = None,
                 state_mirror: Optional[storage.MirroredDir] = None) -> None:
        self.writer = SweepWriter(tracking_uri, experiment_name, sweep_id, state_dir,
                                  sweep_tags=sweep_tags, trial_tags=trial_tags,
                                  sweep_params=sweep_params, sweep_artifacts=sweep_artifacts,
                                  artifact_location=artifact_location)
        self.trial_context = dict(trial_context or {})
        self.full_budget_epochs = full_budget_epochs
        self.flush_timeout_s = flush_timeout_s
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.searched_params = None if searched_params is None else list(searched_params)
        self.trial_inputs = list(trial_inputs or [])  # facefuse.tracking.inputs.refs_to_json
        # Written by layers above the sweep (facefuse.sweep_report), handed in by the command;
        # module-level functions, so the callback still pickles into Tune's experiment state.
        self.summary_handler = summary_handler
        self.roc_plot = roc_plot
        self.writer.handlers["model"] = model_handler
        if summary_handler is not None:
            self.writer.handlers["summary"] = summary_handler
        # A confirmation round is a second Tune run of the same sweep: its trials are tagged,
        # it neither marks the sweep resumed nor touches the main round's trial counts, and its
        # orphan check looks at its own trials only.
        self.confirmation = confirmation
        self.end_tags = dict(end_tags or {})
        #: With storage in a store, state_dir is a local copy of the sweep's state there.
        self.state_mirror = state_mirror
        self._init_runtime()

    # ------------------------------------------------------------------ state
    @property
    def sweep_id(self) -> str:
        return self.writer.sweep_id

    @property
    def state_dir(self) -> Path:
        return self.writer.state_dir

    def _init_runtime(self) -> None:
        self._queue = OperationQueue(self.state_dir / BACKLOG_FILE,
                                     redact_uri(self.writer.tracking_uri), self.writer.execute,
                                     self.initial_backoff_s, self.max_backoff_s)
        self._enqueued_step: dict[str, int] = {}
        self._loaded = False
        self._started = False
        self.final_trials: list[Any] = []

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles the RunConfig (and so this callback) into tuner.pkl: keep only settings.
        return {k: v for k, v in self.__dict__.items()
                if not k.startswith("_") and k != "final_trials"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    def get_state(self) -> Optional[dict]:
        return None  # persisted in our own files, which survive a killed driver

    @property
    def parent_run_id(self) -> Optional[str]:
        """Returns the sweep's parent run id once created."""
        return self.writer.parent_run_id

    @property
    def experiment_id(self) -> Optional[str]:
        """Returns the MLflow experiment id once the experiment is known."""
        return self.writer.known_experiment_id

    def run_id_of(self, trial_id: str) -> Optional[str]:
        """Returns the MLflow run id of a trial once created."""
        return self.writer.run_id_of(trial_id)

    @property
    def pending_operations(self) -> int:
        """Returns how many writes wait for the store."""
        return len(self._queue)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        self.writer.load_map()
        self._queue.load_backlog()
        self._enqueued_step = self.writer.last_steps()
        for op in self._queue:
            if op["op"] == "metrics":
                self._enqueued_step[op["trial"]] = max(self._enqueued_step.get(op["trial"], 0),
                                                       op["step"])

    def _enqueue(self, op: dict[str, Any]) -> None:
        self._queue.put(op)

    def _drain(self, force: bool = False) -> bool:
        self._load()
        done = self._queue.drain(force)
        self._push_state(force=False)
        return done

    def flush(self, timeout_s: Optional[float] = None) -> bool:
        """Returns True when every buffered write reached the store within the timeout."""
        self._load()
        done = self._queue.flush(self.flush_timeout_s if timeout_s is None else timeout_s)
        self._push_state(force=True)
        return done

    def _push_state(self, force: bool) -> None:
        """Pushes the run map, backlog and journal to the job's storage when it is a store."""
        if self.state_mirror is None:
            return
        try:
            self.state_mirror.push(force=force)
        except StorageError as exc:
            # The sweep goes on; the next push sends what this one could not.
            logger.warning("sweep state not saved to %s yet: %s", self.state_mirror.remote, exc)

    def _trial_queued(self, trial_id: str) -> bool:
        return self.run_id_of(trial_id) is not None or any(
            op["op"] == "trial" and op["trial"] == trial_id for op in self._queue)

    # ------------------------------------------------------------------ Tune hooks
    def start(self) -> None:
        """Creates the experiment and the parent run (buffered if the store is down)."""
        self._load()
        if self._started:
            return
        self._started = True
        if self.parent_run_id is None and not any(op["op"] == "parent" for op in self._queue):
            self._enqueue({"op": "parent"})
        elif self.confirmation:
            self._enqueue({"op": "status", "trial": None, "status": "RUNNING"})
        else:
            # The same sweep runs again (resume): the parent is running again until it ends.
            self._enqueue({"op": "status", "trial": None, "status": "RUNNING"})
            self._enqueue({"op": "tags", "trial": None, "tags": {S.TAG_RESUMED: "true"}})
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
        flat = S.flat_config(dict(trial.config))
        tags = {S.TAG_TRIAL_NAME: str(trial),
                S.TAG_RUN_NAME: trial_label(trial, self.searched_params)}
        if flat.get("variant") is not None:
            tags[S.TAG_VARIANT] = str(flat["variant"])
        if flat.get("seed") is not None:
            tags[S.TAG_SEED] = str(flat["seed"])
        if self.confirmation:
            # In the op itself, so a backlog replayed by another round's writer keeps it.
            tags[S.TAG_CONFIRMATION] = "true"
        self._enqueue({"op": "trial", "trial": tid, "params": dict(trial.config), "tags": tags,
                       "reopen": reopen})
        if self.trial_inputs:
            self._enqueue({"op": "inputs", "trial": tid, "refs": self.trial_inputs})
        self._drain()

    def on_trial_start(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        # A trial that is started again after a driver restart has a run already: reopen it.
        self._load()
        self._trial_started(trial, reopen=self.run_id_of(trial.trial_id) is not None)

    def on_trial_restore(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self._trial_started(trial, reopen=True)

    def on_trial_result(self, iteration: int, trials: list, trial: "Trial", result: dict,
                        **info: Any) -> None:
        self._load()
        tid = trial.trial_id
        if not self._trial_queued(tid):
            self._trial_started(trial, reopen=False)
        step = result_step(result)
        if step <= self._enqueued_step.get(tid, 0):
            logger.debug("trial %s repeated epoch %d after a restart; not logged twice", tid, step)
            return
        self._enqueued_step[tid] = step
        self._enqueue({"op": "metrics", "trial": tid, "step": step, "ts": _now_ms(),
                       "metrics": result_metrics(result)})
        self._drain()

    def on_trial_recover(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        reason, _ = error_text(trial)
        self._enqueue({"op": "tags", "trial": trial.trial_id, "tags": {
            S.TAG_FAILED_ATTEMPTS: str(int(trial.num_failures)),
            S.TAG_LAST_ATTEMPT_ERROR: reason}})
        self._drain()

    def on_trial_complete(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self._finish_trial(trial, failed=False)

    def on_trial_error(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        self._finish_trial(trial, failed=True)

    def _finish_trial(self, trial: "Trial", failed: bool) -> None:
        self._load()
        tid = trial.trial_id
        if not self._trial_queued(tid):
            self._trial_started(trial, reopen=False)
        epochs_done = self._enqueued_step.get(tid, 0)
        full = self.full_budget_epochs is not None and epochs_done >= self.full_budget_epochs
        tags = {S.TAG_FULL_BUDGET: str(bool(full)).lower(),
                S.TAG_EPOCHS_DONE: str(epochs_done),
                S.TAG_FAILED_ATTEMPTS: str(int(trial.num_failures))}
        if failed:
            reason, trace = error_text(trial)
            tags.update({S.TAG_ERROR: reason, S.TAG_ERROR_TRACE: trace})
        elif not full:
            tags[S.TAG_STOPPED_BY_ASHA] = "true"
        self._enqueue({"op": "tags", "trial": tid, "tags": tags})
        for path, artifact_path in self._trial_artifacts(trial):
            self._enqueue({"op": "artifact", "trial": tid, "path": path,
                           "artifact_path": artifact_path})
        model = None if failed else self._best_model_file(trial)
        if model is not None:
            self._enqueue({"op": "model", "trial": tid, "path": model})
        self._enqueue({"op": "end", "trial": tid, "status": "FAILED" if failed else "FINISHED",
                       "ts": _now_ms()})
        if self.summary_handler is not None and not any(
                op["op"] == "summary" for op in self._queue):  # one pending summary is enough
            self._enqueue(self._summary_op(final=False))
        self._drain()

    def _summary_op(self, final: bool) -> dict[str, Any]:
        return {"op": "summary", "trial": None, "final": final,
                "datasets": list(self.trial_context.get("eval_datasets") or [])}

    def _best_dir(self, trial: "Trial") -> Optional[str]:
        """Returns the path or store URI of the folder holding the trial's best model and ROC
        data, or None.

        In order: a trainable's own ``best_checkpoint/`` in the driver's copy of the trial
        folder (the self-test); ``best/`` of the trial's latest Tune checkpoint (one-worker
        trials); ``best/`` of the latest checkpoint of the trial's Ray Train run (multi-worker
        trials: Tune never holds their checkpoints). Checkpoints are read through
        ``facefuse.storage``, so they may be in a store.
        """
        local = Path(trial.local_path or "") / S.ARTIFACT_BEST_CHECKPOINT
        if trial.local_path and local.is_dir():
            return str(local)
        ckpt = getattr(trial, "checkpoint", None)
        if ckpt is not None and getattr(ckpt, "path", None):
            best = storage.join(storage.uri_of(getattr(ckpt, "filesystem", None), ckpt.path),
                                BEST_DIR)
            if storage.exists(best):
                return best
        trial_storage = getattr(trial, "storage", None)
        if trial_storage is None:
            return None
        experiment = storage.uri_of(trial_storage.storage_filesystem,
                                    trial_storage.experiment_fs_path)
        return train_run_best_dir(experiment, trial.trial_id)

    def _best_model_file(self, trial: "Trial") -> Optional[str]:
        """Returns the trainable's best model file (model.pt of its best folder), or None."""
        best = self._best_dir(trial)
        if best is None:
            return None
        model = storage.join(best, "model.pt")
        return model if storage.exists(model) else None

    def _roc_plot(self, trial: "Trial", npz: list[str]) -> Optional[str]:
        """Returns the path of the trial's ROC picture (drawn here, in the driver), or None.

        The ROC data may be in a store: it is read into a temporary folder for the plot.
        """
        if not npz or self.roc_plot is None:
            return None
        out = self.state_dir / "trial_plots" / trial.trial_id / "roc.png"
        try:
            with tempfile.TemporaryDirectory(prefix="facefuse-roc-") as tmp:
                local = [storage.download(u, tmp) for u in npz]
                metrics_uri = storage.join(npz[0].rsplit("/", 1)[0], "metrics.json")
                metrics = (storage.download(metrics_uri, tmp) if storage.exists(metrics_uri)
                           else None)
                path = self.roc_plot(local, metrics, trial_label(trial, self.searched_params),
                                     S.flat_config(dict(trial.config)).get("beta"), out)
        except (OSError, ValueError, KeyError, StorageError) as exc:
            logger.warning("no ROC picture for trial %s: %s", trial.trial_id, exc)
            return None
        return None if path is None else str(path)

    def _trial_artifacts(self, trial: "Trial") -> list[tuple[str, Optional[str]]]:
        """Returns (path or store URI, artifact dir) pairs: resolved config, ROC files, best
        checkpoint (the writer reads store URIs through ``facefuse.storage``)."""
        out: list[tuple[str, Optional[str]]] = []
        cfg_path = self.state_dir / "trial_configs" / f"{trial.trial_id}.json"
        atomic_write_json(cfg_path, {"config": dict(trial.config), "context": self.trial_context,
                              "sweep_id": self.sweep_id, "trial_id": trial.trial_id})
        out.append((str(cfg_path), S.ARTIFACT_CONFIG))
        # The self-test writes ROC files beside its best folder, the real trainable inside it.
        trial_dir = Path(trial.local_path or "")
        if trial.local_path and trial_dir.is_dir():
            for p in sorted(trial_dir.glob("roc_*.npz")) + sorted(trial_dir.glob("roc_*.png")):
                out.append((str(p), S.ARTIFACT_ROC))
        try:
            best = self._best_dir(trial)
            files = storage.listing(best) if best is not None else []
        except StorageError as exc:
            logger.warning("trial %s: its best checkpoint cannot be read (%s); not logged",
                           trial.trial_id, exc)
            best, files = None, []
        if best is not None:
            out.append((best, S.ARTIFACT_BEST_CHECKPOINT))
            out += [(f.uri, S.ARTIFACT_ROC) for f in files
                    if f.name.startswith("roc_") and f.name.endswith((".npz", ".png"))
                    and (f.uri, S.ARTIFACT_ROC) not in out]
        plot = self._roc_plot(trial, [p for p, d in out
                                      if d == S.ARTIFACT_ROC and p.endswith(".npz")])
        if plot is not None:
            out.append((plot, S.ARTIFACT_ROC))
        return out

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if len(self._queue):
            self._drain()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._load()
        self.final_trials = list(trials)
        failed = sum(1 for t in trials if t.status == "ERROR")
        self._enqueue({"op": "orphans", "keep": sorted(t.trial_id for t in trials),
                       "confirmation": self.confirmation})
        counts = ({S.TAG_CONFIRMATION_TRIALS: str(len(trials))} if self.confirmation else
                  {S.TAG_TRIALS_TOTAL: str(len(trials)), S.TAG_TRIALS_FAILED: str(failed)})
        self._enqueue({"op": "tags", "trial": None, "tags": {**counts, **self.end_tags}})
        if self.summary_handler is not None:
            self._enqueue(self._summary_op(final=True))
        self._enqueue({"op": "end", "trial": None, "status": "FINISHED", "ts": _now_ms()})
        self.flush()
