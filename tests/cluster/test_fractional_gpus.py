"""Fractional GPUs per worker: accepted by job validation and asked for by every trial.

No GPU here: the test checks the resource requests Ray gets (Tune's placement group of a
one-worker trial, the Train workers' bundles of a multi-worker one), not a device.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def test_quarter_gpu_reaches_the_trial_and_train_worker_bundles(tmp_path: Path) -> None:
    from ray import tune

    from facefuse.sweep import load_job
    from facefuse.sweep.jobs import resolve_paths, trial_context
    from facefuse.sweep.tuner import _trial_resources
    from facefuse.train.context import TrialContext
    from facefuse.train.trial import train_scaling
    from tests.sweep.conftest import write_job

    one = load_job(write_job(tmp_path, name="one",
                             resources={"gpus_per_worker": 0.25, "cpus_per_worker": 1}))
    assert one.resources.gpus_per_worker == 0.25
    # Tune's request for a one-worker trial: four such trials fit on one GPU.
    pgf = tune.with_resources(lambda config: None, _trial_resources(one))._resources
    assert pgf.bundles == [{"CPU": 1.0, "GPU": 0.25}]

    two = resolve_paths(load_job(write_job(
        tmp_path, name="two", resources={"workers_per_trial": 2, "gpus_per_worker": 0.25,
                                         "cpus_per_worker": 1})))
    ctx = TrialContext.from_dict(trial_context(two))
    assert ctx.gpus_per_worker == 0.25
    scaling = train_scaling(ctx)
    assert scaling.use_gpu and scaling.num_workers == 2
    # every Train worker asks for a quarter of a GPU; the trial itself for none
    assert scaling.total_resources == {"CPU": 2.0, "GPU": 0.5}
    assert scaling.as_placement_group_factory().bundles == [{"CPU": 1.0, "GPU": 0.25}] * 2
    assert "gpu" not in _trial_resources(two)


@pytest.mark.parametrize("gpus", [1.5, -0.25])
def test_gpus_per_worker_above_one_must_be_whole(tmp_path: Path, gpus: float) -> None:
    from facefuse.errors import ConfigError
    from facefuse.sweep import load_job
    from tests.sweep.conftest import write_job

    with pytest.raises(ConfigError) as err:
        load_job(write_job(tmp_path, resources={"gpus_per_worker": gpus}))
    assert "resources.gpus_per_worker" in str(err.value)
    assert load_job(write_job(tmp_path, name="whole",
                              resources={"gpus_per_worker": 2})).resources.gpus_per_worker == 2
