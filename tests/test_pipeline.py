"""End to end on a tiny embedded-style setup: synthetic data in the real formats, tiny backbones in
both official checkpoint layouts, the feature cache, and real sweeps of the real trainable on a
local Ray with an sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
EVAL = ["synth_lfw", "synth_cfp_fp", "synth_ijbb", "synth_ijbc"]


def test_cached_and_on_the_fly_maps_are_identical(world: dict[str, Path]) -> None:
    from facefuse.features import BackbonePair, dataset_maps

    pair = BackbonePair(world["arcface"], world["adaface"])
    cached = dataset_maps("synth_ijbb", world["data"], pair, world["base"] / "cache", progress=False)
    live = dataset_maps("synth_ijbb", world["data"], pair, None)
    idx = np.array([0, 5, 17])
    for name in ("a", "b", "a_flip", "b_flip"):
        np.testing.assert_array_equal(np.asarray(getattr(cached, name)[idx]),
                                      getattr(live, name)[idx])
    assert cached.a.shape[1] == 16 and cached.b.shape[1] == 32  # each backbone's own width


def test_training_on_real_formats_reports_every_protocol_metric(world: dict[str, Path]) -> None:
    from facefuse.features.extraction import DatasetWork, extract
    from facefuse.features.store import ShardStore
    from facefuse.train.trial import TrialContext, run_training

    # trials never extract: the store is filled first, as the sweep driver does
    extract(ShardStore(world["base"] / "cache"), world["data"], (world["arcface"], world["adaface"]),
            [DatasetWork("synth_train", True)] + [DatasetWork(d, True) for d in EVAL], use_ray=False)
    ctx = TrialContext(data_root=str(world["data"]), cache_dir=str(world["base"] / "cache"),
                       arcface_checkpoint=str(world["arcface"]),
                       adaface_checkpoint=str(world["adaface"]), train_dataset="synth_train",
                       eval_datasets=EVAL, objective={"quality": "all"})
    reports: list[tuple[dict[str, float], list[str]]] = []

    def report(metrics: dict[str, float], ckpt: Path | None) -> None:
        reports.append((metrics, sorted(p.name for p in ckpt.rglob("*")) if ckpt else []))

    hist = run_training({"epochs": 2, "batch_size": 32, "d_model": 32, "fusion_hidden": 64,
                         "embedding_size": 32, "beta": 0.01}, ctx, report, None)
    assert len(hist) == 2 and len(reports) == 2
    m, files = reports[-1]
    for ds in ("synth_lfw", "synth_cfp_fp"):
        assert 0.0 <= m[f"{ds}/acc"] <= 1.0 and f"{ds}/acc_std" in m
    for ds in ("synth_ijbb", "synth_ijbc"):
        assert {f"{ds}/tar_far_1e-4", f"{ds}/tar_far_1e-1", f"{ds}/auc"} <= set(m)
    assert "objective" in m and "train/loss" in m
    assert {"state.pt", "config.json", "model.pt", "roc_synth_ijbb.npz"} <= set(files)


def test_trial_trains_on_the_class_balanced_subset(world: dict[str, Path], monkeypatch) -> None:
    from facefuse.features.extraction import DatasetWork, extract
    from facefuse.features.store import ShardStore
    from facefuse.train import trial as trial_mod
    from facefuse.train.trial import TrialContext, run_training

    extract(ShardStore(world["base"] / "cache"), world["data"], (world["arcface"], world["adaface"]),
            [DatasetWork("synth_train", False), DatasetWork("synth_lfw", True)], use_ray=False)
    ctx = TrialContext(data_root=str(world["data"]), cache_dir=str(world["base"] / "cache"),
                       arcface_checkpoint=str(world["arcface"]),
                       adaface_checkpoint=str(world["adaface"]), train_dataset="synth_train",
                       eval_datasets=["synth_lfw"], objective={"dataset": "synth_lfw"})
    seen: list = []
    real_build = trial_mod.build_model

    def build(model_over, train_set):  # records what the loop trains on, builds the real model
        seen.append(train_set)
        return real_build(model_over, train_set)

    monkeypatch.setattr(trial_mod, "build_model", build)
    run_training({"epochs": 1, "batch_size": 8, "d_model": 32, "fusion_hidden": 64,
                  "embedding_size": 32, "flip_augment": False, "train_subset_identities": 5,
                  "train_subset_per_identity": 4, "train_subset_seed": 2},
                 ctx, lambda m, c: None, None)
    (ts,) = seen
    assert ts.num_classes == 5 and len(ts.labels) == 20 and len(ts.maps.a) == 20
    assert sorted(np.bincount(ts.labels)) == [4] * 5 and ts.maps.a_flip is None


@pytest.mark.slow
def test_sweep_of_the_real_trainable_tracks_every_trial(world_job, world: dict[str, Path],
                                                       tmp_path: Path, ray_local: None) -> None:
    from mlflow.tracking import MlflowClient

    from facefuse.pipeline import prepare_job, sweep_rows
    from facefuse.sweep import run_sweep

    data = {"root": str(world["data"]), "train": "synth_train", "eval": EVAL,
            "cache_dir": str(world["base"] / "cache"),
            "train_subset": {"identities": 12, "per_identity": 4, "seed": 5}}
    job, ctx = prepare_job(world_job(tmp_path, "e2e", data=data), cwd=tmp_path)
    assert os.path.isabs(ctx["data_root"]) and os.path.isabs(ctx["cache_dir"])
    result = run_sweep(job)
    assert len(result.trials) == 3 and result.num_errors == 0
    client = MlflowClient(job.tracking.uri)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], "tags.`facefuse.kind` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        assert "beta" in run.data.params
        # the training data every trial saw is recorded with it
        assert run.data.params["train_subset_identities"] == "12"
        assert run.data.params["train_subset_per_identity"] == "4"
        assert run.data.params["train_subset_seed"] == "5"
        assert run.data.params["flip_augment"] == "True"
        assert "synth_ijbc/tar_far_1e-4" in run.data.metrics and "synth_lfw/acc" in run.data.metrics
        hist = client.get_metric_history(run.info.run_id, "synth_lfw/acc")
        assert [h.step for h in hist] == list(range(1, len(hist) + 1))
    rows = sweep_rows(job.tracking.uri, result.sweep_id, EVAL)
    assert len(rows) == 3 and all(r["synth_lfw"] is not None for r in rows)


@pytest.mark.slow
def test_multi_worker_trial_runs_ddp_through_ray_train(world_job, tmp_path: Path,
                                                       ray_local: None) -> None:
    from mlflow.tracking import MlflowClient

    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep

    path = world_job(tmp_path, "ddp", trials=1, epochs=2,
                resources={"workers_per_trial": 2, "cpus_per_worker": 0.5,
                           "max_concurrent_trials": 1})
    job, ctx = prepare_job(path, cwd=tmp_path)
    assert ctx["workers_per_trial"] == 2
    result = run_sweep(job)
    assert result.num_errors == 0, [t.error for t in result.trials]
    (trial,) = result.trials
    assert trial.epochs_done == 2
    run = MlflowClient(job.tracking.uri).get_run(trial.run_id)
    assert "synth_ijbb/tar_far_1e-4" in run.data.metrics
    assert run.data.metrics["epoch"] == 2
