"""The sweep on a multi-node Ray cluster on one machine: a head with no CPUs for trials and two
worker nodes, each its own ``ray start`` (own --temp-dir, free ports), stopped by PID.

Storage and features on S3 (moto), tracking on PostgreSQL with artifacts in the bucket; the
sweep is submitted with ``ray job submit``. The worker node running the two-worker trial is
killed mid-trial; later the driver is stopped while the one-worker sweep runs, and the same
submission resumes both sweeps from the bucket.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.cluster.conftest import Postgres
from tests.sweep.conftest import REPO

RAY = str(Path(sys.executable).with_name("ray"))
SMALL = {"batch_size": 32, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32}
EPOCHS = 2

DRIVER = """
import logging, os, sys
os.chdir(sys.argv[1])  # an empty folder of its own, as the copy ray job submit makes
logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
from facefuse.pipeline import prepare_job
from facefuse.sweep import run_sweep
for path in sys.argv[2:]:
    job, _ = prepare_job(path)
    r = run_sweep(job)
    epochs = {t.trial_id: t.epochs_done for t in r.trials}
    print("RESULT", r.sweep_id, r.resumed, r.num_errors, r.pending_tracking_ops,
          sorted(set(t.status for t in r.trials)), epochs, flush=True)
"""


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Node:
    """One ``ray start --block`` process; its process group holds the node's every process."""

    name: str
    proc: subprocess.Popen
    log: Path

    def started(self) -> bool:
        text = self.log.read_text(errors="replace")
        if self.proc.poll() is not None:
            raise AssertionError(f"ray start of {self.name} exited {self.proc.returncode}: "
                                 f"{text[-3000:]}")
        return "Ray runtime started" in text

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def holds(self, pid: int) -> bool:
        """Returns whether a process descends from this node's ``ray start`` (workers are
        started by its raylet, in process groups of their own)."""
        while pid > 1:
            if pid == self.proc.pid:
                return True
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return False
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4: the parent's pid
        return False

    def kill_all(self) -> None:
        """Kills the node's group and every process that descends from it (its workers)."""
        victims = [int(p.name) for p in Path("/proc").iterdir()
                   if p.name.isdigit() and self.holds(int(p.name))]
        self.kill()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_node(name: str, args: list[str], base: Path, env: dict[str, str]) -> Node:
    temp = base / name
    temp.mkdir(parents=True)
    n = _free_ports(6)
    cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
           f"--temp-dir={temp}", "--object-store-memory=100000000",
           f"--node-manager-port={n[0]}", f"--object-manager-port={n[1]}",
           f"--dashboard-agent-listen-port={n[2]}", f"--dashboard-agent-grpc-port={n[3]}",
           f"--runtime-env-agent-port={n[4]}", f"--metrics-export-port={n[5]}", *args]
    log = base / f"{name}.log"
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    return Node(name, proc, log)


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Cluster:
    head: Node
    workers: list[Node]
    gcs: str
    dashboard: str
    env: dict[str, str]
    token: str

    def job(self, *args: str) -> str:
        """Returns the output of ``ray job ARGS`` against this cluster (the CLI, with the
        cluster's token: a test process keeps the first token it read, its own Ray's)."""
        done = subprocess.run([RAY, "job", *args, "--address", self.dashboard], env=self.env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout + done.stderr  # the CLI prints its status lines on stderr

    def status(self, sid: str) -> str:
        """Returns the job's status word (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.job("status", sid))  # the CLI's colours
        for phrase, word in (("' succeeded", "SUCCEEDED"), ("' was stopped", "STOPPED"),
                             ("' failed", "FAILED")):
            if phrase in text:
                return word
        got = re.search(r"\b(PENDING|RUNNING)\b", text)
        assert got, text
        return got.group(1)


@pytest.fixture
def cluster(tmp_path: Path, s3_bucket: str) -> Iterator[Cluster]:
    base = Path(f"/tmp/ff-mn-{os.getpid()}")  # Ray's socket paths must stay short
    # Token authentication on every node, as ray_cluster.yaml sets it (this session's own
    # ray.init() also turned it on in this process's environment).
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"),
               OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    (tmp_path / "home").mkdir()
    made = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    token = (tmp_path / "home" / ".ray" / "auth_token").read_text().strip()
    gcs_port, dash_port, client_port = _free_ports(3)
    head = _start_node("head", [
        "--head", f"--port={gcs_port}", "--num-cpus=0", '--resources={"train_driver": 1}',
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}", f"--ray-client-server-port={client_port}"], base, env)
    nodes = [head]
    try:
        try:
            _wait("the head", head.started, 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {head.log.read_text(errors='replace')[-3000:]}")
        for i in (1, 2):
            nodes.append(_start_node(f"worker{i}", [f"--address=127.0.0.1:{gcs_port}",
                                                    "--num-cpus=2"], base, env))
        for node in nodes[1:]:
            _wait(node.name, node.started, 120)
        yield Cluster(head, nodes[1:], f"127.0.0.1:{gcs_port}",
                      f"http://127.0.0.1:{dash_port}", env, token)
    finally:
        for node in reversed(nodes):
            node.kill(signal.SIGTERM)
        time.sleep(2)
        for node in reversed(nodes):
            node.kill_all()
            node.proc.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _keys(s3_server: str, bucket: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _train_worker_pids(cluster: "Cluster") -> list[int]:
    url = (f"{cluster.dashboard}/api/v0/actors?limit=1000&filter_keys=state"
           "&filter_predicates=%3D&filter_values=ALIVE")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {cluster.token}"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        body = json.loads(response.read())
    actors = body["data"]["result"]["result"]
    return [int(a["pid"]) for a in actors if a.get("class_name") == "RayTrainWorker"
            and a.get("pid")]


def _submit(cluster: Cluster, sid: str, cwd: Path, driver: Path, jobs: list[Path]) -> None:
    cwd.mkdir()
    done = subprocess.run([RAY, "job", "submit", "--address", cluster.dashboard,
                           "--submission-id", sid, "--no-wait", "--", sys.executable,
                           str(driver), str(cwd), *map(str, jobs)],
                          env=cluster.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _results(logs: str) -> dict[str, list[str]]:
    out = {}
    for line in logs.splitlines():
        if line.startswith("RESULT "):
            sweep, rest = line.split()[1], line.split(None, 2)[2]
            out[sweep] = rest
    return out


@pytest.mark.slow
def test_sweep_on_three_nodes_survives_a_lost_node_and_a_lost_driver(
        cluster: Cluster, world_job, world: dict[str, Any], postgres: Postgres,
        s3_bucket: str, s3_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    bucket = s3_bucket[len("s3://"):]
    uri = postgres.fresh_database("multinode")
    common: dict[str, Any] = dict(
        tracking={"uri": uri, "experiment": "mn", "artifact_location": f"{s3_bucket}/mlflow"},
        storage=f"{s3_bucket}/runs", params=SMALL, max_failures=2, epochs=EPOCHS,
        asha={"grace_period": EPOCHS})
    data = {"root": str(world["data"]), "train": "synth_train",
            "eval": ["synth_lfw", "synth_ijbc"], "cache_dir": f"{s3_bucket}/features"}
    two = world_job(tmp_path, "mn2", trials=1, data=data,
                    resources={"workers_per_trial": 2, "cpus_per_worker": 0.5,
                               "max_concurrent_trials": 1,
                               "train_driver_resource": "train_driver"}, **common)
    # Half a CPU each: after the node is lost, all three fit on the one left.
    one = world_job(tmp_path, "mn1", trials=3, data=data,
                    resources={"cpus_per_worker": 0.5, "max_concurrent_trials": 3}, **common)
    # The features are extracted into the bucket once, before (in a process of its own: a Ray
    # of this session would run the extraction on workers without the bucket's settings).
    done = subprocess.run([sys.executable, "-c", "import sys; from facefuse.pipeline import "
                           "prepare_job; prepare_job(sys.argv[1])", str(one)],
                          env=cluster.env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    _submit(cluster, "first", tmp_path / "cwd1", driver, [two, one])
    # The worker node running the two-worker trial dies once that trial has a checkpoint.
    _wait("a checkpoint of the two-worker trial",
          lambda: any("/checkpoint_" in k for k in _keys(s3_server, bucket, "runs/mn2-")), 240)
    pids = _wait("its Train workers", lambda: _train_worker_pids(cluster), 60)
    (victim,) = {w.name: w for w in cluster.workers if any(w.holds(p) for p in pids)}.values()
    victim.kill_all()
    # The driver dies while the one-worker sweep runs (after its first checkpoint).
    _wait("a checkpoint of the one-worker sweep",
          lambda: any("/checkpoint_" in k for k in _keys(s3_server, bucket, "runs/mn1-")), 300)
    assert cluster.status("first") == "RUNNING", cluster.job("logs", "first")[-5000:]
    cluster.job("stop", "first")
    _wait("the driver to stop", lambda: cluster.status("first") == "STOPPED", 120, 2.0)

    _submit(cluster, "second", tmp_path / "cwd2", driver, [two, one])
    status = _wait("the resubmitted job", lambda: (lambda st: st if st in (
        "SUCCEEDED", "FAILED", "STOPPED") else None)(cluster.status("second")), 600, 3.0)
    logs = cluster.job("logs", "second")
    assert status == "SUCCEEDED", logs[-6000:]
    first_logs = cluster.job("logs", "first")
    results = _results(logs)
    assert len(results) == 2, logs[-6000:]
    for sweep, rest in results.items():
        # resumed from the bucket, no error, nothing left to write, every trial to the last epoch
        assert rest.startswith("True 0 0 ['TERMINATED']"), (sweep, rest)
        assert set(json.loads(rest.split(" ", 4)[4].replace("'", '"')).values()) == {EPOCHS}, rest

    # The trial on the killed node went on from its Train run's checkpoint: every epoch once.
    # The sweep whose driver was stopped went on from each trial's newest checkpoint in the
    # bucket, not from the older one Tune's last synced state may name: no epoch was trained
    # and reported twice. (Tune's own log, result.json, is synced with that state, so it may
    # lack the lines of epochs reported after the last sync, and a trial that had finished
    # reports its last epoch once more from its checkpoint; MLflow, checked below, holds every
    # epoch once.)
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    results = [k for k in _keys(s3_server, bucket, "runs/") if k.endswith("/result.json")]
    assert len(results) == 4, results
    for key in results:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        epochs = [int(json.loads(ln)["epoch"]) for ln in body.splitlines() if ln.strip()]
        if key.startswith("runs/mn2-"):
            assert epochs == list(range(1, EPOCHS + 1)), (key, epochs, first_logs[-3000:])
        ended = epochs[:-1] if epochs[-2:] == [EPOCHS, EPOCHS] else epochs
        assert ended == sorted(set(ended)) and ended[-1] == EPOCHS, (key, epochs)

    # One run per trial in PostgreSQL, each with its best checkpoint as an artifact in the bucket.
    mlflow = MlflowClient(uri)
    exp = mlflow.get_experiment_by_name("mn")
    runs = mlflow.search_runs([exp.experiment_id], max_results=100)
    kinds = sorted(r.data.tags.get("facefuse.kind", "?") for r in runs)
    assert kinds == ["sweep", "sweep", "trial", "trial", "trial", "trial"], kinds
    artifacts = _keys(s3_server, bucket, "mlflow/")
    for run in runs:
        if run.data.tags.get("facefuse.kind") == "trial":
            prefix = run.info.artifact_uri[len(s3_bucket) + 1:]
            assert f"{prefix}/best_checkpoint/model.pt" in artifacts, run.info.run_name
            # every epoch logged once, the killed node's and the stopped driver's trials too
            steps = [m.step for m in mlflow.get_metric_history(run.info.run_id, "objective")]
            assert steps == list(range(1, EPOCHS + 1)), (run.info.run_name, steps)

    # Nothing in the drivers' folders or HOME: no ray_results, cache or mlruns.
    local = [p for d in (tmp_path / "cwd1", tmp_path / "cwd2", tmp_path / "home")
             for p in d.rglob("*") if p.name in ("ray_results", "mlruns", "cache", ".facefuse")]
    assert not local, local
