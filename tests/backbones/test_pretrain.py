"""Tiny-backbone pretraining: augmentation, the training loop, and the saved official layouts."""

from __future__ import annotations

import json

import numpy as np
import torch

from facefuse.backbones import load_backbone
from facefuse.backbones.losses import AdaFaceHead
from facefuse.backbones.pretrain import (ADAFACE_TINY, ARCFACE_TINY, augment_batch, pretrain_tiny_backbones,
                                         set_margin, train_tiny_backbone, with_overrides)
from facefuse.model.heads import ArcFaceHead
from facefuse.data import write_recordio_dataset

MICRO = dict(widths=(4, 8, 12, 16), num_features=8, batch_size=8, warmup_steps=2, margin_warmup=0.0)


def _toy_faces(n_classes: int = 4, per_class: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each class is a colour blob at its own place; images are noisy copies."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(n_classes):
        base = np.full((112, 112, 3), 60, np.float32)
        y, x = 20 + 20 * c, 30 + 15 * c
        base[y:y + 30, x:x + 30] = rng.uniform(80, 255, 3)
        for _ in range(per_class):
            images.append(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def test_augmentations_keep_shape_and_range_and_differ():
    images, _ = _toy_faces()
    gen = torch.Generator().manual_seed(0)
    flip = augment_batch(images, "flip", gen)
    ada = augment_batch(images, "adaface", torch.Generator().manual_seed(0), prob=1.0)
    for x in (flip, ada):
        assert x.shape == (len(images), 3, 112, 112) and x.min() >= -1 and x.max() <= 1
    plain = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    mirrored = plain.flip(3)
    # flip-only output is always the image or its mirror
    assert all(torch.equal(flip[i], plain[i]) or torch.equal(flip[i], mirrored[i]) for i in range(len(images)))
    # with every AdaFace augmentation on, no image is left as it was
    assert not any(torch.equal(ada[i], plain[i]) or torch.equal(ada[i], mirrored[i]) for i in range(len(images)))


def test_adaface_augmentation_applies_only_the_chosen_ops():
    import pytest

    from facefuse.errors import ConfigError

    images, _ = _toy_faces()
    none = augment_batch(images, "adaface", torch.Generator().manual_seed(3), prob=1.0, ops=())
    flip = augment_batch(images, "flip", torch.Generator().manual_seed(3))
    assert torch.equal(none, flip)  # no op chosen: only the random flip
    no_crop = augment_batch(images, "adaface", torch.Generator().manual_seed(3), prob=1.0,
                            ops=("lowres", "photometric"))
    # the crop zeroes a box's outside; without it the borders keep their (non-black) pixels
    assert (no_crop[:, :, 0, :] > -1).any(dim=(1, 2)).all()
    with pytest.raises(ConfigError, match="aug_ops"):
        augment_batch(images, "adaface", torch.Generator(), ops=("cutout",))
    assert set(ADAFACE_TINY.aug_ops) <= {"crop", "lowres", "photometric"}


def test_training_reduces_the_loss_for_both_losses():
    images, labels = _toy_faces()
    for recipe in (ARCFACE_TINY, ADAFACE_TINY):
        model, _, metrics = train_tiny_backbone(images, labels, 4, with_overrides(recipe, steps=12, **MICRO),
                                                progress=False)
        assert metrics["final_loss"] < 0.8 * metrics["first_loss"], (recipe.name, metrics)
        assert not model.training and model.layout == recipe.layout


def test_pretrain_writes_both_official_layouts(tmp_path):
    images, labels = _toy_faces()
    write_recordio_dataset(tmp_path / "data" / "faces_synth", list(images), labels.tolist())
    recipes = [with_overrides(r, steps=2, **MICRO) for r in (ARCFACE_TINY, ADAFACE_TINY)]
    out = pretrain_tiny_backbones(tmp_path / "data", tmp_path / "out", recipes=recipes, progress=False)
    assert out["arcface"] == tmp_path / "out" / "arcface_tiny" / "backbone.pth"
    assert out["adaface"] == tmp_path / "out" / "adaface_tiny" / "adaface_tiny.ckpt"
    raw_arc = torch.load(out["arcface"], weights_only=True)
    raw_ada = torch.load(out["adaface"], weights_only=True)
    assert "layer1.0.downsample.0.weight" in raw_arc and "features.bias" in raw_arc
    assert "model.body.0.res_layer.0.weight" in raw_ada["state_dict"]
    assert raw_ada["state_dict"]["head.kernel"].shape == (8, 4)
    arc, ada = load_backbone(out["arcface"]), load_backbone(out["adaface"])
    assert (arc.layout, ada.layout) == ("insightface", "adaface")
    assert arc.forward_features(torch.zeros(1, 3, 112, 112)).shape == (1, 16, 7, 7)
    summary = json.loads((tmp_path / "out" / "pretrain.json").read_text())
    assert set(summary["backbones"]) == {"arcface_tiny", "adaface_tiny"}
    assert summary["backbones"]["arcface_tiny"]["recipe"]["augment"] == "flip"


def test_margin_warmup_gives_the_same_logits_as_a_head_built_with_that_margin():
    z, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    for make in (lambda m: ArcFaceHead(8, 5, margin=m), lambda m: AdaFaceHead(8, 5, m=m)):
        ramped, fixed = make(0.5), make(0.2)
        fixed.load_state_dict(ramped.state_dict())
        set_margin(ramped, 0.2)
        ramped.eval(), fixed.eval()
        n = z.norm(dim=1, keepdim=True)
        args = (z, y) if isinstance(fixed, ArcFaceHead) else (z / n, n, y)
        torch.testing.assert_close(ramped(*args), fixed(*args))
