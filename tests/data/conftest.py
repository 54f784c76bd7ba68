"""Shared fixtures of the facefuse.data tests: small deterministic face-like images."""

from __future__ import annotations

import numpy as np
import pytest


def smooth_images(n: int, size: tuple[int, int] = (112, 112), seed: int = 0) -> np.ndarray:
    """Returns n smooth RGB uint8 images (JPEG keeps them within a few grey levels)."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.28)
        base = rng.uniform(60, 190, size=3)
        wave = np.sin(xx / w * 6.28 * fx + phase) * np.cos(yy / h * 6.28 * fy)
        out[i] = np.clip(base[None, None, :] + 50 * wave[..., None], 0, 255).astype(np.uint8)
    return out


@pytest.fixture
def images6() -> np.ndarray:
    return smooth_images(6)
