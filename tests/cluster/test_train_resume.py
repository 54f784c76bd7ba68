"""A two-worker trial (a Ray Train run inside a Tune trial) that fails past Ray Train's own retry
is retried by Tune and resumes from its Train run's latest checkpoint in the job's storage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_retried_multi_worker_trial_resumes_from_its_train_run(world_job, tmp_path: Path,
                                                               ray_local: None) -> None:
    import optuna

    from facefuse.pipeline import prepare_job
    from facefuse.sweep import run_sweep
    from facefuse.sweep.study import study_storage_url
    from facefuse.sweep.tuner import _asha

    marker = tmp_path / "failures.txt"
    # Fails after epoch 1 (Ray Train retries the workers) and again after epoch 2: the Train run
    # then fails, and Tune retries the trial with a new TorchTrainer, which reports epochs 3, 4.
    path = world_job(tmp_path, "ddp_retry", trials=1, epochs=4, max_failures=1,
                     asha={"grace_period": 4},
                     resources={"workers_per_trial": 2, "cpus_per_worker": 0.5,
                                "max_concurrent_trials": 1},
                     params={"batch_size": 32, "d_model": 32, "fusion_hidden": 64,
                             "embedding_size": 32, "_test_fail_after_epoch": f"{marker}:1:2"})
    job, _ = prepare_job(path, cwd=tmp_path)
    result = run_sweep(job)
    assert result.num_errors == 0, [t.error for t in result.trials]
    (trial,) = result.trials
    assert trial.epochs_done == 4
    assert marker.read_text().splitlines() == ["failed after epoch 1", "failed after epoch 2"]

    # The Train run lives in the job's storage under the trial's id, not in the trial folder.
    sweep_dir = Path(job.storage) / result.sweep_id
    assert (sweep_dir / "ray_train" / trial.trial_id).is_dir()
    # Every epoch reached Tune once: the retry went on with epoch 3, it did not start again.
    (result_json,) = sweep_dir.glob(f"*{trial.trial_id}*/result.json")
    rows = [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == [1, 2, 3, 4], epochs
    # The first report after Tune's retry is epoch 3, not 1 ...
    retry = next(i for i, r in enumerate(rows) if r["pid"] != rows[0]["pid"])
    assert epochs[retry] == 3, rows
    # ... and the scheduler and the searcher count epochs, not Tune's counter (which started
    # again at 1 in the retry): ASHA's time attribute is the epoch, Optuna's steps are epochs.
    assert _asha(job)._time_attr == "epoch"
    study = optuna.load_study(study_name=result.sweep_id,
                              storage=study_storage_url(job.tracking.uri))
    (ot_trial,) = study.trials
    # epochs 1-3 as intermediate steps (Tune's counter said 1, 2, 1), the last one as the value
    assert sorted(ot_trial.intermediate_values) == [1, 2, 3]
    assert ot_trial.value == pytest.approx(trial.objective)


def test_train_driver_resource_is_asked_for_and_checked(tmp_path: Path, ray_local: None) -> None:
    from facefuse.errors import ConfigError
    from facefuse.sweep import load_job, run_sweep
    from facefuse.sweep.tuner import _trial_resources
    from tests.sweep.conftest import SELFTEST, write_job

    resources = {"workers_per_trial": 2, "cpus_per_worker": 0.5,
                 "train_driver_resource": "train_driver"}
    job = load_job(write_job(tmp_path, resources=resources))
    assert _trial_resources(job) == {"cpu": 0, "train_driver": 0.01}
    # The local Ray declares no such resource: the sweep says so instead of waiting forever.
    with pytest.raises(ConfigError) as err:
        run_sweep(job, trainable=SELFTEST)
    assert "train_driver" in str(err.value) and "--resources" in str(err.value)
    plain = load_job(write_job(tmp_path, name="plain", resources={"workers_per_trial": 2}))
    assert _trial_resources(plain) == {"cpu": 0.25}
