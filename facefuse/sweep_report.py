"""What a sweep's runs show beyond metrics that needs the report layer: the parent-run summary and
a trial's ROC picture. ``platform.sweep`` hands ``summary_handler`` and ``trial_roc_plot`` to
``run_sweep`` (the sweep layer sits below reports and cannot import them itself).

The sweep summarised on its parent run, while it runs and when it ends.

``summarise_sweep`` reads the sweep's trial runs back from the store and writes to the parent:

- per dataset the best value so far and the trial that holds it: metric ``best/<dataset>/<metric>``
  (step = trials finished so far) and tag ``facefuse.best.<dataset>`` naming the trial run;
- ``summary/trials.csv``: the trials table (``facefuse.pipeline.sweep_rows``);
- at the end also: the beta ``facefuse.selection.select_beta`` chooses per dataset, with whatever
  interval its ``to_json`` gives (``summary/best_beta_<dataset>.json``, metric
  ``chosen_beta/<dataset>``, tag ``facefuse.chosen_beta.<dataset>``); the metric-vs-beta plot
  and the parameter-importance plot of ``facefuse.report`` (``summary/*.png``);
- ``summary/summary.json``: all of the above, and what was skipped and why.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

SUMMARY_DIR = "summary"


def _trial_runs(client: "MlflowClient", experiment_id: str, sweep_id: str) -> list["Run"]:
    from facefuse.tracking.store import search_all_runs

    return search_all_runs(client, [experiment_id], f"tags.`facefuse.sweep_id` = '{sweep_id}' "
                                                    "and tags.`facefuse.kind` = 'trial'")


def best_per_dataset(runs: Sequence["Run"], datasets: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Returns {dataset: {metric, value, run_id, run_name, beta}} of the best finished trial."""
    from facefuse.data import get_dataset
    from facefuse.selection import higher_is_better

    out: dict[str, dict[str, Any]] = {}
    finished = [r for r in runs if r.info.status == "FINISHED"]
    for dataset in datasets:
        key = f"{dataset}/{get_dataset(dataset).primary_metric}"
        scored = [(r, r.data.metrics[key]) for r in finished
                  if key in r.data.metrics and math.isfinite(r.data.metrics[key])]
        if not scored:
            continue
        run, value = (max if higher_is_better(key) else min)(scored, key=lambda rv: rv[1])
        out[dataset] = {"metric": key, "value": float(value), "run_id": run.info.run_id,
                        "run_name": run.info.run_name, "beta": run.data.params.get("beta")}
    return out


def _interval_metrics(dataset: str, choice: dict[str, Any]) -> dict[str, float]:
    """Returns the chosen beta and any interval bounds in a selection's JSON as metrics."""
    out = {f"chosen_beta/{dataset}": float(choice["beta"])}
    for key, value in choice.items():
        if "interval" not in key:
            continue
        bounds = value if isinstance(value, (list, tuple)) else \
            [value.get(k) for k in ("low", "high")] if isinstance(value, dict) else []
        if len(bounds) == 2 and all(isinstance(b, (int, float)) for b in bounds):
            out[f"chosen_beta/{dataset}/{key}_low"] = float(bounds[0])
            out[f"chosen_beta/{dataset}/{key}_high"] = float(bounds[1])
    return out


def _final_parts(client: "MlflowClient", tracking_uri: str, experiment_id: str,
                 experiment_name: str, parent: "Run", runs: Sequence["Run"],
                 datasets: Sequence[str], out: Path, summary: dict[str, Any]) -> dict[str, float]:
    from facefuse.errors import FacefuseError
    from facefuse.report import (_beta_curves, plot_beta_tradeoff, plot_importances,
                                 sweep_importances, sweep_space)
    from facefuse.selection import select_beta

    metrics: dict[str, float] = {}
    summary["chosen_beta"] = {}
    for dataset in datasets:
        try:
            choice = select_beta(tracking_uri, dataset, experiment=experiment_name).to_json()
        except FacefuseError as exc:
            summary["skipped"].append(f"beta for {dataset}: {exc}")
            continue
        summary["chosen_beta"][dataset] = choice
        (out / f"best_beta_{dataset}.json").write_text(json.dumps(choice, indent=1,
                                                                  sort_keys=True, default=str))
        metrics.update(_interval_metrics(dataset, choice))
    curves = _beta_curves(client, {experiment_id: experiment_name}, list(datasets))
    if curves:
        plot_beta_tradeoff(curves, out / "metric_vs_beta.png")
    else:
        summary["skipped"].append("metric-vs-beta plot: no finished trial with beta and metric")
    importances, used, reason = sweep_importances(runs, sweep_space(client, parent))
    summary["importance"] = {"values": importances, "trials": used}
    if importances:
        plot_importances(importances, f"{parent.info.run_name}: {used} full-budget trials",
                         out / "param_importance.png")
    else:
        summary["skipped"].append(f"parameter importance plot: {reason}")
    return metrics


def summarise_sweep(client: "MlflowClient", tracking_uri: str, experiment_id: str,
                    experiment_name: str, parent_run_id: str, sweep_id: str,
                    datasets: Sequence[str], final: bool) -> dict[str, Any]:
    """Returns the summary after writing it to the parent run (see the module docstring).

    Called after every finished trial (``final=False``: best values and the trials table) and
    once when the sweep ends (``final=True``: also the chosen betas and the plots).
    """
    from mlflow.entities import Metric, RunTag

    from facefuse.pipeline import sweep_rows
    from facefuse.report import _csv_text

    runs = _trial_runs(client, experiment_id, sweep_id)
    parent = client.get_run(parent_run_id)
    done = sum(1 for r in runs if r.info.status in ("FINISHED", "FAILED", "KILLED"))
    best = best_per_dataset(runs, datasets)
    summary: dict[str, Any] = {"sweep_id": sweep_id, "final": final, "trials": len(runs),
                               "trials_done": done, "best": best, "skipped": []}
    now = int(time.time() * 1000)
    metrics = {f"best/{b['metric']}": b["value"] for b in best.values()}
    tags = {f"facefuse.best.{d}": f"{b['run_name']} = {b['value']:.4f} (run {b['run_id']})"
            for d, b in best.items()}
    with tempfile.TemporaryDirectory(prefix="facefuse-summary-") as tmp:
        out = Path(tmp) / SUMMARY_DIR
        out.mkdir()
        rows = sweep_rows(tracking_uri, sweep_id, list(datasets))
        if rows:
            columns = list(dict.fromkeys(c for r in rows for c in r))
            (out / "trials.csv").write_text(_csv_text(columns, [[r.get(c, "") for c in columns]
                                                                for r in rows]))
        if final:
            metrics.update(_final_parts(client, tracking_uri, experiment_id, experiment_name,
                                        parent, runs, datasets, out, summary))
            tags.update({f"facefuse.chosen_beta.{d}": f"{c['beta']:g}"
                         for d, c in summary["chosen_beta"].items()})
        (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True,
                                                     default=str))
        client.log_batch(parent_run_id,
                         metrics=[Metric(k, float(v), now, done) for k, v in metrics.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.log_artifacts(parent_run_id, str(out), SUMMARY_DIR)
    logger.debug("sweep %s summarised on its parent run (%d trials, final=%s)", sweep_id,
                 len(runs), final)
    return summary


def summary_handler(writer: Any, op: dict[str, Any]) -> None:
    """Executes a queued "summary" operation with the sweep's writer (``SweepWriter.handlers``)."""
    summarise_sweep(writer.client(), writer.tracking_uri, writer.experiment_id(),
                    writer.experiment_name, writer.ensure_parent(), writer.sweep_id,
                    list(op.get("datasets") or []), final=bool(op.get("final")))


def trial_roc_plot(roc_files: Sequence[Path], metrics_file: Optional[Path], label: str,
                   beta: Any, out: Path) -> Optional[Path]:
    """Returns the PNG of a trial's ROC curves (one per roc_<dataset>.npz), or None without any.

    Drawn with ``facefuse.report.plot_rocs``; each curve is labelled with the dataset's primary
    metric at the best epoch (from the checkpoint's metrics.json).
    """
    from facefuse.data import DATASETS
    from facefuse.report import plot_rocs

    metrics: dict[str, float] = {}
    if metrics_file is not None and metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError):
            metrics = {}
    rocs = []
    for path in sorted(roc_files):
        dataset = path.stem[len("roc_"):]
        spec = DATASETS.get(dataset)
        key = f"{dataset}/{spec.primary_metric if spec else 'auc'}"
        with np.load(path, allow_pickle=False) as npz:
            fpr, tpr = np.asarray(npz["fpr"], float), np.asarray(npz["tpr"], float)
        rocs.append({"dataset": dataset, "fpr": fpr, "tpr": tpr, "metric": key,
                     "value": float(metrics.get(key, float("nan"))),
                     "beta": f"{beta:.2g}" if isinstance(beta, float) else beta,
                     "run_id": label.split(" ", 1)[0]})
    if not rocs:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return plot_rocs(rocs, out, title=f"ROC at the best epoch: {label}")
