"""Benchmark: beta selection against simulated sweeps whose best beta is known.

Draws sweeps with facefuse.stats.simulate_sweep (a TAR-like metric peaking at a random beta in
1e-3..1e-1, beta searched log-uniformly in 1e-4..1, seed noise, two nuisance hyperparameters,
learning curves whose early epochs penalise large beta) and compares, on the same draws:

- old: the best full-budget trial (its beta, its own value), what best_beta reported before;
- old curve: the local-linear curve over the full-budget trials (facefuse.selection.fit_curve);
- new: facefuse.stats.estimate_beta (every trial, ASHA-stopped ones through learning curves).

Figures: share of draws whose choice is within 0.3 decades of the optimum, coverage of the 90%
interval, median interval width, and the winner's-curse bias (reported value minus the true
metric at the chosen beta). Scenarios: random search without ASHA, with asynchronous ASHA, and
at equal epochs of compute plain ASHA against ASHA + a confirmation round (the top betas rerun
with several seeds at full budget: ``selection: {confirm_top: 3, seeds: 3}``).

Usage: .venv/bin/python benchmarks/bench_beta_selection.py [--draws 100] [--boot 100]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import numpy as np

from facefuse.selection import fit_curve
from facefuse.stats import SimConfig, SimSweep, estimate_beta, simulate_sweep


def _old(sweep: SimSweep, budget: int) -> tuple[float, float, float]:
    full = [t for t in sweep.trials if t.last_epoch >= budget]
    best = max(full, key=lambda t: t.history[budget])
    x = math.log10(best.beta)
    curve = fit_curve([t.beta for t in full], [t.history[budget] for t in full], n_bootstrap=2)
    x_curve = math.log10(curve.beta[int(np.argmax(curve.mean))])
    return x, best.history[budget] - sweep.truth(x), x_curve


def _new(sweep: SimSweep, budget: int, boot: int, seed: int) -> dict[str, float]:
    est = estimate_beta(sweep.trials, budget_epoch=budget, n_bootstrap=boot, seed=seed)
    x = math.log10(est.beta)
    lo, hi = (math.log10(v) for v in est.beta_interval)
    return {"err": abs(x - sweep.optimum), "covered": float(lo <= sweep.optimum <= hi),
            "width": hi - lo, "bias": est.value - sweep.truth(x)}


def scenario(name: str, cfg: SimConfig, draws: int, boot: int) -> None:
    rows: dict[str, list[float]] = {k: [] for k in
                                    ("old_err", "old_bias", "curve_err", "err", "covered",
                                     "width", "bias", "epochs")}
    t0 = time.perf_counter()
    for s in range(draws):
        sweep = simulate_sweep(cfg, s)
        x_old, bias_old, x_curve = _old(sweep, cfg.budget)
        rows["old_err"].append(abs(x_old - sweep.optimum))
        rows["old_bias"].append(bias_old)
        rows["curve_err"].append(abs(x_curve - sweep.optimum))
        for k, v in _new(sweep, cfg.budget, boot, s).items():
            rows[k].append(v)
        rows["epochs"].append(sweep.epochs_used)
    a = {k: np.asarray(v) for k, v in rows.items()}
    print(f"{name:34s} | {np.mean(a['old_err'] <= 0.3):5.0%} | {np.mean(a['curve_err'] <= 0.3):5.0%}"
          f" | {np.mean(a['err'] <= 0.3):5.0%} | {np.mean(a['covered']):5.0%}"
          f" | {np.median(a['width']):4.2f} | {np.mean(a['old_bias']):+.4f}"
          f" | {np.mean(a['bias']):+.4f} | {np.mean(a['epochs']):5.0f}"
          f" | {time.perf_counter() - t0:5.1f} s")


def equal_compute(design: SimConfig, draws: int, boot: int) -> None:
    """Plain ASHA given the epochs the design spent, against the design, same draws."""
    plain_hit, design_hit, plain_old_hit, epochs_d, epochs_p = [], [], [], [], []
    plain_cov, design_cov = [], []
    for s in range(draws):
        d = simulate_sweep(design, s)
        n = design.n_trials
        while True:  # the plain sweep with as many epochs as the design (first n reaching it)
            p = simulate_sweep(replace(design, confirm_top=0, n_trials=n), s)
            if p.epochs_used >= d.epochs_used or n > 4 * design.n_trials:
                break
            n += 2
        nd, npl = _new(d, design.budget, boot, s), _new(p, design.budget, boot, s)
        design_hit.append(nd["err"] <= 0.3)
        plain_hit.append(npl["err"] <= 0.3)
        design_cov.append(nd["covered"])
        plain_cov.append(npl["covered"])
        plain_old_hit.append(abs(_old(p, design.budget)[0] - p.optimum) <= 0.3)
        epochs_d.append(d.epochs_used)
        epochs_p.append(p.epochs_used)
    print(f"  plain ASHA, best trial (old)     within 0.3 decades {np.mean(plain_old_hit):5.0%}, "
          f"{np.mean(epochs_p):.0f} epochs")
    print(f"  plain ASHA, estimator            within 0.3 decades {np.mean(plain_hit):5.0%}, "
          f"coverage {np.mean(plain_cov):5.0%}, {np.mean(epochs_p):.0f} epochs")
    print(f"  ASHA + confirmation, estimator   within 0.3 decades {np.mean(design_hit):5.0%}, "
          f"coverage {np.mean(design_cov):5.0%}, {np.mean(epochs_d):.0f} epochs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--boot", type=int, default=100)
    args = parser.parse_args()
    print(f"{args.draws} draws per scenario, {args.boot} bootstrap resamples")
    print(f"{'scenario':34s} | old   | curve | new   | cover | width | old bias | new bias "
          f"| epochs | time")
    scenario("random search, 40 trials", SimConfig(n_trials=40), args.draws, args.boot)
    scenario("random search, 20 trials", SimConfig(n_trials=20), args.draws, args.boot)
    scenario("random search, 40, flat curves", SimConfig(n_trials=40, curvature=(0.008, 0.02)),
             args.draws, args.boot)
    scenario("ASHA rf 3, 64 trials", SimConfig(asha=True, n_trials=64), args.draws, args.boot)
    scenario("ASHA rf 3, 128 trials", SimConfig(asha=True, n_trials=128), args.draws, args.boot)
    print("equal epochs of compute: ASHA 64 trials + confirm_top 3 x 3 seeds vs plain ASHA")
    equal_compute(SimConfig(asha=True, n_trials=64, confirm_top=3, confirm_seeds=3),
                  args.draws, args.boot)


if __name__ == "__main__":
    main()
