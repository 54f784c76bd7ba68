"""The AdaFace training head: a quality-adaptive margin driven by the embedding norm.

The ArcFace head is facefuse.model.heads.ArcFaceHead (one copy in the project); AdaFace needs the
un-normalised embedding's norm as well, so it has its own head here, computing what
mk-minchul/AdaFace head.py computes (Kim et al., CVPR 2022).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

logger = logging.getLogger(__name__)


class AdaFaceHead(nn.Module):
    """Margin softmax whose margin follows the batch-standardised feature norm (image quality proxy).

    For a sample with norm n, z = clip(h * (n - mu) / (sigma + eps), -1, 1) with mu, sigma an EMA
    of the batch's norm mean and std; the target logit is s * (cos(theta - m*z) - (m + m*z)):
    high-quality samples (z > 0) get an ArcFace-like angular margin, low-quality ones a smaller,
    CosFace-like one, so hard samples of bad images are not over-emphasised.
    """

    def __init__(self, embedding_size: int, num_classes: int, m: float = 0.4, h: float = 0.333,
                 s: float = 64.0, t_alpha: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__()
        self.m, self.h, self.s, self.t_alpha, self.eps = m, h, s, t_alpha, eps
        # [E, classes] as in AdaFace, so a saved head has the official "head.kernel" shape
        self.kernel = nn.Parameter(torch.empty(embedding_size, num_classes))
        with torch.no_grad():
            self.kernel.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)
        self.register_buffer("t", torch.zeros(1))
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    def forward(self, unit_embeddings: torch.Tensor, norms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Returns scaled logits [B, classes] from unit embeddings [B, E], their norms [B, 1] and labels [B]."""
        kernel = self.kernel / self.kernel.norm(2, 0, True)
        cosine = (unit_embeddings @ kernel).clamp(-1 + self.eps, 1 - self.eps)
        safe_norms = norms.clamp(0.001, 100).detach()
        if self.training:
            with torch.no_grad():
                self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.mean())
                self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * safe_norms.std())
        scaler = ((safe_norms - self.batch_mean) / (self.batch_std + self.eps) * self.h).clamp(-1, 1)  # [B, 1]
        onehot = torch.zeros_like(cosine).scatter_(1, labels.view(-1, 1), 1.0)
        g_angular = -self.m * scaler  # [B, 1]
        theta = cosine.acos()
        cosine = (theta + onehot * g_angular).clamp(self.eps, math.pi - self.eps).cos()
        g_additive = self.m + self.m * scaler
        return (cosine - onehot * g_additive) * self.s
