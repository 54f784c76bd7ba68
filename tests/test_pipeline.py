"""End to end on a tiny embedded-style setup: synthetic data in the real formats, tiny backbones in
both official checkpoint layouts, the feature cache, and real sweeps of the real trainable on a
local Ray with an sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_SUITE = dict(train_identities=24, train_images_per_identity=6, verification_pairs=60,
                  ijb_identities=8, ijb_templates_per_identity=2, ijb_impostor_pairs=120)
EVAL = ["synth_lfw", "synth_cfp_fp", "synth_ijbb", "synth_ijbc"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic suite and two random tiny backbones saved in the official layouts."""
    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.synth import build_suite

    base = tmp_path_factory.mktemp("world")
    build_suite(base / "data", seed=3, workers=1, progress=False, **TINY_SUITE)
    torch.manual_seed(0)
    a = get_model("ir_tiny", widths=(4, 8, 12, 16), num_features=32)
    b = get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32, layout="adaface")
    save_insightface(a, base / "arcface.pth")
    save_adaface(b, base / "adaface.ckpt")
    return {"base": base, "data": base / "data", "arcface": base / "arcface.pth",
            "adaface": base / "adaface.ckpt"}


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    if ray.is_initialized():
        yield
        return
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        if old is not None:
            os.environ["HOME"] = old


def _job(world: dict[str, Path], tmp: Path, name: str, **over: Any) -> Path:
    job: dict[str, Any] = {
        "name": name,
        "data": {"root": str(world["data"]), "train": "synth_train", "eval": EVAL,
                 "cache_dir": str(world["base"] / "cache")},
        "backbones": {"arcface": str(world["arcface"]), "adaface": str(world["adaface"])},
        "search_space": str(REPO / "search_spaces" / "mixed_quality.yaml"),
        "objective": "mean:all",
        "trials": 3,
        "epochs": 2,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_worker": 0.5, "max_concurrent_trials": 2},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": name},
        "storage": str(tmp / "results"),
        "params": {"batch_size": 32, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32},
        "seed": 0,
    }
    job.update(over)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


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
    from facefuse.train.trial import TrialContext, run_training

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


@pytest.mark.slow
def test_sweep_of_the_real_trainable_tracks_every_trial(world: dict[str, Path], tmp_path: Path,
                                                       ray_local: None) -> None:
    from mlflow.tracking import MlflowClient

    from facefuse.pipeline import prepare_job, sweep_rows
    from facefuse.sweep import run_sweep

    job, ctx = prepare_job(_job(world, tmp_path, "e2e"), cwd=tmp_path)
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
        assert "synth_ijbc/tar_far_1e-4" in run.data.metrics and "synth_lfw/acc" in run.data.metrics
        hist = client.get_metric_history(run.info.run_id, "synth_lfw/acc")
        assert [h.step for h in hist] == list(range(1, len(hist) + 1))
    rows = sweep_rows(job.tracking.uri, result.sweep_id, EVAL)
    assert len(rows) == 3 and all(r["synth_lfw"] is not None for r in rows)


@pytest.mark.slow
def test_multi_worker_trial_runs_ddp_through_ray_train(world: dict[str, Path], tmp_path: Path,
                                                       ray_local: None) -> None:
    from mlflow.tracking import MlflowClient

    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep

    path = _job(world, tmp_path, "ddp", trials=1, epochs=2,
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
