"""The confirmation round of a real sweep: tagged runs under the same parent, resumable."""

from __future__ import annotations

from pathlib import Path

from facefuse.sweep import load_job, run_sweep
from facefuse.tracking import schema as S
from tests.sweep.conftest import SELFTEST, write_job


def _runs(tmp: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_confirmation_round_runs_once_under_the_sweep_parent(ray_session, tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, name="conf", trials=3, epochs=1,
                             selection={"confirm_top": 2, "seeds": 2}))
    first = run_sweep(job, trainable=SELFTEST, flush_timeout_s=30)
    assert len(first.trials) == 3 and len(first.confirmed_betas) == 2
    assert len(first.confirmation_trials) == 4
    assert all(t.status == "TERMINATED" for t in first.confirmation_trials)
    # The round reran the main round's best betas, each with two new seeds.
    best = max(first.trials, key=lambda t: t.objective or 0.0)
    assert first.confirmed_betas[0] == best.config["beta"]
    assert sorted((t.config["confirm"]["beta"], t.config["confirm"]["seed"])
                  for t in first.confirmation_trials) == \
        sorted((b, s) for b in first.confirmed_betas for s in (1, 2))

    second = run_sweep(job, trainable=SELFTEST, flush_timeout_s=30)
    assert second.resumed and second.sweep_id == first.sweep_id
    assert {t.trial_id for t in second.confirmation_trials} == \
        {t.trial_id for t in first.confirmation_trials}

    runs = _runs(tmp_path, "conf")
    parents = [r for r in runs if r.data.tags.get(S.TAG_KIND) == S.KIND_SWEEP]
    trials = [r for r in runs if r.data.tags.get(S.TAG_KIND) == S.KIND_TRIAL]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert not [r for r in runs if r.data.tags.get(S.TAG_KIND) == S.KIND_ORPHANED_TRIAL]
    assert len(trials) == 7  # no duplicates after the rerun
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent.info.run_id}
    confirm = [r for r in trials if r.data.tags.get(S.TAG_CONFIRMATION) == "true"]
    assert {r.data.tags[S.TAG_TRIAL_ID] for r in confirm} == \
        {t.trial_id for t in first.confirmation_trials}
    for r in confirm:
        assert r.info.status == "FINISHED" and r.data.tags[S.TAG_FULL_BUDGET] == "true"
        assert float(r.data.params["beta"]) in first.confirmed_betas
        assert r.data.params["seed"] in ("1", "2") and r.data.tags[S.TAG_SEED] in ("1", "2")
    assert parent.data.tags[S.TAG_CONFIRMED_BETAS] == \
        ",".join(f"{b:g}" for b in first.confirmed_betas)
    assert parent.data.tags[S.TAG_CONFIRMATION_TRIALS] == "4"
    assert parent.data.tags[S.TAG_TRIALS_TOTAL] == "3"


def test_validation_sets_drive_the_objective_and_best_beta_reports_the_benchmark(
        ray_session, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from facefuse.selection import select_beta

    job = load_job(write_job(tmp_path, name="val", trials=3, epochs=1,
                             selection={"validation": ["synth_ijbb"]}))
    result = run_sweep(job, trainable=SELFTEST, flush_timeout_s=30)
    runs = [r for r in _runs(tmp_path, "val") if r.data.tags.get(S.TAG_KIND) == S.KIND_TRIAL]
    assert len(runs) == 3
    for r in runs:
        assert r.data.tags[S.TAG_VALIDATION] == "synth_ijbb"
        # The objective is the validation set's primary metric, not the evaluated sets'.
        assert r.data.metrics["objective"] == r.data.metrics["synth_ijbb/tar_far_1e-4"]
        assert r.data.metrics["objective"] != r.data.metrics["synth_lfw/acc"]
    sel = select_beta(f"sqlite:///{tmp_path}/mlflow.db", "synth_lfw", experiment="val")
    assert sel.selection_metric == "objective" and not sel.selection_split
    assert "validation sets (synth_ijbb)" in sel.verdict
    chosen = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(sel.run_id)
    assert sel.heldout_value == chosen.data.metrics["synth_lfw/acc"]
    assert result.sweep_id.startswith("val-")
