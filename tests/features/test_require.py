"""Trials never extract: a job without `features: auto` refuses to start on a missing entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from facefuse.errors import ConfigError, DataFormatError


def test_missing_entry_refused_before_the_sweep_unless_auto(world: dict[str, Path], world_job,
                                                             tmp_path: Path) -> None:
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
