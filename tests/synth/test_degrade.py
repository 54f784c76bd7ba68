"""Degradations: stronger settings give blurrier, further-from-clean images; the same rng, the same bytes."""

from __future__ import annotations

import numpy as np

from facefuse.synth import faces
from facefuse.synth.degrade import decode, degrade, laplacian_variance


def _clean(n: int = 12) -> np.ndarray:
    ident = faces.stack([faces.sample_identity(1, i) for i in range(n)])
    nuis = faces.stack([faces.sample_nuisance(np.random.default_rng(i), 0.5) for i in range(n)])
    a, b = faces.aligned_transform(faces.pose_geometry(ident, nuis)["landmarks"])
    return faces.render(ident, nuis, a, b, 112)


def _psnr(x: np.ndarray, y: np.ndarray) -> float:
    mse = np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-9)))


def test_stronger_degradation_is_blurrier_and_further_from_the_clean_image() -> None:
    clean = _clean()
    by_strength = {}
    for s in (0.0, 0.5, 1.0):
        out = np.stack([decode(degrade(im, s, np.random.default_rng([7, k]))) for k, im in enumerate(clean)])
        by_strength[s] = out
    psnr = {s: np.mean([_psnr(o, c) for o, c in zip(out, clean)]) for s, out in by_strength.items()}
    assert psnr[0.0] > 35 > psnr[0.5] > psnr[1.0]
    sharp = {s: np.median(laplacian_variance(out)) for s, out in by_strength.items()}
    assert sharp[0.0] > sharp[1.0]
    assert by_strength[1.0].shape == clean.shape and by_strength[1.0].dtype == np.uint8


def test_degrade_is_deterministic_given_the_rng() -> None:
    im = _clean(1)[0]
    assert degrade(im, 0.7, np.random.default_rng(3)) == degrade(im, 0.7, np.random.default_rng(3))
    assert degrade(im, 0.7, np.random.default_rng(3)) != degrade(im, 0.7, np.random.default_rng(4))


def test_laplacian_variance_drops_with_blur() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (1, 32, 32, 3)).astype(np.uint8)
    blurred = ((img[:, :-1, :-1].astype(int) + img[:, 1:, 1:]) // 2).astype(np.uint8)
    assert laplacian_variance(blurred)[0] < laplacian_variance(img)[0]
