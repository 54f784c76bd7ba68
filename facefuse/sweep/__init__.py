"""Sweeps: job files, search spaces, the Ray Tune run and its MLflow tracking.

Tune, Optuna and MLflow are imported lazily (inside the functions that use them) so that a
command rejecting a bad job file answers before paying their import time.
"""

from facefuse.sweep.jobs import JobSpec, load_job, parse_job, resolve_paths, trial_context
from facefuse.sweep.spaces import SearchSpace, load_search_space

__all__ = ["JobSpec", "load_job", "parse_job", "resolve_paths", "trial_context", "SearchSpace",
           "load_search_space", "run_sweep", "SweepResult"]


def __getattr__(name: str):  # PEP 562: keep `import facefuse.sweep` free of Ray
    if name in ("run_sweep", "SweepResult"):
        from facefuse.sweep import tuner

        return getattr(tuner, name)
    raise AttributeError(name)
