"""5-point face alignment to the ArcFace 112x112 template (insightface face_align.norm_crop)."""

from __future__ import annotations

import logging

import numpy as np
from skimage.transform import SimilarityTransform

logger = logging.getLogger(__name__)

try:  # OpenCV is what insightface warps with; scikit-image is the fallback when it is absent
    import cv2 as _cv2
except ImportError:  # pragma: no cover - exercised only on installs without opencv
    _cv2 = None

# insightface's 112x96 template with x shifted by 8 (the same numbers as face_align.arcface_dst and
# eval_ijbc.py's ``src[:, 0] += 8``): left eye, right eye, nose tip, left and right mouth corners.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963],
                             [73.5318, 51.5014],
                             [56.0252, 71.7366],
                             [41.5493, 92.3655],
                             [70.7299, 92.2041]], dtype=np.float32)
ARCFACE_TEMPLATE.setflags(write=False)


def template_for_size(size: int = 112) -> np.ndarray:
    """Returns the 5-point template scaled to a ``size`` x ``size`` crop, as norm_crop scales it."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * np.float32(size / 112.0)
    if size % 128 == 0:
        ratio = size / 128.0
        # a 128 crop keeps the 112 face geometry and centres it: +8 px in x per 128 px
        dst = ARCFACE_TEMPLATE * np.float32(ratio)
        dst[:, 0] += np.float32(8.0 * ratio)
        return dst
    raise ValueError(f"alignment size must be a multiple of 112 or 128, got {size}")


def similarity_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Returns the 2x3 similarity transform (least squares, Umeyama) mapping landmarks to the template.

    Raises ValueError when the landmarks are degenerate (coincident points, NaN).
    """
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    if not np.isfinite(src).all():
        raise ValueError("landmarks contain NaN or infinity")
    dst = template_for_size(size).astype(np.float64)
    if hasattr(SimilarityTransform, "from_estimate"):
        tform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(tform)
    else:  # scikit-image < 0.26
        tform = SimilarityTransform()
        ok = bool(tform.estimate(src, dst))
    matrix = np.asarray(tform.params, dtype=np.float64)[:2, :] if ok else None
    if matrix is None or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:, :2])) < 1e-12:
        raise ValueError(f"cannot estimate a similarity transform from landmarks {src.tolist()}")
    return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """Returns ``image`` warped by the 2x3 forward ``matrix`` into a size x size uint8 crop (border 0).

    OpenCV's warpAffine (bilinear, border value 0) when OpenCV is installed, which is exactly what
    insightface's norm_crop and eval_ijbc.py run; otherwise scikit-image's bilinear warp, which
    agrees to within a grey level or two (OpenCV interpolates in 1/32-pixel fixed point).
    """
    img = np.ascontiguousarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {img.dtype}")
    if _cv2 is not None:
        return _cv2.warpAffine(img, np.asarray(matrix, np.float64), (size, size),
                               flags=_cv2.INTER_LINEAR, borderMode=_cv2.BORDER_CONSTANT, borderValue=0.0)
    from skimage.transform import AffineTransform, warp

    full = np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]])
    out = warp(img, AffineTransform(matrix=full).inverse, output_shape=(size, size) + img.shape[2:],
               order=1, mode="constant", cval=0.0, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Returns the size x size uint8 crop of ``image`` with its 5 landmarks moved onto the template.

    ``image``: uint8 HxWx3 (any channel order; it is kept), ``landmarks``: [5, 2] (x, y) pixels in the
    order left eye, right eye, nose, left mouth corner, right mouth corner.
    """
    return warp_affine(image, similarity_matrix(landmarks, size), size)


def alignment_backend() -> str:
    """Returns the library that warps faces: 'opencv' or 'scikit-image'."""
    return "opencv" if _cv2 is not None else "scikit-image"
