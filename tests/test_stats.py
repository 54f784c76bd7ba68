"""The beta estimator against simulated sweeps whose best beta is known.

Many in-memory draws check the choice's error, the interval's coverage and the value's bias;
a few draws go through real sqlite MLflow stores and the real best_beta code path.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from facefuse.selection import select_beta
from facefuse.stats import (
    SimConfig,
    SweepTooSmallError,
    TrialCurve,
    estimate_beta,
    simulate_sweep,
    write_sweep_to_mlflow,
)
from platform.best_beta import format_best_beta
from platform.sweep import best_beta_lines

N_BOOT = 100


def _draws(cfg: SimConfig, seeds: range) -> dict[str, np.ndarray]:
    err, covered, width, bias, old_err, old_bias = [], [], [], [], [], []
    for s in seeds:
        sweep = simulate_sweep(cfg, s)
        est = estimate_beta(sweep.trials, budget_epoch=cfg.budget, n_bootstrap=N_BOOT, seed=s)
        x = math.log10(est.beta)
        lo, hi = (math.log10(v) for v in est.beta_interval)
        err.append(abs(x - sweep.optimum))
        covered.append(lo <= sweep.optimum <= hi)
        width.append(hi - lo)
        bias.append(est.value - sweep.truth(x))
        # The previous method: the best full-budget trial, its own value.
        full = [t for t in sweep.trials if t.last_epoch >= cfg.budget]
        best = max(full, key=lambda t: t.history[cfg.budget])
        old_err.append(abs(math.log10(best.beta) - sweep.optimum))
        old_bias.append(best.history[cfg.budget] - sweep.truth(math.log10(best.beta)))
    return {k: np.asarray(v, dtype=float) for k, v in
            dict(err=err, covered=covered, width=width, bias=bias, old_err=old_err,
                 old_bias=old_bias).items()}


def test_without_asha_the_choice_is_within_0_3_decades() -> None:
    d = _draws(SimConfig(asha=False, n_trials=40), range(100))
    assert (d["err"] <= 0.3).mean() >= 0.90
    assert d["covered"].mean() >= 0.85
    # The best single trial overstates its beta's metric (winner's curse); the estimate not.
    assert d["old_bias"].mean() > 0.01
    assert abs(d["bias"].mean()) < 0.004
    assert (d["err"] <= 0.3).mean() > (d["old_err"] <= 0.3).mean()


def test_with_asha_the_intervals_cover_the_optimum() -> None:
    d = _draws(SimConfig(asha=True, n_trials=64), range(60))
    assert d["covered"].mean() >= 0.85
    assert abs(d["bias"].mean()) < 0.005
    assert d["old_bias"].mean() > 0.01


def test_intervals_widen_when_the_data_are_thin() -> None:
    thin = _draws(SimConfig(n_trials=12), range(20))
    rich = _draws(SimConfig(n_trials=60), range(20))
    assert np.median(thin["width"]) > 1.3 * np.median(rich["width"])


def test_pruned_trials_count_through_the_survivors_learning_curves() -> None:
    sweep = simulate_sweep(SimConfig(asha=True, n_trials=64), 3)
    est = estimate_beta(sweep.trials, budget_epoch=9, n_bootstrap=20)
    stopped = sum(1 for t in sweep.trials if t.last_epoch < 9)
    assert stopped > 30 and est.n_extrapolated + est.n_dropped == stopped
    assert est.n_extrapolated > stopped // 2
    assert set(est.epochs.values()) >= {1, 9}


def test_a_sweep_too_small_says_so() -> None:
    trials = [TrialCurve(f"t{i}", 10.0 ** -i, {1: 0.5, 2: 0.6}) for i in range(3)]
    with pytest.raises(SweepTooSmallError, match="at least 6"):
        estimate_beta(trials)


def test_lower_is_better_metrics_flip() -> None:
    sweep = simulate_sweep(SimConfig(n_trials=40), 5)
    flipped = [TrialCurve(t.trial_id, t.beta, {e: -v for e, v in t.history.items()},
                          t.nuisance, t.se) for t in sweep.trials]
    up = estimate_beta(sweep.trials, n_bootstrap=30)
    down = estimate_beta(flipped, higher_is_better=False, n_bootstrap=30)
    assert down.beta == pytest.approx(up.beta)
    assert down.value == pytest.approx(-up.value, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Through real sqlite stores and select_beta
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _uri(tmp_path: Path, template: Path) -> str:
    shutil.copyfile(template, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.mark.parametrize("asha,seed", [(False, 11), (True, 12)])
def test_best_beta_on_simulated_stores(tmp_path: Path, template_db: Path, asha: bool,
                                       seed: int) -> None:
    uri = _uri(tmp_path, template_db)
    cfg = SimConfig(asha=asha, n_trials=64 if asha else 40)
    sweep = simulate_sweep(cfg, seed)
    write_sweep_to_mlflow(sweep, uri, "sim", "synth_ijbc", "tar_far_1e-4", sweep_id=f"s{seed}",
                          budget=cfg.budget)
    sel = select_beta(uri, "synth_ijbc", experiment="sim")
    direct = estimate_beta(sweep.trials, budget_epoch=cfg.budget)
    # The store adds nothing and loses nothing: same trials, same answer.
    assert sel.selection_split and sel.selection_metric == "synth_ijbc/sel/tar_far_1e-4"
    assert sel.sweep_id == f"s{seed}"
    assert sel.estimate is not None and sel.estimate.n_trials == len(sweep.trials)
    assert sel.beta == pytest.approx(direct.beta, rel=1e-6)
    lo, hi = sel.beta_interval
    assert lo <= sel.beta <= hi
    assert abs(math.log10(sel.beta) - sweep.optimum) < max(0.5, math.log10(hi / lo))
    assert sel.heldout_value is not None and sel.full_value is not None
    assert abs(sel.heldout_value - sweep.truth(math.log10(sel.beta))) < 0.03
    obj = sel.to_json()
    for key in ("beta", "beta_interval", "value", "value_interval", "heldout_value",
                "full_value", "verdict", "trials", "budget_epoch", "n_extrapolated"):
        assert obj[key] is not None, key
    assert len(obj["trials"]) == len(sweep.trials)
    text = format_best_beta(sel)
    assert "90% interval" in text and "held-out" in text and "verdict:" in text
    # The quickstart's per-dataset line: beta, its interval, the held-out and full-set values.
    (line, *_) = best_beta_lines(uri, "sim", ["synth_ijbc"])
    assert f"beta={sel.beta:.2g} [{lo:.2g}, {hi:.2g}]" in line
    assert f"held-out {sel.heldout_value:.4f}" in line and "full set" in line


def test_latest_sweep_by_default_and_pooling_only_equal_budgets(tmp_path: Path,
                                                                 template_db: Path) -> None:
    uri = _uri(tmp_path, template_db)
    old = simulate_sweep(SimConfig(n_trials=30, budget=5), 21)
    write_sweep_to_mlflow(old, uri, "exp", "lfw", "acc", sweep_id="short", budget=5)
    new = simulate_sweep(SimConfig(n_trials=30, budget=9), 22)
    write_sweep_to_mlflow(new, uri, "exp", "lfw", "acc", sweep_id="long", budget=9)
    again = simulate_sweep(SimConfig(n_trials=30, budget=9), 23)
    write_sweep_to_mlflow(again, uri, "other", "lfw", "acc", sweep_id="long2", budget=9)

    latest = select_beta(uri, "lfw", experiment="exp")
    assert latest.sweep_id == "long" and latest.n_trials == 30
    assert latest.estimate is not None and latest.estimate.budget_epoch == 9
    chosen = select_beta(uri, "lfw", experiment="exp", sweep="short")
    assert chosen.sweep_id == "short" and chosen.estimate.budget_epoch == 5
    pooled = select_beta(uri, "lfw", pool=True)
    # The 5-epoch sweep is left out of the 9-epoch pool.
    assert pooled.pooled and pooled.estimate.n_trials == 60


def test_stores_of_the_previous_version_still_work(tmp_path: Path, template_db: Path) -> None:
    uri = _uri(tmp_path, template_db)
    sweep = simulate_sweep(SimConfig(n_trials=30), 31)
    write_sweep_to_mlflow(sweep, uri, "legacy", "lfw", "acc", split=False)
    sel = select_beta(uri, "lfw")
    assert not sel.selection_split and sel.selection_metric == "lfw/acc"
    assert sel.heldout_value is None and sel.full_value == pytest.approx(sel.value)
    assert "did not log the selection part (lfw/sel/acc)" in sel.verdict
    assert "rerun the sweep" in sel.verdict


def test_a_sweep_too_small_for_the_curve_says_what_to_run(tmp_path: Path,
                                                          template_db: Path) -> None:
    uri = _uri(tmp_path, template_db)
    sweep = simulate_sweep(SimConfig(n_trials=4), 41)
    write_sweep_to_mlflow(sweep, uri, "tiny", "lfw", "acc")
    sel = select_beta(uri, "lfw")
    assert sel.estimate is None and sel.beta_interval is None
    assert "sweep too small to fit the curve" in sel.verdict and "confirm_top" in sel.verdict
    assert "\n" not in sel.verdict


def test_the_verdict_says_when_neighbouring_betas_cannot_be_separated() -> None:
    sharp = estimate_beta(simulate_sweep(SimConfig(n_trials=80, curvature=(0.04, 0.04)), 2).trials,
                          n_bootstrap=60)
    flat = estimate_beta(simulate_sweep(SimConfig(n_trials=12, curvature=(0.004, 0.004)), 2).trials,
                         n_bootstrap=60)
    assert sharp.identified and "is identified at this budget" in sharp.verdict
    assert not flat.identified and "indistinguishable at this budget" in flat.verdict
    lo, hi = flat.beta_interval
    assert f"{lo:.2g} to {hi:.2g}" in flat.verdict



#: A quickstart sweep's synth_lfw selection-part accuracies as its store recorded them (beta,
#: history, local_heads, global_heads, local_window, dw_kernel, lr, standard error).
_QUICKSTART_LFW = [
    (0.0135221, {1: 0.9033, 2: 0.9067}, "4", "4", "1", "5", "0.001946", 0.0112),
    (0.0157458, {1: 0.87}, "4", "4", "3", "5", "0.002542", 0.0166),
    (0.0164696, {1: 0.8667}, "4", "2", "1", "3", "0.002148", 0.0231),
    (0.0145771, {1: 0.8767}, "4", "4", "3", "5", "0.0008126", 0.0214),
    (0.0159197, {1: 0.8933, 2: 0.9433, 3: 0.93}, "4", "4", "3", "5", "0.002809", 0.0099),
    (0.0207624, {1: 0.9067, 2: 0.92}, "4", "2", "1", "5", "0.001259", 0.0145),
    (0.0659169, {1: 0.9, 2: 0.91}, "4", "4", "1", "5", "0.001575", 0.0214),
    (0.0087237, {1: 0.8633}, "8", "2", "1", "5", "0.002800", 0.0145),
    (0.0370202, {1: 0.9133, 2: 0.93, 3: 0.93}, "4", "4", "1", "5", "0.001784", 0.0185),
    (0.0350386, {1: 0.9167, 2: 0.91, 3: 0.9167}, "8", "4", "1", "5", "0.002759", 0.017),
    (0.0001521, {1: 0.8733, 2: 0.93, 3: 0.9267}, "2", "4", "5", "5", "0.002311", 0.0153),
    (0.0020374, {1: 0.8667}, "2", "4", "5", "5", "0.002315", 0.0194),
]


def test_a_small_sweep_with_many_settings_gives_a_value_the_trials_support() -> None:
    """12 trials, 4 at the full budget, about as many nuisance columns as trials: unshrunk
    nuisance effects interpolated this sweep and its bootstrap replicates, and the
    winner's-curse correction (2.2) turned the accuracy at the choice into -1.25."""
    keys = ("local_heads", "global_heads", "local_window", "dw_kernel", "lr")
    trials = [TrialCurve(f"t{i}", beta, history, dict(zip(keys, settings)), se=se)
              for i, (beta, history, *settings, se) in enumerate(_QUICKSTART_LFW)]
    est = estimate_beta(trials, budget_epoch=3, n_bootstrap=N_BOOT, seed=0)
    finals = [t.history[t.last_epoch] for t in trials]
    assert abs(est.optimism) <= max(finals) - min(finals), est.optimism
    assert min(finals) <= est.value <= max(finals), est.value
    assert est.value_interval[0] <= est.value <= est.value_interval[1]
    bounded = estimate_beta(trials, budget_epoch=3, n_bootstrap=N_BOOT, seed=0, bounds=(0.0, 1.0))
    assert 0.0 <= bounded.value_interval[0] <= bounded.value <= bounded.value_interval[1] <= 1.0
    assert max(bounded.grid_upper) <= 1.0 and min(bounded.grid_lower) >= 0.0
