"""A trial that fails mid-epoch is retried from its mid-epoch checkpoint and ends with the
metrics of an uninterrupted trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _history(sweep_dir: Path) -> list[dict]:
    (result_json,) = sweep_dir.glob("*/result.json")
    return [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]


def _model_metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if "/" in k and not k.startswith("time/")
            or k in ("epoch", "objective")}


@pytest.mark.slow
def test_trial_failing_mid_epoch_resumes_from_its_step_checkpoint(world_job, tmp_path: Path,
                                                                  ray_local: None) -> None:
    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep

    common = dict(trials=1, epochs=2, asha={"grace_period": 2}, max_failures=2,
                  resources={"cpus_per_worker": 0.5, "max_concurrent_trials": 1,
                             "checkpoint_every_steps": 1})
    base = {"batch_size": 32, "d_model": 32, "fusion_hidden": 64, "embedding_size": 32}
    ref_job, _ = prepare_job(world_job(tmp_path, "steps_ref", params=base, **common),
                             cwd=tmp_path)
    ref = run_sweep(ref_job)
    assert ref.num_errors == 0

    marker = tmp_path / "failures.txt"
    job, _ = prepare_job(world_job(tmp_path, "steps_kill", **common, params={
        **base, "_test_fail_after_step_checkpoint": f"{marker}:2"}), cwd=tmp_path)
    result = run_sweep(job)
    assert result.num_errors == 0, [t.error for t in result.trials]
    # The second attempt went on after the first one's checkpoint (step 2, not step 1 again).
    assert marker.read_text().splitlines() == ["failed after epoch 1 step 1",
                                               "failed after epoch 1 step 2"]
    got = _history(Path(job.storage) / result.sweep_id)
    want = _history(Path(ref_job.storage) / ref.sweep_id)
    assert [r["epoch"] for r in got] == [1, 2]
    assert [_model_metrics(r) for r in got] == [_model_metrics(r) for r in want]
    # The mid-epoch checkpoint is gone once the trial finished.
    assert not list((Path(job.storage) / result.sweep_id).glob("facefuse_step_checkpoints/*.pt"))
