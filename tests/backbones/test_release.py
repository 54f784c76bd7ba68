"""The released tiny backbones: installed only on the suite they learned from, never trusted blindly."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from facefuse.backbones import checkpoint_hash
from facefuse.backbones.pretrain import (ADAFACE_RELEASE, ARCFACE_RELEASE, RELEASE_RECIPES, train_tiny_backbone,
                                         with_overrides)
from facefuse.backbones.release import (FILES, RELEASE_DIR, install_release, read_manifest, released_backbones,
                                        resemblance, ship_release, suite_digest)
from facefuse.embedded import ensure_tiny_backbones

from .test_pretrain import MICRO, _toy_faces


def _ship(world: dict[str, Path], release: Path, seed: int = 3) -> Path:
    recipes = {r.loss: asdict(r) for r in RELEASE_RECIPES}
    return ship_release({"arcface": world["arcface"], "adaface": world["adaface"]}, world["data"],
                        recipes, {}, "test", seed=seed, release_dir=release)


def test_a_release_for_this_suite_is_installed_instead_of_pretraining(world, tmp_path: Path) -> None:
    release = tmp_path / "release"
    manifest = json.loads(_ship(world, release).read_text())
    assert manifest["suite_digest"] == suite_digest(world["data"])
    out = tmp_path / "backbones"
    # seed 3 is the world's suite: installed, nothing trained (a pretraining would take minutes)
    assert ensure_tiny_backbones(world["data"], out, seed=3, release_dir=release) is False
    for key, rel in FILES.items():
        assert checkpoint_hash(out / rel) == checkpoint_hash(world[key])
    marker = json.loads((out / "pretrain_done.json").read_text())
    assert marker["source"] == "release" and marker["seed"] == 3
    # the second call finds them in place
    assert ensure_tiny_backbones(world["data"], out, seed=3, release_dir=release) is False


def test_a_release_is_refused_for_another_suite_seed_or_a_tampered_file(world, tmp_path: Path) -> None:
    release = tmp_path / "release"
    _ship(world, release)
    assert released_backbones(world["data"], release, seed=3) is not None
    assert released_backbones(world["data"], release, seed=0) is None  # another suite
    manifest = read_manifest(release)
    manifest["suite_digest"] = "0" * 16  # the suite was rebuilt differently
    (release / "release.json").write_text(json.dumps(manifest))
    assert released_backbones(world["data"], release, seed=3) is None
    _ship(world, release)
    ckpt = release / Path(FILES["adaface"]).name
    ckpt.write_bytes(ckpt.read_bytes()[:-10] + b"0123456789")
    assert released_backbones(world["data"], release, seed=3) is None
    assert released_backbones(world["data"], tmp_path / "nothing", seed=3) is None
    installed = install_release({"arcface": world["arcface"]}, tmp_path / "x")
    assert installed["arcface"].read_bytes() == world["arcface"].read_bytes()


def test_the_shipped_release_matches_its_record_and_the_recipe_in_code() -> None:
    manifest = read_manifest(RELEASE_DIR)
    assert manifest is not None, "facefuse/backbones/release/release.json is missing"
    for key, recipe in (("arcface", ARCFACE_RELEASE), ("adaface", ADAFACE_RELEASE)):
        entry = manifest["backbones"][key]
        assert checkpoint_hash(RELEASE_DIR / entry["file"]) == entry["sha256"]
        recorded = {k: tuple(v) if isinstance(v, list) else v for k, v in entry["recipe"].items()}
        assert recorded == asdict(recipe), f"{key}: the recipe in code is not the one shipped"
    shape = resemblance(manifest["backbones"]["arcface"]["scores"], manifest["backbones"]["adaface"]["scores"])
    assert shape["resembles_real_pair"], shape  # within 2 points on high quality, AdaFace ahead on low


@pytest.mark.parametrize("recipe", RELEASE_RECIPES, ids=lambda r: r.name)
def test_a_short_run_of_the_release_recipe_learns(recipe) -> None:
    """The release recipe, cut to a few steps on a toy set, moves the way the shipped run did:
    the loss falls and the training accuracy rises."""
    images, labels = _toy_faces()
    short = with_overrides(recipe, steps=16, **MICRO)
    _, _, metrics = train_tiny_backbone(images, labels, 4, short, progress=False)
    assert metrics["final_loss"] < 0.8 * metrics["first_loss"], metrics


def test_resemblance_reads_the_real_pairs_shape() -> None:
    arc = {"synth_lfw/acc": 0.95, "synth_cfp_fp/acc": 0.90, "synth_ijbb/tar_far_0.0001": 0.30}
    ada = {"synth_lfw/acc": 0.94, "synth_cfp_fp/acc": 0.89, "synth_ijbb/tar_far_0.0001": 0.35}
    assert resemblance(arc, ada)["resembles_real_pair"]
    ada["synth_cfp_fp/acc"] = 0.85
    assert not resemblance(arc, ada)["close_on_high_quality"]
