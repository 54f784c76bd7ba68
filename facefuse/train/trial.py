"""The Ray Tune trainable: one trial = the training loop, in the trial or on Ray Train workers.

A one-worker trial runs the loop inside the Tune trial (no TorchTrainer start-up cost); a trial
with several workers builds a Ray Train TorchTrainer (DDP; NCCL on GPUs, gloo on CPU) and relays
its reports to Tune with ``TuneReportCallback``. Checkpoints hold the full ``EpochState``, so a
retried or restored trial continues from its last epoch.

That Train run is named after the Tune trial and lives in the job's storage
(``<storage>/<sweep id>/ray_train/<trial id>``): ``TuneReportCallback`` never hands Tune a
checkpoint, so a retried or restored multi-worker trial finds its last checkpoint through Ray
Train's own run state instead, on whichever node it runs. Mid-epoch checkpoints (every N steps,
every M minutes of training, and on Ray Train's preemption notice) go to
``<storage>/<sweep id>/facefuse_step_checkpoints/<trial id>.pt``; a retry that finds one ahead of
its last epoch checkpoint continues from it. Storage may be a path or a store (s3://): every
file under it is read and written through ``facefuse.storage``.

A one-worker trial resumes from the newest complete checkpoint in its own trial folder when that
one is past the checkpoint Tune hands back (``newer_stored_checkpoint``): Tune persists a
checkpoint before its epoch's result leaves the trial, but names it in the experiment state it
saves later, so a driver stopped in between would restore the trial one epoch (or more) behind
what Tune, MLflow and ``result.json`` already hold, and the trial would report those epochs again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from facefuse import storage
from facefuse.errors import ConfigError, ResourcesError, StorageError
from facefuse.data import get_dataset
from facefuse.features.dataset import (BackbonePair, load_eval_sets, load_train_set,
                                       subset_train_set)
from facefuse.model import FusionConfig, FusionModel
from facefuse.tracking.schema import PART_SELECTION, flat_config, metric_key, part_key
from facefuse.train.context import TrialContext
from facefuse.train.loop import EpochState, StepCheckpoints, TrainConfig, TrainingDiverged, train

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
BEST_DIR = "best"
#: Written in the trial directory when an attempt diverges; a retry reads it and stops at once.
DIVERGED_FILE = "facefuse_diverged.txt"
STEP_CHECKPOINT_DIR = "facefuse_step_checkpoints"
#: Tune's and Ray Train's checkpoint folders: this prefix and a zero-padded index.
CHECKPOINT_PREFIX = "checkpoint_"
TRAIN_RUNS_DIR = "ray_train"
#: Test hook (fault tests only), a trial param: "<marker file>:<epoch>:<times>" makes rank 0
#: raise after reporting an epoch >= <epoch>, at most <times> times over all attempts (counted
#: in the marker file).
FAIL_AFTER_EPOCH_PARAM = "_test_fail_after_epoch"
#: Test hook, a trial param: "<marker file>:<times>" makes rank 0 raise right after writing a
#: mid-epoch checkpoint, at most <times> times over all attempts.
FAIL_AFTER_STEP_PARAM = "_test_fail_after_step_checkpoint"


class InjectedFailure(RuntimeError):
    """Raised by the fault-test hook; never in a normal run."""


def _maybe_inject_failure(spec: Optional[str], epoch: int, step: int = 0) -> None:
    if not spec:
        return
    if step:
        marker, times = spec.rsplit(":", 1)
        where = f"epoch {epoch + 1} step {step}"
    else:
        marker, at, times = spec.rsplit(":", 2)
        if epoch < int(at):
            return
        where = f"epoch {epoch}"
    path = Path(marker)
    done = len(path.read_text().splitlines()) if path.exists() else 0
    if done >= int(times):
        return
    with open(path, "a") as f:  # a test's counter, not project state
        f.write(f"failed after {where}\n")
    raise InjectedFailure(f"injected failure after {where} (test hook)")


def sweep_storage_dir(ctx: TrialContext, experiment: str) -> Optional[str]:
    """Returns <storage>/<sweep id> (a path or store URI), None without a job storage."""
    if not ctx.storage:
        return None
    return storage.join(ctx.storage, experiment)


def step_checkpoint_path(ctx: TrialContext, experiment: str, trial_id: str) -> Optional[str]:
    """Returns where a trial's mid-epoch checkpoint lives (a path or store URI), or None when
    the job has no storage."""
    base = sweep_storage_dir(ctx, experiment)
    if base is None:
        return None
    return storage.join(base, STEP_CHECKPOINT_DIR, f"{trial_id}.pt")


def train_run_best_dir(experiment: str, trial_id: str) -> Optional[str]:
    """Returns the URI of ``best/`` in the latest checkpoint of a trial's Ray Train run, or None.

    ``experiment``: the Tune experiment's folder (path or store URI); the Train run is
    ``<experiment>/ray_train/<trial id>``, its checkpoints ``checkpoint_<timestamp>`` (so the
    last name is the latest), each holding the best model so far.
    """
    run = storage.join(experiment, TRAIN_RUNS_DIR, trial_id)
    checkpoints = [c for c in storage.folders(run)
                   if c.rsplit("/", 1)[-1].startswith("checkpoint_")]
    for ckpt in reversed(checkpoints):
        best = storage.join(ckpt, BEST_DIR)
        if storage.exists(storage.join(best, "model.pt")):
            return best
    return None


def _load_uri(uri: str) -> Any:
    """Returns a torch file read from a path or store URI (weights_only: plain tensors only)."""
    return torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)


def newer_stored_checkpoint(trial_uri: str, after_epoch: int) -> Optional[tuple[int, str, int]]:
    """Returns (index, URI, epoch) of the newest complete checkpoint folder of a Tune trial when
    its epoch is past ``after_epoch``, else None.

    ``trial_uri``: the trial's folder in the job's storage (path or store URI), where Tune
    persists ``checkpoint_<index>`` folders. A folder counts once its state and best model load:
    one cut short by a lost process is skipped for the one before it.
    """
    for folder in reversed(storage.folders(trial_uri)):
        name = folder.rsplit("/", 1)[-1]
        if not name.startswith(CHECKPOINT_PREFIX) or not name[len(CHECKPOINT_PREFIX):].isdigit():
            continue
        try:
            state = EpochState.from_dict(_load_uri(storage.join(folder, STATE_FILE)))
            _load_uri(storage.join(folder, BEST_DIR, "model.pt"))
            storage.read_bytes(storage.join(folder, BEST_DIR, "metrics.json"))
        except (StorageError, OSError, RuntimeError, EOFError, ValueError, KeyError, TypeError,
                pickle.UnpicklingError) as exc:
            logger.warning("checkpoint %s is incomplete (%s); looking at the one before", folder,
                           exc)
            continue
        if state.epoch <= after_epoch:
            return None
        return int(name[len(CHECKPOINT_PREFIX):]), folder, state.epoch
    return None


def _diverged_marker() -> str:
    """Returns the path or store URI of this Tune trial's divergence marker (its trial folder in
    the job's storage, so a retry on any node sees it)."""
    from ray import tune

    trial_storage = tune.get_context().get_storage()
    return storage.join(storage.uri_of(trial_storage.storage_filesystem,
                                       trial_storage.trial_fs_path), DIVERGED_FILE)


def objective_value(metrics: dict[str, float], spec: dict[str, Any],
                    eval_datasets: list[str]) -> float:
    """Returns the objective: one dataset's metric, or the mean primary metric of a quality group.

    ``spec`` is ``{"dataset": name, "metric": m}`` (metric defaults to the dataset's primary one)
    or ``{"quality": "high" | "mixed" | "low" | "all"}``. With ``"validation": [names]`` (the
    job's own validation sets) the objective is taken over those sets' full-set metrics only.
    """
    validation = list(spec.get("validation") or [])
    if validation:
        eval_datasets = validation
    part = _full_set if validation else _selection_part
    if "dataset" in spec:
        ds = spec["dataset"]
        metric = spec.get("metric") or get_dataset(ds).primary_metric
        return float(part(metrics, ds, metric))
    quality = spec.get("quality", "all")
    names = [d for d in eval_datasets if quality == "all" or get_dataset(d).quality == quality]
    if not names:
        raise ConfigError(None, f"objective quality {quality!r} matches none of {eval_datasets}",
                          field="objective.quality", fix="evaluate a dataset of that quality")
    return float(np.mean([part(metrics, d, get_dataset(d).primary_metric) for d in names]))


def _full_set(metrics: dict[str, float], dataset: str, metric: str) -> float:
    """Returns the metric on the whole set (a validation set of the job's own selects whole)."""
    return metrics[metric_key(dataset, metric)]


def _selection_part(metrics: dict[str, float], dataset: str, metric: str) -> float:
    """Returns the metric on the set's selection part, else on the full set (unsplittable set).

    Tuning, ASHA and the best checkpoint follow the objective: they must not see the report
    part whose number is then reported.
    """
    full = metric_key(dataset, metric)
    return metrics.get(part_key(dataset, metric, PART_SELECTION), metrics[full])


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], TrainConfig]:
    """Returns (model overrides, TrainConfig) from a flat trial config."""
    model_names = {f.name for f in fields(FusionConfig)}
    train_names = {f.name for f in fields(TrainConfig)}
    unknown = [k for k in config if k not in model_names | train_names and not k.startswith("_")
               and k not in ("variant",)]
    if unknown:
        raise ConfigError(None, f"trial parameters {unknown} are neither model nor training "
                          "settings", field=unknown[0],
                          fix=f"model settings: {sorted(model_names)}; training settings: "
                              f"{sorted(train_names)}")
    model_over = {k: v for k, v in config.items() if k in model_names}
    return model_over, TrainConfig.from_dict(config)


def build_model(model_over: dict[str, Any], train_set) -> torch.nn.Module:
    """Returns a FusionModel sized to the training set's maps and identities."""
    c_a, h, w = train_set.maps.a.shape[1:]
    c_b = train_set.maps.b.shape[1]
    values = dict(model_over)
    values.update(in_channels_a=int(c_a), in_channels_b=int(c_b), map_size=int(h),
                  num_classes=int(train_set.num_classes))
    return FusionModel(FusionConfig.from_dict(values))


def _save_checkpoint_dir(path: Path, state: EpochState, extras: dict[str, Any],
                         best: dict[str, Any], config: dict[str, Any],
                         model_config: Optional[dict[str, Any]] = None) -> None:
    torch.save(state.to_dict(), path / STATE_FILE)
    (path / "config.json").write_text(json.dumps(config, indent=1, default=str))
    bdir = path / BEST_DIR
    bdir.mkdir(exist_ok=True)
    if "model" in best:
        # model_config rebuilds the architecture (map channels, identities) without the data:
        # the driver logs this file as an MLflow model (facefuse.train.export)
        torch.save({"model": best["model"], "config": config, "epoch": best["epoch"],
                    "model_config": model_config or {}}, bdir / "model.pt")
        (bdir / "metrics.json").write_text(json.dumps(best["metrics"], indent=1))
        for ds, roc in best.get("roc", {}).items():
            np.savez(bdir / f"roc_{ds}.npz", fpr=roc["fpr"], tpr=roc["tpr"])


def load_state(checkpoint_dir: Path) -> Optional[EpochState]:
    """Returns the EpochState of a checkpoint directory (weights_only loading), or None."""
    p = Path(checkpoint_dir) / STATE_FILE
    if not p.exists():
        return None
    return EpochState.from_dict(torch.load(p, map_location="cpu", weights_only=True))


def _step_state(step_path: Optional[str], resume: Optional[EpochState]) -> Optional[EpochState]:
    """Returns the mid-epoch state to resume from when it is ahead of the epoch checkpoint."""
    if step_path is None or not storage.exists(step_path):
        return None
    state = EpochState.from_dict(_load_uri(step_path))
    done = resume.epoch if resume is not None else 0
    if state.step > 0 and state.epoch >= done:
        logger.info("resuming mid-epoch: epoch %d step %d (%s)", state.epoch + 1, state.step,
                    step_path)
        return state
    return None


def run_training(config: dict[str, Any], ctx: TrialContext,
                 report: Callable[[dict[str, float], Optional[Path]], None],
                 resume_dir: Optional[Path], rank: int = 0,
                 device: Optional[torch.device] = None, step_path: Optional[str] = None,
                 preempted: Optional[Callable[[], bool]] = None) -> list[dict[str, float]]:
    """Returns the metric history after running the loop with checkpoints handed to ``report``.

    ``step_path``: where mid-epoch checkpoints are written (rank 0) and read back on a retry
    (a path or store URI, through ``facefuse.storage``).
    """
    if ctx.torch_threads:
        torch.set_num_threads(ctx.torch_threads)
    config = flat_config(config)  # grid entries (the ablation's) are merged into plain settings
    model_over, tcfg = split_config(config)
    backbones = BackbonePair(Path(ctx.arcface_checkpoint), Path(ctx.adaface_checkpoint))
    cache = ctx.cache_dir or None  # a path or a store URI
    data_root = Path(ctx.data_root)
    # trials never extract: the sweep driver filled the store, a missing entry fails at once
    train_set = load_train_set(ctx.train_dataset, data_root, backbones, cache, build=False,
                               progress=False, flips=tcfg.flip_augment)
    if tcfg.train_subset_identities:
        train_set = subset_train_set(train_set, int(tcfg.train_subset_identities),
                                     int(tcfg.train_subset_per_identity or 1),
                                     int(tcfg.train_subset_seed or 0))
    eval_sets = load_eval_sets(ctx.eval_datasets, data_root, backbones, cache, build=False,
                               progress=False, flips=tcfg.flip_test)
    torch.manual_seed(tcfg.seed)
    model = build_model(model_over, train_set)
    resume = load_state(resume_dir) if resume_dir is not None else None
    if resume is not None:
        logger.info("resuming from epoch %d (%s)", resume.epoch, resume_dir)
    resume = _step_state(step_path, resume) or resume
    best: dict[str, Any] = {}
    if resume_dir is not None and (Path(resume_dir) / BEST_DIR / "model.pt").exists():
        saved = torch.load(Path(resume_dir) / BEST_DIR / "model.pt", map_location="cpu",
                           weights_only=True)
        best = {"model": saved["model"], "epoch": saved["epoch"],
                "metrics": json.loads((Path(resume_dir) / BEST_DIR / "metrics.json").read_text()),
                "roc": {p.stem[4:]: dict(np.load(p)) for p in (Path(resume_dir) / BEST_DIR).glob("roc_*.npz")}}

    def on_epoch(metrics: dict[str, float], state: EpochState, extras: dict[str, Any]) -> None:
        if extras.get("is_best") or not best:
            best.update(model=state.model, epoch=state.epoch, metrics=metrics,
                        roc=extras.get("roc", {}))
        if rank != 0:
            report(metrics, None)
            return
        if step_path is not None and state.epoch >= tcfg.epochs:
            # Tune ends the trial inside its last report; the file would outlive the trial.
            storage.delete(step_path)
        with tempfile.TemporaryDirectory(prefix="facefuse-ckpt-") as tmp:
            _save_checkpoint_dir(Path(tmp), state, extras, best, config,
                                 model_config=model.cfg.to_dict())
            report(metrics, Path(tmp))
        if step_path is not None:
            storage.delete(step_path)  # the epoch checkpoint supersedes it
        _maybe_inject_failure(config.get(FAIL_AFTER_EPOCH_PARAM), state.epoch)

    def save_step(state: EpochState) -> None:
        assert step_path is not None
        buf = io.BytesIO()
        torch.save(state.to_dict(), buf)
        storage.write_bytes(step_path, buf.getvalue())  # whole or absent (temp+rename, one PUT)
        _maybe_inject_failure(config.get(FAIL_AFTER_STEP_PARAM), state.epoch, state.step)

    steps = None
    if step_path is not None and (ctx.checkpoint_every_steps or ctx.checkpoint_every_s
                                  or preempted is not None):
        steps = StepCheckpoints(save_step, ctx.checkpoint_every_steps, ctx.checkpoint_every_s,
                                preempted)

    objective = None
    if ctx.objective:
        objective = lambda m: objective_value(m, ctx.objective, ctx.eval_datasets)  # noqa: E731
    return train(tcfg, model, train_set, eval_sets, on_epoch, resume, device, objective, steps)


def _tune_report(metrics: dict[str, float], ckpt_dir: Optional[Path]) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
    tune.report(metrics, checkpoint=checkpoint)


def _train_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker entry: the same loop under DDP (process group set up by TorchTrainer)."""
    import ray.train
    import ray.train.torch

    ctx = TrialContext.from_dict(loop_config["context"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device() if ctx.gpus_per_worker else torch.device("cpu")
    ckpt = ray.train.get_checkpoint()
    step_path = loop_config.get("step_path") or None

    def report(metrics: dict[str, float], ckpt_dir: Optional[Path]) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    def preempted() -> bool:
        # Ray Train's notice (spot reclaim, node drain); a barrier, called on every rank.
        return ray.train.get_preemption_info() is not None

    if ckpt is not None:
        with ckpt.as_directory() as d:
            run_training(loop_config["config"], ctx, report, Path(d), rank, device, step_path,
                         preempted)
    else:
        run_training(loop_config["config"], ctx, report, None, rank, device, step_path,
                     preempted)


def train_scaling(ctx: TrialContext) -> Any:
    """Returns the Ray Train ScalingConfig of a multi-worker trial.

    ``gpus_per_worker`` may be a fraction (0.25: four workers share one GPU); Ray places the
    fractions, and each worker's torch device is that GPU.
    """
    from ray.train import ScalingConfig

    gpu = {"GPU": ctx.gpus_per_worker} if ctx.gpus_per_worker else {}
    return ScalingConfig(num_workers=ctx.workers_per_trial, use_gpu=ctx.gpus_per_worker > 0,
                         resources_per_worker={"CPU": ctx.cpus_per_worker, **gpu})


def _resume_from_trial_folder(local: Optional[Path]) -> tuple[Optional[Path], bool]:
    """Returns (the local copy of the checkpoint a one-worker trial resumes from, whether it is
    ahead of Tune's): Tune's (``local``) or, when the trial folder holds a complete one of a
    later epoch, a copy of that one.

    Tune's next checkpoint then gets the index after it, so it never writes over the folder it
    resumed from.
    """
    from ray import tune

    done = 0
    if local is not None:
        state = load_state(local)
        done = state.epoch if state is not None else 0
    trial_storage = tune.get_context().get_storage()
    trial_uri = storage.uri_of(trial_storage.storage_filesystem, trial_storage.trial_fs_path)
    found = newer_stored_checkpoint(trial_uri, done)
    if found is None:
        return local, False
    index, uri, epoch = found
    logger.warning("resuming from %s (epoch %d): it is past the checkpoint Tune restored (epoch "
                   "%d), whose experiment state was saved before this one was reported", uri,
                   epoch, done)
    if local is not None:
        shutil.rmtree(local, ignore_errors=True)
    local = Path(tempfile.mkdtemp(prefix="facefuse-resume-"))
    with tempfile.TemporaryDirectory(prefix="facefuse-fetch-") as tmp:
        shutil.copytree(storage.download(uri, tmp), local, dirs_exist_ok=True)
    trial_storage.current_checkpoint_index = max(trial_storage.current_checkpoint_index, index)
    return local, True


def _report_if_finished(config: dict[str, Any], local: Path) -> bool:
    """Returns True after reporting the last epoch of a checkpoint that ends the training.

    A trial whose newest checkpoint is its last epoch has nothing left to train, but Tune's
    restored state still holds an earlier result: the last epoch's metrics (kept in the state's
    history) and its checkpoint are reported once more, so Tune, the searcher and the sweep's
    summary end on them (MLflow keeps one value per epoch).
    """
    state = load_state(local)
    _, tcfg = split_config(flat_config(config))
    if state is None or state.epoch < tcfg.epochs or not state.history:
        return False
    _tune_report(dict(state.history[-1]), local)
    return True


def unplaced_workers_message(ctx: TrialContext, trial_id: str, available: dict[str, float],
                             total: dict[str, float],
                             held: list[dict[int, dict[str, float]]]) -> str:
    """Returns the one-line reason a trial's Ray Train workers were not placed: what they ask
    for, what the cluster has free and in all, and what live placement groups hold."""
    ask = {"CPU": ctx.cpus_per_worker, **({"GPU": ctx.gpus_per_worker}
                                          if ctx.gpus_per_worker else {})}
    kinds = list(ask)
    have = ", ".join(f"{k} {available.get(k, 0.0):g} free of {total.get(k, 0.0):g}"
                     for k in kinds)
    holding = {k: sum(b.get(k, 0.0) for g in held for b in g.values()) for k in kinds}
    hold = ", ".join(f"{k} {v:g}" for k, v in holding.items())
    per = ", ".join(f"{k} {v:g}" for k, v in ask.items())
    return (f"[resources] the {ctx.workers_per_trial} Ray Train workers of trial {trial_id} "
            f"({per} each) were not placed in time (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, "
            f"60 s by default): the cluster has {have}; {len(held)} live placement groups "
            f"hold {hold} -- wait for or free what holds them (ray status; a stopped trial's "
            "group is removed by facefuse.train.reaper), or lower resources.workers_per_trial "
            "/ cpus_per_worker / gpus_per_worker, or add nodes")


def run_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Tune function trainable: trains one configuration and reports every epoch to Tune."""
    from ray import tune

    ctx = TrialContext.from_dict(context)
    # One "Checkpoint successfully created at: <path>" line per epoch per trial drowned the
    # sweep's own progress lines in the driver's console.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    tctx = tune.get_context()
    experiment, trial_id = tctx.get_experiment_name(), tctx.get_trial_id()
    step_path = step_checkpoint_path(ctx, experiment, trial_id)
    diverged = _diverged_marker()
    if storage.exists(diverged):
        # Tune retries every error; a retry resumes from the same checkpoint with the same
        # per-epoch seeds, so it would diverge at the same step. Fail at once instead.
        reason = storage.read_bytes(diverged).decode(errors="replace").strip()
        raise TrainingDiverged(f"{reason} [an earlier attempt of this "
                               "trial; not retrained, it would diverge the same way]")
    if ctx.workers_per_trial <= 1:
        device = torch.device("cuda") if ctx.gpus_per_worker and torch.cuda.is_available() \
            else torch.device("cpu")
        ckpt = tune.get_checkpoint()
        local: Optional[Path] = None
        if ckpt is not None:
            with ckpt.as_directory() as d:
                local = Path(tempfile.mkdtemp(prefix="facefuse-resume-"))
                shutil.copytree(d, local, dirs_exist_ok=True)
        local, ahead = _resume_from_trial_folder(local)
        try:
            if ahead and _report_if_finished(config, local):
                return
            run_training(config, ctx, _tune_report, local, 0, device, step_path)
        except TrainingDiverged as exc:
            storage.write_bytes(diverged, str(exc).encode())
            raise
        finally:
            if local is not None:
                shutil.rmtree(local, ignore_errors=True)
        return

    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from facefuse.train.reaper import ReapOnControllerLoss

    base = sweep_storage_dir(ctx, experiment)
    # Named after the trial, in the job's storage: a retry (on any node) reopens the same Train
    # run and resumes from its latest checkpoint; Tune itself never holds one for this trial.
    train_storage, train_fs = storage.ray_storage(
        storage.join(base, TRAIN_RUNS_DIR) if base is not None
        else os.path.join(tctx.get_trial_dir(), TRAIN_RUNS_DIR))
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"config": config, "context": context, "step_path": step_path},
        scaling_config=train_scaling(ctx),
        run_config=RunConfig(
            name=trial_id, storage_path=train_storage, storage_filesystem=train_fs,
            # Tune may stop this trial (and so the trainer's controller) before the trainer
            # shuts down: its workers' placement group is then freed by the reaper.
            callbacks=[TuneReportCallback(), ReapOnControllerLoss()],
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=1, controller_failure_limit=1)),
    )
    try:
        trainer.fit()
    except Exception as exc:
        from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

        if not isinstance(getattr(exc, "controller_failure", None),
                          WorkerGroupStartupTimeoutError):
            raise
        import ray

        held = [g["bundles"] for g in ray.util.placement_group_table().values()
                if g.get("state") == "CREATED"]
        raise ResourcesError(unplaced_workers_message(
            ctx, trial_id, ray.available_resources(), ray.cluster_resources(), held)) from exc
