"""The synthetic suite: real formats, determinism, disjoint identities, quality, completeness."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from facefuse.data import RecordIODataset, read_ijb, read_verification_bin
from facefuse.errors import ConfigError
from facefuse.synth import MANIFEST, build_suite, identity_ranges, make_config, suite_is_complete
from facefuse.synth import suite as S
from facefuse.synth.degrade import decode, laplacian_variance

TINY = dict(train_identities=6, train_images_per_identity=3, verification_pairs=20, ijb_identities=3,
            ijb_templates_per_identity=2, ijb_impostor_pairs=10, ijb_max_media_per_template=3)
VER = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_suite(tmp_path_factory.mktemp("synth"), seed=0, workers=1, progress=False, **TINY)


def test_files_are_readable_by_the_real_format_readers(suite: Path) -> None:
    train = RecordIODataset(suite / "faces_synth")
    assert len(train) == 18 and train.num_classes == 6
    assert np.array_equal(np.bincount(train.labels), [3] * 6)
    img, label = train[0]
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and 0 <= label < 6
    for name in VER:
        images, issame = read_verification_bin(suite / "faces_synth" / f"synth_{name}.bin")
        assert images.shape == (40, 112, 112, 3)
        assert issame.sum() == 10
        # 10 folds, each half genuine then half impostor, as lfw.bin is laid out
        assert issame.reshape(10, 2).tolist() == [[True, False]] * 10
    for relpath, ijb_name in S.IJB_SETS.values():
        ijb = read_ijb(suite / relpath, ijb_name)
        n = len(ijb.image_names)
        assert ijb.landmarks.shape == (n, 5, 2) and ijb.face_scores.shape == (n,)
        assert ((ijb.face_scores > 0) & (ijb.face_scores <= 1)).all()
        assert set(ijb.labels.tolist()) == {0, 1} and ijb.labels.mean() < 0.5
        assert len(np.unique(ijb.templates)) == 3 * 2
        # templates hold several media and some media several frames
        assert max(len(np.unique(ijb.medias[ijb.templates == t])) for t in np.unique(ijb.templates)) > 1
        assert np.bincount(ijb.medias).max() > 1
        aligned = ijb.aligned_images(np.arange(4))
        assert aligned.shape == (4, 112, 112, 3)
        assert ijb.load_crop(0).shape == (160, 160, 3)


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(suite: Path, tmp_path: Path) -> None:
    again = build_suite(tmp_path / "again", seed=0, workers=2, progress=False, **TINY)
    assert _digests(again) == _digests(suite)
    cfg = make_config(**TINY)
    specs = S.plan_train(0, cfg)[0][:4]
    same = S.render_chunk(0, cfg, specs).images
    assert np.array_equal(same, S.render_chunk(0, cfg, specs).images)
    assert not np.array_equal(same, S.render_chunk(1, cfg, specs).images)


def test_identities_are_disjoint_between_train_and_every_evaluation_set() -> None:
    cfg = make_config(**TINY)
    used = {"train": {s.identity for s in S.plan_train(0, cfg)[0]}}
    for name in VER:
        specs = S.plan_verification(0, name, cfg)[0]
        used[name] = {s.identity for s in specs} | {s.twin_of for s in specs if s.twin_of >= 0}
    for name in S.IJB_SETS:
        used[name] = {s.identity for s in S.plan_ijb(0, name, cfg).specs}
    names = list(used)
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            assert not used[x] & used[y], (x, y)
    ranges = sorted(identity_ranges(cfg).values())
    assert all(hi <= lo2 for (lo, hi), (lo2, hi2) in zip(ranges, ranges[1:]))
    assert used["train"] == set(range(6))


def test_pair_structure_of_the_hard_sets() -> None:
    cfg = make_config(**TINY)
    specs, issame = S.plan_verification(0, "cfp_fp", cfg)
    yaws = np.array([s.yaw for s in specs]).reshape(-1, 2)
    assert (np.abs(yaws[:, 0]) < 20).all() and (np.abs(yaws[:, 1]) >= 50).all()
    specs, issame = S.plan_verification(0, "agedb_30", cfg)
    ages = np.array([s.age for s in specs]).reshape(-1, 2)
    assert (ages[np.array(issame), 1] - ages[np.array(issame), 0] >= 0.4).all()
    specs, issame = S.plan_verification(0, "calfw", cfg)
    impostors = [specs[2 * k + 1] for k, same in enumerate(issame) if not same]
    assert all(s.twin_of == specs[2 * k].identity for k, s in zip([k for k, same in enumerate(issame) if not same],
                                                                  impostors))


def test_ijb_images_are_degraded_more_than_verification_images(suite: Path) -> None:
    lfw, _ = read_verification_bin(suite / "faces_synth" / "synth_lfw.bin")
    psnr = {}
    for name, (relpath, ijb_name) in S.IJB_SETS.items():
        plan = S.plan_ijb(0, name, make_config(**TINY))
        clean_specs = [s._replace(degradation=0.0) for s in plan.specs]
        clean = [decode(c) for k in range(0, len(clean_specs), S.CHUNK)
                 for c in S.render_chunk(0, make_config(**TINY), clean_specs[k:k + S.CHUNK]).crops]
        ijb = read_ijb(suite / relpath, ijb_name)
        stored = [ijb.load_crop(i) for i in range(len(ijb.image_names))]
        mse = [np.mean((a.astype(float) - b.astype(float)) ** 2) for a, b in zip(stored, clean)]
        psnr[name] = float(np.mean([10 * np.log10(255 ** 2 / m) for m in mse]))
        aligned = ijb.aligned_images()
        assert np.median(laplacian_variance(aligned)) < np.median(laplacian_variance(lfw))
    assert psnr["ijbc"] < psnr["ijbb"] < 40


def test_suite_is_complete_semantics(suite: Path, tmp_path: Path) -> None:
    assert suite_is_complete(suite, 0, **TINY)
    assert not suite_is_complete(suite, 1, **TINY)
    assert not suite_is_complete(suite, 0, **{**TINY, "nuisance": 0.5})
    assert not suite_is_complete(suite, 0)  # default sizes differ from the tiny ones
    manifest = suite / MANIFEST
    newest = max(p.stat().st_mtime_ns for p in suite.rglob("*") if p.is_file() and p != manifest)
    assert manifest.stat().st_mtime_ns >= newest  # written last
    body = json.loads(manifest.read_text())
    assert body["seed"] == 0 and body["config"]["train_identities"] == 6
    copy = tmp_path / "copy"
    for rel in body["files"]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes((suite / rel).read_bytes())
    (copy / MANIFEST).write_text(manifest.read_text())
    assert suite_is_complete(copy, 0, **TINY)
    rec = copy / "faces_synth" / "train.rec"
    rec.write_bytes(rec.read_bytes()[:-10])  # truncated file: not complete
    assert not suite_is_complete(copy, 0, **TINY)
    assert not suite_is_complete(tmp_path / "nothing", 0, **TINY)


def test_unknown_or_bad_knobs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train_identitys"):
        build_suite(tmp_path, train_identitys=3)
    with pytest.raises(ConfigError, match="verification_pairs"):
        make_config(verification_pairs=25)
    assert not (tmp_path / MANIFEST).exists()


def test_default_ijb_plan_has_a_million_impostor_pairs() -> None:
    # TAR@FAR=1e-4 must rest on >= 100 impostor scores: >= 1M impostor template pairs.
    plan = S.plan_ijb(0, "ijbc", S.SuiteConfig())
    impostors = int((plan.labels == 0).sum())
    assert impostors >= 1_000_000 and impostors * 1e-4 >= 100
    pairs = set(zip(plan.p1.tolist(), plan.p2.tolist()))
    assert len(pairs) == len(plan.labels)  # no pair listed twice
    assert int(plan.labels.sum()) == 120 * 12 * 11 // 2  # every same-identity template pair
