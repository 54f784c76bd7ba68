"""IJB-B / IJB-C 1:1 verification scores (insightface's eval_ijbc.py protocol), vectorised.

Protocol: image feature times its detector score (not normalised); media feature = mean of
the template's images of that media; template feature = sum of its media features, then
L2-normalised; pair score = cosine of the two template features.

Speed (IJB-C: 469,375 images, 23,124 templates, 15.7 million pairs):
- Templates are built in one pass over the image rows in template order, float64 chunks
  summed with np.add.reduceat; each image is weighted by score / (images in its media), which
  is the mean-of-media then sum-of-media of the protocol in one weighted sum.
- Pairs are scored with dense float64 GEMM blocks instead of 15.7 million random gathers of
  512-d rows. Each pair is oriented so that its column is the template with more pairs
  (ties: the later template), templates are ranked by that order, and each block of 1024
  row templates is multiplied only with the columns its pairs use. For IJB's probe-versus-
  gallery pairs that is probes x gallery; for uniformly random pairs it is half of T x T.
- float64 throughout: float32 accumulation of a 512-d dot product is off by about 1e-7,
  and scores must agree with a float64 reference to 1e-9. Orienting each unordered pair one
  way makes (a, b) and (b, a) the very same GEMM element, so equal scores stay equal.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np

from facefuse.errors import DataFormatError

from ._inputs import float_vector, int_vector, same_length
from .verification import l2_normalize

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 8192
_BLOCK_ROWS = 1024


def _feature_matrix(name: str, x: Iterable) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataFormatError(None, f"{name} must be a 2-D array [images, dims], got shape {arr.shape}",
                              field=name, fix="pass one feature row per image")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataFormatError(None, f"{name} has dtype {arr.dtype}, expected floats",
                              field=name, fix="pass numeric features")
    return arr


def template_features(img_feats: Iterable, face_scores: Iterable, templates: Iterable,
                      medias: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Returns (L2-normalised template features float64 [T, D], sorted template ids [T]).

    Row i of img_feats belongs to template templates[i] and media medias[i]; images of the
    same media id within a template are averaged, the media of a template are summed.
    """
    x = _feature_matrix("img_feats", img_feats)
    scores = float_vector("face_scores", face_scores)
    tids = int_vector("templates", templates)
    mids = int_vector("medias", medias)
    n = same_length(img_feats=x, face_scores=scores, templates=tids, medias=mids)
    if n == 0:
        raise DataFormatError(None, "img_feats has no rows", field="img_feats",
                              fix="pass the features of the set's images")
    unique_t, t_idx = np.unique(tids, return_inverse=True)
    _, m_idx = np.unique(mids, return_inverse=True)
    # A media is a (template, media id) pair: the same video can appear in two templates.
    media_key = t_idx.astype(np.int64) * (int(m_idx.max()) + 1) + m_idx
    _, g_idx, g_counts = np.unique(media_key, return_inverse=True, return_counts=True)
    weights = scores / g_counts[g_idx]

    in_order = bool(np.all(t_idx[1:] >= t_idx[:-1]))
    order = None if in_order else np.argsort(t_idx, kind="stable")
    t_sorted = t_idx if order is None else t_idx[order]
    acc = np.zeros((len(unique_t), x.shape[1]), dtype=np.float64)
    for c0 in range(0, n, _CHUNK_ROWS):
        c1 = min(n, c0 + _CHUNK_ROWS)
        rows = slice(c0, c1) if order is None else order[c0:c1]
        block = x[rows].astype(np.float64)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0])
            row = c0 + bad if order is None else int(order[c0 + bad])
            raise DataFormatError(None, f"img_feats row {row} contains NaN or infinity",
                                  field="img_feats",
                                  fix="check the model output for that image (diverged model or broken crop)")
        block *= weights[rows][:, np.newaxis]
        ts = t_sorted[c0:c1]
        starts = np.flatnonzero(np.concatenate(([True], ts[1:] != ts[:-1])))
        # Segment ids are distinct within a chunk, so plain fancy += is safe; a template
        # cut by a chunk boundary gets its two parts from two chunks.
        acc[ts[starts]] += np.add.reduceat(block, starts, axis=0)
    return l2_normalize(acc), unique_t


def _template_index(name: str, unique_t: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Returns the row of each template id in unique_t; raises naming a pair row whose
    template has no images."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.intp)
    lo, hi = int(ids.min()), int(ids.max())
    if unique_t[0] >= 0 and lo >= 0 and hi < 4 * len(unique_t) + 1_000_000:
        # Template ids are small non-negative integers in every IJB release: a lookup table
        # is several times faster than a binary search over 15 million ids.
        lut = np.full(max(hi, int(unique_t[-1])) + 1, -1, dtype=np.intp)
        lut[unique_t] = np.arange(len(unique_t))
        idx = lut[ids]
        missing = idx < 0
    else:
        idx = np.searchsorted(unique_t, ids)
        np.minimum(idx, len(unique_t) - 1, out=idx)
        missing = unique_t[idx] != ids
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataFormatError(None, f"{name} row {row} names template {int(ids[row])}, which has no images",
                              field=name,
                              fix="pass the pair list that belongs to this image list (same IJB set)")
    return idx


def pair_scores(feats: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    """Returns float64 [P]: the dot product of rows idx1[k] and idx2[k] of float64 `feats`."""
    n_t = len(feats)
    n_p = len(idx1)
    if n_p == 0:
        return np.zeros(0, dtype=np.float64)
    degree = np.bincount(idx1, minlength=n_t) + np.bincount(idx2, minlength=n_t)
    by_rank = np.lexsort((np.arange(n_t), degree))
    rank = np.empty(n_t, dtype=np.intp)
    rank[by_rank] = np.arange(n_t)
    r1, r2 = rank[idx1], rank[idx2]
    rows = np.minimum(r1, r2)
    cols = np.maximum(r1, r2)
    del r1, r2
    ranked = feats[by_rank]
    # A separate transposed copy: numpy sends X @ X.T on one buffer to OpenBLAS's symmetric
    # kernel, which crashes on IJB-C sized inputs here (STACK_NOTES.md).
    ranked_t = np.ascontiguousarray(ranked.T)
    n_blocks = (n_t + _BLOCK_ROWS - 1) // _BLOCK_ROWS
    block_of = (rows // _BLOCK_ROWS).astype(np.int16 if n_blocks < 2**15 else np.int64)
    order = np.argsort(block_of, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(block_of, minlength=n_blocks))))
    del block_of
    out = np.empty(n_p, dtype=np.float64)
    dense_blocks = 0
    for k in range(n_blocks):
        if bounds[k] == bounds[k + 1]:
            continue
        sel = order[bounds[k]:bounds[k + 1]]
        lo = k * _BLOCK_ROWS
        r = rows[sel] - lo
        c = cols[sel] - lo  # every column rank is >= its row rank >= lo
        used = np.zeros(n_t - lo, dtype=bool)
        used[c] = True
        n_used = int(np.count_nonzero(used))
        left = ranked[lo:lo + _BLOCK_ROWS]
        if n_used > (n_t - lo) // 2:
            dense_blocks += 1
            gram = left @ ranked_t[:, lo:]
            out[sel] = gram[r, c]
        else:
            col_of = np.cumsum(used) - 1
            gram = left @ ranked_t[:, lo + np.flatnonzero(used)]
            out[sel] = gram[r, col_of[c]]
    logger.debug("pair_scores: %d pairs, %d templates, %d blocks (%d dense)",
                 n_p, n_t, int(np.count_nonzero(np.diff(bounds))), dense_blocks)
    return out


def ijb_scores(img_feats: Iterable, face_scores: Iterable, templates: Iterable, medias: Iterable,
               p1: Iterable, p2: Iterable) -> np.ndarray:
    """Returns the cosine score (float64 [P]) of each template pair (p1[k], p2[k]).

    img_feats [M, D] are the per-image features (original + flip, not normalised),
    face_scores [M] the detector scores, templates/medias [M] the ids of
    <name>_face_tid_mid.txt, p1/p2 [P] the template ids of <name>_template_pair_label.txt.
    """
    feats, unique_t = template_features(img_feats, face_scores, templates, medias)
    a = int_vector("p1", p1)
    b = int_vector("p2", p2)
    same_length(p1=a, p2=b)
    idx1 = _template_index("p1", unique_t, a)
    idx2 = _template_index("p2", unique_t, b)
    return pair_scores(feats, idx1, idx2)
