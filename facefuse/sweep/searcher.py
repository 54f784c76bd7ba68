"""Optuna search keyed by the epoch a trial reports, not by Tune's iteration counter."""

from __future__ import annotations

from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from facefuse.tracking.schema import METRIC_EPOCH


class EpochOptunaSearch(OptunaSearch):
    """Returns Ray's OptunaSearch whose intermediate values are stepped by the reported epoch.

    Tune's ``training_iteration`` starts again at 1 when a multi-worker trial is retried (its
    TorchTrainer resumes from its own Train run; Tune never held a checkpoint of it), so
    Optuna would get step 1 twice ("step=1 is already reported") and a pruner would compare the
    wrong epochs. A result without an epoch keeps Tune's counter.
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        epoch = result.get(METRIC_EPOCH)
        if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and epoch >= 1:
            result = {**result, TRAINING_ITERATION: int(epoch)}
        super().on_trial_result(trial_id, result)
