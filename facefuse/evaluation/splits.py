"""Held-out parts of a benchmark: a selection part and a report part sharing no subjects.

Tuning, early stopping, the best checkpoint and best_beta read the selection part; the report
part gives the chosen model's honest value. Both are fixed by the benchmark and ``SPLIT_SEED``
alone, so every trial of every sweep sees the same parts.

- Verification (.bin) sets list their pairs in 10 person-disjoint folds: folds 1-5 are the
  selection part, folds 6-10 the report part.
- IJB sets carry no subject ids in their 1:1 protocol files; the templates joined by genuine
  pairs are one subject's. Those groups are split in two halves by a seeded permutation; a pair
  belongs to a part when both its templates do (impostor pairs across the halves are left out).
"""

from __future__ import annotations

import numpy as np

from facefuse.errors import DataFormatError

SPLIT_SEED = 0
#: Fewest subjects (IJB) or folds (verification) a set needs to be split.
MIN_SUBJECTS = 4
N_BOOTSTRAP_SE = 30


def verification_parts(n_pairs: int, n_folds: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Returns (selection, report) pair indices: the first and the second half of the folds."""
    if n_pairs < 2 * n_folds or n_pairs % n_folds:
        raise DataFormatError(None, f"a verification set of {n_pairs} pairs cannot be split "
                              f"into its {n_folds} person-disjoint folds",
                              fix="evaluate the set on its full pair list only, or name "
                                  "validation sets of their own in the job")
    fold = n_pairs // n_folds
    half = (n_folds // 2) * fold
    return np.arange(half), np.arange(half, n_pairs)


def ijb_parts(p1: np.ndarray, p2: np.ndarray, labels: np.ndarray,
              seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Returns (selection, report) pair indices of an IJB set, split by subject."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p1 = np.asarray(p1)
    p2 = np.asarray(p2)
    same = np.asarray(labels).astype(bool)
    ids, inv = np.unique(np.concatenate([p1, p2]), return_inverse=True)
    a, b = inv[:len(p1)], inv[len(p1):]
    graph = coo_matrix((np.ones(int(same.sum())), (a[same], b[same])), shape=(len(ids),) * 2)
    n_groups, group = connected_components(graph, directed=False)
    with_genuine = np.unique(group[a[same]])
    if len(with_genuine) < MIN_SUBJECTS:
        raise DataFormatError(None, f"an IJB set with {len(with_genuine)} subjects (templates "
                              f"joined by genuine pairs) cannot be split into two "
                              f"subject-disjoint parts; at least {MIN_SUBJECTS} are needed",
                              fix="build the set with more subjects, or name validation sets "
                                  "of their own in the job")
    rng = np.random.default_rng(seed)
    half = np.zeros(n_groups, dtype=bool)
    half[rng.permutation(n_groups)[: n_groups // 2]] = True
    in_sel = half[group]
    sel = np.flatnonzero(in_sel[a] & in_sel[b])
    rep = np.flatnonzero(~in_sel[a] & ~in_sel[b])
    return sel, rep


def tar_at_far_se(labels: np.ndarray, scores: np.ndarray, fars: tuple[float, ...],
                  seed: int = SPLIT_SEED, n_boot: int = N_BOOTSTRAP_SE,
                  head_only: bool = True) -> dict[float, float]:
    """Returns {far: bootstrap standard error of TAR@FAR} over the pairs (Poisson bootstrap).

    The pairs are sorted once; each resample reweights them with Poisson(1) counts, so a
    replicate costs cumulative sums instead of a sort. TAR is read at the last ROC point whose
    FAR does not exceed the target. Only the head of the ranking decides TAR at FAR <= max(fars):
    weights are drawn for the pairs down to well past that point (3x its impostors, at least
    2,000 more), and the rest enter through their totals (a sum of n Poisson(1) counts is one
    Poisson(n) draw), which is the same resample in distribution at a fraction of the draws
    (a million pairs: about 0.1 s instead of 0.9 s for 30 replicates). A replicate whose head
    does not reach a target FAR is redone on every pair. ``head_only=False`` draws for every
    pair (the plain bootstrap, kept as the reference the tests and benchmarks compare with).
    """
    y = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    y = y[order]
    n_neg_all = int((~y).sum())
    neg_rank = np.cumsum(~y)
    need = min(n_neg_all, int(3 * max(fars) * n_neg_all) + 2000)
    if need >= n_neg_all or not head_only:
        head = len(y)
    else:
        head = int(np.searchsorted(neg_rank, need, side="left")) + 1
    y_head = y[:head]
    rest_pos = int(y[head:].sum())
    rest_neg = len(y) - head - rest_pos
    rng = np.random.default_rng(seed)
    out: dict[float, list[float]] = {far: [] for far in fars}
    for _ in range(n_boot):
        w = rng.poisson(1.0, head).astype(np.float64)
        tp = np.cumsum(w * y_head)
        fp = np.cumsum(w * ~y_head)
        tp_total = tp[-1] + (rng.poisson(rest_pos) if rest_pos else 0)
        fp_total = fp[-1] + (rng.poisson(rest_neg) if rest_neg else 0)
        if head < len(y) and fp[-1] / max(fp_total, 1) < max(fars):
            # the head's resample did not reach the largest target: this replicate on all pairs
            w = rng.poisson(1.0, len(y)).astype(np.float64)
            tp, fp = np.cumsum(w * y), np.cumsum(w * ~y)
            tp_total, fp_total = tp[-1], fp[-1]
        if tp_total <= 0 or fp_total <= 0:
            continue
        tpr, fpr = tp / tp_total, fp / fp_total
        for far in fars:
            k = int(np.searchsorted(fpr, far, side="right")) - 1
            out[far].append(float(tpr[k]) if k >= 0 else 0.0)
    return {far: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for far, v in out.items()}
