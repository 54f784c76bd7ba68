"""The paper's claims from ablation rows: paired over seeds, selected and reported on different parts."""

from __future__ import annotations

import math
from typing import Optional

import pytest
from scipy.stats import t as student_t

from facefuse.claims import (ALL_DATASETS, BETA_CLAIM, Claim, best_beta_by_seed, check_claims,
                             claims_markdown, verdict)
from facefuse.stats import mean_interval

T90_2 = float(student_t.ppf(0.95, 2))  # three seeds


def _row(variant: str, beta: Optional[float], seed: int, dataset: str, sel: float,
         test: float) -> dict:
    metric = f"{dataset}/acc" if "ijb" not in dataset else f"{dataset}/tar_far_1e-4"
    return {"variant": variant, "beta": beta, "seed": seed, "dataset": dataset, "metric": metric,
            "value": (sel + test) / 2, "sel": sel, "test": test, "run_id": f"{variant}{beta}{seed}"}


def _grid(offsets: dict[str, list[float]], datasets=("synth_lfw", "synth_ijbc")) -> list[dict]:
    """Rows where variant v at seed s reports base + offsets[v][s] at beta 0.1 (beta 1 is worse)."""
    rows = []
    for variant, per_seed in offsets.items():
        betas = [None] if variant == "no_vib" else [0.1, 1.0]
        for dataset in datasets:
            for seed, off in enumerate(per_seed):
                for beta in betas:
                    worse = 0.05 if beta == 1.0 else 0.0
                    rows.append(_row(variant, beta, seed, dataset, 0.8 + off - worse,
                                     0.7 + off - worse))
    return rows


def test_t_interval_and_verdicts() -> None:
    mean, low, high = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and high - mean == pytest.approx(T90_2 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_interval([1.0])[1]) and math.isnan(mean_interval([])[0])
    assert verdict(0.1, 0.5) == "holds" and verdict(-0.5, -0.1) == "reversed"
    assert verdict(-0.1, 0.5) == "not shown" and verdict(math.nan, math.nan) == "not shown"


def test_a_claim_holds_is_reversed_or_not_shown_from_paired_seeds() -> None:
    # seed effects are shared by the pair, so pairing removes them: full - arcface is 2, 3, 2 pts
    rows = _grid({"full": [0.00, 0.05, -0.03], "arcface_only": [-0.02, 0.02, -0.05],
                  "adaface_only": [0.01, 0.06, -0.02],  # 1 pt better than full at every seed
                  "local_only": [0.02, 0.03, -0.06]})   # -2, +2, +3: no consistent sign
    claims = [Claim("fusion > ArcFace alone", "full", "arcface_only"),
              Claim("fusion > AdaFace alone", "full", "adaface_only"),
              Claim("local + global > local alone", "full", "local_only")]
    results = {(r.claim, r.dataset): r for r in check_claims(rows, claims)}
    arc = results[("fusion > ArcFace alone", "synth_lfw")]
    assert arc.diff == pytest.approx(7 / 3) and arc.n == 3 and arc.unit == " pts"
    assert arc.high - arc.diff == pytest.approx(T90_2 * 0.57735027 / math.sqrt(3), rel=1e-6)
    assert arc.verdict == "holds" and arc.beta_a == 0.1 and arc.beta_b == 0.1
    assert results[("fusion > AdaFace alone", "synth_ijbc")].verdict == "reversed"
    assert results[("fusion > AdaFace alone", "synth_ijbc")].diff == pytest.approx(-1.0)
    assert results[("local + global > local alone", "synth_lfw")].verdict == "not shown"
    pooled = results[("fusion > ArcFace alone", ALL_DATASETS)]
    assert pooled.diff == pytest.approx(7 / 3) and pooled.verdict == "holds"
    assert results[("fusion > ArcFace alone", "synth_ijbc")].quality == "low"


def test_the_report_part_is_compared_at_the_beta_the_selection_part_chose() -> None:
    rows = []
    for seed in range(3):
        # full: the selection part prefers 0.1, where the report part is poor
        rows += [_row("full", 0.1, seed, "synth_lfw", 0.95, 0.80),
                 _row("full", 1.0, seed, "synth_lfw", 0.90, 0.95),
                 _row("no_vib", None, seed, "synth_lfw", 0.90, 0.85 + 0.01 * seed)]
    (res,) = [r for r in check_claims(rows) if r.claim == "VIB on > off"]
    assert res.beta_a == 0.1 and res.beta_b is None
    assert res.diff == pytest.approx(-6.0)  # 0.80 against 0.85, 0.86, 0.87
    assert res.verdict == "reversed"


def test_rows_without_both_parts_are_not_used() -> None:
    rows = _grid({"full": [0.0, 0.0, 0.0], "arcface_only": [-0.1, -0.1, -0.1]})
    for r in rows:
        r["sel"] = None
    assert check_claims(rows) == []
    assert "no claim can be checked" in claims_markdown([])


def test_best_beta_moves_with_quality_per_seed() -> None:
    rows = []
    for seed in range(3):
        for beta in (0.01, 0.1, 1.0, 10.0):
            # high quality: best at 0.1 on the selection part; low quality: best at 10 (seed 2: 1)
            best_low = 10.0 if seed < 2 else 1.0
            rows.append(_row("full", beta, seed, "synth_lfw", 0.9 - abs(math.log10(beta) + 1) / 100,
                             0.9))
            rows.append(_row("full", beta, seed, "synth_ijbc",
                             0.5 - abs(math.log10(beta) - math.log10(best_low)) / 100, 0.5))
    best = best_beta_by_seed(rows)
    assert best == {"synth_lfw": {0: 0.1, 1: 0.1, 2: 0.1}, "synth_ijbc": {0: 10.0, 1: 10.0, 2: 1.0}}
    (res,) = [r for r in check_claims(rows) if r.claim == BETA_CLAIM]
    assert res.diff == pytest.approx(5 / 3) and res.unit == " decades" and res.verdict == "holds"
    # no lower-quality set: the claim cannot be checked
    assert not [r for r in check_claims([r for r in rows if r["dataset"] == "synth_lfw"])
                if r.claim == BETA_CLAIM]
    # the same best beta on every set at every seed: no move
    flat = [dict(r, dataset="synth_ijbc") for r in rows if r["dataset"] == "synth_lfw"] + \
        [r for r in rows if r["dataset"] == "synth_lfw"]
    (res,) = [r for r in check_claims(flat) if r.claim == BETA_CLAIM]
    assert res.diff == 0.0 and res.verdict == "not shown"


def test_markdown_names_every_claim_and_how() -> None:
    rows = _grid({"full": [0.0, 0.01, 0.02], "arcface_only": [-0.02, -0.01, 0.0]})
    md = claims_markdown(check_claims(rows))
    assert md.startswith("| claim") and "fusion > ArcFace alone" in md and "holds" in md
    assert "selection part" in md and "90% interval" in md
