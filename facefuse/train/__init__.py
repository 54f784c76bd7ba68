"""The per-worker training loop of the fusion head and its Ray wrappers."""

from facefuse.train.loop import EpochState, TrainConfig, TrainingDiverged, train
from facefuse.train.evaluate import IJB_FARS, evaluate, far_metric
from facefuse.train.trial import TrialContext, objective_value, run_trial, run_training

__all__ = ["EpochState", "TrainConfig", "TrainingDiverged", "train", "IJB_FARS", "evaluate",
           "far_metric", "TrialContext", "objective_value", "run_trial", "run_training"]
