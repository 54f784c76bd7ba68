"""Tests of facefuse/evaluation/verification.py against insightface-style loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold

from facefuse.errors import DataFormatError
from facefuse.evaluation import kfold_sizes, verification_accuracy

from .reference import ref_verification_accuracy


def _pairs(rng: np.random.Generator, n: int, dim: int, noise: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    issame = rng.random(n) < 0.5
    e1 = rng.standard_normal((n, dim))
    other = rng.standard_normal((n, dim))
    e2 = np.where(issame[:, None], e1, other) + noise * rng.standard_normal((n, dim))
    return e1, e2, issame


def _assert_same(emb1, emb2, issame, n_folds=10) -> None:
    ours = verification_accuracy(emb1, emb2, issame, n_folds=n_folds)
    theirs = ref_verification_accuracy(emb1, emb2, issame, n_folds=n_folds)
    assert ours[0] == pytest.approx(theirs[0], abs=1e-12, rel=0)
    assert ours[1] == pytest.approx(theirs[1], abs=1e-12, rel=0)


@pytest.mark.parametrize("n", [10, 13, 97, 600, 1003])
def test_random_sets_match_reference(n: int) -> None:
    rng = np.random.default_rng(n)
    for noise in (0.3, 1.0, 3.0):
        _assert_same(*_pairs(rng, n, 16, noise))


def test_float32_embeddings_and_int_labels_match_reference() -> None:
    rng = np.random.default_rng(1)
    e1, e2, issame = _pairs(rng, 321, 32, 0.8)
    _assert_same(e1.astype(np.float32), e2.astype(np.float32), issame.astype(np.int64))


def test_duplicate_distances_and_grid_ties() -> None:
    # Quantised 2-d embeddings give many equal distances and many equally good thresholds.
    rng = np.random.default_rng(2)
    for _ in range(5):
        n = int(rng.integers(20, 400))
        e1 = rng.integers(-1, 2, (n, 2)).astype(np.float64)
        e2 = rng.integers(-1, 2, (n, 2)).astype(np.float64)
        issame = rng.random(n) < 0.5
        _assert_same(e1, e2, issame)


def test_all_same_and_all_different_pairs() -> None:
    rng = np.random.default_rng(3)
    e1, e2, _ = _pairs(rng, 205, 8, 1.0)
    _assert_same(e1, e2, np.ones(205, dtype=bool))
    _assert_same(e1, e2, np.zeros(205, dtype=bool))
    assert verification_accuracy(e1, e1, np.ones(205, dtype=bool)) == (1.0, 0.0)


def test_other_fold_counts_and_zero_rows() -> None:
    rng = np.random.default_rng(4)
    e1, e2, issame = _pairs(rng, 87, 8, 1.0)
    e1[5] = 0.0  # a zero embedding stays zero, as sklearn's normalize leaves it
    for n_folds in (1, 2, 5, 29):
        _assert_same(e1, e2, issame, n_folds=n_folds)


def test_fold_sizes_are_sklearn_kfold() -> None:
    for n in (10, 11, 19, 6000, 6007):
        for k in (2, 3, 10):
            expected = [len(test) for _, test in KFold(n_splits=k, shuffle=False).split(np.arange(n))]
            assert kfold_sizes(n, k).tolist() == expected


def test_separable_set_is_perfect() -> None:
    rng = np.random.default_rng(5)
    e1, e2, issame = _pairs(rng, 600, 64, 0.05)
    assert verification_accuracy(e1, e2, issame) == (1.0, 0.0)


def test_nan_embedding_names_input_and_row() -> None:
    rng = np.random.default_rng(6)
    e1, e2, issame = _pairs(rng, 30, 4, 1.0)
    e2[17, 2] = np.nan
    with pytest.raises(DataFormatError, match="emb2 row 17 contains NaN") as err:
        verification_accuracy(e1, e2, issame)
    assert err.value.field == "emb2" and err.value.fix


def test_bad_shapes_and_labels() -> None:
    rng = np.random.default_rng(7)
    e1, e2, issame = _pairs(rng, 30, 4, 1.0)
    with pytest.raises(DataFormatError, match="emb2 has 29 rows but emb1 has 30") as err:
        verification_accuracy(e1, e2[:29], issame)
    assert err.value.field == "emb2"
    with pytest.raises(DataFormatError, match="issame has 29 rows") as err:
        verification_accuracy(e1, e2, issame[:29])
    assert err.value.field == "issame"
    bad = issame.astype(np.int64)
    bad[4] = 3
    with pytest.raises(DataFormatError, match="issame row 4 is 3") as err:
        verification_accuracy(e1, e2, bad)
    assert err.value.field == "issame"
    with pytest.raises(DataFormatError, match="dimensions"):
        verification_accuracy(e1, e2[:, :3], issame)
    with pytest.raises(DataFormatError, match="cannot be split") as err:
        verification_accuracy(e1[:5], e2[:5], issame[:5])
    with pytest.raises(DataFormatError) as err:
        verification_accuracy(e1, e2, issame, n_folds=0)
    assert err.value.field == "n_folds"
