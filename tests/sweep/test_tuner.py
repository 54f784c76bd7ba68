"""End-to-end sweeps on a real local Ray with a real sqlite MLflow store (self-test trainable)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facefuse.sweep import load_job, run_sweep
from tests.sweep.conftest import SELFTEST, write_job

FAIL_ABOVE = 0.02  # self-test trials with beta above this "diverge" at epoch 2


def _runs(tmp: Path, experiment: str) -> tuple[object, list]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


@pytest.fixture(scope="module")
def small_sweep(ray_session, tmp_path_factory):
    """Runs one 6-trial, 3-epoch ASHA sweep where the high-beta trials fail."""
    tmp = tmp_path_factory.mktemp("sweep")
    job = load_job(write_job(tmp, name="small", max_failures=0,
                             params={"_fail_above_beta": FAIL_ABOVE}))
    result = run_sweep(job, trainable=SELFTEST, flush_timeout_s=30)
    return tmp, job, result


def test_one_parent_and_one_child_per_trial(small_sweep) -> None:
    tmp, job, result = small_sweep
    client, runs = _runs(tmp, "small")
    parents = [r for r in runs if r.data.tags.get("facefuse.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 6 == len(result.trials)
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == result.parent_run_id
    assert parent.data.tags["facefuse.sweep_id"] == result.sweep_id
    assert parent.data.params["asha.reduction_factor"] == "2"
    assert parent.data.params["data.train"] == "synth_train"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["facefuse.trial_id"] for r in children} == \
        {t.trial_id for t in result.trials}
    for r in children:
        tags = r.data.tags
        assert tags["facefuse.sweep_id"] == result.sweep_id
        assert tags["facefuse.datasets"] == "synth_lfw,synth_ijbc"
        assert tags["facefuse.objective"] == "mean:all"
        assert tags["facefuse.qualities"] == "synth_lfw:high,synth_ijbc:low"
        assert "facefuse.git_commit" in tags and "facefuse.backbone.arcface_sha256" in tags
        for name in ("beta", "local_heads", "global_heads", "local_window", "dw_kernel", "lr",
                     "epochs", "seed"):
            assert name in r.data.params
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= \
        {"resolved_job.json", "mixed_quality.yaml"}


def test_metrics_per_epoch_and_end_tags(small_sweep) -> None:
    tmp, job, result = small_sweep
    client, runs = _runs(tmp, "small")
    children = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    n_stopped = n_full = 0
    for r in children:
        history = client.get_metric_history(r.info.run_id, "synth_ijbc/tar_far_1e-4")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        assert len(client.get_metric_history(r.info.run_id, "objective")) == len(history)
        assert "train/loss" in r.data.metrics and "synth_lfw/acc_std" in r.data.metrics
        tags = r.data.tags
        assert tags["facefuse.epochs_done"] == str(len(history))
        beta = float(r.data.params["beta"])
        if beta > FAIL_ABOVE:
            assert r.info.status == "FAILED"
            assert "NaN" in tags["facefuse.error"] and "FloatingPointError" in tags["facefuse.error"]
            assert tags["facefuse.full_budget"] == "false" and len(history) == 1
            continue
        assert r.info.status == "FINISHED"
        full = len(history) == job.epochs
        assert tags["facefuse.full_budget"] == str(full).lower()
        assert tags.get("facefuse.stopped_by_asha") == (None if full else "true")
        n_full += full
        n_stopped += not full
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config", "roc", "best_checkpoint"} <= arts
        rocs = {a.path for a in client.list_artifacts(r.info.run_id, "roc")}
        assert rocs == {"roc/roc_synth_lfw.npz", "roc/roc_synth_ijbc.npz"}
    assert n_full >= 1 and n_stopped >= 1
    assert result.num_errors == sum(float(t.config["beta"]) > FAIL_ABOVE for t in result.trials)
    assert result.num_errors >= 1  # the seeded sampler draws some betas above the threshold
    assert result.best is not None and result.best.epochs_done == job.epochs


def test_run_map_persisted(small_sweep) -> None:
    tmp, job, result = small_sweep
    state = json.loads((Path(result.experiment_path) / "mlflow_runs.json").read_text())
    assert state["parent_run_id"] == result.parent_run_id
    assert {t: e["run_id"] for t, e in state["trials"].items()} == \
        {t.trial_id: t.run_id for t in result.trials}


def test_same_job_again_resumes_without_new_runs(small_sweep) -> None:
    tmp, job, first = small_sweep
    client, before = _runs(tmp, "small")
    steps_before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "objective"))
                    for r in before}
    again = run_sweep(job, trainable=SELFTEST, flush_timeout_s=30)
    assert again.resumed and again.sweep_id == first.sweep_id
    assert {t.trial_id for t in again.trials} == {t.trial_id for t in first.trials}
    client, after = _runs(tmp, "small")
    assert len(after) == len(before) == 7
    assert {r.info.run_id: len(client.get_metric_history(r.info.run_id, "objective"))
            for r in after} == steps_before
    parent = [r for r in after if r.data.tags.get("facefuse.kind") == "sweep"][0]
    assert parent.info.status == "FINISHED" and parent.data.tags.get("facefuse.resumed") == "true"


def test_failed_attempt_is_retried_and_recorded_once(ray_session, tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, name="retry", trials=2, max_failures=1,
                             asha={"grace_period": 3}, params={"_fail_once_at_epoch": 2}))
    result = run_sweep(job, trainable=SELFTEST, flush_timeout_s=30)
    client, runs = _runs(tmp_path, "retry")
    children = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    assert len(children) == 2 and result.num_errors == 0
    for r in children:
        assert r.info.status == "FINISHED"
        assert r.data.tags["facefuse.failed_attempts"] == "1"
        assert "injected failure" in r.data.tags["facefuse.last_attempt_error"]
        history = client.get_metric_history(r.info.run_id, "objective")
        assert [m.step for m in history] == [1, 2, 3]  # epoch 1 not logged twice
        assert r.data.tags["facefuse.full_budget"] == "true"
