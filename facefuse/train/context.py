"""What a trial needs besides its hyperparameters: the one schema of the trial context.

The driver builds it once from a resolved job (``facefuse.sweep.jobs.trial_context``) and hands
it to every trial as a plain dict (``to_dict``: Tune passes it through ``tune.with_parameters``
and the tracking callback logs it as JSON); the trainable reads it back with ``from_dict``.
This module imports nothing heavy, so the driver's commands do not pay for torch.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

from facefuse.errors import ConfigError

#: Fields that must be absolute paths: workers run in other directories than the driver.
ABSOLUTE_PATHS = ("data_root", "arcface_checkpoint", "adaface_checkpoint")


@dataclass(frozen=True)
class TrialContext:
    """Everything a trial needs besides its hyperparameters; all paths absolute (driver-resolved)."""

    data_root: str
    cache_dir: Optional[str]
    arcface_checkpoint: str
    adaface_checkpoint: str
    train_dataset: str
    eval_datasets: list[str]
    objective: dict[str, Any] = field(default_factory=dict)
    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    torch_threads: int = 0  # 0: leave torch's default
    # The job's storage root: multi-worker trials keep their Ray Train run and every trial its
    # mid-epoch checkpoints under <storage>/<sweep id>/ (None: the trial's own directory).
    storage: Optional[str] = None
    checkpoint_every_steps: int = 0  # 0: no step-count checkpoints
    checkpoint_every_s: float = 900.0  # 0: no time-based mid-epoch checkpoints
    train_driver_resource: Optional[str] = None  # custom resource for Train driver actors

    def __post_init__(self) -> None:
        for name in ABSOLUTE_PATHS:
            if not os.path.isabs(getattr(self, name)):
                raise ConfigError(None, f"{name} must be an absolute path (resolve it in the "
                                  f"driver), got {getattr(self, name)!r}", field=name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialContext":
        """Returns the context of a dict written by ``to_dict`` (unknown keys are an error)."""
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(None, f"unknown trial context keys {sorted(unknown)}", field="context")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Returns the context as a JSON-able dict (what Tune hands to the trainable)."""
        return asdict(self)
