"""The sweep driver killed mid-sweep, then the same job run again: it resumes, no trial is lost
or duplicated, and MLflow holds one run per trial with each epoch logged once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facefuse.sweep import load_job, run_sweep
from tests.sweep.conftest import REPO, SELFTEST, write_job

DRIVER = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from facefuse.sweep import load_job, run_sweep
run_sweep(load_job(sys.argv[1]), trainable=sys.argv[2])
"""


@pytest.mark.slow
def test_killed_driver_resumes_without_duplicates(ray_session, tmp_path: Path) -> None:
    import ray
    from mlflow import MlflowClient

    epochs, trials = 3, 4
    job_path = write_job(tmp_path, name="killed", trials=trials, epochs=epochs,
                         asha={"grace_period": epochs}, params={"_sleep_s": 1.5})
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(job_path), SELFTEST],
                              cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            found = list((tmp_path / "results").glob("killed-*/mlflow_runs.json"))
            if found:
                run_map = json.loads(found[0].read_text())
                if any(t.get("last_step", 0) >= 2 for t in run_map["trials"].values()):
                    break
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)

    result = run_sweep(load_job(job_path), trainable=SELFTEST, flush_timeout_s=60)
    assert result.resumed
    assert len(result.trials) == trials and result.num_errors == 0
    assert all(t.epochs_done == epochs for t in result.trials)

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("killed")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    kids = [r for r in runs if r.data.tags.get("facefuse.kind") == "trial"]
    parents = [r for r in runs if r.data.tags.get("facefuse.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["facefuse.trial_id"] for r in kids) == \
        sorted(t.trial_id for t in result.trials)
    for r in kids:
        assert r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "objective")]
        assert sorted(steps) == list(range(1, epochs + 1)), steps
    for r in runs:  # anything else is a relabelled orphan, never a second run of a trial
        assert r.data.tags.get("facefuse.kind") in ("trial", "sweep", "orphaned_trial")

    # The resumed sweep continued the same Optuna study in the database beside the store: one
    # study, named after the sweep, holding every trial of both drivers, each finished once.
    import optuna

    from facefuse.sweep.study import study_storage_url

    url = study_storage_url(f"sqlite:///{tmp_path}/mlflow.db")
    summaries = optuna.get_all_study_summaries(url)
    assert [s.study_name for s in summaries] == [result.sweep_id]
    study = optuna.load_study(study_name=result.sweep_id, storage=url)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(complete) == trials
    assert sorted(round(t.params["beta"], 12) for t in complete) == \
        sorted(round(float(t.config["beta"]), 12) for t in result.trials)
