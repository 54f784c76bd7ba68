"""Tests of facefuse/evaluation/embeddings.py: flip fusion and protocol inputs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from facefuse.errors import DataFormatError
from facefuse.evaluation import (evaluate_ijb, evaluate_verification, fuse_flips, ijb_image_features,
                                 verification_pairs)

from .reference import ref_ijb_scores, ref_tar_at_far, ref_verification_accuracy


def test_fuse_flips_sums_and_keeps_float_type() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((6, 4)).astype(np.float32)
    fused = fuse_flips(a, b)
    assert fused.dtype == np.float32
    np.testing.assert_array_equal(fused, a + b)
    assert fuse_flips(a, b, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(fuse_flips(a, None), a)


def test_fuse_flips_rejects_shape_mismatch_and_nan() -> None:
    a = np.ones((4, 3))
    with pytest.raises(DataFormatError, match="emb_flip has shape") as err:
        fuse_flips(a, np.ones((4, 2)))
    assert err.value.field == "emb_flip"
    b = np.ones((4, 3))
    b[2, 1] = np.inf
    with pytest.raises(DataFormatError, match="emb_flip row 2"):
        fuse_flips(a, b)


def test_verification_pairs_split_even_and_odd_rows() -> None:
    emb = np.arange(24, dtype=np.float32).reshape(6, 4)
    flip = np.ones((6, 4), dtype=np.float32)
    e1, e2 = verification_pairs(emb, flip)
    assert e1.dtype == np.float64
    np.testing.assert_array_equal(e1, emb[0::2] + 1)
    np.testing.assert_array_equal(e2, emb[1::2] + 1)
    with pytest.raises(DataFormatError, match="even number") as err:
        verification_pairs(emb[:5])
    assert err.value.field == "emb"


def test_evaluate_verification_is_the_insightface_flip_test() -> None:
    rng = np.random.default_rng(1)
    n = 203
    issame = rng.random(n) < 0.5
    base = rng.standard_normal((2 * n, 16))
    base[1::2][issame] = base[0::2][issame] + 0.7 * rng.standard_normal((int(issame.sum()), 16))
    emb = base.astype(np.float32)
    flip = (base + 0.3 * rng.standard_normal(base.shape)).astype(np.float32)
    fused = emb.astype(np.float64) + flip.astype(np.float64)
    assert evaluate_verification(emb, flip, issame) == ref_verification_accuracy(fused[0::2], fused[1::2], issame)


def test_evaluate_ijb_from_set_fields() -> None:
    rng = np.random.default_rng(2)
    n_img = 400
    templates = np.sort(rng.integers(1, 60, n_img))
    medias = rng.integers(0, 30, n_img)
    emb = rng.standard_normal((n_img, 8)).astype(np.float32)
    flip = rng.standard_normal((n_img, 8)).astype(np.float32)
    unique = np.unique(templates)
    p1 = rng.choice(unique[:10], 800)
    p2 = rng.choice(unique[10:], 800)
    labels = (rng.random(800) < 0.1).astype(np.int64)
    ijb = SimpleNamespace(face_scores=rng.uniform(0.5, 1, n_img).astype(np.float32), templates=templates,
                          medias=medias, p1=p1, p2=p2, labels=labels)
    tar, scores = evaluate_ijb(ijb, emb, flip)
    feats = ijb_image_features(emb, flip)
    np.testing.assert_array_equal(feats, emb + flip)
    ref = ref_ijb_scores(feats, ijb.face_scores, templates, medias, p1, p2)
    np.testing.assert_allclose(scores, ref, rtol=0, atol=1e-9)
    assert tar == ref_tar_at_far(labels, ref)
