"""ROC curve, AUC and TAR at FAR, point for point the same as sklearn's roc_curve.

sklearn sorts all scores with an argsort (about 4 s for IJB-C's 15.7 million pairs here).
Only the number of positives and negatives at or above each distinct score matters, so we
sort the two classes separately with a plain sort (no argsort, about 6x faster) and merge
their distinct values; the counts, and therefore every ROC point, are the same integers.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

import numpy as np

from facefuse.errors import DataFormatError

from ._inputs import binary_labels, float_vector, same_length

logger = logging.getLogger(__name__)

# numpy < 2 names it trapz.
_trapezoid = getattr(np, "trapezoid", None) or np.trapz

DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _distinct_counts(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (distinct values ascending, how many times each occurs) of a sorted array."""
    n = len(sorted_values)
    if n == 0:
        return sorted_values[:0], np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1
    starts = np.concatenate(([0], starts))
    counts = np.diff(np.concatenate((starts, [n])))
    return sorted_values[starts], counts


def _roc_counts(labels: np.ndarray, scores: np.ndarray, with_thresholds: bool
                ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Returns (fps, tps, thresholds) at the distinct scores sklearn's roc_curve keeps,
    highest score first (thresholds None unless asked for).

    fps[i] / tps[i] count negatives / positives scoring >= thresholds[i], as in sklearn's
    confusion_matrix_at_thresholds, with drop_intermediate=True applied.
    """
    pos_vals, pos_counts = _distinct_counts(np.sort(scores[labels]))
    neg_vals, neg_counts = _distinct_counts(np.sort(scores[~labels]))
    # Positives are few (IJB-C: 19,557 of 15.7 M), so merge them into the negatives'
    # distinct values: each positive value either equals a negative value or is new.
    ins = np.searchsorted(neg_vals, pos_vals)
    present = np.zeros(len(pos_vals), dtype=bool)
    inside = ins < len(neg_vals)
    present[inside] = neg_vals[ins[inside]] == pos_vals[inside]
    new = ~present
    # Final slot of positive value j: its insertion point plus the new values before it.
    slot = ins + (np.cumsum(new) - new)
    total = len(neg_vals) + int(new.sum())
    is_new = np.zeros(total, dtype=bool)
    is_new[slot[new]] = True
    neg_at = np.zeros(total, dtype=np.int64)
    neg_at[~is_new] = neg_counts
    pos_at = np.zeros(total, dtype=np.int64)
    pos_at[slot] = pos_counts
    neg_at, pos_at = neg_at[::-1], pos_at[::-1]
    # sklearn drops point i when the second differences of fps and tps are both zero there;
    # the second difference of a cumulative sum is the first difference of the counts.
    keep = np.ones(total, dtype=bool)
    if total > 2:
        keep[1:-1] = (neg_at[2:] != neg_at[1:-1]) | (pos_at[2:] != pos_at[1:-1])
    fps = np.cumsum(neg_at)[keep]
    tps = np.cumsum(pos_at)[keep]
    thresholds = None
    if with_thresholds:
        values = np.empty(total, dtype=np.float64)
        values[~is_new] = neg_vals
        values[slot[new]] = pos_vals[new]
        thresholds = values[::-1][keep]
    return fps, tps, thresholds


def _check(labels: Iterable, scores: Iterable) -> tuple[np.ndarray, np.ndarray]:
    y = binary_labels("labels", labels)
    s = float_vector("scores", scores)
    same_length(labels=y, scores=s)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        missing = "positive (1)" if n_pos == 0 else "negative (0)"
        raise DataFormatError(None, f"labels has no {missing} pair, so the ROC is undefined",
                              field="labels", fix="pass pairs of both kinds")
    return y, s


def roc_curve(labels: Iterable, scores: Iterable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (fpr, tpr, thresholds) equal to sklearn.metrics.roc_curve(labels, scores).

    Same points as sklearn's default drop_intermediate=True: a point is kept where the
    false- or true-positive count bends, plus the end points, and (0, 0) at threshold inf.
    """
    y, s = _check(labels, scores)
    return _roc_from_counts(*_roc_counts(y, s, with_thresholds=True))


def _roc_from_counts(fps: np.ndarray, tps: np.ndarray, thresholds: Optional[np.ndarray]
                     ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    fps = np.concatenate(([0.0], fps.astype(np.float64)))
    tps = np.concatenate(([0.0], tps.astype(np.float64)))
    if thresholds is not None:
        thresholds = np.concatenate(([np.inf], thresholds))
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_curve_auc(labels: Iterable, scores: Iterable) -> tuple[np.ndarray, np.ndarray, float]:
    """Returns (fpr, tpr, auc): the ROC points of roc_curve and the trapezoid area under them."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr, float(_trapezoid(tpr, fpr))


def tar_from_roc(fpr: np.ndarray, tpr: np.ndarray, fars: Iterable[float] = DEFAULT_FARS
                 ) -> dict[float, float]:
    """Returns {far: tar} read at the ROC point whose FPR is nearest each target.

    On ties the point with the highest TPR wins: insightface's eval_ijbc.py flips the
    ROC arrays and takes the first minimum, i.e. the last point in ascending-FPR order.
    """
    return {float(far): float(tpr[_point_at_far(fpr, far)]) for far in fars}


def _point_at_far(fpr: np.ndarray, far: float) -> int:
    """Returns the index of the ROC point read for a target FAR (see tar_from_roc)."""
    dist_rev = np.abs(fpr - far)[::-1]
    return len(fpr) - 1 - int(np.argmin(dist_rev))


def threshold_at_far(labels: Iterable, scores: Iterable, far: float) -> float:
    """Returns the score threshold of the ROC point tar_at_far reads for ``far``: accepting
    pairs with score >= it gives exactly that point's TAR and FAR (inf: accept none)."""
    fpr, _, thresholds = roc_curve(labels, scores)
    return float(thresholds[_point_at_far(fpr, far)])


def tar_at_far(labels: Iterable, scores: Iterable, fars: Iterable[float] = DEFAULT_FARS
               ) -> dict[float, float]:
    """Returns {far: tar} for each target FAR, as insightface's IJB evaluation reads it.

    TAR is read at the sklearn ROC point whose FPR is nearest the target; see tar_from_roc.
    """
    y, s = _check(labels, scores)
    fpr, tpr, _ = _roc_from_counts(*_roc_counts(y, s, with_thresholds=False))
    return tar_from_roc(fpr, tpr, fars)
