"""Tests of facefuse/evaluation/roc.py against sklearn and insightface's TAR@FAR reading."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_curve as sk_roc_curve

from facefuse.errors import DataFormatError
from facefuse.evaluation import roc_curve, roc_curve_auc, tar_at_far, tar_from_roc

from .reference import REF_FARS, ref_tar_at_far


def _random_case(rng: np.random.Generator, case: int) -> tuple[np.ndarray, np.ndarray]:
    n = int(rng.integers(2, 2000))
    pos_rate = rng.choice([0.001, 0.05, 0.5, 0.95])
    labels = (rng.random(n) < pos_rate).astype(np.int64)
    labels[rng.integers(n)] = 1
    labels[rng.integers(n)] = 0
    if labels.min() == labels.max():
        labels[0] = 1 - labels[0]
    kind = case % 4
    if kind == 0:  # continuous, genuine higher
        scores = rng.standard_normal(n) + 1.5 * labels
    elif kind == 1:  # heavy duplicates
        scores = rng.integers(0, int(rng.integers(1, 12)), n) / 7.0
    elif kind == 2:  # a few distinct values, some shared across classes
        scores = np.round(rng.standard_normal(n) + labels, 1)
    else:  # all scores equal
        scores = np.full(n, 0.25)
    return labels, scores


@pytest.mark.parametrize("seed", range(6))
def test_roc_points_identical_to_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for case in range(40):
        labels, scores = _random_case(rng, case)
        ours = roc_curve(labels, scores)
        theirs = sk_roc_curve(labels, scores)
        for a, b in zip(ours, theirs):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_roc_accepts_bool_and_float_labels_and_float32_scores() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(500) < 0.3
    scores = rng.standard_normal(500).astype(np.float32)
    theirs = sk_roc_curve(labels, scores)
    for lab in (labels, labels.astype(np.float64), labels.astype(np.int8)):
        for a, b in zip(roc_curve(lab, scores), theirs):
            np.testing.assert_array_equal(a, b)


def test_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(4)
    for case in range(30):
        labels, scores = _random_case(rng, case)
        fpr, tpr, area = roc_curve_auc(labels, scores)
        sk_fpr, sk_tpr, _ = sk_roc_curve(labels, scores)
        assert area == pytest.approx(sk_auc(sk_fpr, sk_tpr), abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_tar_at_far_equals_insightface_reading(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    for case in range(40):
        labels, scores = _random_case(rng, case)
        assert tar_at_far(labels, scores) == ref_tar_at_far(labels, scores)
        fars = [float(f) for f in rng.uniform(0, 1, 3)] + [0.0, 1.0, 0.5]
        assert tar_at_far(labels, scores, fars) == ref_tar_at_far(labels, scores, fars)


def test_tar_at_far_large_set_with_few_positives() -> None:
    rng = np.random.default_rng(7)
    n = 300_000
    labels = (rng.random(n) < 0.002).astype(np.int64)
    scores = np.round(rng.standard_normal(n) * 0.2 + 0.6 * labels, 4)  # many ties
    assert tar_at_far(labels, scores) == ref_tar_at_far(labels, scores)
    assert list(tar_at_far(labels, scores)) == [float(f) for f in REF_FARS]


def test_tie_in_fpr_takes_highest_tpr() -> None:
    # Points (fpr 0.5, tpr 0.5) and (fpr 0.5, tpr 1.0) are both nearest to FAR 0.5;
    # insightface flips the curve and takes the first minimum: the higher TPR.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    fpr, tpr, _ = roc_curve(labels, scores)
    assert 0.5 in fpr.tolist() and (fpr == 0.5).sum() == 2
    assert tar_at_far(labels, scores, [0.5]) == {0.5: 1.0}
    assert tar_from_roc(fpr, tpr, [0.5]) == ref_tar_at_far(labels, scores, [0.5])


def test_bad_labels_name_the_row() -> None:
    with pytest.raises(DataFormatError, match=r"labels row 2 is 2") as err:
        tar_at_far([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4])
    assert err.value.field == "labels" and err.value.fix


def test_nan_score_names_the_row() -> None:
    with pytest.raises(DataFormatError, match=r"scores row 1 contains NaN") as err:
        roc_curve([0, 1, 0], [0.1, np.nan, 0.3])
    assert err.value.field == "scores"


def test_mismatched_lengths_and_single_class_fail() -> None:
    with pytest.raises(DataFormatError, match=r"scores has 2 rows but labels has 3") as err:
        tar_at_far([0, 1, 1], [0.1, 0.2])
    assert err.value.field == "scores"
    with pytest.raises(DataFormatError, match="no negative"):
        tar_at_far([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataFormatError, match="no positive"):
        roc_curve_auc([0, 0], [0.1, 0.2])
