"""IJB-B / IJB-C 1:1 verification scores (insightface's eval_ijbc.py protocol), vectorised.

Protocol: image feature times its detector score (not normalised); media feature = mean of
the template's images of that media; template feature = sum of its media features, then
L2-normalised; pair score = cosine of the two template features.

Speed (IJB-C: 469,375 images, 23,124 templates, 15.7 million pairs):
- Templates are built in one pass over the image rows: per chunk of rows a sparse
  template x image matrix of weights score / (images in its media) times the chunk gives,
  in float64, the protocol's mean over each media then sum over media in one weighted sum.
- Pairs are scored with dense float64 GEMMs instead of 15.7 million random gathers of
  512-d rows. IJB's p1 and p2 name disjoint sets (gallery and probes): one product of the
  two sets (3,531 x 19,593 for IJB-C) and a gather from it. Otherwise each pair is oriented
  so that its column is the template with more pairs (ties: the later template), which makes
  (a, b) and (b, a) the very same GEMM element, so equal scores stay equal; then one product
  of the used rows with the used columns, or, when that would be too large (e.g. uniformly
  random pairs), blocks of 1024 row templates (ranked by the same order) each multiplied
  with the columns its pairs use: half of a T x T product.
- float64 throughout: float32 accumulation of a 512-d dot product is off by about 1e-7,
  and scores must agree with a float64 reference to 1e-9.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
from scipy import sparse

from facefuse.errors import DataFormatError

from ._inputs import float_vector, int_vector, same_length
from .verification import l2_normalize

logger = logging.getLogger(__name__)

_CHUNK_ROWS = 8192
_BLOCK_ROWS = 1024
_MAX_GRAM = 2**27  # float64 entries (1 GiB) of a one-shot pair-score product


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

    acc = np.zeros((len(unique_t), x.shape[1]), dtype=np.float64)
    for c0 in range(0, n, _CHUNK_ROWS):
        c1 = min(n, c0 + _CHUNK_ROWS)
        ts = t_idx[c0:c1]
        order = np.argsort(ts, kind="stable")  # the identity for IJB files (grouped by template)
        ts = ts[order]
        starts = np.flatnonzero(np.concatenate(([True], ts[1:] != ts[:-1])))
        # One sparse row per template in the chunk: a float64 weighted sum of its image rows
        # without converting all of img_feats to float64 (np.add.reduceat along rows is ~10x slower).
        weight = sparse.csr_matrix((weights[c0:c1][order], order, np.append(starts, c1 - c0)),
                                   shape=(len(starts), c1 - c0))
        chunk = x[c0:c1]
        if chunk.dtype not in (np.float32, np.float64):
            chunk = chunk.astype(np.float64)  # scipy.sparse has no float16 / int8 kernels
        acc[ts[starts]] += weight @ chunk
    if not np.isfinite(acc).all():
        _raise_non_finite(x)
    return l2_normalize(acc), unique_t


def _index_dtype(n: int) -> type:
    """Returns int32 when it can index n items: half the memory traffic over 15.7 M pairs."""
    return np.int32 if n < 2**31 else np.int64


def _raise_non_finite(x: np.ndarray) -> None:
    """Raises naming the first image row that holds NaN or infinity (or the overflow)."""
    for c0 in range(0, len(x), _CHUNK_ROWS):
        finite = np.isfinite(x[c0:c0 + _CHUNK_ROWS]).all(axis=1)
        if not finite.all():
            row = c0 + int(np.flatnonzero(~finite)[0])
            raise DataFormatError(None, f"img_feats row {row} contains NaN or infinity", field="img_feats",
                                  fix="check the model output for that image (diverged model or broken crop)")
    raise DataFormatError(None, "img_feats is too large: a template feature overflows float64",
                          field="img_feats", fix="pass embeddings of ordinary magnitude")


def _template_index(name: str, unique_t: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Returns the row of each template id in unique_t; raises naming a pair row whose
    template has no images."""
    if len(ids) == 0:
        return np.zeros(0, dtype=_index_dtype(len(unique_t)))
    lo, hi = int(ids.min()), int(ids.max())
    if unique_t[0] >= 0 and lo >= 0 and hi < 4 * len(unique_t) + 1_000_000:
        # Template ids are small non-negative integers in every IJB release: a lookup table
        # is several times faster than a binary search over 15 million ids.
        lut = np.full(max(hi, int(unique_t[-1])) + 1, -1, dtype=_index_dtype(len(unique_t)))
        lut[unique_t] = np.arange(len(unique_t))
        idx = lut[ids]
        missing = idx < 0
    else:
        idx = np.searchsorted(unique_t, ids)
        np.minimum(idx, len(unique_t) - 1, out=idx)
        missing = unique_t[idx] != ids
        idx = idx.astype(_index_dtype(len(unique_t)))
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise DataFormatError(None, f"{name} row {row} names template {int(ids[row])}, which has no images",
                              field=name,
                              fix="pass the pair list that belongs to this image list (same IJB set)")
    return idx


def _orient(idx1: np.ndarray, idx2: np.ndarray, n_t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (row rank, column rank, templates by rank) of each unordered pair.

    Templates are ranked by (number of pairs, index); the column of a pair is its higher
    ranked template. Probe-versus-gallery pairs thus put the gallery in the columns.
    """
    degree = np.bincount(idx1, minlength=n_t) + np.bincount(idx2, minlength=n_t)
    by_rank = np.lexsort((np.arange(n_t), degree))
    rank = np.empty(n_t, dtype=_index_dtype(n_t))
    rank[by_rank] = np.arange(n_t)
    r1, r2 = rank[idx1], rank[idx2]
    return np.minimum(r1, r2), np.maximum(r1, r2), by_rank


def _positions(used: np.ndarray) -> np.ndarray:
    """Returns, for each True entry of `used`, its index among the True entries."""
    return np.cumsum(used, dtype=_index_dtype(len(used))) - 1


def pair_scores(feats: np.ndarray, idx1: np.ndarray, idx2: np.ndarray) -> np.ndarray:
    """Returns float64 [P]: the dot product of rows idx1[k] and idx2[k] of float64 `feats`.

    idx1, idx2 are row indices into feats (ijb_scores checks them).
    """
    n_t = len(feats)
    n_p = len(idx1)
    if n_p == 0:
        return np.zeros(0, dtype=np.float64)
    used1 = np.bincount(idx1, minlength=n_t) > 0
    used2 = np.bincount(idx2, minlength=n_t) > 0
    n1, n2 = int(used1.sum()), int(used2.sum())
    if not (used1 & used2).any() and n1 * n2 <= _MAX_GRAM:
        # p1 and p2 name disjoint template sets (IJB: gallery and probes), so no pair can
        # appear swapped and no orientation is needed: one GEMM of the p1 templates with the
        # p2 templates (IJB-C: 3,531 x 19,593, 0.55 GB), then one gather. The operands are
        # gathered copies, so numpy never sees X @ X.T of one buffer (OpenBLAS's symmetric
        # kernel segfaults on IJB-C sized inputs; docs/architecture.md, "Known limits").
        gram = feats[used1] @ np.ascontiguousarray(feats[used2].T)
        flat = _positions(used1)[idx1].astype(_index_dtype(n1 * n2))
        flat *= n2
        flat += _positions(used2)[idx2]
        logger.debug("pair_scores: %d pairs, one %d x %d product", n_p, n1, n2)
        return np.take(gram.ravel(), flat)
    del used1, used2
    rows, cols, by_rank = _orient(idx1, idx2, n_t)
    ranked = feats[by_rank]
    row_used = np.bincount(rows, minlength=n_t) > 0
    col_used = np.bincount(cols, minlength=n_t) > 0
    n_rows, n_cols = int(row_used.sum()), int(col_used.sum())
    if n_rows * n_cols <= _MAX_GRAM:
        # Oriented pairs still fit one product: the used rows against the used columns.
        gram = ranked[row_used] @ np.ascontiguousarray(ranked[col_used].T)
        flat = _positions(row_used)[rows].astype(_index_dtype(n_rows * n_cols))
        flat *= n_cols
        flat += _positions(col_used)[cols]
        logger.debug("pair_scores: %d pairs, one %d x %d product", n_p, n_rows, n_cols)
        return np.take(gram.ravel(), flat)
    return _blocked_pair_scores(ranked, rows, cols)


def _blocked_pair_scores(ranked: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Returns the scores of pair_scores in row blocks, each against the columns it uses;
    since column rank >= row rank, random pairs cost half of a T x T product."""
    n_t = len(ranked)
    ranked_t = np.ascontiguousarray(ranked.T)  # a separate buffer (see pair_scores)
    n_blocks = (n_t + _BLOCK_ROWS - 1) // _BLOCK_ROWS
    block_of = (rows // _BLOCK_ROWS).astype(np.int16 if n_blocks < 2**15 else np.int64)
    order = np.argsort(block_of, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(block_of, minlength=n_blocks))))
    del block_of
    out = np.empty(len(rows), dtype=np.float64)
    for k in range(n_blocks):
        if bounds[k] == bounds[k + 1]:
            continue
        sel = order[bounds[k]:bounds[k + 1]]
        lo = k * _BLOCK_ROWS
        c = cols[sel] - lo  # every column rank is >= its row rank >= lo
        used = np.zeros(n_t - lo, dtype=bool)
        used[c] = True
        n_used = int(np.count_nonzero(used))
        gram = ranked[lo:lo + _BLOCK_ROWS] @ ranked_t[:, lo + np.flatnonzero(used)]
        flat = (rows[sel] - lo).astype(np.int64)
        flat *= n_used
        flat += _positions(used)[c]
        out[sel] = np.take(gram.ravel(), flat)
    logger.debug("pair_scores: %d pairs, %d row blocks", len(rows), int(np.count_nonzero(np.diff(bounds))))
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
