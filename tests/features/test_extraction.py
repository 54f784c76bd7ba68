"""`prepare features`: one Ray Data job into a sharded store, resumable after a kill, on s3:// too."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facefuse.errors import DataFormatError
from facefuse.features.dataset import BackbonePair, load_eval_sets, load_train_set

REPO = Path(__file__).resolve().parents[2]
EVAL = ["synth_lfw", "synth_ijbb"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def _cmd(job: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "platform.prepare", "features", str(job), *args]


def _recorded(cache: Path) -> int:
    """Returns the shards (of every entry) the store's manifests vouch for."""
    total = 0
    for m in cache.glob("*/manifest.json"):
        total += sum(len(e["shards"]) for e in json.loads(m.read_text())["entries"].values())
    return total


def _all_maps(world: dict[str, Path], cache: Any) -> dict[str, np.ndarray]:
    pair = BackbonePair(world["arcface"], world["adaface"])
    out = {}
    for s in load_eval_sets(EVAL, world["data"], pair, cache, build=False, progress=False):
        for side in ("a", "b", "a_flip", "b_flip"):
            out[f"{s.name}/{side}"] = np.asarray(getattr(s.maps, side)[np.arange(len(s.maps))])
    t = load_train_set("synth_train", world["data"], pair, cache, build=False, progress=False)
    out["train/a"] = np.asarray(t.maps.a[np.arange(len(t.maps))])
    return out


def test_killed_extraction_rerun_extracts_only_missing_shards(
        world: dict[str, Path], world_job, tmp_path: Path) -> None:
    cache = tmp_path / "store"
    job = world_job(tmp_path, "extract_kill", data={
        "root": str(world["data"]), "train": "synth_train", "eval": EVAL, "cache_dir": str(cache)})
    proc = subprocess.Popen(_cmd(job, "--shard-size", "8"), env=_env(), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while _recorded(cache) < 8 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    killed_at = _recorded(cache)
    # a killed store is incomplete: a reader refuses it instead of reading part of it
    with pytest.raises(DataFormatError, match="prepare features"):
        _all_maps(world, cache)

    out = subprocess.run(_cmd(job, "--shard-size", "8"), env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    total = _recorded(cache)
    per_shard = 4  # entries per shard: two backbones x original and mirrored
    rerun = int(re.search(r"(\d+) shard\(s\)", out.stdout).group(1))
    assert rerun * per_shard == total - killed_at and 0 < rerun < total // per_shard
    assert "images/s" in out.stdout and "GB" in out.stdout
    # every map equals the backbones run on the fly
    got, live = _all_maps(world, cache), _all_maps(world, None)
    for k in live:
        np.testing.assert_array_equal(got[k], live[k])
    again = subprocess.run(_cmd(job), env=_env(), cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and " 0 shard(s)" in again.stdout


def test_extraction_to_s3_reads_the_same_maps_staged_once(
        world: dict[str, Path], world_job, tmp_path: Path, s3_bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{s3_bucket}/features"
    job = world_job(tmp_path, "extract_s3", data={
        "root": str(world["data"]), "train": "synth_train", "eval": EVAL, "cache_dir": uri})
    out = subprocess.run(_cmd(job, "--shard-size", "64"), env=_env(), cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    stage = tmp_path / "stage"
    monkeypatch.setenv("FACEFUSE_STAGE_DIR", str(stage))
    got, live = _all_maps(world, uri), _all_maps(world, None)
    for k in live:
        np.testing.assert_array_equal(got[k], live[k])
    staged = sorted(p for p in stage.rglob("*.npy"))
    assert staged and not list(stage.rglob("*.tmp"))
    before = {p: p.stat().st_ino for p in staged}
    _all_maps(world, uri)  # a second reader on this node uses the staged copy
    assert sorted(stage.rglob("*.npy")) == staged
    assert {p: p.stat().st_ino for p in staged} == before  # read, not copied again
    # two trials on the s3:// store (staged) and on a local store (another shard size): the
    # training loop sees the same batches, so every per-epoch metric is identical
    from facefuse.features.extraction import DatasetWork, extract
    from facefuse.features.store import ShardStore

    local = str(tmp_path / "local")
    extract(ShardStore(local), world["data"], (world["arcface"], world["adaface"]),
            [DatasetWork("synth_train", True), DatasetWork("synth_lfw", True)], shard_size=1000,
            use_ray=False)
    remote_hist, local_hist = _train_twice(world, uri), _train_twice(world, local)
    assert remote_hist == local_hist and len(remote_hist[0.1]) == 2
    assert remote_hist[0.01][-1] != remote_hist[0.1][-1]


def _train_twice(world: dict[str, Path], store: str) -> dict[float, list[dict[str, float]]]:
    """Returns the per-epoch metrics of two trials (two betas) reading a store."""
    from facefuse.train.trial import TrialContext, run_training

    ctx = TrialContext(data_root=str(world["data"]), cache_dir=store,
                       arcface_checkpoint=str(world["arcface"]),
                       adaface_checkpoint=str(world["adaface"]), train_dataset="synth_train",
                       eval_datasets=["synth_lfw"], objective={"quality": "all"})
    out = {}
    for beta in (0.01, 0.1):
        hist = run_training({"epochs": 2, "batch_size": 32, "d_model": 32, "fusion_hidden": 64,
                             "embedding_size": 32, "beta": beta, "seed": 0}, ctx,
                            lambda m, c: None, None)
        out[beta] = [{k: v for k, v in e.items() if not k.startswith("time/")} for e in hist]
    return out


def test_actor_count_follows_the_cluster(ray_local: None) -> None:
    """One CPU actor per CPU of the cluster, one GPU actor per gpus_per_actor GPUs (at least one,
    which an autoscaler then places), never more than shards, and --actors wins."""
    import ray

    from facefuse.features.extraction import actor_count

    cpus = int(ray.cluster_resources()["CPU"])
    assert actor_count(0.0, tasks=100) == cpus
    assert actor_count(0.0, tasks=1) == 1
    assert actor_count(1.0, tasks=100) == max(1, int(ray.cluster_resources().get("GPU", 0)))
    assert actor_count(0.0, tasks=100, actors=3) == 3 and actor_count(0.0, 2, actors=3) == 2
