"""Reports built from MLflow (and the feature stores its sweeps name): ablation table, beta
trade-off plot, ROC curves, importances, backbone similarity.

``make_report(tracking_uri, experiment, out_dir)`` writes every file into ``out_dir`` and logs
them to the experiment's parent (sweep) runs under ``report/``:

- ``ablation.md`` / ``ablation.csv``: the ablation table, when ablation runs exist;
- ``claims.md`` / ``claims.csv``: the paper's claims on those runs (fusion against each single
  backbone, local + global against each branch, VIB on against off, attention against
  concatenation, best beta against quality), each a paired difference over seeds with its 90%
  interval and a verdict (``facefuse.claims``);
- ``beta_tradeoff.png``: each dataset's primary metric against beta, high-quality sets on the
  left and mixed/low-quality sets on the right, with the smoothed curve and band of
  ``facefuse.selection``; ``best_beta_by_dataset.csv`` holds each curve's preferred beta;
- ``roc_best_trials.png``: the ROC curve of the best trial per IJB set (from its
  ``roc_<dataset>.npz`` artifact);
- ``beta_vs_quality_<sweep_id>.png`` / ``.csv`` / ``.json``: for each sweep that logged its
  datasets' measured quality (job ``selection.quality``), each set's best beta with its 90%
  interval against that quality, the weighted linear fit of log10(beta) on it with its
  prediction band, and the fit's verdict (``facefuse.quality.beta_vs_quality``);
- ``importance_<sweep_id>.csv`` / ``.png``: Optuna parameter importances (optuna's default
  evaluator, PED-ANOVA in optuna 5) of each sweep, from the trials that ran their full budget;
- ``backbone_similarity.md`` / ``.csv``: per dataset the two backbones' linear CKA and the
  correlation of their verification errors, beside the fusion's gain over the better single
  backbone (``facefuse.similarity_report``). It reads the maps from the feature store each
  sweep's ``resolved_job.json`` names (the one part not from MLflow alone);
- ``report.md``: an index of the above that also says what was skipped and why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from facefuse.ablation import (QUALITY_ORDER, ablation_table, fusion_gains, rows_from_runs,
                               write_table)
from facefuse.claims import check_claims, claims_markdown
from facefuse.data._io import atomic_write, atomic_write_json, atomic_write_text
from facefuse.selection import (
    collect_trials,
    fit_curve,
    group_settings,
    higher_is_better,
    is_seed_param,
    run_params,
    run_variant,
)
from facefuse.errors import FacefuseError
from facefuse.similarity_report import (BackboneComparison, StoreSource, compare_sources,
                                        comparison_rows, source_from_job)
from facefuse.quality import BetaQualityStudy, studies_of_experiment
from facefuse.sweep.spaces import load_search_space
from facefuse.tables import format_table
from facefuse.tracking import schema as S
from facefuse.tracking.store import experiment_ids, open_tracking, search_all_runs, tracking_call

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

REPORT_ARTIFACT_DIR = "report"
#: Fewer full-budget trials than this and importances are not computed (PED-ANOVA compares the
#: top quantile of trials with all of them; with a handful the numbers mean nothing).
MIN_IMPORTANCE_TRIALS = 8
#: A numeric param spanning at least this ratio (and positive) is treated as log-scaled.
LOG_SPAN = 100.0


@dataclass
class Report:
    """What make_report wrote, what it skipped (with reasons) and where it logged the files."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    logged_to: list[str] = field(default_factory=list)
    roc_runs: dict[str, str] = field(default_factory=dict)  # IJB set -> run whose ROC is drawn
    importances: dict[str, dict[str, float]] = field(default_factory=dict)  # sweep id -> values
    #: sweep id -> where the importances' distributions came from (space file, or "inferred")
    importance_space: dict[str, str] = field(default_factory=dict)
    backbones: list[BackboneComparison] = field(default_factory=list)
    #: the backbone-similarity table as the terminal shows it ("" when none was made)
    backbone_table: str = ""
    #: best beta against measured quality, one study per sweep that logged qualities
    beta_quality: list[BetaQualityStudy] = field(default_factory=list)


def _save_figure(fig: "Figure", path: Path) -> Path:
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    return path


#: The columns of claims.csv (``facefuse.claims.ClaimResult`` fields).
CLAIM_COLUMNS = ("claim", "dataset", "quality", "diff", "low", "high", "n", "verdict", "beta_a",
                 "beta_b", "unit")


def _csv_cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _evaluated_datasets(runs: Sequence["Run"]) -> list[str]:
    from facefuse.data import DATASETS

    found: list[str] = []
    for run in runs:
        for name in S.tag_list(run.data.tags.get(S.TAG_DATASETS)):
            name = name.strip()
            if name and name not in found:
                found.append(name)
        for key in run.data.metrics:
            name = key.split("/", 1)[0]
            if "/" in key and name in DATASETS and name not in found:
                found.append(name)
    order = list(DATASETS)
    return sorted((d for d in found if d in DATASETS and DATASETS[d].is_eval),
                  key=order.index)


# ---------------------------------------------------------------------------------------------
# Beta trade-off
# ---------------------------------------------------------------------------------------------
def _beta_curves(client: "MlflowClient", ids: dict[str, str],
                 datasets: Sequence[str]) -> list[dict[str, Any]]:
    from facefuse.data import DATASETS

    out = []
    for dataset in datasets:
        spec = DATASETS[dataset]
        key = f"{dataset}/{spec.primary_metric}"
        trials, epoch, full_only = collect_trials(client, ids, key, "last_common")
        if not trials:
            continue
        higher = higher_is_better(key)
        settings = group_settings(trials, higher)
        curve = fit_curve([s.beta for s in settings], [s.mean for s in settings],
                          [s.n for s in settings], n_bootstrap=100)
        i = int(np.argmax(curve.mean) if higher else np.argmin(curve.mean))
        best = (max if higher else min)(trials, key=lambda t: t.value)
        out.append({"dataset": dataset, "quality": spec.quality, "metric": key,
                    "settings": settings, "curve": curve, "epoch": epoch,
                    "full_only": full_only, "n_trials": len(trials),
                    "curve_beta": curve.beta[i], "curve_value": curve.mean[i],
                    "best_trial_beta": best.beta, "best_trial_value": best.value})
    return out


def plot_beta_tradeoff(curves: Sequence[dict[str, Any]], path: Path) -> Path:
    """Returns the path of a PNG: metric vs beta, high quality left, mixed/low quality right."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 2, sharex=True)
    panels = {"high": (axes[0], "high-quality sets"),
              "mixed": (axes[1], "mixed / low-quality sets"),
              "low": (axes[1], "mixed / low-quality sets")}
    colours = iter([f"C{i}" for i in range(10)] * 4)
    used: dict[Any, list[str]] = {axes[0]: [], axes[1]: []}
    for c in curves:
        ax, _ = panels.get(c["quality"], panels["low"])
        colour = next(colours)
        curve = c["curve"]
        betas = [s.beta for s in c["settings"]]
        means = [s.mean for s in c["settings"]]
        # accuracies and TARs live in [0, 1]; a band drawn past them only stretches the axis
        ax.fill_between(curve.beta, np.clip(curve.lower, 0, 1), np.clip(curve.upper, 0, 1),
                        color=colour, alpha=0.15, linewidth=0)
        ax.plot(curve.beta, curve.mean, color=colour,
                label=f"{c['dataset']} ({c['quality']}), best beta ~ {c['curve_beta']:.2g}")
        ax.scatter(betas, means, color=colour, s=14, alpha=0.7)
        ax.scatter([c["curve_beta"]], [c["curve_value"]], color=colour, marker="*", s=120,
                   edgecolor="black", linewidth=0.5, zorder=5)
        used[ax].append(c["metric"].split("/", 1)[1])
    for ax, title in ((axes[0], "high-quality sets"), (axes[1], "mixed / low-quality sets")):
        ax.set_xscale("log")
        ax.set_xlabel("beta (VIB KL weight)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        if used[ax]:
            ax.set_ylabel(" / ".join(dict.fromkeys(used[ax])))
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no datasets of this quality", ha="center", va="center",
                    transform=ax.transAxes)
    fig.suptitle("primary metric vs beta (points: settings averaged over seeds; "
                 "line and band: smoothed curve, 90% bootstrap band; star: curve optimum)",
                 fontsize=9)
    return _save_figure(fig, path)


def plot_beta_vs_quality(study: BetaQualityStudy, path: Path) -> Path:
    """Returns the path of a PNG: each level's best beta (90% interval) against its measured
    quality (standard error), with the fitted line and its 90% prediction band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8))
    ax = fig.subplots()
    for p in study.points:
        lo, hi = p.beta_interval
        ax.errorbar([p.quality], [p.beta], xerr=[[p.quality_se], [p.quality_se]],
                    yerr=[[p.beta - lo], [hi - p.beta]], fmt="o" if not p.at_edge else "s",
                    mfc="C0" if not p.at_edge else "white", color="C0", capsize=3)
        ax.annotate(p.dataset, (p.quality, p.beta), textcoords="offset points", xytext=(5, 5),
                    fontsize=8)
    if study.fit is not None:
        q_lo, q_hi = study.fit.quality_range
        pad = 0.1 * (q_hi - q_lo)
        grid = np.linspace(q_lo - pad, q_hi + pad, 60)
        pred = [study.fit.predict(float(q)) for q in grid]
        ax.plot(grid, [10.0 ** c for c, _ in pred], color="C1",
                label="fit" + ("" if study.fit.relation else " (no relation: slope covers 0)"))
        ax.fill_between(grid, [10.0 ** b[0] for _, b in pred], [10.0 ** b[1] for _, b in pred],
                        color="C1", alpha=0.15, linewidth=0, label="90% prediction band")
        ax.legend(fontsize=8, loc="best")
    ax.set_yscale("log")
    ax.set_xlabel(f"measured quality: {study.measure} (mean over the set's images)")
    ax.set_ylabel("best beta (90% interval; squares: at the searched range's edge)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(study.summary(), fontsize=8, wrap=True)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# ROC curves
# ---------------------------------------------------------------------------------------------
def _find_artifact(client: "MlflowClient", run_id: str, name: str) -> Optional[str]:
    # The sweep logs ROC files under roc/ (and the best checkpoint may hold copies).
    queue, seen = [""], 0
    while queue and seen < 6:
        folder = queue.pop(0)
        seen += 1
        for entry in tracking_call("listing artifacts", client.list_artifacts, run_id,
                                    folder or None):
            if entry.is_dir:
                queue.append(entry.path)
            elif entry.path.rsplit("/", 1)[-1] == name:
                return entry.path
    return None


def _roc_of_best_trials(client: "MlflowClient", runs: Sequence["Run"], datasets: Sequence[str],
                        tmp: Path) -> tuple[list[dict[str, Any]], list[str]]:
    from facefuse.data import DATASETS

    found, missing = [], []
    for dataset in datasets:
        if DATASETS[dataset].kind != "ijb":
            continue
        key = S.metric_key(dataset, DATASETS[dataset].primary_metric)
        cands = [r for r in runs if key in r.data.metrics and run_variant(r) in ("", "full")]
        if any(S.is_true(r.data.tags.get(S.TAG_FULL_BUDGET)) for r in cands):
            cands = [r for r in cands if S.is_true(r.data.tags.get(S.TAG_FULL_BUDGET))]
        cands.sort(key=lambda r: r.data.metrics[key], reverse=higher_is_better(key))
        for run in cands:
            path = _find_artifact(client, run.info.run_id, f"roc_{dataset}.npz")
            if path is None:
                continue
            local = tracking_call("downloading a ROC file", client.download_artifacts,
                                   run.info.run_id, path, str(tmp))
            with np.load(local, allow_pickle=False) as npz:
                fpr, tpr = np.asarray(npz["fpr"], float), np.asarray(npz["tpr"], float)
            found.append({"dataset": dataset, "run_id": run.info.run_id, "fpr": fpr, "tpr": tpr,
                          "metric": key, "value": run.data.metrics[key],
                          "beta": _beta_label(run_params(run).get("beta"))})
            break
        else:
            missing.append(dataset)
    return found, missing


def _beta_label(raw: Optional[str]) -> str:
    try:
        return f"{float(raw):.3g}"
    except (TypeError, ValueError):
        return "-"


def plot_rocs(rocs: Sequence[dict[str, Any]], path: Path,
              title: str = "IJB 1:1 verification: best trial per set") -> Path:
    """Returns the path of a PNG with one ROC curve (TAR vs log FAR) per IJB set."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    for roc in rocs:
        keep = roc["fpr"] > 0
        ax.plot(roc["fpr"][keep], roc["tpr"][keep],
                label=f"{roc['dataset']}: {roc['metric'].split('/', 1)[1]}={roc['value']:.4f} "
                      f"(beta {roc['beta']}, run {roc['run_id'][:12]})")
    ax.set_xscale("log")
    ax.set_xlim(1e-6, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("FAR (false accept rate)")
    ax.set_ylabel("TAR (true accept rate)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Parameter importances
# ---------------------------------------------------------------------------------------------
def _objective_of(run: "Run") -> Optional[float]:
    from facefuse.data import DATASETS

    if "objective" in run.data.metrics:
        return float(run.data.metrics["objective"])
    spec = run.data.tags.get(S.TAG_OBJECTIVE, "")
    if spec.startswith("mean:"):
        quality = spec.split(":", 1)[1]
        values = [v for k, v in run.data.metrics.items()
                  if k.split("/", 1)[0] in DATASETS
                  and (quality == "all" or DATASETS[k.split("/", 1)[0]].quality == quality)
                  and k == f"{k.split('/', 1)[0]}/{DATASETS[k.split('/', 1)[0]].primary_metric}"]
        return float(np.mean(values)) if values else None
    if spec.endswith("/primary") and spec.split("/", 1)[0] in DATASETS:
        name = spec.split("/", 1)[0]
        spec = f"{name}/{DATASETS[name].primary_metric}"
    value = run.data.metrics.get(spec)
    return None if value is None else float(value)


def _distribution(values: Sequence[str]) -> Any:
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return CategoricalDistribution(sorted(set(values)))
    lo, hi = min(numbers), max(numbers)
    log = lo > 0 and hi / lo >= LOG_SPAN
    if all(v.lstrip("-").isdigit() for v in values):
        return IntDistribution(int(lo), int(hi), log=log)
    return FloatDistribution(lo, hi, log=log)


def sweep_space(client: "MlflowClient", parent: Optional["Run"]) -> Optional[dict[str, Any]]:
    """Returns the optuna distributions of the search space logged on a sweep's parent run."""
    if parent is None:
        return None
    name = parent.data.tags.get(S.TAG_SEARCH_SPACE, "")
    if not name:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = _find_artifact(client, parent.info.run_id, name)
        if path is None:
            return None
        try:
            local = client.download_artifacts(parent.info.run_id, path, tmp)
            return {name: spec.optuna_distribution()
                    for name, spec in load_search_space(local).params.items()}
        except (FacefuseError, OSError, ValueError) as exc:
            logger.warning("search space %s of sweep run %s unreadable (%s); inferring "
                           "distributions from the trials", name, parent.info.run_id, exc)
            return None


def _param_value(raw: str, dist: Any) -> Any:
    if hasattr(dist, "choices"):
        # Params are logged as str(value): match them back to the space's own choice objects.
        return next((c for c in dist.choices if str(c) == raw), raw)
    if type(dist).__name__ == "IntDistribution":
        return int(float(raw))
    return float(raw)


def sweep_importances(runs: Sequence["Run"], space: Optional[dict[str, Any]] = None
                      ) -> tuple[dict[str, float], int, str]:
    """Returns (importances by param, trials used, reason when none) for one sweep's runs.

    Only finished, full-budget, non-ablation trials count. With ``space`` (the sweep's search
    space as optuna distributions) its parameters are assessed; otherwise every param that
    varies (seeds left out) gets a distribution inferred from its values: int/float over the
    observed range (log when positive and spanning two decades), else categorical.
    """
    import optuna

    trials = [r for r in runs if S.is_true(r.data.tags.get(S.TAG_FULL_BUDGET))
              and not run_variant(r)]
    scored = [(r, _objective_of(r)) for r in trials]
    scored = [(r, v) for r, v in scored if v is not None and math.isfinite(v)]
    if len(scored) < MIN_IMPORTANCE_TRIALS:
        return {}, len(scored), (f"{len(scored)} full-budget trial(s) with an objective; "
                                 f"importances need at least {MIN_IMPORTANCE_TRIALS}")
    params = [run_params(r) for r, _ in scored]
    if space:
        dists = {k: d for k, d in space.items() if any(k in p for p in params)}
    else:
        names = sorted({k for p in params for k in p})
        varying = [k for k in names if not is_seed_param(k) and k != "variant"
                   and all(k in p for p in params) and len({p[k] for p in params}) > 1]
        dists = {k: _distribution([p[k] for p in params]) for k in varying}
    if not dists:
        return {}, len(scored), "no parameter varies between the full-budget trials"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line per report
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    try:
        for p, (_, value) in zip(params, scored):
            values = {k: _param_value(p[k], d) for k, d in dists.items() if k in p}
            study.add_trial(optuna.trial.create_trial(
                params=values, distributions={k: dists[k] for k in values}, value=value))
    except ValueError as exc:  # a logged value outside the space (the space file changed)
        return {}, len(scored), f"trial params do not fit the search space ({exc})"
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return {}, len(scored), f"optuna could not compute importances ({exc})"
    return {k: float(v) for k, v in importances.items()}, len(scored), ""


def plot_importances(importances: dict[str, float], title: str, path: Path) -> Path:
    """Returns the path of a horizontal bar chart of parameter importances."""
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(6, 0.4 * len(names) + 1.5))
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (normalised, optuna default evaluator)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# Backbone similarity
# ---------------------------------------------------------------------------------------------
RESOLVED_JOB = "resolved_job.json"


def _store_sources(client: "MlflowClient", parents: Sequence["Run"]
                   ) -> tuple[list[StoreSource], list[str]]:
    """Returns (where each sweep's maps live, reasons for sweeps that name none)."""
    sources, skipped = [], []
    for parent in parents:
        sid = parent.data.tags.get(S.TAG_SWEEP_ID, "") or parent.info.run_id
        path = _find_artifact(client, parent.info.run_id, RESOLVED_JOB)
        if path is None:
            skipped.append(f"backbone similarity of sweep {sid}: no {RESOLVED_JOB} artifact")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = client.download_artifacts(parent.info.run_id, path, tmp)
            try:
                job = json.loads(Path(local).read_text()).get("job") or {}
                sources.append(source_from_job(job, sid, f"run {parent.info.run_id}/{path}"))
            except (FacefuseError, ValueError, AttributeError) as exc:
                skipped.append(f"backbone similarity of sweep {sid}: {exc}")
    return sources, skipped


def _backbone_section(report: "Report", out: Path, client: "MlflowClient",
                      parents: Sequence["Run"], rows: Sequence[dict[str, Any]]) -> list[str]:
    """Returns the report.md lines of the backbone-similarity table after writing its files."""
    sources, skipped = _store_sources(client, parents)
    comparisons, more = compare_sources(sources)
    report.skipped += skipped + more
    if not comparisons:
        if not skipped and not more:
            report.skipped.append("backbone similarity: no sweep named a feature store")
        return []
    report.backbones = comparisons
    gains = fusion_gains(rows)
    header, body = comparison_rows(comparisons, gains)
    level = comparisons[0].errors.level
    notes = [
        f"CKA: linear CKA of the two backbones' maps, spatially pooled (up to "
        f"{max(c.pooled_items for c in comparisons)} images) and flattened (up to "
        f"{max(c.flat_items for c in comparisons)}), seeded subsamples; 'shuffled' pairs "
        "unrelated images, the value CKA gives by chance at these sizes.",
        "Errors: each backbone's own embedding (flip-fused when the sweep used the flip test) "
        "decides every pair at its own threshold (verification: the 10-fold protocol's; IJB: "
        "where the ROC is read at the "
        "dataset's primary FAR); 'both' counts pairs both get wrong, in brackets what "
        "independent errors would give; phi is the correlation of the two error indicators "
        f"with a {level:.0%} bootstrap interval over pairs (IJB pairs share templates: too "
        "narrow there), over all pairs and within genuine pairs (false rejections) and "
        "impostor pairs (false acceptances): at a strict FAR nearly all errors are genuine "
        "pairs', so phi over all pairs mostly reflects the class.",
        "Fusion gain: the full model minus the better of arcface_only / adaface_only, each at "
        "its best beta, mean over seeds (ablation runs of this experiment; '-' without them).",
    ]
    md = atomic_write_text(out / "backbone_similarity.md",
                           format_table(header, body) + "\n\n" + "\n\n".join(notes) + "\n")
    csv_rows = [c.to_row() for c in comparisons]
    for r in csv_rows:
        g = gains.get(r["dataset"])
        r.update(fusion_gain=g["gain"] if g else "", fusion_gain_versus=g["versus"] if g else "")
    keys = list(csv_rows[0])
    csv_path = atomic_write_text(out / "backbone_similarity.csv",
                                 _csv_text(keys, [[r[k] for k in keys] for r in csv_rows]))
    report.files += [md, csv_path]
    report.backbone_table = format_table(header, body, markdown=False)
    return ["## Backbone similarity", "", md.read_text().rstrip(), "",
            f"Numbers: [{csv_path.name}]({csv_path.name})", ""]


def _claims_section(report: Report, out: Path, rows: Sequence[dict[str, Any]]) -> list[str]:
    claims = check_claims(rows)
    if not claims:
        report.skipped.append("claims: the ablation runs logged no held-out parts to select and "
                              "report on")
        return []
    md = atomic_write_text(out / "claims.md", claims_markdown(claims))
    csv_path = atomic_write_text(out / "claims.csv", _csv_text(
        list(CLAIM_COLUMNS), [[_csv_cell(c.as_dict()[k]) for k in CLAIM_COLUMNS] for c in claims]))
    report.files += [md, csv_path]
    return ["## The paper's claims", "", md.read_text().rstrip(), "",
            f"Numbers: [{csv_path.name}]({csv_path.name})", ""]


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def make_report(tracking_uri: Optional[str], experiment: str, out_dir: Union[str, os.PathLike],
                log_artifacts: bool = True, table_beta: Union[str, float] = "best",
                backbones: bool = True) -> Report:
    """Returns the Report after writing every part that the experiment's runs support.

    ``backbones``: compare the two backbones on every evaluated dataset from the sweeps'
    feature stores (reads every stored map of those sets; off for a quick report).
    """
    client = open_tracking(tracking_uri)
    ids = experiment_ids(client, experiment)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out_dir=out)
    runs = search_all_runs(client, ids, S.FINISHED_TRIAL_FILTER)
    parents = search_all_runs(client, ids, S.kind_filter(S.KIND_SWEEP))
    sections: list[str] = [f"# Report: experiment {experiment}", "",
                           f"{len(runs)} finished trial runs in {len(parents)} sweep(s).", ""]
    per_sweep: dict[str, list[Path]] = {}

    rows = rows_from_runs(runs)
    if rows:
        table = ablation_table(rows, table_beta)
        md, csv_path = write_table(table, out, "ablation")
        report.files += [md, csv_path]
        sections += ["## Ablation", "", md.read_text().rstrip(), "",
                     f"Numbers: [{csv_path.name}]({csv_path.name})", ""]
        sections += _claims_section(report, out, rows)
    else:
        report.skipped.append("ablation table: no runs with a facefuse.variant tag")

    if backbones:
        sections += _backbone_section(report, out, client, parents, rows)

    datasets = _evaluated_datasets(runs)
    curves = _beta_curves(client, ids, datasets)
    if curves:
        png = plot_beta_tradeoff(curves, out / "beta_tradeoff.png")
        rows_csv = [[c["dataset"], c["quality"], c["metric"], c["n_trials"],
                     "" if c["epoch"] is None else c["epoch"], str(c["full_only"]).lower(),
                     f"{c['curve_beta']:.6g}", f"{c['curve_value']:.6g}",
                     f"{c['best_trial_beta']:.6g}", f"{c['best_trial_value']:.6g}"]
                    for c in sorted(curves, key=lambda c: (QUALITY_ORDER.index(c["quality"])
                                                           if c["quality"] in QUALITY_ORDER
                                                           else 9, c["dataset"]))]
        header = ["dataset", "quality", "metric", "n_trials", "epoch", "full_budget_only",
                  "curve_beta", "curve_value", "best_trial_beta", "best_trial_value"]
        best_csv = atomic_write_text(out / "best_beta_by_dataset.csv", _csv_text(header, rows_csv))
        report.files += [png, best_csv]
        sections += ["## Beta trade-off", "", f"![metric vs beta]({png.name})", "",
                     format_table(header[:3] + header[6:], [r[:3] + r[6:] for r in rows_csv])]
        sections.append("")
    else:
        report.skipped.append("beta plot: no finished trial logged a beta and a dataset metric")

    with tempfile.TemporaryDirectory() as tmp:
        rocs, missing = _roc_of_best_trials(client, runs, datasets, Path(tmp))
    report.roc_runs = {r["dataset"]: r["run_id"] for r in rocs}
    if rocs:
        png = plot_rocs(rocs, out / "roc_best_trials.png")
        report.files.append(png)
        sections += ["## ROC curves (best trial per IJB set)", "", f"![ROC]({png.name})", ""]
    if missing:
        report.skipped.append(f"ROC: no roc_<dataset>.npz artifact for {', '.join(missing)}")
    elif not rocs:
        report.skipped.append("ROC: no IJB set was evaluated")

    by_sweep: dict[str, list[Run]] = {}
    for run in runs:
        by_sweep.setdefault(run.data.tags.get(S.TAG_SWEEP_ID, ""), []).append(run)
    for sweep_id, sweep_runs in sorted(by_sweep.items()):
        if all(run_variant(r) for r in sweep_runs):
            continue  # an ablation grid, not a search
        parent = next((p for p in parents
                       if p.data.tags.get(S.TAG_SWEEP_ID, "") == sweep_id), None)
        space = sweep_space(client, parent)
        importances, n_used, reason = sweep_importances(sweep_runs, space)
        label = sweep_id or "unnamed"
        if not importances:
            report.skipped.append(f"importances of sweep {label}: {reason}")
            continue
        stem = f"importance_{_safe_name(label)}"
        csv_path = atomic_write_text(out / f"{stem}.csv", _csv_text(
            ["param", "importance"], [[k, f"{v:.6g}"] for k, v in importances.items()]))
        png = plot_importances(importances, f"sweep {label}: parameter importances "
                               f"({n_used} full-budget trials)", out / f"{stem}.png")
        report.files += [csv_path, png]
        per_sweep.setdefault(sweep_id, []).extend([csv_path, png])
        report.importances[sweep_id] = importances
        source = (f"search space {parent.data.tags[S.TAG_SEARCH_SPACE]}"
                  if space and parent is not None else "inferred")
        report.importance_space[sweep_id] = source
        where = "inferred from the trials" if source == "inferred" else f"from the logged {source}"
        sections += [f"## Parameter importances, sweep {label}", "",
                     f"{n_used} full-budget trials; optuna's default evaluator; distributions "
                     f"{where}.", "",
                     f"![importances]({png.name})", ""]
        sections += [f"- {k}: {v:.3f}" for k, v in importances.items()]
        sections.append("")

    studies = studies_of_experiment(tracking_uri, experiment)
    for study in studies:
        stem = f"beta_vs_quality_{_safe_name(study.sweep_id or 'unnamed')}"
        png = plot_beta_vs_quality(study, out / f"{stem}.png")
        header = ["dataset", "quality", "quality_se", "beta", "beta_low", "beta_high", "at_edge",
                  "n_trials"]
        rows_q = [[p.dataset, f"{p.quality:.6g}", f"{p.quality_se:.3g}", f"{p.beta:.4g}",
                   f"{p.beta_interval[0]:.4g}", f"{p.beta_interval[1]:.4g}",
                   str(p.at_edge).lower(), p.n_trials] for p in study.points]
        csv_path = atomic_write_text(out / f"{stem}.csv", _csv_text(header, rows_q))
        json_path = out / f"{stem}.json"
        atomic_write_json(json_path, study.to_json())
        report.files += [png, csv_path, json_path]
        per_sweep.setdefault(study.sweep_id, []).extend([png, csv_path, json_path])
        report.beta_quality.append(study)
        sections += [f"## Best beta against measured quality, sweep {study.sweep_id}", "",
                     study.summary(), "", f"![beta vs quality]({png.name})", "",
                     format_table(header, rows_q)]
        sections += [f"- skipped {s}" for s in study.skipped] + [""]
    if not studies:
        report.skipped.append("best beta vs quality: no sweep logged its datasets' measured "
                              "quality (a job with selection.quality, e.g. "
                              "jobs/beta_vs_quality.yaml)")

    if report.skipped:
        sections += ["## Skipped", ""] + [f"- {s}" for s in report.skipped] + [""]
    index = atomic_write_text(out / "report.md", "\n".join(sections))
    report.files.append(index)

    if log_artifacts:
        if not parents:
            report.skipped.append("logging: the experiment has no parent (sweep) run")
        for parent in parents:
            sid = parent.data.tags.get(S.TAG_SWEEP_ID, "")
            own = set(per_sweep.get(sid, []))
            others = {p for paths in per_sweep.values() for p in paths} - own
            for path in report.files:
                if path in others:
                    continue
                tracking_call("logging report artifacts", client.log_artifact,
                               parent.info.run_id, str(path), REPORT_ARTIFACT_DIR)
            report.logged_to.append(parent.info.run_id)
    logger.info("report for %s: %d files in %s", experiment, len(report.files), out)
    return report


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:80] or "sweep"
