"""Tests of facefuse/data/align.py: landmarks land on the ArcFace template, known warps are undone."""

from __future__ import annotations

import numpy as np
import pytest

import facefuse.data.align as align_mod
from facefuse.data import ARCFACE_TEMPLATE, align_face, similarity_matrix
from facefuse.data.align import template_for_size, warp_affine

from .conftest import smooth_images


def _forward(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx],
                     [scale * np.sin(a), scale * np.cos(a), ty]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_is_insightface_arcface_dst() -> None:
    base_112x96 = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366],
                            [33.5493, 92.3655], [62.7299, 92.2041]], np.float32)
    expected = base_112x96.copy()
    expected[:, 0] += 8.0
    np.testing.assert_allclose(ARCFACE_TEMPLATE, expected, atol=1e-5)
    assert ARCFACE_TEMPLATE.dtype == np.float32 and ARCFACE_TEMPLATE.shape == (5, 2)
    np.testing.assert_allclose(template_for_size(224), ARCFACE_TEMPLATE * 2, atol=1e-4)
    np.testing.assert_allclose(template_for_size(128)[:, 0], ARCFACE_TEMPLATE[:, 0] + 8, atol=1e-4)


def test_template_landmarks_give_identity() -> None:
    np.testing.assert_allclose(similarity_matrix(ARCFACE_TEMPLATE), np.eye(3)[:2], atol=1e-5)
    image = smooth_images(1)[0]
    np.testing.assert_array_equal(align_face(image, ARCFACE_TEMPLATE), image)


@pytest.mark.parametrize("scale, angle, shift", [(1.7, 20.0, (5.0, -3.0)), (0.8, -35.0, (-30.0, 20.0)),
                                                (2.5, 5.0, (0.0, 0.0))])
def test_known_similarity_is_recovered(scale, angle, shift) -> None:
    face = smooth_images(1, seed=7)[0]
    forward = _forward(scale, angle, 0.0, 0.0)
    # centre the face in the 320x320 crop (plus a shift) so none of it is cut off
    forward[:, 2] = np.array([160.0, 160.0]) + shift - forward[:, :2] @ np.array([56.0, 56.0])
    # put the aligned face into a bigger "loose crop" with the known transform, landmarks moved with it
    crop = warp_affine(face, forward, size=320)
    landmarks = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64))
    matrix = similarity_matrix(landmarks)
    back = np.vstack([matrix, [0, 0, 1]]) @ np.vstack([forward, [0, 0, 1]])
    np.testing.assert_allclose(back, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(_apply(matrix, landmarks), ARCFACE_TEMPLATE, atol=1e-4)
    aligned = align_face(crop, landmarks)
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    inner = (slice(8, -8), slice(8, -8))  # borders touch pixels sampled outside the warped face
    err = np.abs(aligned[inner].astype(int) - face[inner])
    assert err.mean() < (4.0 if scale < 1 else 2.0)


def test_noisy_landmarks_are_fit_in_least_squares() -> None:
    rng = np.random.default_rng(0)
    forward = _forward(1.3, 10, 20, 20)
    landmarks = _apply(forward, ARCFACE_TEMPLATE.astype(np.float64)) + rng.normal(0, 0.5, (5, 2))
    residual = _apply(similarity_matrix(landmarks), landmarks) - ARCFACE_TEMPLATE
    assert np.sqrt((residual ** 2).sum(1)).max() < 1.5


def test_border_is_black() -> None:
    image = np.full((200, 200, 3), 200, np.uint8)
    # a face cut by the crop's top-left corner: the output's corner samples outside the image
    landmarks = ARCFACE_TEMPLATE * 2 - 40
    aligned = align_face(image, landmarks)
    assert aligned[0, 0].tolist() == [0, 0, 0] and aligned[56, 56].tolist() == [200, 200, 200]


def test_degenerate_landmarks_raise() -> None:
    with pytest.raises(ValueError):
        similarity_matrix(np.full((5, 2), 10.0))
    with pytest.raises(ValueError):
        similarity_matrix(np.full((5, 2), np.nan))


def test_scikit_image_fallback_matches_opencv(monkeypatch) -> None:
    if align_mod._cv2 is None:
        pytest.skip("opencv not installed: the fallback is the only backend")
    crop = smooth_images(1, size=(180, 150), seed=2)[0]
    landmarks = _apply(_forward(1.4, 12, 15, 10), ARCFACE_TEMPLATE.astype(np.float64))
    with_cv2 = align_face(crop, landmarks)
    monkeypatch.setattr(align_mod, "_cv2", None)
    assert align_mod.alignment_backend() == "scikit-image"
    with_skimage = align_face(crop, landmarks)
    diff = np.abs(with_cv2.astype(int) - with_skimage)
    assert diff.max() <= 2 and diff.mean() < 0.5
