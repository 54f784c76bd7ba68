"""The epoch-keyed Optuna searcher on a real Optuna RDB study."""

from __future__ import annotations

from pathlib import Path

import optuna
from ray import tune

from facefuse.sweep.searcher import EpochOptunaSearch


def test_a_replayed_result_of_a_finished_study_trial_is_ignored(tmp_path: Path) -> None:
    """A resubmitted driver can replay the last epoch of a trial its study already closed
    (seen on a three-node cluster after `ray job stop`): the driver must go on."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = optuna.storages.RDBStorage(url)
    search = EpochOptunaSearch(space={"beta": tune.loguniform(1e-4, 1.0)}, metric="objective",
                               mode="max", storage=storage, study_name="s")
    assert search.suggest("t1") is not None
    search.on_trial_result("t1", {"objective": 0.5, "epoch": 1, "training_iteration": 1})
    search.on_trial_result("t1", {"objective": 0.6, "epoch": 2, "training_iteration": 1})
    search.save(str(tmp_path / "searcher.pkl"))  # Tune's last sync of the driver's state
    search.on_trial_complete("t1", {"objective": 0.6, "epoch": 2})
    # the resubmitted driver restores the synced state, which predates the close, and the
    # trial replays its last epoch
    resumed = EpochOptunaSearch(space={"beta": tune.loguniform(1e-4, 1.0)}, metric="objective",
                                mode="max", storage=storage, study_name="s")
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t1", {"objective": 0.6, "epoch": 3, "training_iteration": 1})
    resumed.on_trial_complete("t1", {"objective": 0.6, "epoch": 3})
    (trial,) = optuna.load_study(study_name="s", storage=url).get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.intermediate_values == {1: 0.5, 2: 0.6} and trial.value == 0.6
