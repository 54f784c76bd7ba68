"""10-fold verification accuracy on pair sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW).

The protocol is insightface's eval/verification.py (calculate_roc): L2-normalised
embeddings, squared L2 distance, sklearn KFold(n_folds, shuffle=False) folds, per fold the
threshold of np.arange(0, 4, 0.01) with the best accuracy on the other folds (first best on
ties), "same" when distance < threshold. Instead of 400 x n_folds passes over the pairs we
count, per fold and threshold, the pairs below the threshold with a searchsorted on the
fold's sorted distances; the counts are the same integers, so the accuracies are identical.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from facefuse.errors import DataFormatError

from ._inputs import binary_labels, float_matrix, same_length

logger = logging.getLogger(__name__)

THRESHOLDS: np.ndarray = np.arange(0, 4, 0.01)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Returns the rows of float64 `x` divided by their L2 norms (near-zero rows unchanged).

    Same operations as sklearn.preprocessing.normalize, which insightface calls, so the
    distances match it bit for bit.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    norms[norms < 10 * np.finfo(norms.dtype).eps] = 1.0
    return x / norms[:, np.newaxis]


def kfold_sizes(n: int, n_folds: int) -> np.ndarray:
    """Returns the sizes of sklearn KFold(n_folds, shuffle=False): the first n % n_folds folds
    hold one item more."""
    sizes = np.full(n_folds, n // n_folds, dtype=np.int64)
    sizes[: n % n_folds] += 1
    return sizes


def pair_distances(emb1: Iterable, emb2: Iterable) -> np.ndarray:
    """Returns the squared L2 distance of each L2-normalised pair, float64 [N]."""
    e1 = float_matrix("emb1", emb1)
    e2 = float_matrix("emb2", emb2)
    same_length(emb1=e1, emb2=e2)
    if e1.shape[1] != e2.shape[1]:
        raise DataFormatError(None, f"emb2 has {e2.shape[1]} dimensions but emb1 has {e1.shape[1]}",
                              field="emb2", fix="embed both sides of the pairs with the same model")
    return np.sum(np.square(l2_normalize(e1) - l2_normalize(e2)), 1)


def _fold_thresholds(emb1: Iterable, emb2: Iterable, issame: Iterable, n_folds: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Returns (distances, fold bounds, correct [fold, threshold], fold sizes, best threshold
    index per fold chosen on the other folds) of the n_folds protocol."""
    dist = pair_distances(emb1, emb2)
    same = binary_labels("issame", issame)
    n = same_length(emb1=dist, issame=same)
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise DataFormatError(None, f"n_folds must be a positive integer, got {n_folds!r}",
                              field="n_folds", fix="use the protocol's 10 folds")
    if n < n_folds:
        raise DataFormatError(None, f"{n} pairs cannot be split into {n_folds} folds",
                              field="issame", fix="pass at least n_folds pairs")
    sizes = kfold_sizes(n, n_folds)
    bounds = np.concatenate(([0], np.cumsum(sizes)))
    # correct[f, t]: pairs of fold f classified right at threshold t.
    correct = np.empty((n_folds, len(THRESHOLDS)), dtype=np.int64)
    for f in range(n_folds):
        d = dist[bounds[f]:bounds[f + 1]]
        s = same[bounds[f]:bounds[f + 1]]
        d_same = np.sort(d[s])
        d_diff = np.sort(d[~s])
        # side="left" counts distances strictly below the threshold ("same" when d < t).
        same_below = np.searchsorted(d_same, THRESHOLDS, side="left")
        diff_below = np.searchsorted(d_diff, THRESHOLDS, side="left")
        correct[f] = same_below + (len(d_diff) - diff_below)
    if n_folds == 1:
        train_correct = correct
    else:
        train_correct = correct.sum(axis=0, keepdims=True) - correct
    # Accuracy on the training folds is count / size with one size per fold, so the
    # argmax of the counts is the argmax of the accuracies, first best threshold on ties.
    best = np.argmax(train_correct, axis=1)
    logger.debug("verification: %d pairs, best thresholds %s", n, THRESHOLDS[best])
    return dist, bounds, correct, sizes, best


def verification_accuracy(emb1: Iterable, emb2: Iterable, issame: Iterable,
                          n_folds: int = 10) -> tuple[float, float]:
    """Returns (mean, std) of the n_folds test-fold accuracies of the 10-fold protocol.

    emb1[i] and emb2[i] are the two faces of pair i (not necessarily normalised); issame[i]
    is 1/True when they show the same person. n_folds=1 tests on the training set, as
    insightface's LFold does.
    """
    _, _, correct, sizes, best = _fold_thresholds(emb1, emb2, issame, n_folds)
    accuracy = np.array([float(correct[f, best[f]]) / float(sizes[f]) for f in range(n_folds)])
    return float(np.mean(accuracy)), float(np.std(accuracy))


def verification_decisions(emb1: Iterable, emb2: Iterable, issame: Iterable,
                           n_folds: int = 10) -> np.ndarray:
    """Returns the protocol's "same person" decision per pair, bool [N]: each fold's pairs
    judged at the threshold chosen on the other folds, exactly as verification_accuracy counts
    them (its fold accuracies are the folds' shares of decisions equal to issame)."""
    dist, bounds, _, _, best = _fold_thresholds(emb1, emb2, issame, n_folds)
    decided = np.empty(len(dist), dtype=bool)
    for f in range(len(best)):
        sl = slice(bounds[f], bounds[f + 1])
        decided[sl] = dist[sl] < THRESHOLDS[best[f]]
    return decided
