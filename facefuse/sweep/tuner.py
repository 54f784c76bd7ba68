"""The one place where a job becomes a Ray Tune run: Optuna TPE + ASHA + MLflow tracking.

``run_sweep(job)`` resolves every path in the driver, joins the Ray cluster named by
RAY_ADDRESS (``ray job submit`` sets it) or starts a local one, and then either restores the
sweep's Tune experiment (same job, same storage: it continues, finished trials are not rerun)
or starts it. The sweep id is the job name plus a hash of what defines its results, so running
the same job again finds the same experiment, the same Optuna study name and the same MLflow
runs.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from facefuse import storage
from facefuse.errors import ConfigError, StorageError
from facefuse.sweep.console import ConsoleReporter, tune_output, tune_verbosity
from facefuse.sweep.jobs import (JobSpec, dataset_quality, fixed_config, resolve_paths,
                                 trial_context)
from facefuse.sweep.study import ensure_study_schema, study_storage
from facefuse.sweep.spaces import check_against_fixed, load_search_space
from facefuse.tracking import schema as S
from facefuse.data._io import atomic_write_json
from facefuse.tracking.store import redact_uri

logger = logging.getLogger(__name__)

DEFAULT_TRAINABLE = "facefuse.train.run_trial"
SWEEP_STATE_FILE = "facefuse_sweep.json"
#: With storage in a store, the sweep's own state lives in <storage>/<sweep id>/<this>.
STATE_SUBDIR = "facefuse_state"
#: A trial that runs a TorchTrainer only waits on its workers; it reserves this much CPU itself.
TRAINER_TRIAL_CPUS = 0.25
#: How much of ``resources.train_driver_resource`` one such trial takes instead of CPU (a node
#: declaring 1 of it holds 100 Train drivers, even a head with CPU 0 that takes no trials; the
#: Train controller actor follows the trial onto that node).
TRAIN_DRIVER_RESOURCE_AMOUNT = 0.01

Trainable = Union[str, Callable[..., None]]


@dataclass
class TrialSummary:
    """One trial of a finished (or interrupted) sweep."""

    trial_id: str
    status: str  # TERMINATED | ERROR | ...
    config: dict[str, Any]
    epochs_done: int
    objective: Optional[float]
    run_id: Optional[str]
    error: Optional[str] = None


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: where everything went and the best trial."""

    sweep_id: str
    experiment_name: str
    tracking_uri: str  # the store itself (credentials included): connect with this one
    experiment_path: str
    parent_run_id: Optional[str]
    trials: list[TrialSummary] = field(default_factory=list)
    best: Optional[TrialSummary] = None
    resumed: bool = False
    wall_s: float = 0.0
    pending_tracking_ops: int = 0
    experiment_id: Optional[str] = None
    #: The confirmation round (``selection.confirm_top``): its trials and the betas it reran.
    confirmation_trials: list[TrialSummary] = field(default_factory=list)
    confirmed_betas: list[float] = field(default_factory=list)

    @property
    def shown_tracking_uri(self) -> str:
        """Returns the tracking URI with credentials redacted, for printing and logs."""
        return redact_uri(self.tracking_uri)

    @property
    def num_errors(self) -> int:
        """Returns how many trials ended in error."""
        return sum(1 for t in self.trials if t.status == "ERROR")


# --------------------------------------------------------------------------- helpers
def sweep_id_for(job: JobSpec, trainable_name: str = DEFAULT_TRAINABLE,
                 param_space: Optional[dict[str, Any]] = None) -> str:
    """Returns the deterministic sweep id: job name + 10 hex digits of the job's identity hash.

    A trainable other than the default (the self-test) gets its own id, so that a self-test run
    of a job is never resumed as that job's real sweep; so does every distinct ``param_space``
    (an ablation grid), so that the same job run with other seeds, betas or variants is a new
    sweep rather than a resume of the first grid.
    """
    digest = job.identity_hash()
    if trainable_name != DEFAULT_TRAINABLE:
        digest = hashlib.sha256(f"{digest}:{trainable_name}".encode()).hexdigest()
    if param_space is not None:
        space = json.dumps(param_space, sort_keys=True, default=_stable_form)
        digest = hashlib.sha256(f"{digest}:{space}".encode()).hexdigest()
    return f"{job.name}-{digest[:10]}"


def _stable_form(obj: Any) -> Any:
    """Returns a JSON-able form of a param-space value that is the same in every process.

    Tune's domains (tune.uniform, tune.choice, ...) have default reprs holding memory addresses;
    their type and attributes (bounds, categories, sampler) identify them instead.
    """
    if callable(obj) and not hasattr(obj, "__dict__"):
        return getattr(obj, "__qualname__", type(obj).__qualname__)
    attrs = getattr(obj, "__dict__", None)
    if attrs is None:
        return f"{type(obj).__qualname__}:{obj!r}"
    if callable(obj) and hasattr(obj, "__qualname__"):  # functions, e.g. tune.sample_from(f)
        return f"{obj.__module__}.{obj.__qualname__}"
    return {"__type__": type(obj).__qualname__, **{k: v for k, v in sorted(attrs.items())}}


def resolve_trainable(trainable: Optional[Trainable]) -> Callable[..., None]:
    """Returns the trainable function (imported from "module.attr" when given as a string)."""
    if trainable is None:
        trainable = DEFAULT_TRAINABLE
    if callable(trainable):
        return trainable
    module_name, _, attr = str(trainable).rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(None, f"cannot import trainable {trainable!r}: {exc}",
                          field="trainable", fix="give 'package.module.function'")
    if not callable(fn):
        raise ConfigError(None, f"trainable {trainable!r} is not callable", field="trainable")
    if fn.__module__.split(".")[0] == "platform":
        # Workers started without a runtime_env hold the standard-library platform module.
        raise ConfigError(None, f"trainable {trainable!r} lives under platform/", field="trainable",
                          fix="move it into the facefuse package (docs/architecture.md, "
                              "\"Why platform/ carries the standard module\")")
    return fn


def _trainable_name(fn: Callable[..., None]) -> str:
    """Returns DEFAULT_TRAINABLE for the default trainable, else the function's import path."""
    try:
        if fn is resolve_trainable(DEFAULT_TRAINABLE):
            return DEFAULT_TRAINABLE
    except ConfigError:
        pass
    return f"{fn.__module__}.{fn.__qualname__}"


def git_commit(cwd: Optional[Path] = None) -> str:
    """Returns the git commit of the working tree (suffix "-dirty"), else $FACEFUSE_GIT_COMMIT."""
    env = os.environ.get("FACEFUSE_GIT_COMMIT")
    if env:
        return env
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def checkpoint_sha256(path: str) -> str:
    """Returns the sha256 of a checkpoint file, or "missing"."""
    if not os.path.isfile(path):
        return "missing"
    try:
        from facefuse.backbones import checkpoint_hash  # type: ignore[attr-defined]

        return str(checkpoint_hash(path))
    except (ImportError, AttributeError):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


def init_ray(**kwargs: Any) -> None:
    """Joins RAY_ADDRESS when set, else starts a local Ray sized to the machine (dashboard on).

    The dashboard (the researcher's view of the cluster) binds to 127.0.0.1 unless the caller
    says otherwise. The placement groups of Train trials Tune stops are freed without it
    (``facefuse.train.reaper``).
    """
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
        return
    kwargs.setdefault("include_dashboard", True)
    kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(**kwargs)


def _trial_resources(job: JobSpec) -> dict[str, float]:
    r = job.resources
    if r.workers_per_trial > 1:
        if r.train_driver_resource:
            return {"cpu": 0, r.train_driver_resource: TRAIN_DRIVER_RESOURCE_AMOUNT}
        return {"cpu": TRAINER_TRIAL_CPUS}
    return {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker}


def _check_cluster_fits(job: JobSpec) -> None:
    import ray

    r = job.resources
    driver_cpu = TRAINER_TRIAL_CPUS if r.workers_per_trial > 1 and not r.train_driver_resource \
        else 0
    need_cpu = r.workers_per_trial * r.cpus_per_worker + driver_cpu
    need_gpu = r.workers_per_trial * r.gpus_per_worker
    have = ray.cluster_resources()
    short = []
    if need_cpu > have.get("CPU", 0):
        short.append(f"{need_cpu:g} CPUs (cluster has {have.get('CPU', 0):g})")
    if need_gpu > have.get("GPU", 0):
        short.append(f"{need_gpu:g} GPUs (cluster has {have.get('GPU', 0):g})")
    custom = r.train_driver_resource if r.workers_per_trial > 1 else None
    if custom and have.get(custom, 0) < TRAIN_DRIVER_RESOURCE_AMOUNT:
        short.append(f"the custom resource {custom!r} for its Train driver (no node declares "
                     "it: ray start --resources='{\"" + custom + "\": 1}')")
    if short:
        msg = f"one trial needs {' and '.join(short)}"
        if os.environ.get("RAY_ADDRESS"):
            # An autoscaling cluster may add nodes; say so and let Tune wait.
            logger.warning("%s; waiting for the autoscaler", msg)
        else:
            raise ConfigError(job.source, msg, field="resources",
                              fix="lower resources.workers_per_trial / cpus_per_worker / "
                                  "gpus_per_worker, or run on a cluster (RAY_ADDRESS)")


def _wrap(fn: Callable[..., None], job: JobSpec, context: dict[str, Any]) -> Any:
    from ray import tune

    params = inspect.signature(fn).parameters
    wrapped: Any = fn
    if "context" in params:
        wrapped = tune.with_parameters(fn, context=context)
    return tune.with_resources(wrapped, _trial_resources(job))


def _local_storage(job: JobSpec) -> bool:
    return not storage.is_remote(str(job.storage))


def _experiment_path(job: JobSpec, name: str) -> str:
    """Returns the URI (or local path) of a Tune experiment in the job's storage."""
    return storage.join(str(job.storage), name)


def _choose_sweep_id(job: JobSpec, resume: bool, trainable_name: str,
                     param_space: Optional[dict[str, Any]] = None) -> str:
    base = sweep_id_for(job, trainable_name, param_space)
    if resume:
        return base
    sweep_id, n = base, 1
    while storage.exists(_experiment_path(job, sweep_id)):
        n += 1
        sweep_id = f"{base}-{n}"
    return sweep_id


def _state_dir(job: JobSpec, sweep_id: str) -> tuple[Path, Optional[storage.MirroredDir]]:
    """Returns (the folder of the sweep's own state, its mirror in a store or None).

    Local or shared storage: ``<storage>/<sweep id>``. Storage in a store:
    ``<storage>/<sweep id>/facefuse_state``, read into a temporary folder of the driver and
    pushed back after writes (``storage.MirroredDir``), so a driver started anywhere (a new
    ``ray job submit``) finds the run map, backlog and journal of the last one.
    """
    if _local_storage(job):
        return Path(job.storage) / sweep_id, None
    import tempfile

    from facefuse.tracking.writer import JOURNAL_FILE

    local = Path(tempfile.mkdtemp(prefix=f"facefuse-state-{sweep_id}-"))
    mirror = storage.MirroredDir(storage.join(_experiment_path(job, sweep_id), STATE_SUBDIR),
                                 local, append_only=(JOURNAL_FILE,))
    mirror.pull()
    return local, mirror


def _artifact_location(tracking_uri: str, experiment: str) -> Optional[str]:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None  # a tracking server decides where artifacts go


def build_callback(job: JobSpec, sweep_id: str, state_dir: Path, context: dict[str, Any],
                   flush_timeout_s: float = 120.0,
                   searched_params: Optional[list[str]] = None,
                   summary_handler: Optional[Callable[..., None]] = None,
                   roc_plot: Optional[Callable[..., Any]] = None, confirmation: bool = False,
                   end_tags: Optional[dict[str, str]] = None,
                   state_mirror: Optional[storage.MirroredDir] = None) -> "Any":
    """Returns the MLflow tracking callback of a resolved job (of its confirmation round)."""
    from facefuse.sweep.callback import MlflowTrackingCallback

    commit = git_commit(Path.cwd())
    quality = (job.objective.quality if job.objective.quality is not None
               else dataset_quality(job.objective.dataset or ""))
    arc_hash = checkpoint_sha256(job.backbones.arcface)
    ada_hash = checkpoint_sha256(job.backbones.adaface)
    common = {
        S.TAG_DATASETS: ",".join(job.data.eval),
        S.TAG_TRAIN_DATASET: job.data.train,
        S.TAG_QUALITY: quality,
        S.TAG_QUALITIES: ",".join(f"{d}:{dataset_quality(d)}" for d in job.data.eval),
        S.TAG_OBJECTIVE: job.objective.describe(),
        S.TAG_ARCFACE_SHA256: arc_hash,
        S.TAG_ADAFACE_SHA256: ada_hash,
        S.TAG_GIT_COMMIT: commit,
        S.TAG_JOB: job.name,
        S.TAG_SEARCH_SPACE: os.path.basename(job.search_space),
        # the runs table's Source column: the job file that made the run, and its commit
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": job.source or job.name,
        "mlflow.source.git.commit": commit,
    }
    if job.variant:
        common[S.TAG_VARIANT] = job.variant
    if job.selection.validation:
        common[S.TAG_VALIDATION] = ",".join(job.selection.validation)
    job_json = state_dir / "resolved_job.json"
    atomic_write_json(job_json, {"sweep_id": sweep_id, "job": job.to_dict()})
    sweep_params = {k: v for k, v in job.to_dict().items()
                    if k not in ("tracking", "source", "resolved", "params")}
    sweep_params["fixed"] = dict(job.params)
    return MlflowTrackingCallback(
        tracking_uri=job.tracking.uri or "", experiment_name=job.experiment_name,
        sweep_id=sweep_id, state_dir=str(state_dir),
        sweep_tags={**common, S.TAG_JOB_HASH: job.identity_hash(),
                    S.TAG_JOB_FILE: job.source or ""},
        trial_tags=common, sweep_params=sweep_params,
        sweep_artifacts=[str(job_json), job.search_space],
        trial_context=context, full_budget_epochs=job.max_t,
        artifact_location=(job.tracking.artifact_location
                           or _artifact_location(job.tracking.uri or "", job.experiment_name)),
        flush_timeout_s=flush_timeout_s, searched_params=searched_params,
        trial_inputs=_trial_inputs(job), summary_handler=summary_handler,
        roc_plot=roc_plot, confirmation=confirmation, end_tags=end_tags,
        state_mirror=state_mirror)


def _trial_inputs(job: JobSpec) -> list[dict[str, str]]:
    """Returns the job's datasets as MLflow dataset inputs (plain dicts), fingerprinted once."""
    from facefuse.tracking.inputs import refs_to_json, sweep_datasets

    refs = sweep_datasets(str(job.data.root), job.data.train, list(job.data.eval),
                          trial_context(job).get("objective") or {})
    return refs_to_json(refs)


def _searched_params(space: Any, param_space: Optional[dict[str, Any]]) -> list[str]:
    """Returns the names of the params a sweep varies (run names show them)."""
    if param_space is None:
        return list(space.names)
    names: list[str] = []
    for key, value in param_space.items():
        grid = value.get("grid_search") if isinstance(value, dict) else None
        if grid is None:
            if not isinstance(value, (dict, list, str, int, float, bool)) and value is not None:
                names.append(key)  # a Tune domain (tune.uniform, ...)
            continue
        entries = [e if isinstance(e, dict) else {key: e} for e in grid]
        axes: list[str] = []
        for name in dict.fromkeys(k for e in entries for k in e):
            if len({repr(e.get(name)) for e in entries}) < 2:
                continue
            # An ablation entry also sets the switches its variant implies: a value fixed by an
            # axis already named is not an axis of its own.
            if any(all(len({repr(e.get(name)) for e in entries if repr(e.get(a)) == v}) == 1
                       for v in {repr(e.get(a)) for e in entries}) for a in axes):
                continue
            axes.append(name)
        names += [a for a in axes if a not in names]
    return names


def _write_sweep_state(state_dir: Path, sweep_id: str, job: JobSpec) -> None:
    path = state_dir / SWEEP_STATE_FILE
    if path.exists():
        return
    atomic_write_json(path, {"sweep_id": sweep_id, "job_hash": job.identity_hash(),
                      "job_file": job.source, "created": time.time()})


def _summaries(trials: list[Any], callback: Any) -> list[TrialSummary]:
    from facefuse.sweep.callback import error_text

    out = []
    for trial in trials:
        last = trial.last_result or {}
        obj = last.get("objective")
        out.append(TrialSummary(
            trial_id=trial.trial_id, status=str(trial.status), config=dict(trial.config),
            epochs_done=int(last.get("epoch", last.get("training_iteration", 0)) or 0),
            objective=None if obj is None else float(obj),
            run_id=callback.run_id_of(trial.trial_id),
            error=error_text(trial)[0] if trial.status == "ERROR" else None))
    return out


def _best(trials: list[TrialSummary], epochs: int) -> Optional[TrialSummary]:
    # ASHA-stopped trials report early-epoch values: prefer trials that used the whole budget.
    done = [t for t in trials if t.status != "ERROR" and t.objective is not None]
    full = [t for t in done if t.epochs_done >= epochs]
    pool = full or done
    return max(pool, key=lambda t: t.objective) if pool else None


#: ASHA's time attribute and Optuna's step: the epoch the loop reports. Tune's own
#: training_iteration starts again at 1 when a multi-worker trial is retried (its TorchTrainer
#: resumes from its Train run, Tune never held a checkpoint), so ASHA would compare epoch 3 with
#: others' epoch 1 and Optuna would see step 1 twice.
TIME_ATTR = S.METRIC_EPOCH


def _asha(job: JobSpec, **kw: Any) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, max_t=job.max_t,
                         grace_period=job.asha.grace_period,
                         reduction_factor=job.asha.reduction_factor, **kw)


def _can_restore(path: str) -> bool:
    """Returns whether the experiment at a path or store URI can be restored."""
    from ray import tune

    ray_path, fs = storage.ray_storage(path)
    return tune.Tuner.can_restore(ray_path, storage_filesystem=fs)


def _run_config(job: JobSpec, name: str, **kw: Any) -> Any:
    """Returns Tune's RunConfig of an experiment in the job's storage (a path or a store)."""
    from ray import tune

    path, fs = storage.ray_storage(str(job.storage))
    return tune.RunConfig(name=name, storage_path=path, storage_filesystem=fs, **kw)


def _restore(path: str, wrapped: Any, run_config: Any, retry_errored: bool) -> Any:
    """Returns the Tuner of a stored Tune experiment, with today's callbacks and retries."""
    from ray import tune

    ray_path, fs = storage.ray_storage(path)
    tuner = tune.Tuner.restore(ray_path, trainable=wrapped, resume_unfinished=True,
                               resume_errored=retry_errored, storage_filesystem=fs)
    # tuner.pkl holds the run config of the first run; today's callback (tracking URI,
    # retries) and failure settings replace it.
    restored = tuner._local_tuner.get_run_config() if getattr(tuner, "_local_tuner", None) \
        else None
    if restored is not None:
        restored.callbacks = run_config.callbacks
        restored.verbose = run_config.verbose
        restored.failure_config = run_config.failure_config
    else:  # pragma: no cover - only with Ray Client
        logger.warning("could not replace the restored callbacks; using the pickled ones")
    return tuner


# --------------------------------------------------------------------------- confirmation round
CONFIRM_SUFFIX = "-confirm"
#: Key of the confirmation round's grid_search (whole trial configs; flattened by trainables).
CONFIRM_KEY = "confirm"


def confirmation_betas(trials: list[TrialSummary], epochs: int, k: int) -> list[float]:
    """Returns the top ``k`` distinct betas of a round, best full-budget objective first.

    The objective is the selection part's (or the job's validation sets'), so this is the
    estimator's own view of the trials; ASHA-stopped trials report early-epoch values that are
    not comparable (docs/architecture.md, "Filters") and are left out.
    """
    full = [t for t in trials if t.status != "ERROR" and t.objective is not None
            and t.epochs_done >= epochs and "beta" in S.flat_config(t.config)]
    out: list[float] = []
    for t in sorted(full, key=lambda t: -float(t.objective or 0.0)):
        beta = float(S.flat_config(t.config)["beta"])
        if beta not in out:
            out.append(beta)
        if len(out) == k:
            break
    return out


def confirmation_configs(trials: list[TrialSummary], betas: list[float], seeds: list[int]
                         ) -> list[dict[str, Any]]:
    """Returns one trial config per (beta, seed): the best trial of that beta with a new seed."""
    out = []
    for beta in betas:
        best = max((t for t in trials if t.objective is not None
                    and float(S.flat_config(t.config).get("beta", "nan")) == beta),
                   key=lambda t: float(t.objective or 0.0))
        base = {k: v for k, v in S.flat_config(best.config).items() if k != "seed"}
        out.extend({**base, "seed": s} for s in seeds)
    return out


def _confirmation_round(job: JobSpec, wrapped: Any, context: dict[str, Any], sweep_id: str,
                        state_dir: Path, trials: list[TrialSummary], betas: list[float],
                        resume: bool, retry_errored: bool, flush_timeout_s: float,
                        verbose: bool = False, callback_kwargs: Optional[dict[str, Any]] = None,
                        state_mirror: Optional[storage.MirroredDir] = None
                        ) -> tuple[list[TrialSummary], Any]:
    """Returns (the confirmation round's trials, its callback) after running or resuming it.

    The round is its own Tune experiment (``<sweep id>-confirm`` in the same storage, so a
    rerun restores it instead of running it again) under the sweep's MLflow parent run.
    """
    from ray import tune

    if not betas:
        logger.warning("sweep %s: no full-budget trial with a beta; no confirmation round",
                       sweep_id)
        return [], None
    name = sweep_id + CONFIRM_SUFFIX
    path = _experiment_path(job, name)
    kwargs = dict(callback_kwargs or {})
    callback = build_callback(job, sweep_id, state_dir, context, flush_timeout_s,
                              confirmation=True, end_tags={
                                  S.TAG_CONFIRMED_BETAS: ",".join(f"{b:g}" for b in betas)},
                              state_mirror=state_mirror, **kwargs)
    callback.start()
    run_config = _run_config(
        job, name,
        callbacks=[callback, ConsoleReporter(None, kwargs.get("searched_params"))],
        failure_config=tune.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=tune_verbosity(verbose))
    if resume and _can_restore(path):
        logger.info("resuming the confirmation round of sweep %s", sweep_id)
        tuner = _restore(path, wrapped, run_config, retry_errored)
    else:
        # Seeds the main round did not use: the round measures seed noise at each beta.
        seeds = [job.seed + 1 + i for i in range(job.selection.seeds)]
        configs = confirmation_configs(trials, betas, seeds)
        logger.info("sweep %s: confirming betas %s with %d seeds each (%d trials)", sweep_id,
                    betas, len(seeds), len(configs))
        tuner = tune.Tuner(
            wrapped, param_space={**fixed_config(job), CONFIRM_KEY: tune.grid_search(configs)},
            tune_config=tune.TuneConfig(metric="objective", mode="max", num_samples=1,
                                        max_concurrent_trials=job.resources.max_concurrent_trials),
            run_config=run_config)
    with tune_output(verbose):
        tuner.fit()
    callback.flush()
    return _summaries(callback.final_trials, callback), callback


# --------------------------------------------------------------------------- the sweep
def run_sweep(job: JobSpec, trainable: Optional[Trainable] = None, resume: bool = True,
              retry_errored: bool = False, flush_timeout_s: float = 120.0,
              ray_init_kwargs: Optional[dict[str, Any]] = None,
              param_space: Optional[dict[str, Any]] = None,
              use_asha: bool = True, verbose: bool = False,
              summary_handler: Optional[Callable[..., None]] = None,
              roc_plot: Optional[Callable[..., Any]] = None) -> SweepResult:
    """Returns the result of running (or resuming) a job's sweep to completion.

    ``trainable``: a function ``f(config)`` or ``f(config, context)`` reporting once per epoch
    with ``ray.tune.report``, ``epoch`` (1, 2, ...) among its metrics (ASHA and Optuna count
    it), or its import path; default ``facefuse.train.run_trial``.
    ``resume``: continue this job's experiment when its storage holds one (finished trials are
    kept, unfinished ones continue from their checkpoints); False starts a new sweep id.
    ``retry_errored``: on resume, also retry trials that had failed (from their checkpoints).
    ``param_space``: a Tune param space (e.g. a ``tune.grid_search`` of ablation variants) used
    instead of the job's search space and Optuna; the job's fixed params are its base, and
    ``num_samples`` is 1 (each grid point once) unless the space holds no grid.
    ``use_asha``: False runs every trial to the full budget (ablations).
    ``verbose``: Tune's own result boxes and status tables; otherwise one log line per trial
    event (``facefuse.sweep.console``).
    ``summary_handler``, ``roc_plot``: the parent-run summary and a trial's ROC picture
    (``facefuse.sweep_report``; the command hands them in, the sweep layer cannot import them).
    With ``selection.confirm_top`` the job's top betas then run again with new seeds in a
    confirmation round (``_confirmation_round``; ``result.confirmation_trials``).
    """
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    import optuna

    from facefuse.sweep.searcher import EpochOptunaSearch

    t0 = time.perf_counter()
    if not job.resolved:
        job = resolve_paths(job)
    space = load_search_space(job.search_space)
    fixed = fixed_config(job)
    if param_space is None:  # a given param space (ablation grid) replaces the search space
        check_against_fixed(space, fixed, job.source)
    fn = resolve_trainable(trainable)
    context = trial_context(job)

    sweep_id = _choose_sweep_id(job, resume, _trainable_name(fn), param_space)
    state_dir, state_mirror = _state_dir(job, sweep_id)
    experiment_path = _experiment_path(job, sweep_id)
    _write_sweep_state(state_dir, sweep_id, job)

    # num_to_keep forces a state snapshot after every few checkpoints; that is what resume
    # wants, and Tune's warning about it would fire every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    init_ray(**(ray_init_kwargs or {}))
    _check_cluster_fits(job)

    searched = _searched_params(space, param_space)
    callback = build_callback(job, sweep_id, state_dir, context, flush_timeout_s,
                              searched_params=searched, summary_handler=summary_handler,
                              roc_plot=roc_plot, state_mirror=state_mirror)
    # The experiment and the parent run exist before any trial starts (no racing creators).
    callback.start()

    wrapped = _wrap(fn, job, context)
    callbacks = [callback, ConsoleReporter(job.max_t if use_asha else None, searched)]
    run_config = _run_config(
        job, sweep_id, callbacks=callbacks,
        failure_config=tune.FailureConfig(max_failures=job.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=tune_verbosity(verbose))
    resumed = resume and _can_restore(experiment_path)
    if resumed:
        logger.info("resuming sweep %s from %s", sweep_id, experiment_path)
        ensure_study_schema(job.tracking.uri or "")
        tuner = _restore(experiment_path, wrapped, run_config, retry_errored)
    elif param_space is not None:
        has_grid = any(isinstance(v, dict) and "grid_search" in v for v in param_space.values())
        tuner = tune.Tuner(
            wrapped, param_space={**fixed, **param_space},
            tune_config=tune.TuneConfig(
                metric="objective", mode="max",
                scheduler=_asha(job) if use_asha else None,
                num_samples=1 if has_grid else job.trials,
                max_concurrent_trials=job.resources.max_concurrent_trials),
            run_config=run_config)
    else:
        searcher = EpochOptunaSearch(
            space=space.define_by_run(fixed),
            sampler=optuna.samplers.TPESampler(seed=job.seed),
            study_name=sweep_id, metric="objective", mode="max",
            # in the tracking database (beside it for sqlite) so optuna-dashboard shows it
            storage=study_storage(job.tracking.uri or ""))
        searcher = ConcurrencyLimiter(searcher, max_concurrent=job.resources.max_concurrent_trials)
        scheduler = _asha(job, metric="objective", mode="max") if use_asha else None
        tuner = tune.Tuner(
            wrapped,
            # metric and mode live on the searcher and the scheduler: a ConcurrencyLimiter
            # around a define-by-run OptunaSearch does not pass TuneConfig's down.
            # reuse_actors stays off: with it, tune.get_context().get_trial_dir() in a reused
            # actor pointed at an earlier trial's directory (artifacts landed there).
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=job.trials),
            run_config=run_config)
    with tune_output(verbose):
        tuner.fit()  # trials and their results come back through the callback
    callback.flush()
    trials = _summaries(callback.final_trials, callback)
    confirm_trials: list[TrialSummary] = []
    betas: list[float] = []
    if job.selection.confirm_top > 0 and param_space is not None:
        logger.warning("sweep %s: selection.confirm_top applies to search sweeps; a given "
                       "param space (ablation grid) runs no confirmation round", sweep_id)
    elif job.selection.confirm_top > 0:
        betas = confirmation_betas(trials, job.max_t, job.selection.confirm_top)
        confirm_trials, confirm_callback = _confirmation_round(
            job, wrapped, context, sweep_id, state_dir, trials, betas, resume,
            retry_errored, flush_timeout_s, verbose,
            dict(searched_params=searched, summary_handler=summary_handler, roc_plot=roc_plot),
            state_mirror)
        callback = confirm_callback or callback  # it holds the writes still pending
    result = SweepResult(
        sweep_id=sweep_id, experiment_name=job.experiment_name,
        # The real URI: the caller connects with it (the summary reconnected with the redacted
        # one and a password-protected store answered 'role "***" does not exist').
        tracking_uri=job.tracking.uri or "", experiment_path=experiment_path,
        parent_run_id=callback.parent_run_id, trials=trials, best=_best(trials, job.max_t),
        resumed=bool(resumed), wall_s=time.perf_counter() - t0,
        pending_tracking_ops=callback.pending_operations,
        experiment_id=callback.experiment_id,
        confirmation_trials=confirm_trials, confirmed_betas=betas)
    logger.info("sweep %s: %d trials (%d failed) in %.0fs", sweep_id, len(trials),
                result.num_errors, result.wall_s)
    if state_mirror is not None:
        _drop_local_state(state_mirror)
    return result


def _drop_local_state(mirror: storage.MirroredDir) -> None:
    """Removes the driver's temporary copy of the sweep state once the store holds all of it."""
    import shutil

    try:
        mirror.push(force=True)
    except StorageError as exc:
        logger.warning("sweep state kept in %s: it could not be saved to %s (%s); the next run "
                       "of the sweep on this machine does not read it from there", mirror.local,
                       mirror.remote, exc)
        return
    shutil.rmtree(mirror.local, ignore_errors=True)
