"""One log line per trial event instead of Ray Tune's result boxes.

``ConsoleReporter`` is a driver-side Tune callback. It logs (logger ``facefuse.sweep.console``)
when a trial starts, each epoch's objective, when ASHA stops a trial, when it finishes and when
it fails; the command prints the final table. ``tune_verbosity`` is the Tune ``verbose`` setting
that goes with it: silent unless the user asks for Tune's own output.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
from typing import TYPE_CHECKING, Any, Iterator, Optional

from ray.tune import Callback

from facefuse.tracking.names import trial_label

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

logger = logging.getLogger(__name__)

NEW_OUTPUT_ENV = "RAY_AIR_NEW_OUTPUT"


def tune_verbosity(verbose: bool) -> int:
    """Returns Tune's ``verbose`` level: 2 (every result box) when asked, else 0 (silent)."""
    return 2 if verbose else 0


@contextlib.contextmanager
def tune_output(verbose: bool) -> Iterator[None]:
    """Runs the block with Tune's console output as asked: all of it, or none.

    Tune's newer output engine prints its experiment banner (search algorithm, scheduler,
    result and TensorBoard paths) even at ``verbose=0``; its older one is silent at 0. The
    environment variable choosing the engine is read when a Tuner starts, so it is set for the
    block only.
    """
    if verbose:
        yield
        return
    before = os.environ.get(NEW_OUTPUT_ENV)
    os.environ[NEW_OUTPUT_ENV] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NEW_OUTPUT_ENV, None)
        else:
            os.environ[NEW_OUTPUT_ENV] = before


def _number(value: Any) -> Optional[float]:
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


class ConsoleReporter(Callback):
    """Logs one line per trial event (started, epoch, stopped by ASHA, finished, failed)."""

    def __init__(self, max_epochs: Optional[int], searched_params: Optional[list[str]] = None,
                 metric: str = "objective") -> None:
        self.max_epochs = max_epochs
        self.searched_params = None if searched_params is None else list(searched_params)
        self.metric = metric
        self._best: dict[str, float] = {}
        self._epochs: dict[str, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks into its experiment state: keep only the settings.
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._best, self._epochs = {}, {}

    def name(self, trial: "Trial") -> str:
        """Returns the label of a trial in the log lines (its MLflow run name)."""
        return trial_label(trial, self.searched_params)

    def _objective(self, trial: "Trial") -> str:
        value = self._best.get(trial.trial_id)
        return "-" if value is None else f"{value:.4f}"

    def on_trial_start(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        logger.info("%s started", self.name(trial))

    def on_trial_restore(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        logger.info("%s continues from its checkpoint", self.name(trial))

    def on_trial_result(self, iteration: int, trials: list, trial: "Trial", result: dict,
                        **info: Any) -> None:
        from facefuse.sweep.callback import result_step

        epoch = result_step(result)
        self._epochs[trial.trial_id] = epoch
        value = _number(result.get(self.metric))
        if value is not None:
            self._best[trial.trial_id] = max(value, self._best.get(trial.trial_id, value))
        of = f"/{self.max_epochs}" if self.max_epochs else ""
        shown = "-" if value is None else f"{value:.4f}"
        logger.info("%s epoch %d%s: %s %s (best %s)", self.name(trial), epoch, of, self.metric,
                    shown, self._objective(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        from facefuse.sweep.callback import error_text

        logger.warning("%s failed and is retried: %s", self.name(trial), error_text(trial)[0])

    def on_trial_complete(self, iteration: int, trials: list, trial: "Trial",
                          **info: Any) -> None:
        epochs = self._epochs.get(trial.trial_id)
        if epochs is None:
            last = trial.last_result or {}
            epochs = int(last.get("epoch", last.get("training_iteration", 0)) or 0)
            value = _number(last.get(self.metric))
            if value is not None:
                self._best.setdefault(trial.trial_id, value)
        if self.max_epochs is not None and epochs < self.max_epochs:
            logger.info("%s stopped by ASHA after epoch %d (best %s %s)", self.name(trial),
                        epochs, self.metric, self._objective(trial))
        else:
            logger.info("%s finished %d epochs (best %s %s)", self.name(trial), epochs,
                        self.metric, self._objective(trial))

    def on_trial_error(self, iteration: int, trials: list, trial: "Trial", **info: Any) -> None:
        from facefuse.sweep.callback import error_text

        logger.error("%s failed after epoch %d: %s", self.name(trial),
                     self._epochs.get(trial.trial_id, 0), error_text(trial)[0])
