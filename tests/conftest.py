"""Shared fixtures: a tiny synthetic world in the real formats and one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
WORLD_EVAL = ["synth_lfw", "synth_cfp_fp", "synth_ijbb", "synth_ijbc"]
TINY_SUITE = dict(train_identities=24, train_images_per_identity=6, verification_pairs=60,
                  ijb_identities=8, ijb_templates_per_identity=2, ijb_impostor_pairs=120)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def world_job(world: dict[str, Path]) -> Callable[..., Path]:
    """Returns a factory writing a small job file over the tiny world (overrides replace keys)."""

    def make(tmp: Path, name: str, **over: Any) -> Path:
        job: dict[str, Any] = {
            "name": name,
            "data": {"root": str(world["data"]), "train": "synth_train", "eval": WORLD_EVAL,
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
            "features": "auto",  # extract missing entries before the sweep, as the quickstart does
        }
        job.update(over)
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return make


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3-compatible server (moto in server mode) on a free loopback port; yields its URL."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Returns s3://BUCKET of a fresh bucket on the moto server, with dummy credentials in env."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    name = f"ff-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def real_sweep_store(world_job: Callable[..., Path], ray_local: None,
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny sweep of the real trainable (3 trials, 2 epochs) in an sqlite store, with the beta
    chosen for synth_ijbc registered as ``facefuse-fusion@best-synth_ijbc``."""
    from facefuse.pipeline import prepare_job
    from facefuse.selection import register_choice, select_beta
    from facefuse.sweep import run_sweep
    from facefuse.sweep_report import summary_handler, trial_roc_plot

    tmp = tmp_path_factory.mktemp("real_sweep")
    job, _ = prepare_job(world_job(tmp, "researcher"), cwd=tmp)
    result = run_sweep(job, summary_handler=summary_handler, roc_plot=trial_roc_plot)
    selection = select_beta(job.tracking.uri, "synth_ijbc", experiment="researcher")
    choice = register_choice(job.tracking.uri, selection)
    return {"tmp": tmp, "job": job, "result": result, "selection": selection, "choice": choice,
            "uri": job.tracking.uri}
