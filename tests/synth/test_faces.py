"""The renderer: identities are deterministic, landmarks are where the faces are drawn."""

from __future__ import annotations

import numpy as np

from facefuse.data import ARCFACE_TEMPLATE, align_face
from facefuse.synth import faces


def _batch(n: int, yaw: float | None = None, seed: int = 0) -> tuple[faces.Params, faces.Params]:
    ident = faces.stack([faces.sample_identity(seed, i) for i in range(n)])
    nuis = faces.stack([faces.sample_nuisance(np.random.default_rng([seed, i]), 1.0, yaw=yaw, occlusion_p=0.0)
                        for i in range(n)])
    return ident, nuis


def test_identity_is_a_pure_function_of_seed_and_id() -> None:
    a, b = faces.sample_identity(3, 17), faces.sample_identity(3, 17)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = faces.sample_identity(3, 18)
    assert not np.allclose(a["eye_sep"], c["eye_sep"]) or not np.allclose(a["skin"], c["skin"])
    d = faces.sample_identity(4, 17)
    assert not all(np.array_equal(a[k], d[k]) for k in a)


def test_average_frontal_face_has_the_template_landmarks() -> None:
    ident = faces.stack([faces.sample_identity(0, 0, spread=0.0)])
    nuis = faces.stack([faces.sample_nuisance(np.random.default_rng(0), 0.0, yaw=0.0)])
    nuis["smile"][:] = 0
    lm = faces.pose_geometry(ident, nuis)["landmarks"][0]
    np.testing.assert_allclose(lm, ARCFACE_TEMPLATE, atol=0.6)


def test_aligned_landmarks_land_near_the_template() -> None:
    ident, nuis = _batch(32)
    g = faces.pose_geometry(ident, nuis)
    a, b = faces.aligned_transform(g["landmarks"])
    placed = faces.apply_similarity(a, b, g["landmarks"])
    err = np.linalg.norm(placed - ARCFACE_TEMPLATE, axis=-1)
    assert np.median(err) < 3.0
    assert err.max() < 15.0


def test_crop_aligned_with_its_landmarks_matches_the_direct_aligned_render() -> None:
    # The same face drawn as a rotated, shifted loose crop and directly aligned: aligning the crop with
    # its true landmarks must give back (nearly) the directly aligned picture, so the landmarks we
    # report are where the features really are.
    ident, nuis = _batch(6, yaw=None, seed=5)
    g = faces.pose_geometry(ident, nuis)
    a, b = faces.aligned_transform(g["landmarks"])
    direct = faces.render(ident, nuis, a, b, 112)
    rot = np.exp(1j * np.radians(np.array([25, -30, 10, 0, -15, 40]))) * np.array([1.2, 0.9, 1.0, 1.3, 1.1, 0.95])
    ac, bc = a * rot, (b - (56 + 60j)) * rot + (80 + 80j) + np.array([5, -8, 0, 3j, -4, 2j])
    crops = faces.render(ident, nuis, ac, bc, 160)
    lm = faces.apply_similarity(ac, bc, g["landmarks"])
    for k in range(len(crops)):
        realigned = align_face(crops[k], lm[k]).astype(np.float32)
        diff = np.abs(realigned[8:-8, 8:-8] - direct[k, 8:-8, 8:-8].astype(np.float32))
        assert diff.mean() < 10.0, (k, diff.mean())
        other = np.abs(realigned[8:-8, 8:-8] - direct[(k + 1) % len(crops), 8:-8, 8:-8].astype(np.float32))
        assert other.mean() > 2 * diff.mean()


def test_batch_rendering_does_not_depend_on_the_batch() -> None:
    ident, nuis = _batch(5)
    g = faces.pose_geometry(ident, nuis)
    a, b = faces.aligned_transform(g["landmarks"])
    whole = faces.render(ident, nuis, a, b, 112)
    one = faces.render({k: v[2:3] for k, v in ident.items()}, {k: v[2:3] for k, v in nuis.items()}, a[2:3], b[2:3], 112)
    assert np.abs(whole[2].astype(int) - one[0].astype(int)).max() <= 1


def test_yaw_moves_the_nose_towards_the_turn() -> None:
    ident = faces.stack([faces.sample_identity(0, 1)] * 3)
    nuis = faces.stack([faces.sample_nuisance(np.random.default_rng(0), 0.0, yaw=y) for y in (-40.0, 0.0, 40.0)])
    lm = faces.pose_geometry(ident, nuis)["landmarks"]
    eye_mid = lm[:, :2, 0].mean(axis=1)
    offset = lm[:, 2, 0] - eye_mid
    assert offset[0] < offset[1] - 5 < offset[2] - 10


def test_ageing_and_lookalikes_stay_close_to_the_identity() -> None:
    a, c = faces.sample_identity(0, 10), faces.sample_identity(0, 11)
    keys = [k for k in faces.GEOMETRY if k in faces.DRIFT_KEYS]
    vec = lambda p: np.array([p[k] / faces.GEOMETRY[k][1] for k in keys])  # noqa: E731
    old = faces.age_identity(a, 0.8)
    twin = faces.blend_identities(a, c, 0.4)
    d_other = np.linalg.norm(vec(a) - vec(c))
    assert np.linalg.norm(vec(a) - vec(twin)) < d_other
    assert 0 < np.linalg.norm(vec(a) - vec(old))
    assert old["wrinkles"] > 0 and faces.age_identity(a, 0.0)["wrinkles"] == 0
