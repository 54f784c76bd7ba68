"""`ray job submit --working-dir . -- python -m platform.sweep JOB` against a local head node.

The head runs on free ports bound to 127.0.0.1 with token authentication, in its own temp dir
and HOME, and is stopped by the PIDs of its own processes (never `ray stop`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_using(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and int(d.name) != os.getpid():
            pids.append(int(d.name))
    return pids


@pytest.fixture
def head(tmp_path: Path) -> Iterator[dict[str, str]]:
    temp_dir = Path("/tmp") / f"ffray{os.getpid()}_{tmp_path.name[-6:]}"  # short: socket paths
    # The head (and so the job driver it starts) sees this venv first on PATH, as a cluster
    # node that installed the project would.
    env = dict(os.environ, HOME=str(tmp_path / "home"), RAY_AUTH_MODE="token",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    (tmp_path / "home").mkdir()
    token = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert token.returncode == 0, token.stderr
    gcs, dash = _free_port(), _free_port()
    # Every port a head opens is chosen free here: the defaults (dashboard agent 52365, Ray
    # client 10001, ...) are taken by any other Ray on the machine, including the ray.init()
    # of this very test session, and a head whose job agent cannot bind never accepts a job.
    ports = [f"--{name}={_free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
        "metrics-export-port", "ray-client-server-port")]
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", *ports, "--num-cpus=2",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    try:
        yield {"address": f"http://127.0.0.1:{dash}", "env_home": env["HOME"]}
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _pids_using(str(temp_dir)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(2)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


@pytest.mark.slow
def test_submitted_sweep_runs_on_the_head_and_tracks_to_an_absolute_store(
        head: dict[str, str], tmp_path: Path) -> None:
    import torch

    from facefuse.backbones import get_model, save_adaface, save_insightface
    from facefuse.synth import build_suite

    build_suite(tmp_path / "data", seed=5, workers=1, progress=False, train_identities=12,
                train_images_per_identity=4, verification_pairs=40, ijb_identities=4,
                ijb_templates_per_identity=2, ijb_impostor_pairs=40)
    torch.manual_seed(0)
    save_insightface(get_model("ir_tiny", widths=(4, 8, 12, 16), num_features=16), tmp_path / "a.pth")
    save_adaface(get_model("ir_tiny", widths=(4, 8, 12, 16), num_features=16, layout="adaface"),
                 tmp_path / "b.ckpt")
    store = tmp_path / "mlflow.db"
    job = {
        "name": "submitted", "trials": 2, "epochs": 1, "seed": 0, "features": "auto",
        "data": {"root": str(tmp_path / "data"), "train": "synth_train",
                 "eval": ["synth_lfw", "synth_ijbb"], "cache_dir": str(tmp_path / "cache")},
        "backbones": {"arcface": str(tmp_path / "a.pth"), "adaface": str(tmp_path / "b.ckpt")},
        "search_space": "search_spaces/mixed_quality.yaml",  # relative: resolved in the job's copy
        "objective": "mean:all",
        "resources": {"cpus_per_worker": 0.5, "max_concurrent_trials": 2},
        "tracking": {"uri": f"sqlite:///{store}", "experiment": "submitted"},
        "storage": str(tmp_path / "results"),
        "params": {"batch_size": 16, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32},
    }
    job_file = tmp_path / "submitted.yaml"
    job_file.write_text(yaml.safe_dump(job))
    env = dict(os.environ, HOME=head["env_home"], RAY_AUTH_MODE="token",
               RAY_ADDRESS=head["address"])
    for _ in range(12):
        res = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head["address"], "--working-dir", ".",
             "--", "python", "-m", "platform.sweep", str(job_file)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        out = res.stdout + res.stderr
        # A head that has just started may not have its job agent yet; nothing was submitted.
        if "No available agent to submit job" not in out:
            break
        time.sleep(5)
    assert res.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower(), out[-4000:]
    assert "best beta per dataset" in out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    exp = client.get_experiment_by_name("submitted")
    runs = client.search_runs([exp.experiment_id], "tags.`facefuse.kind` = 'trial'")
    assert len(runs) == 2
    assert all("synth_ijbb/tar_far_1e-4" in r.data.metrics for r in runs)
