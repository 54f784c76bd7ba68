"""Fixtures of the sweep tests: one small local Ray per session, with HOME in a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SELFTEST = "facefuse.sweep.selftest.quadratic_trainable"


@pytest.fixture(scope="session")
def ray_session(ray_local: None) -> Iterator[None]:
    """The session's local Ray (tests/conftest.py: 2 CPUs, HOME moved so its token stays here)."""
    yield


def write_job(tmp: Path, name: str = "t", **overrides: Any) -> Path:
    """Returns the path of a small self-test job file in tmp (overrides replace sections)."""
    job: dict[str, Any] = {
        "name": name,
        "data": {"root": str(tmp / "data"), "train": "synth_train",
                 "eval": ["synth_lfw", "synth_ijbc"], "cache_dir": "none"},
        "search_space": str(REPO / "search_spaces" / "mixed_quality.yaml"),
        "objective": "mean:all",
        "trials": 6,
        "epochs": 3,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_worker": 0.5, "max_concurrent_trials": 2},
        "tracking": {"uri": f"sqlite:///{tmp}/mlflow.db", "experiment": name},
        "storage": str(tmp / "results"),
        "seed": 0,
    }
    job.update(overrides)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path
