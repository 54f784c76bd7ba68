"""Turn model embeddings of images and their horizontal flips into protocol inputs."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import numpy as np

from facefuse.errors import DataFormatError

from ._inputs import float_matrix
from .ijb import ijb_scores
from .roc import DEFAULT_FARS, tar_at_far
from .verification import verification_accuracy

logger = logging.getLogger(__name__)


def fuse_flips(emb: Iterable, emb_flip: Optional[Iterable], dtype: Optional[type] = None) -> np.ndarray:
    """Returns emb + emb_flip (the flip-test embedding), or emb alone when emb_flip is None.

    dtype None keeps the inputs' float type (float32 model outputs stay float32, as in
    insightface's IJB script); the verification protocol asks for float64.
    """
    e = np.asarray(emb)
    out_dtype = dtype or (e.dtype if np.issubdtype(e.dtype, np.floating) else np.float64)
    e = float_matrix("emb", e, dtype=out_dtype)
    if emb_flip is None:
        return e
    f = float_matrix("emb_flip", emb_flip, dtype=out_dtype)
    if f.shape != e.shape:
        raise DataFormatError(None, f"emb_flip has shape {f.shape} but emb has {e.shape}",
                              field="emb_flip", fix="embed the flipped copy of every image, in the same order")
    return e + f


def verification_pairs(emb: Iterable, emb_flip: Optional[Iterable] = None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (emb1, emb2) float64: the fused embeddings of a .bin set's images [2N, D]
    split into even rows (first face of each pair) and odd rows, as insightface does."""
    fused = fuse_flips(emb, emb_flip, dtype=np.float64)
    if len(fused) % 2:
        raise DataFormatError(None, f"emb has {len(fused)} rows; a pair set has an even number",
                              field="emb", fix="embed all 2N images of the .bin file, in file order")
    return fused[0::2], fused[1::2]


def evaluate_verification(emb: Iterable, emb_flip: Optional[Iterable], issame: Iterable,
                          n_folds: int = 10) -> tuple[float, float]:
    """Returns (mean, std) 10-fold accuracy from the embeddings of a .bin set's 2N images
    and of their flips (None: no flip test)."""
    emb1, emb2 = verification_pairs(emb, emb_flip)
    return verification_accuracy(emb1, emb2, issame, n_folds=n_folds)


def ijb_image_features(emb: Iterable, emb_flip: Optional[Iterable] = None) -> np.ndarray:
    """Returns the per-image IJB features: original + flip, not normalised (the detector
    score is applied by ijb_scores)."""
    return fuse_flips(emb, emb_flip)


def evaluate_ijb(ijb: Any, emb: Iterable, emb_flip: Optional[Iterable] = None,
                 fars: Iterable[float] = DEFAULT_FARS) -> tuple[dict[float, float], np.ndarray]:
    """Returns ({far: tar}, scores [P]) for an IJB set from its images' embeddings.

    `ijb` is any object with the IJBSet fields face_scores, templates, medias, p1, p2 and
    labels (facefuse.data.read_ijb returns one); emb rows follow its image order.
    """
    feats = ijb_image_features(emb, emb_flip)
    scores = ijb_scores(feats, ijb.face_scores, ijb.templates, ijb.medias, ijb.p1, ijb.p2)
    return tar_at_far(ijb.labels, scores, fars), scores
