"""Tests of facefuse/model/heads.py: the target-logit rules of ArcFace, CosFace and softmax."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facefuse.errors import ConfigError
from facefuse.model import ArcFaceHead, CosFaceHead, CosineClassifier, build_head


def _cos(head: CosineClassifier, z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z, dim=1) @ F.normalize(head.weight, dim=1).T


def _unit_at_angle(theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (z [1, 2], class centres [2, 2]) with z at angle theta from class 0."""
    z = torch.tensor([[math.cos(theta), math.sin(theta)]])
    w = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    return z, w


@pytest.mark.parametrize("theta", [0.3, 1.2, 2.4])
def test_arcface_adds_the_angle_below_the_threshold(theta: float) -> None:
    head = ArcFaceHead(2, 2, scale=10.0, margin=0.5)
    z, w = _unit_at_angle(theta)
    head.weight.data.copy_(w)
    logits = head(z, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(theta + 0.5), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10 * _cos(head, z)[0, 1].item(), abs=1e-5)


def test_arcface_falls_back_past_pi_minus_m() -> None:
    m = 0.5
    head = ArcFaceHead(2, 2, scale=1.0, margin=m)
    theta = math.pi - 0.2  # theta + m would wrap past pi
    z, w = _unit_at_angle(theta)
    head.weight.data.copy_(w)
    expected = math.cos(theta) - math.sin(math.pi - m) * m
    assert head(z, torch.tensor([0]))[0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_arcface_easy_margin_only_where_cosine_is_positive() -> None:
    head = ArcFaceHead(2, 2, scale=1.0, margin=0.5, easy_margin=True)
    for theta, expected in ((0.4, math.cos(0.9)), (2.0, math.cos(2.0))):
        z, w = _unit_at_angle(theta)
        head.weight.data.copy_(w)
        assert head(z, torch.tensor([0]))[0, 0].item() == pytest.approx(expected, abs=1e-5)


def test_arcface_gradient_is_finite_when_z_equals_its_centre() -> None:
    head = ArcFaceHead(4, 3)
    z = head.weight.detach()[1:2].clone().requires_grad_(True)
    loss = F.cross_entropy(head(z, torch.tensor([1])), torch.tensor([1]))
    loss.backward()
    assert torch.isfinite(z.grad).all() and torch.isfinite(head.weight.grad).all()


def test_cosface_and_softmax() -> None:
    torch.manual_seed(0)
    z = torch.randn(5, 8)
    labels = torch.tensor([0, 1, 2, 3, 0])
    cos_head = CosFaceHead(8, 4, scale=30.0, margin=0.35)
    cos = _cos(cos_head, z)
    expected = cos.clone()
    expected[torch.arange(5), labels] -= 0.35
    assert torch.allclose(cos_head(z, labels), 30.0 * expected, atol=1e-5)
    soft = CosineClassifier(8, 4, scale=30.0)
    assert torch.allclose(soft(z, labels), 30.0 * _cos(soft, z), atol=1e-5)
    # without labels every head returns plain scaled cosines (for monitoring)
    assert torch.allclose(cos_head(z), 30.0 * cos, atol=1e-5)


def test_build_head_by_name() -> None:
    assert type(build_head("arcface", 8, 3, margin=0.5)) is ArcFaceHead
    assert type(build_head("cosface", 8, 3, margin=0.35)) is CosFaceHead
    assert type(build_head("softmax", 8, 3)) is CosineClassifier
    with pytest.raises(ConfigError) as info:
        build_head("magface", 8, 3)
    assert info.value.field == "head"
