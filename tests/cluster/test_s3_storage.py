"""A sweep whose storage and MLflow artifacts are on an S3-compatible server (moto, loopback).

The driver is its own process with its own Ray (its trials must see the AWS variables, set after
the session's Ray started), started in an empty folder with an empty HOME: checkpoints, the
Train runs of multi-worker trials, mid-epoch checkpoints, the sweep's tracking state and the
best checkpoints logged to MLflow all end in the bucket, and nothing in the driver's local
ray_results. A second driver, started in another empty folder (as a new ``ray job submit``
is), resumes the same sweep from the bucket without duplicating a run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.sweep.conftest import REPO

DRIVER = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
import ray
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from facefuse.pipeline import prepare_job
from facefuse.sweep import run_sweep
from facefuse.sweep_report import summary_handler, trial_roc_plot
for path in sys.argv[1:]:
    job, _ = prepare_job(path)
    r = run_sweep(job, summary_handler=summary_handler, roc_plot=trial_roc_plot)
    print("RESULT", r.sweep_id, r.resumed, r.num_errors, r.pending_tracking_ops, len(r.trials),
          flush=True)
"""

SMALL = {"batch_size": 32, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32}


def _objects(bucket: str, s3_server: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _drive(cwd: Path, home: Path, jobs: list[Path]) -> dict[str, list[str]]:
    cwd.mkdir()
    home.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", DRIVER, *map(str, jobs)], cwd=cwd, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-5000:]
    results = [ln.split()[1:] for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(results) == len(jobs), done.stdout[-5000:]
    return {r[0]: r[1:] for r in results}


@pytest.mark.slow
def test_sweep_with_storage_and_artifacts_on_s3(world_job, world: dict[str, Any],
                                                s3_bucket: str, s3_server: str,
                                                tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    from mlflow import MlflowClient

    caplog.set_level(logging.INFO, logger="werkzeug")  # the S3 server's request log
    from facefuse.selection import register_choice, select_beta

    bucket = s3_bucket[len("s3://"):]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common: dict[str, Any] = dict(
        tracking={"uri": uri, "experiment": "s3sweep",
                  "artifact_location": f"{s3_bucket}/mlflow"},
        storage=f"{s3_bucket}/runs", params=SMALL)
    one = world_job(tmp_path, "s3one", trials=2, epochs=2, asha={"grace_period": 2},
                    resources={"cpus_per_worker": 1, "max_concurrent_trials": 2}, **common)
    # A Train run inside the trial, with mid-epoch checkpoints in the bucket too.
    two = world_job(tmp_path, "s3two", trials=1, epochs=2, asha={"grace_period": 2},
                    resources={"workers_per_trial": 2, "cpus_per_worker": 0.5,
                               "max_concurrent_trials": 1, "checkpoint_every_steps": 1},
                    **{**common, "tracking": {**common["tracking"], "experiment": "s3two"}})
    first = _drive(tmp_path / "run1", tmp_path / "home", [one, two])
    assert all(r[1:3] == ["0", "0"] for r in first.values()), first
    (sweep_one,) = [s for s in first if s.startswith("s3one")]
    (sweep_two,) = [s for s in first if s.startswith("s3two")]

    keys = _objects(bucket, s3_server)
    # Tune's experiments, the trials' checkpoints and the Train run live in the bucket ...
    assert any(k.startswith(f"runs/{sweep_one}/") and k.endswith("/state.pt") for k in keys)
    assert any(k.startswith(f"runs/{sweep_two}/ray_train/") and k.endswith("/best/model.pt")
               for k in keys), keys
    # ... and the sweep's tracking state, the journal as appended parts.
    for sweep in (sweep_one, sweep_two):
        state = f"runs/{sweep}/facefuse_state/"
        assert f"{state}mlflow_runs.json" in keys
        assert any(k.startswith(f"{state}tracking_journal.jsonl.parts/") for k in keys)
    # The mid-epoch checkpoints were written to the bucket and removed once superseded.
    requests = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    step_puts = [m for m in requests if "PUT " in m and "/facefuse_step_checkpoints/" in m]
    assert step_puts, "no mid-epoch checkpoint reached the bucket"
    assert not any("facefuse_step_checkpoints" in k and k.endswith(".pt") for k in keys)

    # Every trial run logged its best checkpoint and ROC data from the bucket to the bucket.
    client = MlflowClient(uri)
    for name, n in (("s3sweep", 2), ("s3two", 1)):
        exp = client.get_experiment_by_name(name)
        assert exp.artifact_location.startswith(f"{s3_bucket}/mlflow")
        runs = client.search_runs([exp.experiment_id], "tags.`facefuse.kind` = 'trial'")
        assert len(runs) == n
        for run in runs:
            top = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"best_checkpoint", "roc"} <= top, top
            inside = {a.path for a in client.list_artifacts(run.info.run_id, "best_checkpoint")}
            assert "best_checkpoint/model.pt" in inside
            assert any(a.path.endswith(".npz")
                       for a in client.list_artifacts(run.info.run_id, "roc"))
            assert run.data.tags.get("facefuse.model_id")
            prefix = run.info.artifact_uri[len(s3_bucket) + 1:]
            assert f"{prefix}/best_checkpoint/model.pt" in _objects(bucket, s3_server)
    # --register registers a version with weights.
    choice = register_choice(uri, select_beta(uri, "synth_ijbc", experiment="s3sweep"))
    version = client.get_model_version(choice.model_name, choice.version)
    assert version.tags["facefuse.has_checkpoint"] == "true"
    assert version.tags["facefuse.loadable_model"] == "true"

    # Nothing under the driver's local results, cache or mlruns.
    for home_or_cwd in (tmp_path / "run1", tmp_path / "home"):
        local = [p for p in home_or_cwd.rglob("*")
                 if p.name in ("ray_results", "mlruns", "cache", ".facefuse")]
        assert not local, local

    # A new driver in another empty folder resumes both sweeps from the bucket.
    again = _drive(tmp_path / "run2", tmp_path / "home", [one, two])
    assert again == {sweep_one: ["True", "0", "0", "2"], sweep_two: ["True", "0", "0", "1"]}
    for name, n in (("s3sweep", 2), ("s3two", 1)):
        exp = client.get_experiment_by_name(name)
        kinds = [r.data.tags.get("facefuse.kind") for r in client.search_runs(
            [exp.experiment_id], max_results=100)]
        assert kinds.count("trial") == n and kinds.count("sweep") == 1, kinds
