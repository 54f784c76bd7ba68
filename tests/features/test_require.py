"""Trials never extract: a job without `features: auto` refuses to start on a missing entry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facefuse.errors import ConfigError, DataFormatError


def test_missing_entry_refused_before_the_sweep_unless_auto(world: dict[str, Path], world_job,
                                                             tmp_path: Path,
                                                             ray_local: None) -> None:
    # ray_local: `features: auto` runs the extraction as the Ray Data job on this process's Ray
    from facefuse.pipeline import prepare_job
    from facefuse.train.trial import TrialContext, run_training

    cache = tmp_path / "store"
    data = {"root": str(world["data"]), "train": "synth_train", "eval": ["synth_lfw"],
            "cache_dir": str(cache)}
    path = world_job(tmp_path, "req", data=data, features="require")
    with pytest.raises(DataFormatError) as err:
        prepare_job(path, cwd=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(cache)) and "synth_train" in msg
    assert "python -m platform.prepare features JOB.yaml" in msg
    assert not list(cache.rglob("*.npy"))  # nothing was extracted
    # a trial that finds the entry missing fails at once with the same line
    ctx = TrialContext(data_root=str(world["data"]), cache_dir=str(cache),
                       arcface_checkpoint=str(world["arcface"]),
                       adaface_checkpoint=str(world["adaface"]), train_dataset="synth_train",
                       eval_datasets=["synth_lfw"], objective={"quality": "all"})
    with pytest.raises(DataFormatError, match="prepare features"):
        run_training({"epochs": 1}, ctx, lambda m, c: None, None)
    assert not list(cache.rglob("*.npy"))
    job, _ = prepare_job(world_job(tmp_path, "auto", data=data, features="auto"), cwd=tmp_path)
    assert job.features == "auto" and list(cache.rglob("manifest.json"))
    prepare_job(path, cwd=tmp_path)  # now every entry exists: "require" passes
    with pytest.raises(ConfigError, match=r"\[features\]"):
        prepare_job(world_job(tmp_path, "bad", data=data, features="sometimes"), cwd=tmp_path)


_AUTO = """
import json, logging, sys
import ray
from facefuse.pipeline import prepare_job
from facefuse.sweep.tuner import init_ray

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
kwargs = dict(num_cpus=2, include_dashboard=False, log_to_driver=False)
job, _ = prepare_job(sys.argv[1], cwd=sys.argv[2], ray_init_kwargs=kwargs)
out = {"started": ray.is_initialized()}
if out["started"]:
    out["address"] = ray.get_runtime_context().gcs_address
    init_ray(**kwargs)  # what run_sweep calls before Tune
    out["reused"] = ray.get_runtime_context().gcs_address == out["address"]
print(json.dumps(out))
"""


def test_auto_runs_the_ray_data_job_on_the_ray_the_sweep_reuses(world: dict[str, Path], world_job,
                                                                tmp_path: Path) -> None:
    """`features: auto` starts Ray once (as run_sweep would) only when an entry is missing, runs
    the extraction there as the Ray Data job, and run_sweep's init_ray finds that same Ray."""
    import json
    import os
    import subprocess
    import sys

    from facefuse.features.dataset import BackbonePair, load_eval_sets

    cache = tmp_path / "store"
    path = world_job(tmp_path, "auto_ray", features="auto", data={
        "root": str(world["data"]), "train": "synth_train", "eval": ["synth_lfw"],
        "cache_dir": str(cache)})
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]),
               HOME=str(tmp_path))
    env.pop("RAY_ADDRESS", None)

    def run() -> tuple[dict, str]:
        proc = subprocess.run([sys.executable, "-c", _AUTO, str(path), str(tmp_path)], env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr

    first, log = run()
    assert first["started"] and first["reused"], first
    # the extraction ran as the Ray Data job (its actor pool), not in the driver process
    assert re.search(r"extraction job: \d+ shard\(s\) on [12] backbone actor\(s\)", log), log[-3000:]
    pair = BackbonePair(world["arcface"], world["adaface"])
    (lfw,) = load_eval_sets(["synth_lfw"], world["data"], pair, cache, build=False, progress=False)
    assert lfw.maps.a_flip is not None and len(lfw.maps) > 0
    # every entry present: no extraction, and no Ray started before the sweep's own
    second, log = run()
    assert second == {"started": False}, second
    assert "extraction job" not in log
