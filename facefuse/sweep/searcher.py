"""Optuna search keyed by the epoch a trial reports, not by Tune's iteration counter."""

from __future__ import annotations

import logging
from typing import Any, Optional

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from facefuse.tracking.schema import METRIC_EPOCH

logger = logging.getLogger(__name__)


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
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            # A resumed sweep (driver stopped and resubmitted) can replay the last epoch of a
            # trial the study already closed: the study keeps what it has.
            logger.debug("study trial of %s already finished; result of epoch %s not re-reported",
                         trial_id, epoch)

    def on_trial_complete(self, trial_id: str, result: Optional[dict[str, Any]] = None,
                          error: bool = False) -> None:
        try:
            super().on_trial_complete(trial_id, result, error)
        except UpdateFinishedTrialError:
            logger.debug("study trial of %s already finished; completion not re-reported", trial_id)
