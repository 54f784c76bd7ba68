"""Tracking: secrets never logged, outages buffered (and replayed), a real MLflow server stopped
by PID mid-sweep and started again loses no metric."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from facefuse.sweep import load_job, run_sweep
from facefuse.sweep.callback import (BACKLOG_FILE, MlflowTrackingCallback, result_metrics,
                                     result_step)
from facefuse.tracking.schema import flat_config
from facefuse.tracking.writer import safe_params
from tests.sweep.conftest import SELFTEST, write_job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_secrets_are_never_params(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    params = safe_params({"beta": 0.1, "db_password": "x", "api_token": "y",
                          "note": "hunter2-secret", "nested": {"lr": 1e-3}})
    assert params == {"beta": "0.1", "lr": "0.001"}


def test_ablation_entries_are_flattened() -> None:
    cfg = {"epochs": 3, "__ablation": {"variant": "no_vib", "seed": 1, "vib": False}}
    assert flat_config(cfg) == {"epochs": 3, "variant": "no_vib", "seed": 1, "vib": False}


def test_result_metrics_drop_tune_bookkeeping() -> None:
    result = {"epoch": 2.0, "lfw/acc": 0.9, "done": False, "training_iteration": 2,
              "time_this_iter_s": 1.5, "trial_id": "abc", "hostname": "h", "flag": True}
    assert result_metrics(result) == {"epoch": 2.0, "lfw/acc": 0.9, "time/epoch_s": 1.5}
    assert result_step(result) == 2 and result_step({"training_iteration": 5}) == 5


def test_unreachable_store_buffers_to_a_backlog(tmp_path: Path, caplog) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cb = MlflowTrackingCallback(uri, "exp", "sweep-1", str(tmp_path), initial_backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="facefuse.tracking"):
        cb.start()  # must not raise
        assert not cb.flush(timeout_s=0.3)
    assert cb.pending_operations == 1 and cb.parent_run_id is None
    assert "does not answer" in caplog.text
    backlog = json.loads((tmp_path / BACKLOG_FILE).read_text())
    assert backlog["tracking_uri"] == uri and backlog["ops"][0]["op"] == "parent"
    # A restarted driver picks the backlog up instead of losing it.
    again = MlflowTrackingCallback(uri, "exp", "sweep-1", str(tmp_path))
    again._load()
    assert again.pending_operations == 1


def _start_server(port: int, root: Path) -> subprocess.Popen:
    mlflow = Path(sys.executable).with_name("mlflow")
    return subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root}/server.db",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=open(root / "server.log", "ab"), stderr=subprocess.STDOUT,
        start_new_session=True)  # its own group: we stop exactly the processes we started


def _wait_health(port: int, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server on port {port} did not answer /health")


def _stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _rest(port: int, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/{path}",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_server_outage_mid_sweep_loses_nothing(ray_session, tmp_path: Path, caplog) -> None:
    port = _free_port()
    server = _start_server(port, tmp_path)
    procs = [server]
    try:
        _wait_health(port)
        epochs = 4
        job = load_job(write_job(tmp_path, name="outage", trials=3, epochs=epochs,
                                 asha={"grace_period": epochs},
                                 tracking={"uri": f"http://127.0.0.1:{port}",
                                           "experiment": "outage"},
                                 params={"_sleep_s": 2.0}))
        state: dict = {}

        def outage() -> None:
            run_map = None
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:  # wait for the first logged epoch
                found = list((tmp_path / "results").glob("outage-*/mlflow_runs.json"))
                if found:
                    run_map = json.loads(found[0].read_text())
                    if any(t.get("last_step", 0) >= 1 for t in run_map["trials"].values()):
                        break
                time.sleep(0.2)
            _stop_server(procs[0])
            state["stopped_at"] = time.monotonic()
            time.sleep(8)
            procs.append(_start_server(port, tmp_path))
            state["restarted_at"] = time.monotonic()

        thread = threading.Thread(target=outage, daemon=True)
        thread.start()
        with caplog.at_level(logging.WARNING, logger="facefuse.tracking"):
            result = run_sweep(job, trainable=SELFTEST, flush_timeout_s=240)
        thread.join(timeout=300)
        assert "stopped_at" in state and "restarted_at" in state
        assert "does not answer" in caplog.text and "answers again" in caplog.text
        assert result.pending_tracking_ops == 0 and result.num_errors == 0

        # Read everything back through the server's REST API, as `mlflow ui` would.
        _wait_health(port)
        exp_id = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=outage",
            timeout=30).read())["experiment"]["experiment_id"]
        runs = _rest(port, "runs/search", {"experiment_ids": [exp_id], "max_results": 100})["runs"]
        tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
        kinds = sorted(t.get("facefuse.kind") for t in tags)
        assert kinds == ["sweep", "trial", "trial", "trial"]
        for run, t in zip(runs, tags):
            assert run["info"]["status"] == "FINISHED"
            if t["facefuse.kind"] != "trial":
                continue
            hist = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/metrics/get-history?run_id="
                f"{run['info']['run_id']}&metric_key=objective", timeout=30).read())["metrics"]
            assert sorted(m["step"] for m in hist) == list(range(1, epochs + 1))
            assert t["facefuse.full_budget"] == "true"
    finally:
        for p in procs:
            _stop_server(p)


def test_sweep_settings_keep_their_section_in_the_key() -> None:
    params = safe_params({"asha": {"max_t": 3}, "data": {"eval": ["a", "b"]}}, dotted=True)
    assert params == {"asha.max_t": "3", "data.eval": '["a", "b"]'}


def test_credentials_in_the_tracking_uri_are_redacted() -> None:
    from facefuse.tracking.store import redact_uri

    assert redact_uri("https://alice:s3cret@mlflow.example.org/") == "https://***@mlflow.example.org/"
    assert redact_uri("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"
