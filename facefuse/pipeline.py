"""What a command does before and after a sweep: embedded data, backbones, cache, summary."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from facefuse.errors import ConfigError
from facefuse.sweep.jobs import JobSpec, eval_flips, load_job, resolve_paths, train_flips, trial_context
from facefuse.embedded import embedded_paths, ensure_ladder, ensure_synth, ensure_tiny_backbones
from facefuse.tracking import schema as S
from facefuse.tracking.store import experiment_ids, open_tracking, search_all_runs

logger = logging.getLogger(__name__)


def prepare_job(path: os.PathLike[str] | str, cwd: Optional[os.PathLike[str] | str] = None,
                build_cache: bool = True, ray_init_kwargs: Optional[dict[str, Any]] = None
                ) -> tuple[JobSpec, dict[str, Any]]:
    """Returns (resolved JobSpec, trial context) after making everything the job reads exist.

    Embedded pieces (synthetic data, tiny backbones) are built when the job names them and they
    are not complete yet. With ``build_cache`` the feature store must hold every entry the job
    reads; ``features: auto`` first extracts the missing ones as the Ray Data job, on the Ray
    that ``init_ray(**ray_init_kwargs)`` starts (or joins) here and ``run_sweep`` then reuses:
    pass the ``ray_init_kwargs`` the sweep would be given.
    """

    job = resolve_paths(load_job(path), cwd)
    emb = embedded_paths(cwd)
    t0 = time.perf_counter()
    if Path(job.data.root) == emb.data_root:
        ensure_synth(emb.data_root, seed=0)
        if any(_is_ladder(d) for d in [*job.data.eval, *job.selection.validation]):
            ensure_ladder(emb.data_root, seed=0)
    if Path(job.backbones.arcface) == emb.arcface_checkpoint or \
            Path(job.backbones.adaface) == emb.adaface_checkpoint:
        ensure_tiny_backbones(emb.data_root, emb.backbones_dir, seed=0)
    for name in ("arcface", "adaface"):
        ckpt = Path(getattr(job.backbones, name))
        if not ckpt.exists():
            raise ConfigError(job.source, f"checkpoint {str(ckpt)!r} does not exist",
                              field=f"backbones.{name}",
                              fix="give the path of an insightface backbone.pth or AdaFace .ckpt")
    if build_cache and job.data.cache_dir:
        if job.features == "auto" and not features_complete(job):
            # the same Ray Data job as `prepare features`; Ray starts only when something is
            # missing, and as the sweep starts it, so Tune reuses it (no second start)
            extract_features(job, use_ray=True, ray_init_kwargs=ray_init_kwargs or {})
        check_features(job)
    check_train_subset(job)
    logger.info("job %s prepared in %.0fs", job.name, time.perf_counter() - t0)
    return job, trial_context(job)


def _is_ladder(name: str) -> bool:
    from facefuse.data.registry import LADDER_NAMES

    return name in LADDER_NAMES


def job_datasets(job) -> list:
    """Returns the DatasetWork of every set a job reads (mirrored maps only where trials use
    them: ``facefuse.sweep.jobs.train_flips`` and ``eval_flips``)."""
    from facefuse.features.extraction import DatasetWork

    return ([DatasetWork(job.data.train, train_flips(job))]
            + [DatasetWork(d, eval_flips(job)) for d in job.data.eval])


def check_train_subset(job: JobSpec) -> None:
    """Raises the subset's ConfigError (naming the job file) before any trial when the train set
    cannot give data.train_subset."""
    from facefuse.data.subset import class_balanced_subset
    from facefuse.features.dataset import _dataset_meta, _meta_root

    sub = job.data.train_subset
    if sub is None:
        return
    meta = _dataset_meta(job.data.train, Path(job.data.root), _meta_root(job.data.cache_dir))
    class_balanced_subset(meta["labels"], sub.identities, sub.per_identity, sub.seed,
                          job.data.train, job.source)


def features_complete(job) -> bool:
    """Returns whether the job's store holds every entry the job reads (``check_features``
    would pass)."""
    from facefuse.errors import DataFormatError

    try:
        check_features(job)
    except DataFormatError:
        return False
    return True


def check_features(job) -> None:
    """Raises the missing-entry error unless the job's store holds every entry the job reads."""
    from facefuse.data.fingerprint import content_fingerprint
    from facefuse.features.dataset import _image_count, missing_entry_error
    from facefuse.features.extraction import keys_for
    from facefuse.features.store import ShardStore

    store = ShardStore(job.data.cache_dir)
    ckpts = (Path(job.backbones.arcface), Path(job.backbones.adaface))
    for work in job_datasets(job):
        content = content_fingerprint(work.name, Path(job.data.root))
        count = _image_count(work.name, Path(job.data.root))
        manifest = store.read_manifest(work.name, content)
        for per in keys_for(work.name, content, ckpts, work.flips):
            for key in per:
                if not store.has(key, count, manifest):
                    raise missing_entry_error(work.name, store.root,
                                              store.describe_missing(key, count))


def extract_features(job, use_ray: bool = True, shard_size: Optional[int] = None,
                     actors: Optional[int] = None,
                     ray_init_kwargs: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Returns the extraction summary after filling the job's feature store (data.cache_dir).

    With ``use_ray`` this is one Ray Data job on the Ray of this process, else on the cluster
    ``init_ray(**ray_init_kwargs)`` joins (RAY_ADDRESS) or starts (default kwargs: no
    dashboard, as `prepare features` needs none); GPUs per extraction actor follow the job's
    resources.gpus_per_worker, and ``actors`` defaults to one per GPU or CPU of the cluster.
    """
    from facefuse.errors import ConfigError
    from facefuse.features.extraction import extract
    from facefuse.features.store import DEFAULT_SHARD_SIZE, ShardStore

    if not job.data.cache_dir:
        raise ConfigError(job.source, "data.cache_dir is none: features run on the fly, nothing "
                          "to extract", field="data.cache_dir",
                          fix="give a path or s3:// URI to extract to")
    if use_ray:
        from facefuse.sweep.tuner import init_ray
        import ray

        if not ray.is_initialized():
            init_ray(**(ray_init_kwargs if ray_init_kwargs is not None
                        else {"include_dashboard": False}))
    return extract(ShardStore(job.data.cache_dir), Path(job.data.root),
                   (Path(job.backbones.arcface), Path(job.backbones.adaface)), job_datasets(job),
                   shard_size=shard_size or DEFAULT_SHARD_SIZE, use_ray=use_ray,
                   gpus_per_actor=float(job.resources.gpus_per_worker), actors=actors)


def sweep_rows(tracking_uri: str, sweep_id: str, datasets: list[str]) -> list[dict[str, Any]]:
    """Returns one row per trial run of a sweep: status, key params, objective, primary metrics."""
    from facefuse.data import get_dataset

    client = open_tracking(tracking_uri)
    runs = search_all_runs(client, experiment_ids(client), S.sweep_filter(sweep_id, S.KIND_TRIAL))
    rows = []
    for run in runs:
        p, m, t = run.data.params, run.data.metrics, run.data.tags
        asha = "/asha" if S.is_true(t.get(S.TAG_STOPPED_BY_ASHA)) else ""
        row: dict[str, Any] = {
            "trial": t.get(S.TAG_TRIAL_ID, "")[-5:],
            "status": run.info.status + asha,
            "epochs": int(m[S.METRIC_EPOCH]) if S.METRIC_EPOCH in m else None,
            "beta": float(p["beta"]) if "beta" in p else None,
        }
        for key in ("local_heads", "global_heads", "local_window", "dw_kernel", "lr"):
            if key in p:
                row[key] = float(p[key]) if key == "lr" else p[key]
        row["objective"] = m.get(S.METRIC_OBJECTIVE)
        for ds in datasets:
            row[ds] = m.get(S.metric_key(ds, get_dataset(ds).primary_metric))
        rows.append(row)
    rows.sort(key=lambda r: -(r["objective"] if r["objective"] is not None else -1e9))
    return rows
