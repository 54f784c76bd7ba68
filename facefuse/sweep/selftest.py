"""A diagnostic self-test trainable: exercises the sweep machinery without training a model.

``quadratic_trainable`` is NOT the face-recognition model. It reports deterministic, made-up
per-epoch metrics computed from its config (a smooth bowl in log10(beta) per dataset quality,
rising with the epoch) in exactly the shape the real trainable (``facefuse.train.run_trial``)
reports, and checkpoints every epoch. The tests of ``facefuse.sweep`` and
``benchmarks/bench_load.py --trainable selftest`` use it to check Tune, Optuna, ASHA, resume
and MLflow tracking in seconds.

Fault knobs (config keys starting with ``_``, which the real trainable ignores):
``_fail_above_beta``: raise (as a NaN loss would) at epoch 2 when beta exceeds it;
``_fail_once_at_epoch``: raise once per trial at that epoch, then succeed on the retry;
``_sleep_s``: seconds to wait per epoch (gives fault tests time to kill things).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from facefuse.data._io import atomic_write, atomic_write_json
from facefuse.sweep.jobs import dataset_quality
from facefuse.tracking.schema import flat_config

logger = logging.getLogger(__name__)

#: Where the made-up metric peaks, in log10(beta), per dataset quality.
BETA_OPTIMUM = {"high": -4.0, "mixed": -2.5, "low": -1.0, "unknown": -2.5}
IJB_MARKERS = ("ijb",)


def fake_metrics(config: dict[str, Any], epoch: int, datasets: list[str]) -> dict[str, float]:
    """Returns the self-test metrics of one epoch (1-based); deterministic in config and epoch."""
    beta = float(config.get("beta", 1e-2))
    lr = float(config.get("lr", 1e-3))
    window = int(config.get("local_window", 3))
    progress = 1.0 - math.exp(-epoch / 2.0)
    out: dict[str, float] = {"epoch": float(epoch)}
    lr_term = 0.02 * (math.log10(lr) + 3.0) ** 2
    for ds in datasets:
        q = dataset_quality(ds)
        bowl = 0.05 * (math.log10(max(beta, 1e-12)) - BETA_OPTIMUM.get(q, -2.5)) ** 2
        window_term = 0.01 * abs(window - (1 if q == "high" else 5))
        acc = max(0.5, min(0.999, 0.5 + 0.45 * progress - bowl - lr_term - window_term))
        out[f"{ds}/acc"] = acc
        out[f"{ds}/acc_std"] = 0.01 + 0.002 * epoch
        if any(m in ds for m in IJB_MARKERS):
            out[f"{ds}/tar_far_1e-4"] = max(0.0, acc - 0.1)
    out["train/loss"] = 5.0 * (1.0 - progress) + beta
    out["train/acc"] = 0.3 + 0.6 * progress
    return out


def _objective(metrics: dict[str, float], spec: dict[str, Any], datasets: list[str]) -> float:
    if spec.get("validation"):
        datasets = list(spec["validation"])  # the job's own validation sets alone
    if "dataset" in spec:
        ds = spec["dataset"]
        metric = spec.get("metric") or ("tar_far_1e-4" if f"{ds}/tar_far_1e-4" in metrics else "acc")
        return metrics[f"{ds}/{metric}"]
    q = spec.get("quality", "all")
    chosen = [d for d in datasets if q == "all" or dataset_quality(d) in (q, "unknown")] or datasets

    def primary(d: str) -> float:
        return metrics.get(f"{d}/tar_far_1e-4", metrics[f"{d}/acc"])

    return sum(primary(d) for d in chosen) / len(chosen)


def quadratic_trainable(config: dict[str, Any], context: Optional[dict[str, Any]] = None) -> None:
    """Reports self-test metrics once per epoch to Tune, with a checkpoint each epoch."""
    from ray import tune

    config = flat_config(config)  # grid entries (ablation, confirmation round) are merged
    context = context or {}
    datasets = list(context.get("eval_datasets") or ["selftest"])
    spec = context.get("objective") or {"quality": "all"}
    epochs = int(config.get("epochs", 3))
    trial_dir = Path(tune.get_context().get_trial_dir())

    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = int(json.loads((Path(d) / "state.json").read_text())["epoch"])

    best: Optional[float] = None
    for epoch in range(start + 1, epochs + 1):
        time.sleep(float(config.get("_sleep_s", 0.0)))
        fail_above = config.get("_fail_above_beta")
        if fail_above is not None and epoch == 2 and float(config.get("beta", 0)) > fail_above:
            raise FloatingPointError(f"loss became NaN at epoch {epoch} "
                                     f"(beta={config['beta']:.3g} > {fail_above})")
        fail_once = config.get("_fail_once_at_epoch")
        marker = trial_dir / "selftest_failed_once"
        if fail_once is not None and epoch == int(fail_once) and not marker.exists():
            marker.write_text("1")
            raise RuntimeError(f"self-test: injected failure at epoch {epoch}")
        metrics = fake_metrics(config, epoch, datasets)
        metrics["objective"] = _objective(metrics, spec, datasets)
        if best is None or metrics["objective"] > best:
            best = metrics["objective"]
            _write_artifacts(trial_dir, datasets, metrics, epoch)
        with tempfile.TemporaryDirectory(prefix="facefuse-selftest-") as tmp:
            (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _write_artifacts(trial_dir: Path, datasets: list[str], metrics: dict[str, float],
                     epoch: int) -> None:
    """Writes roc_<dataset>.npz and best_checkpoint/ the way the real trainable's contract says."""
    import numpy as np

    for ds in datasets:
        fpr = np.linspace(0.0, 1.0, 11)
        tpr = np.clip(fpr ** (1.0 - metrics[f"{ds}/acc"]), 0.0, 1.0)
        with atomic_write(trial_dir / f"roc_{ds}.npz") as fh:
            np.savez(fh, fpr=fpr, tpr=tpr)
    atomic_write_json(trial_dir / "best_checkpoint" / "metrics.json", {"epoch": epoch, **metrics})
