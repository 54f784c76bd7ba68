"""A Ray Train run whose controller is killed with its owner (as Tune stops a multi-worker trial)
gives its workers' CPUs back: the reaper removes the placement group the controller left."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def _cpus() -> float:
    import ray

    return float(ray.available_resources().get("CPU", 0.0))


def _wait(what: str, check, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@pytest.mark.slow
def test_placement_group_of_a_killed_train_run_is_freed(tmp_path: Path, ray_local: None) -> None:
    import ray

    started = tmp_path / "started"
    started.mkdir()

    # Defined here, so Ray ships them by value (this module is not importable in workers).
    def train_until_killed(config: dict) -> None:
        (Path(config["started"]) / str(os.getpid())).touch()
        time.sleep(600)

    @ray.remote(num_cpus=0)
    class Owner:  # stands for the Tune trial that owns the TorchTrainer's controller
        def fit(self, storage: str) -> None:
            from ray.train import RunConfig, ScalingConfig
            from ray.train.torch import TorchTrainer

            from facefuse.train.reaper import ReapOnControllerLoss

            TorchTrainer(train_until_killed, train_loop_config={"started": str(started)},
                         scaling_config=ScalingConfig(num_workers=2,
                                                      resources_per_worker={"CPU": 0.5}),
                         run_config=RunConfig(name="reaped", storage_path=storage,
                                              callbacks=[ReapOnControllerLoss()])).fit()

    def live_groups() -> list:
        return [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]

    # An earlier test's stopped trial may have left a group for its reaper to remove.
    free = float(ray.cluster_resources()["CPU"])
    _wait("every CPU to be free", lambda: _cpus() >= free and not live_groups(), 90)
    owner = Owner.remote()
    owner.fit.remote(str(tmp_path / "runs"))
    _wait("both workers to train", lambda: len(list(started.iterdir())) == 2, 180)
    assert _cpus() <= free - 1.0, ray.available_resources()
    # Killing the owner kills the controller (it shares the owner's fate) with no shutdown.
    ray.kill(owner)
    _wait("the placement group to be removed", lambda: _cpus() >= free, 60)
    assert not live_groups(), live_groups()


def test_unplaced_workers_are_explained_with_the_resources_that_hold_them() -> None:
    from facefuse.train.context import TrialContext
    from facefuse.train.trial import unplaced_workers_message

    ctx = TrialContext(data_root="/d", cache_dir=None, arcface_checkpoint="/a",
                       adaface_checkpoint="/b", train_dataset="t", eval_datasets=["e"],
                       workers_per_trial=2, cpus_per_worker=0.5)
    held = [{0: {"CPU": 0.5}, 1: {"CPU": 0.5}}, {0: {"CPU": 0.25}}]
    msg = unplaced_workers_message(ctx, "abc_00001", {"CPU": 0.75}, {"CPU": 2.0}, held)
    assert msg.startswith("[resources] the 2 Ray Train workers of trial abc_00001 (CPU 0.5 each)")
    assert "CPU 0.75 free of 2" in msg and "2 live placement groups hold CPU 1.25" in msg
    assert " -- " in msg and "\n" not in msg
