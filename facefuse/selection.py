"""Per-dataset beta selection from the MLflow tracking store.

``select_beta`` reads every finished trial run (of any sweep) that evaluated a dataset, compares
the trials at one epoch (their last common epoch, or each trial's best epoch), averages repeated
settings (same hyperparameters apart from the seed), fits a smoothed curve of the metric against
log10(beta) with a bootstrap band, and returns the choice together with what the curve says about
it. ``register_choice`` records a choice in MLflow (a tag on the chosen run and a registered model
version with the alias ``best-<dataset>``).

The tracking schema read here is ``facefuse.tracking.schema`` (docs/architecture.md) as written by
``facefuse.sweep``: trial runs carry ``facefuse.kind=trial``, ``facefuse.full_budget``,
``facefuse.variant`` (ablations), a ``beta`` param, and ``<dataset>/<metric>`` per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np

from facefuse.errors import ConfigError, FacefuseError
from facefuse.tracking import schema as S
from facefuse.tracking.store import (experiment_ids, open_tracking,
                                     resolve_tracking_uri, search_all_runs, tracking_call)

if TYPE_CHECKING:  # mlflow costs seconds to import; commands that fail early should not pay it
    from mlflow import MlflowClient
    from mlflow.entities import Run

    from facefuse.stats import BetaEstimate, TrialCurve

logger = logging.getLogger(__name__)

EPOCH_POLICIES = ("last_common", "best")
DEFAULT_MODEL_NAME = "facefuse-fusion"
#: Bootstrap resamples for the curve's band; seeded so the same store gives the same band.
N_BOOTSTRAP = 200
BAND_LEVEL = 0.90
GRID_POINTS = 101
# Bandwidths tried by leave-one-out cross-validation, in decades of beta.
BANDWIDTHS = (0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5)
DEFAULT_BANDWIDTH = 0.5


class NoRunsError(FacefuseError):
    """No finished trial run evaluated the requested dataset and metric."""


# ---------------------------------------------------------------------------------------------
# Held-out parts and sweeps
# ---------------------------------------------------------------------------------------------
def trial_filter(sweep_id: Optional[str] = None) -> str:
    """Returns the search filter for finished trial runs, of one sweep when sweep_id is given."""
    if sweep_id is None:
        return S.FINISHED_TRIAL_FILTER
    quoted = sweep_id.replace("'", "''")
    return f"{S.FINISHED_TRIAL_FILTER} and tags.`{S.TAG_SWEEP_ID}` = '{quoted}'"


def part_key(metric_key: str, part: str) -> str:
    """Returns the key of a benchmark part's metric: ('lfw/acc', 'sel') -> 'lfw/sel/acc'."""
    dataset, metric = metric_key.split("/", 1)
    return S.part_key(dataset, metric, part)


def latest_sweep_id(client: "MlflowClient", ids: dict[str, str]) -> Optional[str]:
    """Returns the sweep id of the most recently started finished trial (None if untagged)."""
    if not ids:
        return None
    page = tracking_call("finding the latest sweep", client.search_runs, list(ids),
                         S.FINISHED_TRIAL_FILTER, max_results=1,
                         order_by=["attributes.start_time DESC"])
    if not page:
        return None
    return page[0].data.tags.get(S.TAG_SWEEP_ID) or None


# ---------------------------------------------------------------------------------------------
# Datasets and metrics
# ---------------------------------------------------------------------------------------------
def dataset_metric(dataset: str, metric: Optional[str] = None) -> str:
    """Returns the MLflow metric key ('<dataset>/<metric>') for a registered dataset."""
    from facefuse.data import DATASETS

    evaluated = sorted(n for n, spec in DATASETS.items() if spec.is_eval)
    if dataset not in evaluated:
        raise ConfigError(None, f"unknown evaluation dataset {dataset!r}", field="dataset",
                          fix=f"use one of: {', '.join(evaluated)}")
    if metric is None:
        metric = DATASETS[dataset].primary_metric
    return S.metric_key(dataset, metric)


def higher_is_better(metric_key: str) -> bool:
    """Returns False for losses and error rates, True for accuracies and TARs."""
    name = metric_key.rsplit("/", 1)[-1].lower()
    return not any(word in name for word in ("loss", "err", "eer", "far_at", "fnmr"))


def metric_bounds(metric_key: str) -> Optional[tuple[float, float]]:
    """Returns (0, 1) for the rates the protocols report (accuracy, TAR, AUC), else None."""
    name = metric_key.rsplit("/", 1)[-1].lower()
    return (0.0, 1.0) if name.startswith(("acc", "tar_", "auc")) and not name.endswith("_se") else None


def is_seed_param(name: str) -> bool:
    """Returns whether a param only picks a random seed (repeats of a setting differ in it)."""
    return name == "seed" or name.endswith("_seed") or name.endswith(".seed")


def _canonical(value: str) -> str:
    # "0.1" and "0.10000000000000001" are the same setting.
    try:
        number = float(value)
    except ValueError:
        return value
    if math.isfinite(number):
        return f"{number:.10g}"
    return value


def run_params(run: "Run") -> dict[str, str]:
    """Returns a run's params (the sweep logs a nested grid entry's keys as plain params)."""
    return dict(run.data.params)


def run_variant(run: "Run") -> str:
    """Returns the run's ablation variant ("" for a plain sweep trial)."""
    return run.data.tags.get(S.TAG_VARIANT) or run_params(run).get("variant", "")


# ---------------------------------------------------------------------------------------------
# Trials, settings and the smoothed curve
# ---------------------------------------------------------------------------------------------
@dataclass
class TrialValue:
    """One trial run's metric at the compared epoch."""

    run_id: str
    experiment: str
    beta: float
    value: float
    epoch: int
    full_budget: bool
    params: dict[str, str]


@dataclass
class Setting:
    """Trials with identical hyperparameters apart from the seed, averaged."""

    beta: float
    params: dict[str, str]
    values: list[float]
    run_ids: list[str]
    experiments: list[str]
    mean: float
    std: float
    best_run_id: str

    @property
    def n(self) -> int:
        """Returns how many trials (seeds) the setting averages."""
        return len(self.values)


@dataclass
class Curve:
    """A smoothed metric-vs-log10(beta) curve with a bootstrap band."""

    beta: list[float]
    mean: list[float]
    lower: list[float]
    upper: list[float]
    bandwidth_decades: float
    level: float = BAND_LEVEL

    def at(self, beta: float) -> float:
        """Returns the curve's mean interpolated at beta (log scale)."""
        return float(np.interp(math.log10(beta), np.log10(self.beta), self.mean))

    def to_json(self) -> dict[str, Any]:
        """Returns the curve as plain lists."""
        return {"beta": self.beta, "mean": self.mean, "lower": self.lower, "upper": self.upper,
                "bandwidth_decades": self.bandwidth_decades, "level": self.level}


def _history_values(client: "MlflowClient", run_id: str, key: str) -> list[tuple[int, float]]:
    history = tracking_call("reading a metric history", client.get_metric_history, run_id, key)
    # Several values at one step: the one logged last wins (a resumed trial re-logs its epoch).
    by_step: dict[int, tuple[int, float]] = {}
    for m in history:
        if not math.isfinite(m.value):
            continue
        previous = by_step.get(m.step)
        if previous is None or m.timestamp >= previous[0]:
            by_step[m.step] = (m.timestamp, float(m.value))
    return sorted((step, v) for step, (_, v) in by_step.items())


def _usable_beta(run: "Run", metric_key: str, variants: Sequence[str]) -> Optional[float]:
    """Returns the run's beta when it is a trial of one of ``variants`` that logged the metric
    and has a finite positive beta, else None."""
    variant = run_variant(run)
    if (variant and variant not in variants) or metric_key not in run.data.metrics:
        return None
    try:
        beta = float(run_params(run).get("beta", "nan"))
    except ValueError:
        return None
    return beta if math.isfinite(beta) and beta > 0 else None


def collect_trials(client: "MlflowClient", ids: dict[str, str], metric_key: str,
                   epoch_policy: str = "last_common",
                   variants: Sequence[str] = ("full",), sweep_id: Optional[str] = None
                   ) -> tuple[list[TrialValue], Optional[int], bool]:
    """Returns (trials at the compared epoch, the common epoch or None, full-budget-only flag).

    Ablation runs of other variants than ``variants`` are left out (a local-only model's best
    beta is not the fusion's). When any trial ran its full budget only those are used: ASHA stops
    trials early, and their early-epoch values are not comparable (docs/architecture.md).
    """
    if epoch_policy not in EPOCH_POLICIES:
        raise ConfigError(None, f"unknown epoch policy {epoch_policy!r}", field="epoch_policy",
                          fix=f"use one of: {', '.join(EPOCH_POLICIES)}")
    runs = search_all_runs(client, ids, trial_filter(sweep_id))
    candidates = []
    for run in runs:
        beta = _usable_beta(run, metric_key, variants)
        if beta is not None:
            candidates.append((run, beta))
    full_only = any(S.is_true(r.data.tags.get(S.TAG_FULL_BUDGET)) for r, _ in candidates)
    if full_only:
        candidates = [(r, b) for r, b in candidates
                      if S.is_true(r.data.tags.get(S.TAG_FULL_BUDGET))]
    histories = []
    for run, beta in candidates:
        hist = _history_values(client, run.info.run_id, metric_key)
        if hist:
            histories.append((run, beta, hist))
    if not histories:
        return [], None, full_only

    better = max if higher_is_better(metric_key) else min
    common: Optional[int] = None
    if epoch_policy == "last_common":
        common = min(hist[-1][0] for _, _, hist in histories)
    trials = []
    for run, beta, hist in histories:
        if common is not None:
            upto = [(s, v) for s, v in hist if s <= common]
            if not upto:
                continue
            epoch, value = upto[-1]
        else:
            epoch, value = better(hist, key=lambda sv: sv[1])
        trials.append(TrialValue(
            run_id=run.info.run_id, experiment=ids.get(run.info.experiment_id, ""), beta=beta,
            value=value, epoch=int(epoch),
            full_budget=S.is_true(run.data.tags.get(S.TAG_FULL_BUDGET)),
            params={k: v for k, v in run_params(run).items() if k != "variant"}))
    return trials, common, full_only


def group_settings(trials: Sequence[TrialValue], higher: bool = True) -> list[Setting]:
    """Returns the trials grouped by hyperparameters apart from seeds, best mean first."""
    groups: dict[tuple, list[TrialValue]] = {}
    for t in trials:
        key = tuple(sorted((k, _canonical(v)) for k, v in t.params.items()
                           if not is_seed_param(k)))
        groups.setdefault(key, []).append(t)
    settings = []
    for members in groups.values():
        values = [m.value for m in members]
        best = (max if higher else min)(members, key=lambda m: m.value)
        settings.append(Setting(
            beta=members[0].beta,
            params={k: v for k, v in members[0].params.items() if not is_seed_param(k)},
            values=values, run_ids=[m.run_id for m in members],
            experiments=sorted({m.experiment for m in members}),
            mean=float(np.mean(values)),
            std=float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            best_run_id=best.run_id))
    settings.sort(key=lambda s: s.mean, reverse=higher)
    return settings


def collect_curves(client: "MlflowClient", ids: dict[str, str], metric_key: str,
                   sweep_id: Optional[str], variants: Sequence[str] = ("full",)
                   ) -> tuple[list["TrialCurve"], dict[str, "Run"], Optional[int]]:
    """Returns (every finished trial's metric history, their runs by id, the full budget's epoch).

    Unlike collect_trials this keeps ASHA-stopped trials: the estimator uses them through the
    survivors' learning curves. The budget is the last epoch of the full-budget trials (None
    when no trial is tagged as having run its full budget).
    """
    from facefuse.stats import TrialCurve

    runs = search_all_runs(client, ids, trial_filter(sweep_id))
    curves: list[TrialCurve] = []
    by_id: dict[str, Run] = {}
    budget: Optional[int] = None
    for run in runs:
        beta = _usable_beta(run, metric_key, variants)
        if beta is None:
            continue
        hist = _history_values(client, run.info.run_id, metric_key)
        if not hist:
            continue
        if S.is_true(run.data.tags.get(S.TAG_FULL_BUDGET)):
            budget = max(budget or 0, hist[-1][0])
        nuisance = {k: _canonical(v) for k, v in run_params(run).items()
                    if k not in ("beta", "variant") and not is_seed_param(k)}
        se = float(run.data.metrics.get(metric_key + S.SE_SUFFIX, 0.0))
        curves.append(TrialCurve(trial_id=run.info.run_id, beta=beta, history=dict(hist),
                                 nuisance=nuisance, se=se if math.isfinite(se) else 0.0))
        by_id[run.info.run_id] = run
    return curves, by_id, budget


def _local_linear(x: np.ndarray, y: np.ndarray, w: np.ndarray, grid: np.ndarray,
                  h: float) -> np.ndarray:
    """Returns the Gaussian-kernel local-linear regression of y on x evaluated at grid."""
    d = x[None, :] - grid[:, None]  # [G, N]
    logk = np.log(w)[None, :] - 0.5 * (d / h) ** 2
    # Weights rescaled per grid point: the estimate is scale-free, and far from all data the
    # raw kernel underflows to zero.
    k = np.exp(logk - logk.max(axis=1, keepdims=True))
    s0 = k.sum(1)
    s1 = (k * d).sum(1)
    s2 = (k * d * d).sum(1)
    t0 = (k * y).sum(1)
    t1 = (k * d * y).sum(1)
    denom = s0 * s2 - s1 * s1
    constant = t0 / s0
    # Where the local data have (almost) no spread in x the slope is undetermined: fall back
    # to the local mean rather than extrapolating a wild line.
    ok = denom > 1e-8 * s0 * s0 * h * h
    linear = np.where(ok, (s2 * t0 - s1 * t1) / np.where(ok, denom, 1.0), constant)
    return linear


def _choose_bandwidth(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    if len(np.unique(x)) < 4:
        span = float(x.max() - x.min())
        return max(DEFAULT_BANDWIDTH, span / 2.0)
    best_h, best_err = DEFAULT_BANDWIDTH, math.inf
    for h in BANDWIDTHS:
        err = 0.0
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            pred = _local_linear(x[keep], y[keep], w[keep], x[i:i + 1], h)[0]
            err += w[i] * (pred - y[i]) ** 2
        if err < best_err - 1e-15:
            best_h, best_err = h, err
    return best_h


def fit_curve(betas: Sequence[float], values: Sequence[float],
              weights: Optional[Sequence[float]] = None, n_bootstrap: int = N_BOOTSTRAP,
              seed: int = 0, grid_points: int = GRID_POINTS) -> Curve:
    """Returns a smoothed metric-vs-log10(beta) curve with a bootstrap band.

    Gaussian-kernel local-linear regression on log10(beta), each point weighted by how many
    trials it averages; the bandwidth is picked by leave-one-out cross-validation (a fixed
    default when there are fewer than four distinct betas). The band is the central
    ``BAND_LEVEL`` interval of the curve refitted on resampled points.
    """
    x = np.log10(np.asarray(betas, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("fit_curve needs at least one point")
    h = _choose_bandwidth(x, y, w)
    lo, hi = float(x.min()), float(x.max())
    grid = np.linspace(lo, hi, grid_points) if hi > lo else np.array([lo])
    mean = _local_linear(x, y, w, grid, h)
    if len(x) > 1:
        rng = np.random.default_rng(seed)
        boots = np.empty((n_bootstrap, len(grid)))
        for b in range(n_bootstrap):
            idx = rng.integers(0, len(x), len(x))
            boots[b] = _local_linear(x[idx], y[idx], w[idx], grid, h)
        alpha = (1.0 - BAND_LEVEL) / 2.0
        lower = np.quantile(boots, alpha, axis=0)
        upper = np.quantile(boots, 1.0 - alpha, axis=0)
    else:
        lower = upper = mean
    return Curve(beta=[float(v) for v in 10.0 ** grid], mean=[float(v) for v in mean],
                 lower=[float(v) for v in lower], upper=[float(v) for v in upper],
                 bandwidth_decades=float(h))


# ---------------------------------------------------------------------------------------------
# The selection
# ---------------------------------------------------------------------------------------------
@dataclass
class RegisteredChoice:
    """Where register_choice recorded a selection."""

    model_name: str
    version: str
    alias: str
    source: str
    run_id: str


@dataclass
class BetaSelection:
    """The beta chosen for one dataset, with the evidence behind it."""

    dataset: str
    metric: str
    higher_is_better: bool
    beta: float
    value: float
    value_std: float
    n_seeds: int
    run_id: str
    experiment: str
    n_trials: int
    n_settings: int
    epoch_policy: str
    epoch: Optional[int]
    full_budget_only: bool
    curve: Curve
    curve_beta: float
    curve_value: float
    n_support: int
    best_trial_run_id: str
    best_trial_beta: float
    best_trial_value: float
    distance_decades: float
    distance_metric: float
    params: dict[str, str]
    runner_ups: list[dict[str, Any]] = field(default_factory=list)
    varying_params: list[str] = field(default_factory=list)
    registration: Optional[RegisteredChoice] = None
    #: The estimator's answer (facefuse.stats): None when the sweep is too small for the curve.
    estimate: Optional["BetaEstimate"] = None
    beta_interval: Optional[tuple[float, float]] = None
    value_interval: Optional[tuple[float, float]] = None
    #: The choice's value on the report part of the benchmark (no subject used in selection).
    heldout_value: Optional[float] = None
    #: The choice's value on the full benchmark (what papers report), beside the held-out one.
    full_value: Optional[float] = None
    verdict: str = ""
    #: The chosen setting's mean over its seeds (the old ``value``).
    trial_mean: float = float("nan")
    sweep_id: Optional[str] = None
    #: The metric key the choice was made on (the selection part when the trials logged it).
    selection_metric: str = ""
    selection_split: bool = False
    pooled: bool = False

    def to_json(self) -> dict[str, Any]:
        """Returns the selection as one JSON-ready object."""
        out = {
            "dataset": self.dataset, "beta": self.beta, "metric": self.metric,
            "value": self.value, "value_std": self.value_std, "n_seeds": self.n_seeds,
            "run_id": self.run_id, "experiment": self.experiment, "n_trials": self.n_trials,
            "n_settings": self.n_settings, "epoch_policy": self.epoch_policy,
            "epoch": self.epoch, "full_budget_only": self.full_budget_only,
            "curve": self.curve.to_json(), "curve_beta": self.curve_beta,
            "curve_value": self.curve_value, "n_support": self.n_support,
            "best_trial": {"run_id": self.best_trial_run_id, "beta": self.best_trial_beta,
                           "value": self.best_trial_value},
            "distance_decades": self.distance_decades, "distance_metric": self.distance_metric,
            "params": self.params, "runner_ups": self.runner_ups,
            "beta_interval": list(self.beta_interval) if self.beta_interval else None,
            "value_interval": list(self.value_interval) if self.value_interval else None,
            "heldout_value": self.heldout_value, "full_value": self.full_value,
            "verdict": self.verdict, "trial_mean": self.trial_mean, "sweep_id": self.sweep_id,
            "selection_metric": self.selection_metric, "selection_split": self.selection_split,
            "pooled": self.pooled,
        }
        if self.estimate is not None:
            est = self.estimate
            out["trials"] = [{"run_id": rid, "epochs": ep} for rid, ep in est.epochs.items()]
            out["budget_epoch"] = est.budget_epoch
            out["n_full"] = est.n_full
            out["n_extrapolated"] = est.n_extrapolated
            out["n_dropped"] = est.n_dropped
            out["optimism"] = est.optimism
            out["estimate_curve"] = est.to_json()["curve"]
        if self.registration is not None:
            out["registered"] = {"model": self.registration.model_name,
                                 "version": self.registration.version,
                                 "alias": self.registration.alias,
                                 "source": self.registration.source}
        return out


def _scope(client: "MlflowClient", ids: dict[str, str], sweep: Optional[str],
           pool: bool) -> Optional[str]:
    if sweep is not None:
        return sweep
    return None if pool else latest_sweep_id(client, ids)


def _equal_budget(curves: list["TrialCurve"], runs: dict[str, "Run"],
                  budget: Optional[int]) -> list["TrialCurve"]:
    # Pooled sweeps: only trials of the budget the latest sweep ran (a 3-epoch sweep's finals
    # are not a 30-epoch sweep's).
    if budget is None:
        return curves
    budget_of: dict[str, int] = {}
    for c in curves:
        run = runs[c.trial_id]
        if S.is_true(run.data.tags.get(S.TAG_FULL_BUDGET)):
            sid = run.data.tags.get(S.TAG_SWEEP_ID, "")
            budget_of[sid] = max(budget_of.get(sid, 0), c.last_epoch)
    keep = [c for c in curves
            if budget_of.get(runs[c.trial_id].data.tags.get(S.TAG_SWEEP_ID, "")) == budget]
    if len(keep) < len(curves):
        logger.info("pooling: left out %d trials of sweeps with another budget than %d epochs",
                    len(curves) - len(keep), budget)
    return keep


def _value_at(client: "MlflowClient", ids: dict[str, str], key: str, sweep_id: Optional[str],
              beta: float, higher: bool, run_ids: Sequence[str]) -> Optional[float]:
    """Returns the curve of another key (report part, full set) at beta, else the runs' mean."""
    from facefuse.stats import SweepTooSmallError, estimate_beta

    curves, _, budget = collect_curves(client, ids, key, sweep_id)
    if not curves:
        return None
    try:
        # beta is fixed by the selection: this fit is not maximised, so no optimism to correct.
        # Held within the values the trials reached: at the edge of the searched range the fit
        # extrapolates (a held-out accuracy of 1.04 was once reported).
        value = estimate_beta(curves, higher, budget, n_bootstrap=10).at(beta)
        finals = [c.history[c.last_epoch] for c in curves]
        return float(min(max(value, min(finals)), max(finals)))
    except SweepTooSmallError:
        values = [c.history[c.last_epoch] for c in curves if c.trial_id in set(run_ids)]
        return float(np.mean(values)) if values else None


def select_beta(tracking_uri: Optional[str], dataset: str, metric: Optional[str] = None,
                experiment: Optional[str] = None, epoch_policy: str = "last_common",
                n_runner_ups: int = 5, sweep: Optional[str] = None,
                pool: bool = False) -> BetaSelection:
    """Returns the beta chosen for a dataset from the finished trials of one sweep in MLflow.

    The sweep is the latest one (by its trials' start) unless ``sweep`` names another or
    ``pool`` asks for every sweep of equal budget. The choice is made on the benchmark's
    selection part when the trials logged it (``<dataset>/sel/<metric>``), else on the full set.
    The estimator (facefuse.stats.estimate_beta) gives the beta, its interval and the value
    there from every trial, ASHA-stopped ones included; the chosen run is, among the settings
    within the beta interval (else the nearest), the one with the best mean, its best seed.
    When the sweep is too small for the estimator, the smoothed curve over the averaged
    full-budget settings chooses, as before, and the verdict says what to run.
    """
    from facefuse.stats import SweepTooSmallError, estimate_beta

    full_key = dataset_metric(dataset, metric)
    client = open_tracking(tracking_uri)
    ids = experiment_ids(client, experiment)
    higher = higher_is_better(full_key)
    sweep_id = _scope(client, ids, sweep, pool)
    sel_key = part_key(full_key, S.PART_SELECTION)
    scoped = search_all_runs(client, ids, trial_filter(sweep_id))
    split = any(sel_key in r.data.metrics for r in scoped)
    metric_key = sel_key if split else full_key
    # A job with validation sets of its own tuned on them (the objective): the benchmark,
    # never looked at while tuning, is then reported in full.
    validation = next((r.data.tags[S.TAG_VALIDATION] for r in scoped
                       if r.data.tags.get(S.TAG_VALIDATION)), None)
    if validation is not None:
        split, metric_key, higher = False, S.METRIC_OBJECTIVE, True
    trials, common, full_only = collect_trials(client, ids, metric_key, epoch_policy,
                                               sweep_id=sweep_id)
    if not trials:
        where = f"experiment {experiment!r}" if experiment else "any experiment"
        if sweep_id is not None:
            where += f", sweep {sweep_id}"
        store = resolve_tracking_uri(tracking_uri)
        raise NoRunsError(f"no finished trial run in {where} of {store} "
                          f"logged {metric_key} with a beta param -- run a sweep that evaluates "
                          f"{dataset}, or pick another --metric / --experiment / --sweep")
    settings = group_settings(trials, higher)
    curve = fit_curve([s.beta for s in settings], [s.mean for s in settings],
                      [s.n for s in settings])
    grid_x = np.log10(curve.beta)
    mean = np.asarray(curve.mean)
    i_star = int(np.argmax(mean) if higher else np.argmin(mean))
    x_star = float(grid_x[i_star])
    h = curve.bandwidth_decades

    curves, runs, budget = collect_curves(client, ids, metric_key, sweep_id)
    if pool:
        latest = latest_sweep_id(client, ids)
        _, _, latest_budget = collect_curves(client, ids, metric_key, latest)
        curves = _equal_budget(curves, runs, latest_budget)
        budget = latest_budget
    estimate = None
    notes = []
    if validation is not None:
        notes.append(f"selected on the job's validation sets ({validation}); {dataset} "
                     f"in full is the held-out value")
    elif not split:
        notes.append(f"the trials did not log the selection part ({sel_key}): chosen and "
                     f"valued on the full set, no held-out value -- rerun the sweep with this "
                     f"version of facefuse")
    try:
        estimate = estimate_beta(curves, higher, budget, bounds=metric_bounds(metric_key))
    except SweepTooSmallError as exc:
        notes.append(f"sweep too small to fit the curve ({exc}) -- run a sweep with more "
                     f"trials (num_samples >= 12) or a confirmation round "
                     f"(selection: {{confirm_top: 3, seeds: 3}})")
    lo_x = hi_x = x_star
    if estimate is not None:
        x_star = math.log10(estimate.beta)
        lo_x, hi_x = (math.log10(v) for v in estimate.beta_interval)
        near = [s for s in settings if lo_x - 1e-9 <= math.log10(s.beta) <= hi_x + 1e-9]
    else:
        near = [s for s in settings if abs(math.log10(s.beta) - x_star) <= h]
    if near:
        chosen = near[0]  # settings are sorted best mean first
    else:
        chosen = min(settings, key=lambda s: abs(math.log10(s.beta) - x_star))
    best_trial = (max if higher else min)(trials, key=lambda t: t.value)
    n_support = sum(1 for t in trials if abs(math.log10(t.beta) - x_star) <= max(h, hi_x - x_star))
    exp_of = {t.run_id: t.experiment for t in trials}

    all_params = {k for s in settings for k in s.params}
    varying = sorted(k for k in all_params if k != "beta"
                     and len({_canonical(s.params.get(k, "")) for s in settings}) > 1)
    runner_ups = []
    for s in settings:
        if s is chosen:
            continue
        if len(runner_ups) >= n_runner_ups:
            break
        runner_ups.append({"beta": s.beta, "value": s.mean, "std": s.std, "n": s.n,
                           "curve": curve.at(s.beta), "run_id": s.best_run_id,
                           "experiment": exp_of[s.best_run_id],
                           "params": {k: s.params.get(k, "") for k in varying}})

    beta = estimate.beta if estimate is not None else chosen.beta
    value = estimate.value if estimate is not None else chosen.mean
    heldout = full_value = None
    if split:
        heldout = _value_at(client, ids, part_key(full_key, S.PART_REPORT), sweep_id, beta,
                            higher, chosen.run_ids)
        full_value = _value_at(client, ids, full_key, sweep_id, beta, higher, chosen.run_ids)
    elif validation is not None:
        heldout = full_value = _value_at(client, ids, full_key, sweep_id, beta,
                                         higher_is_better(full_key), chosen.run_ids)
    elif estimate is not None:
        full_value = value
    verdict = "; ".join(([estimate.verdict] if estimate is not None else []) + notes)
    return BetaSelection(
        dataset=dataset, metric=full_key, higher_is_better=higher, beta=beta,
        value=value, value_std=chosen.std, n_seeds=chosen.n, run_id=chosen.best_run_id,
        experiment=exp_of[chosen.best_run_id], n_trials=len(trials), n_settings=len(settings),
        epoch_policy=epoch_policy, epoch=common, full_budget_only=full_only, curve=curve,
        curve_beta=float(10.0 ** float(grid_x[i_star])), curve_value=float(mean[i_star]),
        n_support=n_support,
        best_trial_run_id=best_trial.run_id, best_trial_beta=best_trial.beta,
        best_trial_value=best_trial.value,
        distance_decades=float(grid_x[i_star] - math.log10(best_trial.beta)),
        distance_metric=float(best_trial.value - mean[i_star]),
        params=dict(chosen.params), runner_ups=runner_ups, varying_params=varying,
        estimate=estimate,
        beta_interval=estimate.beta_interval if estimate is not None else None,
        value_interval=estimate.value_interval if estimate is not None else None,
        heldout_value=heldout, full_value=full_value, verdict=verdict,
        trial_mean=chosen.mean, sweep_id=sweep_id, selection_metric=metric_key,
        selection_split=split, pooled=pool)


# ---------------------------------------------------------------------------------------------
# Recording the choice
# ---------------------------------------------------------------------------------------------
def register_choice(tracking_uri: Optional[str], selection: BetaSelection,
                    model_name: str = DEFAULT_MODEL_NAME) -> RegisteredChoice:
    """Returns where the choice was recorded: run tag, choice artifact, model version + alias.

    The chosen run gets ``facefuse.best_beta_for`` (comma-separated datasets; the dataset is
    removed from runs chosen before) and an artifact ``best_beta/<dataset>.json`` describing the
    choice. The registered model version's source is the run's ``best_checkpoint`` artifact when
    the sweep logged one, else that ``best_beta`` folder: no model weights are invented.
    """
    client = open_tracking(tracking_uri)
    dataset = selection.dataset
    run = tracking_call("reading the chosen run", client.get_run, selection.run_id)

    # The dataset's tag moves to the new run.
    ids = experiment_ids(client)
    tagged = search_all_runs(client, ids, f"tags.`{S.TAG_BEST_BETA_FOR}` LIKE '%{dataset}%'")
    for other in tagged:
        names = S.tag_list(other.data.tags.get(S.TAG_BEST_BETA_FOR))
        if dataset in names and other.info.run_id != selection.run_id:
            rest = [n for n in names if n != dataset]
            if rest:
                client.set_tag(other.info.run_id, S.TAG_BEST_BETA_FOR, ",".join(rest))
            else:
                client.delete_tag(other.info.run_id, S.TAG_BEST_BETA_FOR)
    names = S.tag_list(run.data.tags.get(S.TAG_BEST_BETA_FOR))
    if dataset not in names:
        names.append(dataset)
    tracking_call("tagging the chosen run", client.set_tag, selection.run_id, S.TAG_BEST_BETA_FOR,
                   ",".join(names))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{dataset}.json"
        path.write_text(json.dumps(selection.to_json(), indent=2, sort_keys=True))
        tracking_call("logging the choice", client.log_artifact, selection.run_id, str(path),
                       "best_beta")

    top = [a.path for a in tracking_call("listing artifacts", client.list_artifacts,
                                          selection.run_id)]
    checkpoint = next((p for p in top if p.split("/")[-1].startswith("best_checkpoint")), None)
    base = run.info.artifact_uri.rstrip("/")
    source = f"{base}/{checkpoint}" if checkpoint else f"{base}/best_beta"
    # A run that logged its best checkpoint as an MLflow model registers that model, so the
    # alias loads with mlflow.pytorch.load_model.
    model_id = run.data.tags.get(S.TAG_MODEL_ID)
    if model_id:
        # The model's own artifact location, not "models:/<id>": the registry resolves a
        # models:/ source through the process's global tracking URI.
        source = tracking_call("reading the logged model", client.get_logged_model,
                               model_id).artifact_location

    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        tracking_call("creating the registered model", client.create_registered_model,
                       model_name, description="facefuse fusion heads chosen per dataset by "
                       "platform.best_beta; aliases best-<dataset>")
    alias = f"best-{dataset}"
    tags = {S.TAG_SELECTED_DATASET: dataset, S.TAG_SELECTED_METRIC: selection.metric,
            # The registered model was trained at the chosen run's beta; the estimate (where
            # the curve peaks) is recorded beside it.
            S.TAG_SELECTED_BETA: selection.params.get("beta", repr(selection.beta)),
            S.TAG_SELECTED_BETA_ESTIMATE: repr(selection.beta),
            S.TAG_SELECTED_VALUE: repr(selection.value),
            S.TAG_HAS_CHECKPOINT: "true" if checkpoint else "false",
            S.TAG_LOADABLE_MODEL: "true" if model_id else "false"}
    version = tracking_call(
        "creating the model version", client.create_model_version, model_name, source,
        run_id=selection.run_id, tags=tags, model_id=model_id,
        description=(f"best beta for {dataset}: beta={selection.beta:.3g}, {selection.metric}="
                     f"{selection.value:.6g} ({selection.epoch_policy} epoch)"))
    tracking_call("setting the alias", client.set_registered_model_alias, model_name, alias,
                   version.version)
    logger.info("registered %s version %s as %s (source %s)", model_name, version.version,
                alias, source)
    choice = RegisteredChoice(model_name=model_name, version=str(version.version), alias=alias,
                              source=source, run_id=selection.run_id)
    selection.registration = choice
    return choice
