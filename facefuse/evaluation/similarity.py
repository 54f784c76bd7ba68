"""How alike two backbones are: linear CKA of their representations and the correlation of
their verification errors.

Linear CKA (Kornblith et al. 2019) compares two representations of the same n items:
``||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred Xc, Yc; it is 1 for
representations equal up to an orthogonal transform and an isotropic scaling, and near 0 for
unrelated ones (it is biased upwards when n is not large against the widths: compare with
``shuffled_cka``). Error correlation is the phi coefficient (Pearson's r of two 0/1
vectors) of "backbone A decided this pair wrongly" and "backbone B did": two backbones that fail
on the same pairs leave a fusion little to gain.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from facefuse.errors import DataFormatError

from ._inputs import binary_labels, float_matrix, same_length

logger = logging.getLogger(__name__)

#: Rows per chunk when pooling memory-mapped fp16 maps (bounds the float64 copy in memory).
POOL_CHUNK = 4096


def _centred_unit(name: str, x: Any) -> np.ndarray:
    """Returns float64 ``x`` with its columns centred and the whole divided by its Frobenius norm."""
    arr = float_matrix(name, x)
    arr = arr - arr.mean(axis=0, keepdims=True)
    # CKA ignores isotropic scaling; unit norm keeps every product below O(1), so neither a
    # large backbone activation nor a 25k-wide flattened map overflows or loses precision.
    norm = float(np.linalg.norm(arr))
    if not norm > 0.0:
        raise DataFormatError(None, f"{name} is the same for every item (zero variance), so "
                              "its CKA is undefined", field=name,
                              fix="pass the representations of different items")
    return arr / norm


def linear_cka(x: Any, y: Any) -> float:
    """Returns the linear CKA in [0, 1] of two representations [n, p] and [n, q] of n items.

    Computed on the p x q cross-covariance, or on the n x n Gram matrices when n is the
    smaller side (both give the same number). Every product multiplies two separate
    contiguous buffers: OpenBLAS's symmetric kernel, which ``a @ a.T`` of one buffer reaches,
    crashes this project's CPU machines at IJB-C sizes.
    """
    xs = _centred_unit("x", x)
    ys = _centred_unit("y", y)
    n = same_length(x=xs, y=ys)
    if n < 2:
        raise DataFormatError(None, f"x has {n} rows; CKA needs at least 2 items", field="x",
                              fix="pass the representations of two or more items")
    p, q = xs.shape[1], ys.shape[1]
    xt = np.ascontiguousarray(xs.T)  # [p, n], a buffer of its own
    yt = np.ascontiguousarray(ys.T)  # [q, n]
    if n * (p + q) < p * p + q * q + p * q:
        k = xs @ xt  # [n, n] Gram matrices of the centred rows
        ell = ys @ yt
        hsic_xy = float(np.vdot(k, ell))
        hsic_xx = float(np.linalg.norm(k))
        hsic_yy = float(np.linalg.norm(ell))
    else:
        hsic_xy = float(np.linalg.norm(xt @ ys)) ** 2  # [p, q] cross-covariance
        hsic_xx = float(np.linalg.norm(xt @ xs))  # [p, p]
        hsic_yy = float(np.linalg.norm(yt @ ys))  # [q, q]
    value = hsic_xy / (hsic_xx * hsic_yy)
    return float(min(max(value, 0.0), 1.0))  # rounding can step a hair outside


def shuffled_cka(x: Any, y: Any, seed: int = 0) -> float:
    """Returns the linear CKA of x with the rows of y shuffled: the value unrelated items give
    at these sizes and widths (CKA's upward bias), the reference a measured CKA stands against."""
    ys = np.asarray(y)
    perm = np.random.default_rng(seed).permutation(len(ys))
    return linear_cka(x, ys[perm])


def subsample(n: int, at_most: int, seed: int = 0) -> np.ndarray:
    """Returns sorted row indices: all n rows, or ``at_most`` of them drawn without replacement."""
    if at_most < 1:
        raise DataFormatError(None, f"at_most must be >= 1, got {at_most}", field="at_most",
                              fix="give the largest number of items to compare, e.g. 5000")
    if n <= at_most:
        return np.arange(n)
    # sorted: reads of memory-mapped shards stay sequential
    return np.sort(np.random.default_rng(seed).choice(n, size=at_most, replace=False))


def pooled_maps(maps: Any, index: np.ndarray) -> np.ndarray:
    """Returns the spatial mean of the chosen maps [n, C, H, W] as float64 [len(index), C]."""
    out = []
    for start in range(0, len(index), POOL_CHUNK):
        chunk = np.asarray(maps[index[start:start + POOL_CHUNK]], dtype=np.float64)
        out.append(chunk.mean(axis=(2, 3)))  # [n, C, H, W] -> [n, C]
    return np.concatenate(out) if out else np.zeros((0, 0))


def flat_maps(maps: Any, index: np.ndarray) -> np.ndarray:
    """Returns the chosen maps flattened, float64 [len(index), C*H*W] (where each value was kept)."""
    arr = np.asarray(maps[index], dtype=np.float64)
    return arr.reshape(len(arr), -1)  # [n, C, H, W] -> [n, C*H*W]


@dataclass(frozen=True)
class ErrorCorrelation:
    """Two deciders' errors on the same trials: counts, phi and its bootstrap interval."""

    n: int  # trials (pairs)
    wrong_a: int
    wrong_b: int
    both: int  # trials both decided wrongly
    phi: float  # Pearson's r of the two error indicators; NaN when one never (or always) errs
    low: float  # percentile bootstrap interval of phi at ``level``; NaN when undefined
    high: float
    level: float
    n_boot: int

    @property
    def expected_both(self) -> float:
        """Returns how many trials both would get wrong if their errors were independent."""
        return self.wrong_a * self.wrong_b / self.n if self.n else math.nan


def _phi(n11: np.ndarray, n10: np.ndarray, n01: np.ndarray, n00: np.ndarray) -> np.ndarray:
    """Returns phi of 2x2 tables given as count arrays (NaN where a margin is empty)."""
    n11, n10, n01, n00 = (np.asarray(c, dtype=np.float64) for c in (n11, n10, n01, n00))
    denom = (n11 + n10) * (n01 + n00) * (n11 + n01) * (n10 + n00)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (n11 * n00 - n10 * n01) / np.sqrt(denom), np.nan)


def error_correlation(wrong_a: Iterable, wrong_b: Iterable, level: float = 0.9,
                      n_boot: int = 2000, seed: int = 0) -> ErrorCorrelation:
    """Returns the phi coefficient of two error indicators (1 = that decider got the trial
    wrong) with a percentile bootstrap interval over the trials.

    phi depends on the trials only through the 2x2 table of (a wrong, b wrong), so resampling
    trials with replacement is a multinomial draw of that table: every replicate is exact and
    costs nothing however many trials there are. Replicates with an empty margin (no errors
    drawn) have no phi and are left out; with fewer than half of them defined the interval is
    NaN. The bootstrap treats trials as independent; IJB pairs that share templates are not,
    so there the interval is too narrow.
    """
    a = binary_labels("wrong_a", wrong_a)
    b = binary_labels("wrong_b", wrong_b)
    n = same_length(wrong_a=a, wrong_b=b)
    if not 0.0 < level < 1.0:
        raise DataFormatError(None, f"level must be in (0, 1), got {level}", field="level",
                              fix="use e.g. 0.9 for a 90% interval")
    n11 = int(np.sum(a & b))
    n10 = int(np.sum(a & ~b))
    n01 = int(np.sum(~a & b))
    n00 = n - n11 - n10 - n01
    phi = float(_phi(n11, n10, n01, n00))
    low = high = math.nan
    if n and not math.isnan(phi) and n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = rng.multinomial(n, np.array([n11, n10, n01, n00], dtype=np.float64) / n,
                                size=n_boot)
        reps = _phi(draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3])
        reps = reps[~np.isnan(reps)]
        if len(reps) >= n_boot / 2:
            tail = (1.0 - level) / 2.0
            low, high = (float(v) for v in np.quantile(reps, [tail, 1.0 - tail]))
    return ErrorCorrelation(n=n, wrong_a=n11 + n10, wrong_b=n11 + n01, both=n11, phi=phi,
                            low=low, high=high, level=level, n_boot=n_boot)
