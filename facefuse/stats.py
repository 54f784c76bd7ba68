"""The statistics of beta selection: which beta a sweep's trials support, and how surely.

``estimate_beta`` models the selection metric as a smooth function of log10(beta) (a penalised
quadratic spline whose smoothness is chosen by generalised cross-validation) plus additive
effects of the other searched hyperparameters (the nuisance). Every trial counts:

- a trial that ran its full budget contributes its final value;
- a trial that ASHA stopped early contributes its final value as the survivors' own learning
  curves predict it: among the survivors, the gain from epoch ``e`` to the last epoch is
  regressed on log10(beta) (early rungs favour small beta, a strong KL term slows early
  fitting, so the gain depends on beta), and the stopped trial's value at ``e`` plus the
  predicted gain stands in for its final value, with the prediction's uncertainty.

Uncertainty comes from a bootstrap over trials (which refits the learning-curve model, redraws
the imputed finals with their residual noise and refits the curve), plus the benchmark's own
sampling error (the standard error a trial logs next to its metric) in the value's interval.
The value at the choice is corrected for the optimism of taking a maximum (winner's curse) by
the bootstrap's estimate of that optimism.

``simulate_sweep`` draws sweeps whose best beta is known (seed noise, nuisance hyperparameters,
learning curves whose early epochs penalise large beta, optional asynchronous ASHA, optional
confirmation round) so the estimator can be checked against the truth
(tests/test_stats.py, benchmarks/bench_beta_selection.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: Coverage of the reported intervals.
LEVEL = 0.90
N_BOOTSTRAP = 200
GRID_POINTS = 161
#: Smoothing penalties tried by generalised cross-validation (relative to the data's scale).
LAMBDAS = tuple(10.0 ** k for k in np.arange(-4.0, 4.01, 0.5))
#: Ridge penalties tried for the other searched hyperparameters' effects (their columns are
#: standardised, the weights have mean 1). A dozen trials with as many nuisance columns would
#: otherwise be interpolated: the curve and its bootstrap replicates explode, and with them the
#: winner's-curse correction (a quickstart sweep once reported an accuracy of -1.25).
NUISANCE_LAMBDAS = (1e-6, 0.1, 1.0, 10.0, 100.0)
#: Fewest trials the curve is fitted on; below it the sweep is too small to say anything.
MIN_TRIALS = 6
#: Fewest survivors at an epoch for their learning curves to predict a stopped trial's final.
MIN_SURVIVORS = 3
#: Interval width (decades) up to which the best beta counts as identified.
IDENTIFIED_DECADES = 0.6


class SweepTooSmallError(ValueError):
    """The sweep has too few usable trials to fit the metric-vs-beta curve."""


@dataclass
class TrialCurve:
    """One trial's selection-metric history with the settings it ran."""

    trial_id: str
    beta: float
    history: dict[int, float]
    nuisance: dict[str, str] = field(default_factory=dict)
    #: The benchmark's standard error of the metric at the trial's last epoch (0 if not logged).
    se: float = 0.0

    @property
    def last_epoch(self) -> int:
        """Returns the last epoch the trial logged."""
        return max(self.history)


@dataclass
class BetaEstimate:
    """The estimator's answer: the best beta and the metric there, with 90% intervals."""

    beta: float
    beta_interval: tuple[float, float]
    value: float
    value_interval: tuple[float, float]
    verdict: str
    identified: bool
    at_edge: bool
    budget_epoch: int
    n_trials: int
    n_full: int
    n_extrapolated: int
    n_dropped: int
    epochs: dict[str, int]
    optimism: float
    grid_beta: list[float]
    grid_mean: list[float]
    grid_lower: list[float]
    grid_upper: list[float]
    argmax_share: dict[str, float]
    level: float = LEVEL

    def at(self, beta: float) -> float:
        """Returns the fitted curve at beta (log-interpolated)."""
        return float(np.interp(math.log10(beta), np.log10(self.grid_beta), self.grid_mean))

    def to_json(self) -> dict[str, Any]:
        """Returns the estimate as one JSON-ready object."""
        return {
            "beta": self.beta, "beta_interval": list(self.beta_interval), "value": self.value,
            "value_interval": list(self.value_interval), "verdict": self.verdict,
            "identified": self.identified, "at_edge": self.at_edge,
            "budget_epoch": self.budget_epoch, "n_trials": self.n_trials,
            "n_full": self.n_full, "n_extrapolated": self.n_extrapolated,
            "n_dropped": self.n_dropped, "optimism": self.optimism, "level": self.level,
            "curve": {"beta": self.grid_beta, "mean": self.grid_mean, "lower": self.grid_lower,
                      "upper": self.grid_upper},
        }


# ---------------------------------------------------------------------------------------------
# Learning curves: a stopped trial's final value from the survivors' gains
# ---------------------------------------------------------------------------------------------
@dataclass
class _GainModel:
    """final - value_at_epoch ~ a + b * log10(beta), fitted on the survivors at one epoch."""

    coef: np.ndarray
    resid_sd: float
    n: int
    x_min: float
    x_max: float
    x_mean: float
    x_var: float
    mean_gain: float

    def predict(self, x: float) -> tuple[float, float]:
        """Returns (gain, variance of the imputed final) at log10(beta) = x."""
        gain = float(self.coef[0] + self.coef[1] * x)
        lever = 1.0 / self.n
        if self.coef[1] != 0.0 and self.x_var > 0:
            lever += (x - self.x_mean) ** 2 / (self.n * self.x_var)
        var = self.resid_sd ** 2 * (1.0 + lever)
        outside = max(0.0, self.x_min - x, x - self.x_max)
        # Unknown curvature of the gain beyond the survivors: a slope-sized doubt per decade
        # (a quarter of the mean gain per decade when no slope could be fitted).
        slope = abs(float(self.coef[1])) if self.coef[1] != 0.0 else 0.25 * self.mean_gain
        var += (EXTRAPOLATION_DOUBT * slope * outside) ** 2 + (0.5 * slope * outside ** 2) ** 2
        return gain, var


def _fit_gain(x: np.ndarray, gain: np.ndarray) -> _GainModel | None:
    n = len(x)
    if n < MIN_SURVIVORS:
        return None
    if len(np.unique(np.round(x, 6))) < 3:
        # Too few distinct betas among the survivors for a slope: only the mean gain is known
        # (a resampled pair of nearby betas would otherwise give any slope at all).
        coef = np.array([float(gain.mean()), 0.0])
        resid = gain - coef[0]
        dof = max(n - 1, 1)
    else:
        design = np.column_stack([np.ones(n), x])
        coef, *_ = np.linalg.lstsq(design, gain, rcond=None)
        resid = gain - design @ coef
        dof = max(n - 2, 1)
    sd = float(math.sqrt(float(resid @ resid) / dof))
    return _GainModel(coef=coef, resid_sd=sd, n=n, x_min=float(x.min()),
                      x_max=float(x.max()), x_mean=float(x.mean()), x_var=float(x.var()),
                      mean_gain=float(np.abs(gain).mean()))


#: How uncertain the gain's dependence on beta is outside the survivors' betas, as a fraction
#: of the fitted slope per decade out: the linear gain model is checked only where survivors are.
EXTRAPOLATION_DOUBT = 0.5


def _impute(trials: Sequence[TrialCurve], budget: int, idx: np.ndarray,
            rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (final values, extra variances, usable mask) for the trials picked by idx.

    A full-budget trial's final is its logged value. A stopped trial's final is its last value
    plus the gain the survivors (among idx) show from that epoch, with the gain model's
    prediction variance; with ``rng`` the imputed final gets a residual draw (bootstrap).
    """
    picked = [trials[i] for i in idx]
    x = np.array([math.log10(t.beta) for t in picked])
    final = np.full(len(picked), np.nan)
    extra = np.zeros(len(picked))
    full = np.array([t.last_epoch >= budget for t in picked])
    for j, t in enumerate(picked):
        if full[j]:
            final[j] = t.history[budget]
    models: dict[int, _GainModel | None] = {}
    for j, t in enumerate(picked):
        if full[j]:
            continue
        e = t.last_epoch
        if e not in models:
            rows = [k for k in range(len(picked)) if full[k] and e in picked[k].history]
            gains = np.array([final[k] - picked[k].history[e] for k in rows])
            models[e] = _fit_gain(x[rows], gains) if rows else None
        m = models[e]
        if m is None:
            continue
        gain, var = m.predict(float(x[j]))
        value = t.history[e] + gain
        if rng is not None:
            value += rng.normal(0.0, m.resid_sd)
        final[j] = value
        extra[j] = var
    return final, extra, ~np.isnan(final)


# ---------------------------------------------------------------------------------------------
# The curve: penalised quadratic spline in log10(beta) plus additive nuisance effects
# ---------------------------------------------------------------------------------------------
def _nuisance_columns(trials: Sequence[TrialCurve]) -> tuple[list[str], np.ndarray]:
    """Returns (names, centred design columns) for the searched hyperparameters besides beta."""
    keys = sorted({k for t in trials for k in t.nuisance})
    names: list[str] = []
    cols: list[np.ndarray] = []
    for k in keys:
        raw = [t.nuisance.get(k, "") for t in trials]
        if len(set(raw)) < 2:
            continue
        try:
            nums = np.array([float(v) for v in raw])
        except ValueError:
            nums = None
        if nums is not None and np.all(np.isfinite(nums)) and len(set(raw)) > 3:
            # A continuous setting: a linear effect (on log scale when it spans decades).
            if np.all(nums > 0) and nums.max() / nums.min() > 10:
                nums = np.log10(nums)
            names.append(k)
            cols.append((nums - nums.mean()) / (nums.std() or 1.0))
        else:
            levels = sorted(set(raw))
            for level in levels[1:]:
                ind = np.array([1.0 if v == level else 0.0 for v in raw])
                names.append(f"{k}={level}")
                cols.append(ind - ind.mean())
    design = np.column_stack(cols) if cols else np.zeros((len(trials), 0))
    return names, design


def _knots(x: np.ndarray) -> np.ndarray:
    distinct = np.unique(np.round(x, 6))
    k = int(min(8, max(0, len(distinct) // 3)))
    if k == 0:
        return np.zeros(0)
    return np.quantile(x, np.linspace(0, 1, k + 2)[1:-1])


def _basis(x: np.ndarray, knots: np.ndarray, centre: float) -> np.ndarray:
    z = x - centre
    cols = [np.ones_like(z), z, z * z]
    cols += [np.clip(x - k, 0.0, None) ** 2 for k in knots]
    return np.column_stack(cols)


@dataclass
class _Fit:
    coef: np.ndarray
    n_spline: int
    lam: tuple[float, float]  # (knot terms, nuisance effects)


def _solve(spline: np.ndarray, nuis: np.ndarray, y: np.ndarray, w: np.ndarray,
           lam: float, lam_nuis: float) -> tuple[np.ndarray, float]:
    """Returns (coefficients, GCV score) of the weighted penalised least squares fit."""
    design = np.column_stack([spline, nuis])
    p = design.shape[1]
    pen = np.zeros(p)
    pen[3:spline.shape[1]] = lam  # only the knot terms are penalised: a quadratic is free
    pen[spline.shape[1]:] = lam_nuis  # nuisance effects: shrunk as far as GCV asks
    wd = design * w[:, None]
    gram = design.T @ wd + np.diag(pen)
    try:
        inv = np.linalg.inv(gram)
    except np.linalg.LinAlgError:
        inv = np.linalg.pinv(gram)
    coef = inv @ (wd.T @ y)
    resid = y - design @ coef
    edf = float(np.trace(inv @ (design.T @ wd)))
    n = len(y)
    rss = float((w * resid * resid).sum())
    gcv = n * rss / max(n - edf, 0.5) ** 2
    return coef, gcv


def _fit_curve(x: np.ndarray, y: np.ndarray, w: np.ndarray, nuis: np.ndarray,
               knots: np.ndarray, centre: float, lam: tuple[float, float] | None) -> _Fit:
    spline = _basis(x, knots, centre)
    if lam is None:
        best = None
        for cand in LAMBDAS if len(knots) else (0.0,):
            for cand_nuis in NUISANCE_LAMBDAS if nuis.shape[1] else (0.0,):
                coef, gcv = _solve(spline, nuis, y, w, cand, cand_nuis)
                if best is None or gcv < best[1] - 1e-12:
                    best = (coef, gcv, (cand, cand_nuis))
        assert best is not None
        return _Fit(coef=best[0], n_spline=spline.shape[1], lam=best[2])
    coef, _ = _solve(spline, nuis, y, w, *lam)
    return _Fit(coef=coef, n_spline=spline.shape[1], lam=lam)


def _curve_on(fit: _Fit, grid: np.ndarray, knots: np.ndarray, centre: float) -> np.ndarray:
    # Nuisance columns are centred, so the spline alone is the curve averaged over the other
    # hyperparameters as the sweep sampled them.
    return _basis(grid, knots, centre) @ fit.coef[:fit.n_spline]


# ---------------------------------------------------------------------------------------------
# The estimator
# ---------------------------------------------------------------------------------------------
def _fmt_beta(value: float) -> str:
    return f"{value:.2g}"


def estimate_beta(trials: Sequence[TrialCurve], higher_is_better: bool = True,
                  budget_epoch: int | None = None, n_bootstrap: int = N_BOOTSTRAP,
                  seed: int = 0, level: float = LEVEL,
                  bounds: tuple[float, float] | None = None) -> BetaEstimate:
    """Returns the best beta, the expected metric there and their intervals, from every trial.

    ``budget_epoch`` is the full budget's last epoch (default: the latest epoch any trial
    logged); trials stopped before it enter through the learning-curve model. ``bounds`` are
    the metric's own limits (accuracy and TAR lie in [0, 1]): intervals and bands are cut
    there. Raises SweepTooSmallError when fewer than MIN_TRIALS trials can be used.
    """
    trials = [t for t in trials if t.history and t.beta > 0 and math.isfinite(t.beta)]
    if not trials:
        raise SweepTooSmallError("no trial with a beta and a metric history")
    budget = budget_epoch if budget_epoch is not None else max(t.last_epoch for t in trials)
    sign = 1.0 if higher_is_better else -1.0
    all_idx = np.arange(len(trials))
    finals, _, ok = _impute(trials, budget, all_idx, None)
    n_full = sum(1 for t in trials if t.last_epoch >= budget)
    if int(ok.sum()) < MIN_TRIALS or n_full < 2:
        raise SweepTooSmallError(
            f"{int(ok.sum())} usable trials ({n_full} at the full budget of epoch {budget}); "
            f"the curve needs at least {MIN_TRIALS}, two of them at the full budget")
    x_all = np.array([math.log10(t.beta) for t in trials])
    se_all = np.array([max(t.se, 0.0) for t in trials])
    _, nuis_all = _nuisance_columns(trials)
    centre = float(np.median(x_all))
    lo, hi = float(x_all.min()), float(x_all.max())
    grid = np.linspace(lo, hi, GRID_POINTS)

    def fit_once(idx: np.ndarray, rng: np.random.Generator | None,
                 lam: tuple[float, float] | None) -> tuple[np.ndarray, _Fit, np.ndarray]:
        f, ex, good = _impute(trials, budget, idx, rng)
        if int(good.sum()) < MIN_TRIALS:
            raise ValueError("too few usable trials in this sample")
        sel = idx[good]
        y = sign * f[good]
        x = x_all[sel]
        nuis = nuis_all[sel]
        if nuis.shape[1]:
            nuis = nuis - nuis.mean(axis=0)
        knots = _knots(x_all)
        # Trial-to-trial noise from a first unweighted fit; imputed trials add their
        # prediction variance on top, so they weigh less the farther they are extrapolated.
        base = _fit_curve(x, y, np.ones(len(y)), nuis, knots, centre, lam)
        design = np.column_stack([_basis(x, knots, centre), nuis])
        resid = y - design @ base.coef
        tau2 = max(float(resid @ resid) / max(len(y) - 4, 1), 1e-12)
        w = 1.0 / (tau2 + ex[good])
        w = w / w.mean()
        fit = _fit_curve(x, y, w, nuis, knots, centre, base.lam if lam is None else lam)
        return _curve_on(fit, grid, knots, centre), fit, good

    curve, fit0, _ = fit_once(all_idx, None, None)
    i_hat = int(np.argmax(curve))
    rng = np.random.default_rng(seed)
    boot_arg = np.empty(n_bootstrap)
    boot_at_choice = np.empty(n_bootstrap)
    optimism = np.empty(n_bootstrap)
    boot_curves = np.empty((n_bootstrap, len(grid)))
    for b in range(n_bootstrap):
        # A bootstrap sample needs enough usable trials (survivors to fit the learning curves
        # among them); one without is redrawn.
        c = None
        for _ in range(50):
            idx = np.sort(rng.integers(0, len(trials), len(trials)))
            try:
                c, _, good = fit_once(idx, rng, fit0.lam)
            except (np.linalg.LinAlgError, ValueError):
                continue
            if int(good.sum()) >= MIN_TRIALS and np.all(np.isfinite(c)):
                break
            c = None
        if c is None:
            c = curve
        boot_curves[b] = c
        j = int(np.argmax(c))
        boot_arg[b] = grid[j]
        boot_at_choice[b] = c[i_hat]
        # In the bootstrap world the point fit is the truth: what the replicate's maximum
        # overstates it by at the replicate's own choice is the maximum's optimism.
        optimism[b] = c[j] - curve[j]
    alpha = (1.0 - level) / 2.0
    # Percentile interval for the argmax, widened by the distance the bootstrap's median
    # drifts from the point estimate (a biased argmax, e.g. towards the side the stopped trials
    # sit on, must not yield a tight interval that misses).
    q_lo, q_med, q_hi = np.quantile(boot_arg, [alpha, 0.5, 1.0 - alpha])
    drift = abs(float(q_med) - float(grid[i_hat]))
    x_lo = max(lo, min(float(q_lo), float(grid[i_hat])) - drift)
    x_hi = min(hi, max(float(q_hi), float(grid[i_hat])) + drift)
    # The percentile interval of a maximiser is too short on a flat top; add every beta the
    # data cannot reject as good as the choice (one-sided test at level alpha on the bootstrap
    # difference), contiguous around the choice.
    diff = boot_curves[:, i_hat][:, None] - boot_curves  # [B, G]
    plausible = np.quantile(diff, alpha, axis=0) <= 0.0
    j = i_hat
    while j > 0 and plausible[j - 1]:
        j -= 1
    x_lo = min(x_lo, float(grid[j]))
    j = i_hat
    while j < len(grid) - 1 and plausible[j + 1]:
        j += 1
    x_hi = max(x_hi, float(grid[j]))
    bias = float(optimism.mean())
    value_signed = float(curve[i_hat]) - bias
    # The expected metric at the choice cannot lie outside what the trials reached: a value
    # beyond that range is the fit extrapolating, not information (the interval keeps its width).
    seen = sign * finals[ok]
    clipped = min(max(value_signed, float(seen.min())), float(seen.max()))
    if clipped != value_signed:
        logger.info("the curve's value at the choice (%.4g) lies outside the trials' range; "
                       "reported as %.4g", sign * value_signed, sign * clipped)
        value_signed = clipped
    # The benchmark's own sampling error is shared by all trials at the choice: it adds to the
    # value's uncertainty but not to the curve's shape.
    se_choice = float(np.sqrt(np.mean(se_all ** 2))) if np.any(se_all > 0) else 0.0
    spread = boot_at_choice - boot_at_choice.mean()
    if se_choice > 0:
        spread = spread + rng.normal(0.0, se_choice, len(spread))
    d_lo, d_hi = np.quantile(spread, [alpha, 1.0 - alpha])
    v_lo, v_hi = value_signed + float(d_lo), value_signed + float(d_hi)
    value = sign * value_signed
    v_interval = (min(sign * v_lo, sign * v_hi), max(sign * v_lo, sign * v_hi))
    if bounds is not None:
        v_interval = (max(v_interval[0], bounds[0]), min(v_interval[1], bounds[1]))
    beta = float(10.0 ** grid[i_hat])
    interval = (float(10.0 ** x_lo), float(10.0 ** x_hi))
    at_edge = i_hat in (0, len(grid) - 1) or x_lo <= lo + 1e-9 or x_hi >= hi - 1e-9
    width = x_hi - x_lo
    identified = width <= IDENTIFIED_DECADES and i_hat not in (0, len(grid) - 1)
    searched = sorted({t.beta for t in trials})
    inside = [b_ for b_ in searched if x_lo - 1e-9 <= math.log10(b_) <= x_hi + 1e-9]
    if identified:
        verdict = (f"beta {_fmt_beta(beta)} is identified at this budget ({int(level * 100)}% "
                   f"interval {_fmt_beta(interval[0])} to {_fmt_beta(interval[1])})")
    else:
        verdict = (f"{_fmt_beta(interval[0])} to {_fmt_beta(interval[1])} are "
                   f"indistinguishable at this budget ({width:.1f} decades"
                   f"{', ' + str(len(inside)) + ' searched betas' if len(inside) > 1 else ''})")
    if at_edge:
        verdict += ("; the best beta may lie outside the searched range "
                    f"{_fmt_beta(10 ** lo)} to {_fmt_beta(10 ** hi)}: widen it")
    bands = np.quantile(boot_curves, [alpha, 1.0 - alpha], axis=0)
    if bounds is not None:
        bands = np.clip(bands, sign * bounds[0], sign * bounds[1]) if sign > 0 else \
            np.clip(bands, -bounds[1], -bounds[0])
    share: dict[str, float] = {}
    for b_ in searched:
        near = np.abs(boot_arg - math.log10(b_)) <= 0.25
        if near.any():
            share[f"{b_:.4g}"] = float(near.mean())
    epochs = {t.trial_id: min(t.last_epoch, budget) for t in trials}
    n_imputed = int(ok.sum()) - n_full
    return BetaEstimate(
        beta=beta, beta_interval=interval, value=value, value_interval=v_interval,
        verdict=verdict, identified=identified, at_edge=at_edge, budget_epoch=budget,
        n_trials=len(trials), n_full=n_full, n_extrapolated=n_imputed,
        n_dropped=len(trials) - int(ok.sum()), epochs=epochs, optimism=sign * bias,
        grid_beta=[float(v) for v in 10.0 ** grid], grid_mean=[float(sign * v) for v in curve],
        grid_lower=[float(v) for v in np.minimum(sign * bands[0], sign * bands[1])],
        grid_upper=[float(v) for v in np.maximum(sign * bands[0], sign * bands[1])],
        argmax_share=share, level=level)


# ---------------------------------------------------------------------------------------------
# Simulated sweeps with a known best beta
# ---------------------------------------------------------------------------------------------
@dataclass
class SimConfig:
    """How a simulated sweep is drawn (defaults: a TAR-like metric, beta searched 1e-4..1)."""

    n_trials: int = 40
    budget: int = 9
    asha: bool = False
    reduction_factor: int = 3
    grace_epochs: int = 1
    beta_range: tuple[float, float] = (-4.0, 0.0)
    optimum_range: tuple[float, float] = (-3.0, -1.0)
    top: float = 0.80
    curvature: tuple[float, float] = (0.015, 0.04)
    seed_sd: float = 0.008
    benchmark_se: float = 0.004
    epoch_sd: float = 0.003
    #: Gap to the final value at the first epoch, at the smallest beta and per decade above it:
    #: early epochs penalise large beta (a strong KL term slows early fitting).
    early_gap: tuple[float, float] = (0.10, 0.03)
    #: Confirmation round: this many betas rerun with this many seeds at the full budget.
    confirm_top: int = 0
    confirm_seeds: int = 3


@dataclass
class SimSweep:
    """A simulated sweep and the truth behind it."""

    trials: list[TrialCurve]
    optimum: float  # log10 of the true best beta
    curvature: float
    top: float
    nuisance_mean: float  # the true nuisance effect averaged over the sweep's trials
    epochs_used: int
    #: {trial_id: {"seed": int, "heldout_shift": float, "confirmation": bool, "stopped": bool}}
    info: dict[str, dict[str, Any]] = field(default_factory=dict)

    def truth(self, log10_beta: float) -> float:
        """Returns the true expected metric at log10(beta), averaged over the nuisance."""
        d = log10_beta - self.optimum
        return self.top - self.curvature * (d * d + 0.15 * d ** 3) + self.nuisance_mean


_LR_LEVELS = ("0.001", "0.003", "0.01")
_LR_EFFECT = {"0.001": 0.0, "0.003": 0.006, "0.01": -0.012}


def _nuisance_effect(nuisance: Mapping[str, str]) -> float:
    return _LR_EFFECT[nuisance["lr"]] + 0.004 * (math.log10(float(nuisance["weight_decay"])) + 4)


def _draw_trial(cfg: SimConfig, rng: np.random.Generator, x: float, nuisance: dict[str, str],
                optimum: float, curvature: float, tid: str) -> tuple[TrialCurve, float]:
    d = x - optimum
    mean_final = cfg.top - curvature * (d * d + 0.15 * d ** 3) + _nuisance_effect(nuisance)
    trial_final = mean_final + rng.normal(0.0, cfg.seed_sd)
    span = x - cfg.beta_range[0]
    gap1 = cfg.early_gap[0] + cfg.early_gap[1] * span + 0.004 * span * span
    history = {}
    for e in range(1, cfg.budget + 1):
        shape = (1.0 - (e - 1) / (cfg.budget - 1)) ** 1.5 if cfg.budget > 1 else 0.0
        history[e] = float(trial_final - gap1 * shape + rng.normal(0.0, cfg.epoch_sd)
                           + rng.normal(0.0, cfg.benchmark_se))
    # The report part shares the trial (same model) but not the benchmark's sampling noise:
    # its values are the selection part's shifted by the difference of two independent draws.
    heldout_shift = float(rng.normal(0.0, cfg.benchmark_se * math.sqrt(2.0)))
    return TrialCurve(trial_id=tid, beta=float(10.0 ** x), history=history, nuisance=nuisance,
                      se=cfg.benchmark_se), heldout_shift


def _asha_stop_epoch(cfg: SimConfig, rungs: dict[int, list[float]], t: TrialCurve) -> int:
    """Returns the epoch at which asynchronous successive halving stops the trial."""
    rung = cfg.grace_epochs
    while rung < cfg.budget:
        recorded = rungs.setdefault(rung, [])
        value = t.history[rung]
        recorded.append(value)
        # Ray's async rule: continue when in the top 1/rf of what this rung has seen so far.
        cutoff = float(np.quantile(recorded, 1.0 - 1.0 / cfg.reduction_factor))
        if len(recorded) > 1 and value < cutoff:
            return rung
        rung *= cfg.reduction_factor
    return cfg.budget


def simulate_sweep(cfg: SimConfig, seed: int) -> SimSweep:
    """Returns a simulated sweep (random search over log beta and nuisance, ASHA optional)."""
    rng = np.random.default_rng(seed)
    optimum = float(rng.uniform(*cfg.optimum_range))
    curvature = float(rng.uniform(*cfg.curvature))
    trials: list[TrialCurve] = []
    info: dict[str, dict[str, Any]] = {}
    rungs: dict[int, list[float]] = {}
    epochs = 0
    for i in range(cfg.n_trials):
        x = float(rng.uniform(*cfg.beta_range))
        nuisance = {"lr": str(rng.choice(_LR_LEVELS)),
                    "weight_decay": f"{10.0 ** rng.uniform(-5.0, -3.0):.6g}"}
        t, shift = _draw_trial(cfg, rng, x, nuisance, optimum, curvature, f"trial_{i:04d}")
        stop = _asha_stop_epoch(cfg, rungs, t) if cfg.asha else cfg.budget
        t.history = {e: v for e, v in t.history.items() if e <= stop}
        epochs += stop
        trials.append(t)
        info[t.trial_id] = {"seed": i, "heldout_shift": shift, "confirmation": False,
                            "stopped": stop < cfg.budget}
    if cfg.confirm_top > 0:
        est = estimate_beta(trials, budget_epoch=cfg.budget, n_bootstrap=100, seed=seed)
        chosen = confirmation_betas(est, cfg.confirm_top)
        best = max((t for t in trials if t.last_epoch >= cfg.budget),
                   key=lambda t: t.history[cfg.budget])
        for j, b in enumerate(chosen):
            for s in range(cfg.confirm_seeds):
                tid = f"confirm_{j}_{s}"
                t, shift = _draw_trial(cfg, rng, math.log10(b), dict(best.nuisance), optimum,
                                       curvature, tid)
                epochs += cfg.budget
                trials.append(t)
                info[tid] = {"seed": 1000 + s, "heldout_shift": shift, "confirmation": True,
                             "stopped": False}
    nuisance_mean = float(np.mean([_nuisance_effect(t.nuisance) for t in trials]))
    return SimSweep(trials=trials, optimum=optimum, curvature=curvature, top=cfg.top,
                    nuisance_mean=nuisance_mean, epochs_used=epochs, info=info)


def confirmation_betas(estimate: BetaEstimate, k: int) -> list[float]:
    """Returns the k betas a confirmation round reruns: spread over the best beta's interval.

    The interval's ends and its centre are where more seeds at full budget separate the
    candidates best (the top of a flat curve is what the first round could not resolve).
    """
    lo, hi = (math.log10(v) for v in estimate.beta_interval)
    centre = math.log10(estimate.beta)
    if k <= 1 or hi - lo < 1e-6:
        return [estimate.beta] * max(k, 1)
    points = sorted({lo, centre, hi}) if k == 3 else list(np.linspace(lo, hi, k))
    return [float(10.0 ** p) for p in points]


def write_sweep_to_mlflow(sweep: SimSweep, tracking_uri: str, experiment: str, dataset: str,
                          metric: str, sweep_id: str = "sim", budget: int | None = None,
                          split: bool = True) -> str:
    """Returns the parent run id of the simulated sweep written in the tracking schema.

    Trials are written the way the sweep's MLflow callback writes them (tags, params, one
    metric value per epoch at step = epoch). With ``split`` the trials log the selection part
    (``<dataset>/sel/<metric>`` and its ``_se``), the report part (``<dataset>/test/<metric>``)
    and the full set (``<dataset>/<metric>``); without it only the full set, as stores of the
    previous version do. Confirmation trials carry ``facefuse.confirmation=true``.
    """
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    from facefuse.tracking import schema as S

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    parent = client.create_run(exp_id, tags={S.TAG_KIND: S.KIND_SWEEP,
                                             S.TAG_SWEEP_ID: sweep_id,
                                             "mlflow.runName": f"sweep-{sweep_id}"})
    parent_id = parent.info.run_id
    full_epochs = budget if budget is not None else max(t.last_epoch for t in sweep.trials)
    now = int(time.time() * 1000)
    for t in sweep.trials:
        meta = sweep.info.get(t.trial_id, {})
        full = t.last_epoch >= full_epochs
        tags = {"mlflow.parentRunId": parent_id, S.TAG_KIND: S.KIND_TRIAL,
                S.TAG_SWEEP_ID: sweep_id, S.TAG_TRIAL_ID: t.trial_id,
                S.TAG_DATASETS: dataset, S.TAG_FULL_BUDGET: str(full).lower(),
                S.TAG_EPOCHS_DONE: str(t.last_epoch), S.TAG_SEED: str(meta.get("seed", 0))}
        if not full:
            tags[S.TAG_STOPPED_BY_ASHA] = "true"
        if meta.get("confirmation"):
            tags[S.TAG_CONFIRMATION] = "true"
        run = client.create_run(exp_id, tags=tags)
        metrics = []
        shift = float(meta.get("heldout_shift", 0.0))
        for e, v in sorted(t.history.items()):
            ts = now + e
            keys = {S.metric_key(dataset, metric): v}
            if split:
                keys[S.part_key(dataset, metric, S.PART_SELECTION)] = v
                keys[S.part_key(dataset, metric + S.SE_SUFFIX, S.PART_SELECTION)] = t.se
                keys[S.part_key(dataset, metric, S.PART_REPORT)] = v + shift
            metrics += [Metric(k, float(val), ts, e) for k, val in keys.items()]
            metrics.append(Metric("epoch", float(e), ts, e))
        params = [Param("beta", repr(t.beta)), Param("seed", str(meta.get("seed", 0)))]
        params += [Param(k, v) for k, v in sorted(t.nuisance.items())]
        client.log_batch(run.info.run_id, metrics=metrics, params=params,
                         tags=[RunTag(S.TAG_TRIAL_NAME, t.trial_id)])
        client.set_terminated(run.info.run_id, "FINISHED")
    client.set_terminated(parent_id, "FINISHED")
    return parent_id


# ---------------------------------------------------------------------------------------------
# Best beta against measured image quality (the quality ladder)
# ---------------------------------------------------------------------------------------------
#: Fewest swept levels the beta-vs-quality relation is fitted on.
MIN_LEVELS = 3
#: Floor of a level's log10(beta) standard deviation (decades): a degenerate interval (every
#: bootstrap replicate peaking at one grid point) is not a certainty.
MIN_LOG_BETA_SD = 0.05
#: How far (decades) a best beta whose interval reaches the searched range's edge may lie beyond
#: it: such an interval is censored by the range, so it is widened on that side.
EDGE_DECADES = 1.0


class TooFewLevelsError(ValueError):
    """Fewer than MIN_LEVELS levels (or levels of one quality) to fit beta against quality on."""


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2.0))


def t_quantile(level: float, dof: int) -> float:
    """Returns the Student-t quantile of a two-sided interval at ``level`` on ``dof`` degrees."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + level / 2.0, dof))


def t_half_width(sd: float, n: int, level: float = LEVEL) -> float:
    """Returns the half-width of the Student-t interval of a mean of n values with sample sd
    (NaN below two values)."""
    return t_quantile(level, int(n) - 1) * float(sd) / math.sqrt(n) if n > 1 else math.nan


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Returns (mean, low, high): the Student-t interval of the mean; NaN bounds below two values."""
    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    half = t_half_width(float(x.std(ddof=1)) if len(x) > 1 else math.nan, len(x), level)
    return mean, mean - half, mean + half


def log_beta_sd(interval: tuple[float, float], searched: tuple[float, float],
                level: float = LEVEL) -> float:
    """Returns the standard deviation (decades) of a best beta from its ``level`` interval.

    An interval that reaches an end of the searched range is widened by EDGE_DECADES on that
    side first (the best beta may lie beyond it), and the result is at least MIN_LOG_BETA_SD.
    """
    lo, hi = (math.log10(v) for v in interval)
    s_lo, s_hi = (math.log10(v) for v in searched)
    if lo <= s_lo + 1e-6:
        lo -= EDGE_DECADES
    if hi >= s_hi - 1e-6:
        hi += EDGE_DECADES
    return max((hi - lo) / (2.0 * _z(level)), MIN_LOG_BETA_SD)


@dataclass
class QualityFit:
    """log10(best beta) = centre_log_beta + slope * (quality - centre_quality), fitted on levels.

    Weighted least squares with each level's weight 1 / (sd of its log10 beta^2 + slope^2 * se of
    its quality^2) (errors in both coordinates, iterated); the covariance is scaled up by the
    reduced chi-square when the levels scatter more than their intervals say (never down), and
    intervals use Student's t with n - 2 degrees of freedom.
    """

    slope: float
    slope_interval: tuple[float, float]
    centre_quality: float
    centre_log_beta: float
    var_centre: float  # variance of the line at centre_quality
    var_slope: float
    scale: float  # max(1, chi-square / dof)
    typical_var: float  # a level's own variance of log10 beta (mean over the levels), scaled
    dof: int
    n_levels: int
    quality_range: tuple[float, float]
    level: float = LEVEL

    @property
    def relation(self) -> bool:
        """Returns True when the slope's interval excludes 0 (the data show a relation)."""
        return self.slope_interval[0] > 0.0 or self.slope_interval[1] < 0.0

    @property
    def intercept(self) -> float:
        """Returns log10(beta) of the line at quality 0."""
        return self.centre_log_beta - self.slope * self.centre_quality

    def line(self, quality: float) -> float:
        """Returns the fitted log10(best beta) at a quality."""
        return self.centre_log_beta + self.slope * (quality - self.centre_quality)

    def predict(self, quality: float, quality_se: float = 0.0) -> tuple[float, tuple[float, float]]:
        """Returns (log10 beta, its ``level`` prediction interval) for a dataset of this quality.

        The interval is where a sweep of that dataset, like the levels' sweeps, would put its
        best beta: the line's own uncertainty at that quality, the dataset's quality error
        through the slope, and a level's typical scatter about the line.
        """
        d = quality - self.centre_quality
        var = (self.var_centre + d * d * self.var_slope + self.slope ** 2 * quality_se ** 2
               + self.typical_var)
        half = t_quantile(self.level, self.dof) * math.sqrt(var)
        centre = self.line(quality)
        return centre, (centre - half, centre + half)

    def verdict(self, measure: str = "quality") -> str:
        """Returns one line: the fitted relation with its slope interval, or that there is none."""
        lo, hi = self.slope_interval
        pct = int(round(self.level * 100))
        if not self.relation:
            return (f"no relation between best beta and {measure}: the slope's {pct}% interval "
                    f"{lo:.3g} to {hi:.3g} decades per unit covers 0 ({self.n_levels} levels)")
        return (f"log10(beta) = {self.intercept:.3g} + {self.slope:.3g} * {measure} "
                f"(slope {pct}% interval {lo:.3g} to {hi:.3g}, {self.n_levels} levels)")

    def to_json(self) -> dict[str, Any]:
        """Returns the fit as one JSON-ready object."""
        return {"slope": self.slope, "slope_interval": list(self.slope_interval),
                "intercept": self.intercept, "centre_quality": self.centre_quality,
                "centre_log_beta": self.centre_log_beta, "scale": self.scale,
                "dof": self.dof, "n_levels": self.n_levels, "relation": self.relation,
                "quality_range": list(self.quality_range), "level": self.level}


def fit_beta_vs_quality(quality: Sequence[float], quality_se: Sequence[float],
                        log_beta: Sequence[float], log_beta_sd: Sequence[float],
                        level: float = LEVEL) -> QualityFit:
    """Returns the weighted linear fit of log10(best beta) on measured quality (see QualityFit).

    Raises TooFewLevelsError with fewer than MIN_LEVELS levels or when every level has the same
    quality.
    """
    x = np.asarray(quality, float)
    sx = np.abs(np.asarray(quality_se, float))
    y = np.asarray(log_beta, float)
    sy = np.maximum(np.asarray(log_beta_sd, float), MIN_LOG_BETA_SD)
    n = len(x)
    if n < MIN_LEVELS:
        raise TooFewLevelsError(f"{n} level(s); the relation needs at least {MIN_LEVELS}")
    if float(np.ptp(x)) <= 0.0:
        raise TooFewLevelsError("every level has the same measured quality")
    slope = 0.0
    for _ in range(50):
        var = sy ** 2 + slope ** 2 * sx ** 2
        w = 1.0 / var
        xc = float((w * x).sum() / w.sum())
        yc = float((w * y).sum() / w.sum())
        sxx = float((w * (x - xc) ** 2).sum())
        new = float((w * (x - xc) * (y - yc)).sum() / sxx)
        done = abs(new - slope) <= 1e-10 * (1.0 + abs(new))
        slope = new
        if done:
            break
    var = sy ** 2 + slope ** 2 * sx ** 2
    w = 1.0 / var
    xc = float((w * x).sum() / w.sum())
    yc = float((w * y).sum() / w.sum())
    sxx = float((w * (x - xc) ** 2).sum())
    resid = y - yc - slope * (x - xc)
    dof = n - 2
    chi2 = float((w * resid ** 2).sum())
    scale = max(1.0, chi2 / dof)
    var_slope = scale / sxx
    half = t_quantile(level, dof) * math.sqrt(var_slope)
    return QualityFit(slope=slope, slope_interval=(slope - half, slope + half),
                      centre_quality=xc, centre_log_beta=yc, var_centre=scale / float(w.sum()),
                      var_slope=var_slope, scale=scale, typical_var=scale * float(var.mean()),
                      dof=dof, n_levels=n, quality_range=(float(x.min()), float(x.max())),
                      level=level)
