"""Image degradations of unconstrained capture: blur, low resolution, sensor noise, JPEG artefacts."""

from __future__ import annotations

import io
import logging

import numpy as np
from PIL import Image, ImageFilter
from scipy.ndimage import uniform_filter1d

logger = logging.getLogger(__name__)


def degrade(image: np.ndarray, strength: float, rng: np.random.Generator) -> bytes:
    """Returns the JPEG bytes of ``image`` (uint8 HxWx3 RGB) degraded with ``strength`` in [0, 1].

    Each degradation is drawn at random and scales with ``strength``: Gaussian or horizontal motion
    blur, downscale-upscale (low resolution), Gaussian noise, and finally JPEG compression whose
    quality falls from 95 at strength 0 to about 10 at strength 1. The JPEG bytes are the file to
    write, so the artefacts on disk are exactly these.
    """
    g = float(np.clip(strength, 0.0, 1.0))
    u = rng.random(6)  # drawn up front so every strength consumes the same random stream
    h, w = image.shape[:2]
    pil = Image.fromarray(image)
    if g > 0:
        sigma = g * (0.4 + 2.2 * u[0])
        if u[1] < 0.25:  # motion blur along x: a box over a few pixels
            k = max(1, int(round(1 + 5 * g * u[0])))
            arr = uniform_filter1d(np.asarray(pil, np.float32), k, axis=1, mode="nearest")
            pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
        elif sigma > 0.3:
            pil = pil.filter(ImageFilter.GaussianBlur(float(sigma)))
        factor = 1.0 - g * (0.35 + 0.5 * u[2])
        if factor < 0.95:
            small = (max(8, int(w * factor)), max(8, int(h * factor)))
            pil = pil.resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
        noise_std = g * (2.0 + 12.0 * u[3])
        if noise_std > 0.5:
            arr = np.asarray(pil, np.float32) + rng.normal(0.0, noise_std, (h, w, 1)).astype(np.float32) \
                + rng.normal(0.0, noise_std * 0.4, (h, w, 3)).astype(np.float32)
            pil = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    quality = int(np.clip(round(95 - g * (45 + 40 * u[4])), 8, 95))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode(payload: bytes) -> np.ndarray:
    """Returns the uint8 RGB array of encoded image bytes."""
    with Image.open(io.BytesIO(payload)) as im:
        return np.asarray(im.convert("RGB"))


def laplacian_variance(images: np.ndarray) -> np.ndarray:
    """Returns the variance of the 4-neighbour Laplacian of each grey image [N] (a sharpness measure)."""
    grey = np.asarray(images, np.float32).mean(axis=-1)
    lap = (grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1]
           - 4 * grey[:, 1:-1, 1:-1])
    return lap.reshape(len(grey), -1).var(axis=1)
