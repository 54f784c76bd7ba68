"""facefuse/evaluation/similarity.py: linear CKA's properties and the error correlation, plus the
per-pair decisions (verification folds, IJB threshold at a FAR) it is computed from."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facefuse.errors import DataFormatError
from facefuse.evaluation import (error_correlation, linear_cka, roc_curve, shuffled_cka, tar_at_far,
                                 threshold_at_far, verification_accuracy, verification_decisions)
from facefuse.evaluation.similarity import flat_maps, pooled_maps, subsample


def _rep(n: int = 400, p: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # correlated columns with unequal scales, like real activations
    return rng.normal(size=(n, p)) @ rng.normal(size=(p, p)) + rng.normal(size=p) * 5


def _reference_cka(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook formula: HSIC with the centring matrix H on the n x n Gram matrices."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k = h @ (x @ x.T.copy()) @ h
    ell = h @ (y @ y.T.copy()) @ h
    return float(np.sum(k * ell) / (np.linalg.norm(k) * np.linalg.norm(ell)))


def test_identical_maps_give_one() -> None:
    x = _rep()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x.copy()) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transform_isotropic_scaling_and_offset() -> None:
    x, y = _rep(seed=0), _rep(seed=1)
    y = 0.3 * x[:, :12] @ np.random.default_rng(5).normal(size=(12, 20)) + y[:, :20]
    base = linear_cka(x, y)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(24, 24)))
    assert linear_cka(x @ q, y) == pytest.approx(base, abs=1e-10)
    assert linear_cka(1e-6 * x, 3e4 * y + 7.0) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x @ q * 250.0, y) == pytest.approx(base, abs=1e-10)
    # not invariant to an anisotropic scaling: CKA is not a correlation of single columns
    assert abs(linear_cka(x * np.linspace(0.01, 10, 24), y) - base) > 1e-3


def test_matches_the_textbook_formula_in_both_formulations() -> None:
    wide = _rep(n=40, p=60, seed=3), _rep(n=40, p=50, seed=4)  # n < widths: Gram path
    tall = _rep(n=300, p=8, seed=5), _rep(n=300, p=6, seed=6)  # n > widths: covariance path
    tall = tall[0], tall[1] + tall[0][:, :6]
    for x, y in (wide, tall):
        assert linear_cka(x, y) == pytest.approx(_reference_cka(x, y), abs=1e-10)
        assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), abs=1e-12)


def test_independent_random_maps_are_near_zero_and_near_their_shuffled_baseline() -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(4000, 16)), rng.normal(size=(4000, 16))
    value = linear_cka(x, y)
    assert value < 0.02
    assert shuffled_cka(x, y, seed=1) < 0.02
    related = x @ rng.normal(size=(16, 16)) + 0.5 * y
    assert linear_cka(x, related) > 0.5 > shuffled_cka(x, related)


def test_large_activations_stay_finite_and_bad_input_is_named() -> None:
    x = _rep(n=200, p=10) * 1e150  # squares overflow float64 without the unit normalisation
    assert linear_cka(x, x[:, ::-1]) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(DataFormatError, match=r"\[x\].*zero variance"):
        linear_cka(np.ones((5, 3)), _rep(n=5, p=3))
    with pytest.raises(DataFormatError, match=r"\[y\]"):
        linear_cka(_rep(n=5, p=3), _rep(n=6, p=3))
    nan = _rep(n=5, p=3)
    nan[2, 1] = np.nan
    with pytest.raises(DataFormatError, match="row 2"):
        linear_cka(nan, _rep(n=5, p=3))


def test_map_helpers_pool_flatten_and_subsample_with_a_seed() -> None:
    maps = np.random.default_rng(0).normal(size=(30, 4, 7, 7)).astype(np.float16)
    idx = subsample(30, 10, seed=3)
    assert len(idx) == 10 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, subsample(30, 10, seed=3))
    assert not np.array_equal(idx, subsample(30, 10, seed=4))
    assert np.array_equal(subsample(8, 10), np.arange(8))
    pooled = pooled_maps(maps, idx)
    assert pooled.shape == (10, 4) and pooled.dtype == np.float64
    np.testing.assert_allclose(pooled, maps[idx].astype(np.float64).mean(axis=(2, 3)))
    assert flat_maps(maps, idx).shape == (10, 4 * 49)


def test_error_correlation_of_constructed_decisions() -> None:
    rng = np.random.default_rng(0)
    n = 5000
    a = rng.random(n) < 0.2
    same = error_correlation(a, a)
    assert same.phi == pytest.approx(1.0) and same.both == same.wrong_a == same.wrong_b
    assert error_correlation(a, ~a).phi == pytest.approx(-1.0)

    independent = error_correlation(a, rng.random(n) < 0.3, n_boot=1000)
    assert abs(independent.phi) < 0.05
    assert independent.low < 0.0 < independent.high  # the interval covers "no correlation"
    assert independent.both == pytest.approx(independent.expected_both, rel=0.15)

    # b repeats a's error on half of a's errors and errs at random elsewhere
    b = (a & (rng.random(n) < 0.5)) | (~a & (rng.random(n) < 0.1))
    r = error_correlation(a, b, n_boot=1000)
    assert r.phi == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)  # phi is Pearson's r
    assert 0.3 < r.low < r.phi < r.high < 0.5
    assert r.both > 2 * r.expected_both
    assert error_correlation(a, b, n_boot=1000) == r  # seeded


def test_error_correlation_without_errors_is_undefined_not_an_error() -> None:
    r = error_correlation(np.zeros(50, dtype=bool), np.arange(50) % 3 == 0)
    assert math.isnan(r.phi) and math.isnan(r.low) and math.isnan(r.high)
    assert r.wrong_a == 0 and r.wrong_b == 17
    with pytest.raises(DataFormatError, match=r"\[wrong_b\]"):
        error_correlation([0, 1, 1], [0, 1, 2])
    with pytest.raises(DataFormatError, match=r"\[level\]"):
        error_correlation([0, 1], [1, 0], level=90)


def test_verification_decisions_are_what_the_protocol_counts() -> None:
    rng = np.random.default_rng(4)
    n = 600
    same = np.arange(n) % 2 == 0
    e1 = rng.normal(size=(n, 16))
    e2 = np.where(same[:, None], e1 + rng.normal(scale=1.2, size=(n, 16)), rng.normal(size=(n, 16)))
    decided = verification_decisions(e1, e2, same)
    assert decided.dtype == bool and decided.shape == (n,)
    per_fold = (decided == same).reshape(10, -1).mean(axis=1)
    mean, std = verification_accuracy(e1, e2, same)
    assert per_fold.mean() == pytest.approx(mean, abs=1e-12)
    assert per_fold.std() == pytest.approx(std, abs=1e-12)
    assert 0.6 < mean < 1.0


def test_threshold_at_far_reproduces_the_tar_read_there() -> None:
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(300, dtype=bool), np.zeros(20000, dtype=bool)]
    scores = np.r_[rng.normal(2.0, 1.0, 300), rng.normal(0.0, 1.0, 20000)]
    for far in (1e-4, 1e-3, 1e-2):
        thr = threshold_at_far(labels, scores, far)
        accepted = scores >= thr
        assert accepted[labels].mean() == pytest.approx(tar_at_far(labels, scores, [far])[far])
        fpr, _, thresholds = roc_curve(labels, scores)
        assert accepted[~labels].mean() == pytest.approx(fpr[thresholds == thr][0])
        assert accepted[~labels].mean() == pytest.approx(far, rel=0.25, abs=1e-4)  # the nearest kept ROC point
