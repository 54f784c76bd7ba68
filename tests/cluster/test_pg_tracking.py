"""A sweep tracked on a real PostgreSQL server; the store replaced by an empty database between
two runs of the driver: the rerun says so and the new store ends with every run and metric once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from facefuse.pipeline import sweep_rows
from facefuse.sweep import load_job, run_sweep
from tests.cluster.conftest import Postgres
from tests.sweep.conftest import REPO, SELFTEST, write_job

#: The second run is its own process, as a rerun is: MLflow keeps one engine per URI in a
#: process and would not see that the database behind it was replaced.
DRIVER = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
from facefuse.sweep import load_job, run_sweep
r = run_sweep(load_job(sys.argv[1]), trainable=sys.argv[2], flush_timeout_s=60)
print("RESULT", r.resumed, r.sweep_id, r.num_errors, r.pending_tracking_ops)
"""


def _trial_runs(uri: str, experiment: str) -> dict[str, list]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment} in the store"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind: dict[str, list] = {}
    for r in runs:
        by_kind.setdefault(r.data.tags.get("facefuse.kind", "?"), []).append(r)
    return by_kind


def _objective_steps(uri: str, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "objective"))


@pytest.mark.slow
def test_sweep_on_postgres_survives_a_replaced_store(ray_local, postgres: Postgres,
                                                     tmp_path: Path) -> None:
    import ray

    uri = postgres.fresh_database("sweep_store")
    epochs, trials = 2, 3
    job_path = write_job(tmp_path, name="pg", trials=trials, epochs=epochs,
                         asha={"grace_period": epochs},
                         tracking={"uri": uri, "experiment": "pg"})
    first = run_sweep(load_job(job_path), trainable=SELFTEST, flush_timeout_s=60)
    assert first.num_errors == 0 and first.pending_tracking_ops == 0
    # The summary connects with the real URI (it used the redacted one: role "***" ...).
    assert first.tracking_uri == uri and postgres.password not in first.shown_tracking_uri
    rows = sweep_rows(first.tracking_uri, first.sweep_id, ["synth_lfw"])
    assert len(rows) == trials
    runs = _trial_runs(uri, "pg")
    assert len(runs["sweep"]) == 1 and len(runs["trial"]) == trials

    # The store is lost: the same database name now holds an empty database.
    postgres.fresh_database("sweep_store")
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", DRIVER, str(job_path), SELFTEST], cwd=tmp_path,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=600)
    out = done.stdout
    assert done.returncode == 0, out[-4000:]
    assert f"RESULT True {first.sweep_id} 0 0" in out, out[-4000:]
    said = [ln for ln in out.splitlines() if "does not hold this sweep's runs" in ln]
    assert said, out[-4000:]
    assert postgres.password not in out and "***@127.0.0.1" in said[0]

    # Another spelling of the same database: this process's cached engine saw the old one.
    uri = uri + "?application_name=check"
    runs = _trial_runs(uri, "pg")
    assert len(runs["sweep"]) == 1 and runs["sweep"][0].info.status == "FINISHED"
    kids = runs["trial"]
    assert sorted(r.data.tags["facefuse.trial_id"] for r in kids) == \
        sorted(t.trial_id for t in first.trials)
    assert set(runs) == {"sweep", "trial"}
    for r in kids:
        assert r.info.status == "FINISHED"
        assert r.data.params, "params were not recreated"
        assert _objective_steps(uri, r.info.run_id) == list(range(1, epochs + 1))
