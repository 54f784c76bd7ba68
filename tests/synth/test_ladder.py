"""The quality ladder: real .bin files, one pair list at every level, quality that falls with the level."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from facefuse.data import DATASETS, dataset_path, read_verification_bin
from facefuse.data.registry import LADDER_NAMES
from facefuse.errors import ConfigError, DataFormatError
from facefuse.quality import measure_quality
from facefuse.synth import LADDER_MANIFEST, build_ladder, identity_ranges, ladder_is_complete, ladder_levels
from facefuse.synth import ladder as L
from facefuse.synth import suite as S

PAIRS = 40  # per level: 10 folds of 2 genuine and 2 impostor pairs, 80 images


@pytest.fixture(scope="module")
def ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_ladder(tmp_path_factory.mktemp("ladder"), seed=0, pairs=PAIRS, workers=1, progress=False)


def test_every_level_is_a_registered_bin_of_the_same_pairs(ladder: Path) -> None:
    assert [lv.name for lv in ladder_levels()] == list(LADDER_NAMES)
    assert len(LADDER_NAMES) >= 5
    issames = []
    for name in LADDER_NAMES:
        spec = DATASETS[name]
        assert spec.kind == "verification" and spec.primary_metric == "acc" and spec.synthetic
        images, issame = read_verification_bin(dataset_path(name, ladder))  # the real-format reader
        assert images.shape == (2 * PAIRS, 112, 112, 3) and images.dtype == np.uint8
        assert issame.reshape(10, 4).tolist() == [[True, True, False, False]] * 10  # folds, as lfw.bin
        issames.append(issame)
    assert all(np.array_equal(issames[0], i) for i in issames[1:])
    body = json.loads((ladder / LADDER_MANIFEST).read_text())
    assert sorted(body["files"]) == [f"faces_synth_ladder/{n}.bin" for n in LADDER_NAMES]


def test_levels_redraw_the_same_images_more_degraded_and_more_turned() -> None:
    levels, issame = L.plan_ladder(0, PAIRS)
    specs = list(levels.values())
    for a, b in zip(specs, specs[1:]):
        assert [s.key for s in a] == [s.key for s in b]
        assert [s.identity for s in a] == [s.identity for s in b]
        assert all(y.degradation > x.degradation and y.yaw_sd > x.yaw_sd for x, y in zip(a, b))
    assert specs[0][0].degradation == 0.0 and specs[-1][0].degradation == 1.0


def test_ladder_identities_are_disjoint_from_the_suite() -> None:
    lo, hi = L.identity_range()
    levels, _ = L.plan_ladder(0, PAIRS)
    ids = {s.identity for s in levels[LADDER_NAMES[0]]}
    assert ids and all(lo <= i < hi for i in ids)
    for other_lo, other_hi in identity_ranges(S.make_config()).values():
        assert hi <= other_lo or other_hi <= lo


def test_measured_sharpness_falls_level_by_level(ladder: Path) -> None:
    scores = [measure_quality(n, ladder, measure="sharpness") for n in LADDER_NAMES]
    values = [s.value for s in scores]
    assert all(a > b for a, b in zip(values, values[1:])), values
    for s in scores:
        assert s.n_images == 2 * PAIRS and 0 < s.se < abs(values[0] - values[-1])
    # the spread of the ladder is many standard errors wide: a graded, measurable quality
    assert values[0] - values[-1] > 5 * max(s.se for s in scores)


def test_adaface_norm_is_measured_with_the_backbone_and_its_hash(ladder: Path, tmp_path: Path) -> None:
    from facefuse.backbones import get_model, save_adaface
    from facefuse.backbones.checkpoints import checkpoint_hash

    torch.manual_seed(0)
    ckpt = tmp_path / "adaface.ckpt"
    save_adaface(get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32, layout="adaface"), ckpt)
    s = measure_quality(LADDER_NAMES[0], ladder, ckpt, measure="adaface_norm", max_images=50)
    assert s.measure == "adaface_norm" and s.n_images == 50 and s.value > 0 and s.se > 0
    assert s.backbone_sha256 == checkpoint_hash(ckpt)
    with pytest.raises(ConfigError, match="needs the AdaFace backbone"):
        measure_quality(LADDER_NAMES[0], ladder, None, measure="adaface_norm")
    with pytest.raises(ConfigError, match="unknown quality measure"):
        measure_quality(LADDER_NAMES[0], ladder, ckpt, measure="brisque")


def test_ladder_is_complete_semantics_and_missing_level_hint(ladder: Path, tmp_path: Path) -> None:
    assert ladder_is_complete(ladder, 0, pairs=PAIRS)
    assert not ladder_is_complete(ladder, 1, pairs=PAIRS)
    assert not ladder_is_complete(ladder, 0)  # default size differs
    with pytest.raises(DataFormatError, match="--ladder"):
        dataset_path("synth_q2", tmp_path)
    with pytest.raises(ConfigError, match="multiple of 20"):
        build_ladder(tmp_path, pairs=30)
