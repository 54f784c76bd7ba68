"""The AdaFace head against AdaFace's head.py computation written out plainly."""

from __future__ import annotations

import math

import torch

from facefuse.backbones.losses import AdaFaceHead


def _official(kernel, emb, norms, labels, batch_mean, batch_std, m=0.4, h=0.333, s=64.0, eps=1e-3):
    kernel_norm = kernel / torch.norm(kernel, 2, 0, True)
    cosine = torch.mm(emb, kernel_norm).clamp(-1 + eps, 1 - eps)
    safe_norms = torch.clip(norms, min=0.001, max=100).clone().detach()
    margin_scaler = torch.clip((safe_norms - batch_mean) / (batch_std + eps) * h, -1, 1)
    m_arc = torch.zeros(labels.size()[0], cosine.size()[1])
    m_arc.scatter_(1, labels.reshape(-1, 1), 1.0)
    m_arc = m_arc * (m * margin_scaler * -1)
    cosine = torch.clip(cosine.acos() + m_arc, min=eps, max=math.pi - eps).cos()
    m_cos = torch.zeros(labels.size()[0], cosine.size()[1])
    m_cos.scatter_(1, labels.reshape(-1, 1), 1.0)
    return (cosine - m_cos * (m + m * margin_scaler)) * s


def test_adaface_logits_and_norm_statistics_match_the_official_head():
    torch.manual_seed(0)
    head = AdaFaceHead(16, 7, t_alpha=0.01)
    raw = torch.randn(12, 16) * 5
    norms = raw.norm(2, 1, True)
    unit = raw / norms
    labels = torch.randint(0, 7, (12,))
    mean = 0.01 * norms.mean() + 0.99 * 20.0
    std = 0.01 * norms.std() + 0.99 * 100.0
    expected = _official(head.kernel.detach(), unit, norms, labels, mean, std)
    got = head(unit, norms, labels)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(head.batch_mean, mean.view(1))
    torch.testing.assert_close(head.batch_std, std.view(1))


def test_high_norm_samples_get_the_larger_angular_margin():
    head = AdaFaceHead(4, 3, t_alpha=1.0)
    unit = torch.nn.functional.normalize(head.kernel.detach().T[[0, 0]] + 0.3, dim=1)
    norms = torch.tensor([[5.0], [50.0]])
    logits = head(unit, norms, torch.tensor([0, 0]))
    # same direction, same class: the high-quality (large-norm) sample is penalised more
    assert logits[1, 0] < logits[0, 0]
    assert head.kernel.shape == (4, 3)  # AdaFace's [E, classes] "head.kernel"
