"""Tests of facefuse/evaluation/ijb.py against insightface-style template loops in float64."""

from __future__ import annotations

import numpy as np
import pytest

import facefuse.evaluation.ijb as ijb_module
from facefuse.errors import DataFormatError
from facefuse.evaluation import ijb_scores, tar_at_far, template_features

from .reference import ref_ijb_scores, ref_tar_at_far, ref_template_features


def _ijb_case(rng: np.random.Generator, n_templates: int, dim: int = 16, max_media: int = 6,
              max_frames: int = 5, shuffle: bool = False) -> dict[str, np.ndarray]:
    """Templates of 1..max_media media of 1..max_frames images; ids sparse and unsorted."""
    tids = rng.choice(np.arange(1, 50 * n_templates + 2), n_templates, replace=False)
    templates, medias = [], []
    next_media = 1000
    for t in tids:
        for _ in range(int(rng.integers(1, max_media + 1))):
            frames = int(rng.integers(1, max_frames + 1))
            # Now and then a template reuses a media id of another template.
            mid = int(rng.integers(1000, next_media + 1)) if rng.random() < 0.1 else next_media
            next_media += 1
            templates += [t] * frames
            medias += [mid] * frames
    templates, medias = np.array(templates), np.array(medias)
    if shuffle:
        perm = rng.permutation(len(templates))
        templates, medias = templates[perm], medias[perm]
    n = len(templates)
    feats = (rng.standard_normal((n, dim)) * rng.uniform(0.5, 30)).astype(np.float32)
    scores = rng.uniform(0.3, 1.0, n).astype(np.float32)
    return {"img_feats": feats, "face_scores": scores, "templates": templates, "medias": medias}


def _pairs(rng: np.random.Generator, templates: np.ndarray, n_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    unique = np.unique(templates)
    p1 = rng.choice(unique, n_pairs)
    p2 = rng.choice(unique, n_pairs)
    keep = p1 != p2
    return p1[keep], p2[keep]


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for n_templates, shuffle in ((1, False), (2, True), (37, False), (150, True)):
        case = _ijb_case(rng, n_templates, shuffle=shuffle)
        p1, p2 = _pairs(rng, case["templates"], 3000) if n_templates > 1 else (case["templates"][:1],) * 2
        ours = ijb_scores(**case, p1=p1, p2=p2)
        theirs = ref_ijb_scores(**case, p1=p1, p2=p2)
        assert ours.dtype == np.float64 and ours.shape == p1.shape
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_single_image_templates_and_many_media_templates() -> None:
    rng = np.random.default_rng(10)
    for max_media, max_frames in ((1, 1), (1, 8), (12, 1), (12, 8)):
        case = _ijb_case(rng, 60, max_media=max_media, max_frames=max_frames, shuffle=True)
        p1, p2 = _pairs(rng, case["templates"], 2000)
        np.testing.assert_allclose(ijb_scores(**case, p1=p1, p2=p2),
                                   ref_ijb_scores(**case, p1=p1, p2=p2), rtol=0, atol=1e-9)


def test_template_features_match_reference() -> None:
    rng = np.random.default_rng(11)
    case = _ijb_case(rng, 80, shuffle=True)
    feats, unique_t = template_features(**case)
    ref_feats, ref_unique = ref_template_features(case["img_feats"], case["face_scores"],
                                                  case["templates"], case["medias"])
    np.testing.assert_array_equal(unique_t, ref_unique)
    np.testing.assert_allclose(feats, ref_feats, rtol=0, atol=1e-12)


def test_blocked_path_matches_one_shot_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(12)
    case = _ijb_case(rng, 2500, dim=8, max_media=2, max_frames=2)
    p1, p2 = _pairs(rng, case["templates"], 40_000)
    one_shot = ijb_scores(**case, p1=p1, p2=p2)
    monkeypatch.setattr(ijb_module, "_MAX_GRAM", 0)
    blocked = ijb_scores(**case, p1=p1, p2=p2)
    np.testing.assert_allclose(blocked, one_shot, rtol=0, atol=1e-12)
    np.testing.assert_allclose(blocked, ref_ijb_scores(**case, p1=p1, p2=p2), rtol=0, atol=1e-9)


def test_probe_gallery_pairs_and_tar_equal_reference() -> None:
    rng = np.random.default_rng(13)
    case = _ijb_case(rng, 300, shuffle=False)
    unique = np.unique(case["templates"])
    gallery, probes = unique[:40], unique[40:]
    g = rng.choice(gallery, 6000)
    p = rng.choice(probes, 6000)
    labels = (rng.random(6000) < 0.05).astype(np.int64)
    ours = ijb_scores(**case, p1=g, p2=p)
    theirs = ref_ijb_scores(**case, p1=g, p2=p)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert tar_at_far(labels, ours) == ref_tar_at_far(labels, theirs)


def test_swapped_and_repeated_pairs_score_identically() -> None:
    rng = np.random.default_rng(14)
    case = _ijb_case(rng, 50)
    p1, p2 = _pairs(rng, case["templates"], 500)
    both = ijb_scores(**case, p1=np.concatenate([p1, p2, p1]), p2=np.concatenate([p2, p1, p2]))
    n = len(p1)
    np.testing.assert_array_equal(both[:n], both[n:2 * n])
    np.testing.assert_array_equal(both[:n], both[2 * n:])


def test_float64_and_integer_feature_input() -> None:
    rng = np.random.default_rng(15)
    case = _ijb_case(rng, 30)
    p1, p2 = _pairs(rng, case["templates"], 300)
    ref = ref_ijb_scores(**case, p1=p1, p2=p2)
    case64 = dict(case, img_feats=case["img_feats"].astype(np.float64))
    np.testing.assert_allclose(ijb_scores(**case64, p1=p1, p2=p2), ref, rtol=0, atol=1e-9)
    case_int = dict(case, img_feats=np.round(case["img_feats"]).astype(np.int32))
    np.testing.assert_allclose(ijb_scores(**case_int, p1=p1, p2=p2),
                               ref_ijb_scores(**case_int, p1=p1, p2=p2), rtol=0, atol=1e-9)


def test_pair_naming_template_without_images() -> None:
    rng = np.random.default_rng(16)
    case = _ijb_case(rng, 10)
    p1, p2 = _pairs(rng, case["templates"], 50)
    p2 = p2.copy()
    p2[7] = 10**9 + 7
    with pytest.raises(DataFormatError, match=r"p2 row 7 names template 1000000007, which has no images") as err:
        ijb_scores(**case, p1=p1, p2=p2)
    assert err.value.field == "p2" and err.value.fix
    p1 = p1.copy()
    p1[3] = -5  # negative ids take the binary-search route
    with pytest.raises(DataFormatError, match=r"p1 row 3 names template -5") as err:
        ijb_scores(**case, p1=p1, p2=p2)


def test_nan_feature_names_the_image_row() -> None:
    rng = np.random.default_rng(17)
    case = _ijb_case(rng, 10)
    p1, p2 = _pairs(rng, case["templates"], 50)
    case["img_feats"][11, 3] = np.nan
    with pytest.raises(DataFormatError, match="img_feats row 11 contains NaN") as err:
        ijb_scores(**case, p1=p1, p2=p2)
    assert err.value.field == "img_feats"


def test_mismatched_lengths_name_the_argument() -> None:
    rng = np.random.default_rng(18)
    case = _ijb_case(rng, 10)
    p1, p2 = _pairs(rng, case["templates"], 50)
    short = dict(case, face_scores=case["face_scores"][:-1])
    with pytest.raises(DataFormatError, match="face_scores has") as err:
        ijb_scores(**short, p1=p1, p2=p2)
    assert err.value.field == "face_scores"
    with pytest.raises(DataFormatError, match="p2 has") as err:
        ijb_scores(**case, p1=p1, p2=p2[:-1])
    assert err.value.field == "p2"
    bad_ids = dict(case, medias=case["medias"].astype(np.float64) + 0.5)
    with pytest.raises(DataFormatError, match="medias row 0") as err:
        ijb_scores(**bad_ids, p1=p1, p2=p2)
    assert err.value.field == "medias"
