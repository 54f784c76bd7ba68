"""The per-worker training loop of the fusion head and its Ray wrappers.

The names below are loaded on first use: ``facefuse.train.context`` (what the sweep driver
imports) must not pull in torch, which costs seconds at every command's start.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EpochState": "loop", "TrainConfig": "loop", "TrainingDiverged": "loop", "train": "loop",
    "IJB_FARS": "evaluate", "evaluate": "evaluate", "far_metric": "evaluate",
    "TrialContext": "context",
    "objective_value": "trial", "run_trial": "trial", "run_training": "trial",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Returns an exported name, importing its module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'facefuse.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"facefuse.train.{_EXPORTS[name]}"), name)
