"""Faults a sweep of the real trainable must survive, done for real on a local Ray with an sqlite
MLflow store: a trial's worker process SIGKILLed mid-epoch, and a trial whose loss becomes NaN.

(The driver killed mid-sweep, the MLflow server stopped and restarted, a failed attempt retried
and a crash during a cache write are in tests/sweep/test_resume.py, tests/sweep/test_tracking.py,
tests/sweep/test_tuner.py and tests/features/test_cache.py.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

TINY = {"batch_size": 32, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32}


def _results(storage: Path) -> dict[str, list[dict[str, Any]]]:
    """Returns every result Tune wrote so far, per trial id (from each trial's result.json)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in storage.glob("*/*/result.json"):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the driver is writing this line right now
                break
        if rows:
            out[rows[0]["trial_id"]] = rows
    return out


def _trial_runs(uri: str, experiment: str) -> tuple[Any, list[Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, runs


class _Killer(threading.Thread):
    """Watches the sweep's results; SIGKILLs the worker of the first trial that reported epoch 1.

    Each epoch sleeps ``_test_sleep_per_step_s`` per step, so epoch 2 takes seconds: the kill
    lands inside it.
    """

    def __init__(self, storage: Path) -> None:
        super().__init__(daemon=True)
        self.storage = storage
        self.killed: dict[str, Any] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 240
        while not self.stop.is_set() and time.monotonic() < deadline:
            for tid, rows in _results(self.storage).items():
                if [r.get("epoch") for r in rows] == [1.0]:
                    pid = int(rows[0]["pid"])
                    os.kill(pid, signal.SIGKILL)  # the Ray worker process running this trial
                    self.killed = {"trial_id": tid, "pid": pid, "at": time.monotonic()}
                    return
            time.sleep(0.05)


@pytest.mark.slow
def test_worker_killed_mid_epoch_resumes_from_checkpoint(world_job, tmp_path: Path,
                                                        ray_local: None) -> None:
    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep

    epochs = 3
    path = world_job(tmp_path, "worker_killed", trials=2, epochs=epochs, max_failures=1,
                     asha={"grace_period": epochs, "reduction_factor": 2},
                     params={**TINY, "_test_sleep_per_step_s": 0.75})
    job, _ = prepare_job(path, cwd=tmp_path)
    killer = _Killer(Path(job.storage))
    killer.start()
    try:
        result = run_sweep(job, flush_timeout_s=60)
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    assert killer.killed, "no trial reported epoch 1 while the killer watched"
    victim = killer.killed["trial_id"]

    assert len(result.trials) == 2 and result.num_errors == 0, [t.error for t in result.trials]
    assert all(t.epochs_done == epochs for t in result.trials)

    # The retried attempt started at epoch 2 (from the epoch-1 checkpoint), in a new process.
    rows = _results(Path(job.storage))[victim]
    seen = [(int(r["epoch"]), r["pid"], r["iterations_since_restore"]) for r in rows]
    assert [e for e, _, _ in seen] == [1, 2, 3], seen
    assert seen[0][1] == killer.killed["pid"]
    assert seen[1][1] != killer.killed["pid"] and seen[1][2] == 1, seen  # first report after restore
    assert seen[2][1] == seen[1][1]

    client, runs = _trial_runs(job.tracking.uri, "worker_killed")
    kids = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    assert sorted(r.data.tags["facefuse.trial_id"] for r in kids) == \
        sorted(t.trial_id for t in result.trials)  # exactly one run per trial
    for run in kids:
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "synth_lfw/acc")]
        assert steps == [1, 2, 3], steps  # epoch 1 logged once although two attempts ran
        attempts = run.data.tags["facefuse.failed_attempts"]
        if run.data.tags["facefuse.trial_id"] == victim:
            assert attempts == "1"
            reason = run.data.tags["facefuse.last_attempt_error"]
            assert "died" in reason.lower() or "actor" in reason.lower(), reason
        else:
            assert attempts == "0"
    assert {r.data.tags.get("facefuse.kind") for r in runs} == {"trial", "sweep"}


@pytest.mark.slow
def test_diverged_trial_is_recorded_failed_and_the_sweep_goes_on(world_job, tmp_path: Path,
                                                                  ray_local: None) -> None:
    from ray import tune

    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep
    from facefuse.train.trial import DIVERGED_FILE

    path = world_job(tmp_path, "diverged", epochs=2, max_failures=1,
                     params={**TINY, "optimizer": "sgd", "grad_clip": 0.0})
    job, _ = prepare_job(path, cwd=tmp_path)
    # One sane learning rate and one absurd one (sgd, no clipping: NaN at the second step).
    result = run_sweep(job, param_space={"lr": tune.grid_search([1e-3, 1e12])}, use_asha=False,
                       flush_timeout_s=60)

    assert len(result.trials) == 2 and result.num_errors == 1
    by_lr = {float(t.config["lr"]): t for t in result.trials}
    good, bad = by_lr[1e-3], by_lr[1e12]
    assert good.status == "TERMINATED" and good.epochs_done == 2
    assert bad.status == "ERROR" and "loss became nan" in (bad.error or "")

    client, runs = _trial_runs(job.tracking.uri, "diverged")
    kids = {float(r.data.params["lr"]): r for r in runs if r.data.tags.get("facefuse.kind") == "trial"}
    assert set(kids) == {1e-3, 1e12}  # one run per trial, the retry did not add one
    assert kids[1e-3].info.status == "FINISHED"
    failed = kids[1e12]
    assert failed.info.status == "FAILED"
    tags = failed.data.tags
    assert "TrainingDiverged" in tags["facefuse.error"], tags["facefuse.error"]
    assert "loss became nan at epoch 1 step 2" in tags["facefuse.error"]
    assert "lower the learning rate or beta" in tags["facefuse.error"]
    # Tune retried it (max_failures=1); the retry failed at once instead of training again.
    assert tags["facefuse.failed_attempts"] == "2"
    assert "not retrained" in tags["facefuse.error"]
    assert tags["facefuse.full_budget"] == "false"
    trial_dirs = [p.parent for p in Path(result.experiment_path).glob(f"*/{DIVERGED_FILE}")]
    assert len(trial_dirs) == 1
    parent = [r for r in runs if r.data.tags.get("facefuse.kind") == "sweep"][0]
    assert parent.info.status == "FINISHED" and parent.data.tags["facefuse.trials_failed"] == "1"


#: Tune's own state files at the top of an experiment folder (trials, searcher, variant
#: generator); the sweep's files there (run map, backlog, journal) are the tracking's.
TUNE_STATE_PREFIXES = ("experiment_state", "basic-variant-state", "search_gen_state",
                       "searcher-state")


def _put_back_tune_state(exp: Path, saved: dict[str, bytes]) -> None:
    """Replaces Tune's experiment-state files in ``exp`` by a copy saved earlier."""
    for p in exp.iterdir():
        if p.is_file() and p.name.startswith(TUNE_STATE_PREFIXES):
            p.unlink()
    for name, data in saved.items():
        (exp / name).write_bytes(data)


@pytest.mark.slow
def test_trial_restored_from_a_stale_experiment_state_goes_on_after_its_last_report(
        world_job, tmp_path: Path, ray_local: None) -> None:
    """Tune names a trial's checkpoint in the experiment state it saves after the trial reported
    (the checkpoint itself is in the trial folder before the report leaves the trial): a driver
    lost in between leaves a state one epoch behind what Tune and MLflow already hold. Made here
    without kill timing: the state saved after epoch 1 is put back after epoch 2 was reported."""
    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep

    marker = tmp_path / "failures.txt"
    # Fails after reporting epoch 1, and (retried) after epoch 2; max_failures 0: each failure
    # ends the driver's run with the trial in error, and the next run retries it.
    path = world_job(tmp_path, "stale", trials=1, epochs=3, max_failures=0,
                     asha={"grace_period": 3},
                     resources={"cpus_per_worker": 0.5, "max_concurrent_trials": 1},
                     params={**TINY, "_test_fail_after_epoch": f"{marker}:1:2"})
    job, _ = prepare_job(path, cwd=tmp_path)
    first = run_sweep(job, flush_timeout_s=60)
    assert first.num_errors == 1 and first.trials[0].epochs_done == 1
    exp = Path(first.experiment_path)
    after_epoch_1 = {p.name: p.read_bytes() for p in exp.iterdir()
                     if p.is_file() and p.name.startswith(TUNE_STATE_PREFIXES)}
    assert any(n.startswith("experiment_state") for n in after_epoch_1), sorted(after_epoch_1)

    second = run_sweep(job, retry_errored=True, flush_timeout_s=60)
    assert second.resumed and second.num_errors == 1 and second.trials[0].epochs_done == 2
    (trial_dir,) = [p for p in exp.iterdir() if p.is_dir() and (p / "result.json").exists()]
    assert len(list(trial_dir.glob("checkpoint_*"))) == 2

    # Tune's state as it was saved after epoch 1: it names the epoch-1 checkpoint only.
    _put_back_tune_state(exp, after_epoch_1)

    third = run_sweep(job, retry_errored=True, flush_timeout_s=60)
    assert third.resumed and third.num_errors == 0, [t.error for t in third.trials]
    (trial,) = third.trials
    assert trial.epochs_done == 3
    assert marker.read_text().splitlines() == ["failed after epoch 1", "failed after epoch 2"]

    # Every epoch reached Tune once: the third run went on with epoch 3, it did not train and
    # report epoch 2 again from the checkpoint its stale state named.
    rows = [json.loads(ln) for ln in (trial_dir / "result.json").read_text().splitlines()
            if ln.strip()]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3], [(r["epoch"], r["pid"]) for r in rows]
    # ... and its next checkpoint did not overwrite the one it went on from.
    assert len(list(trial_dir.glob("checkpoint_*"))) == 3
    client, runs = _trial_runs(job.tracking.uri, "stale")
    (run,) = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "objective")]
    assert steps == [1, 2, 3], steps

    # The same stale state once the trial had finished: nothing is trained again, its last
    # epoch is reported from its checkpoint so the sweep ends on it (Tune's log gets it twice,
    # since the line was there; MLflow keeps one value).
    _put_back_tune_state(exp, after_epoch_1)
    fourth = run_sweep(job, retry_errored=True, flush_timeout_s=60)
    assert fourth.num_errors == 0 and fourth.trials[0].epochs_done == 3
    assert fourth.trials[0].objective == pytest.approx(trial.objective)
    rows = [json.loads(ln) for ln in (trial_dir / "result.json").read_text().splitlines()
            if ln.strip()]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 3]
    assert rows[-1]["synth_lfw/acc"] == rows[-2]["synth_lfw/acc"]  # reported, not retrained
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "objective")]
    assert steps == [1, 2, 3], steps
