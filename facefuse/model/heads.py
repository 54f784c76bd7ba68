"""Margin-softmax classifiers on the normalised embedding: ArcFace, CosFace and plain (cosine) softmax."""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from facefuse.errors import ConfigError

logger = logging.getLogger(__name__)


class CosineClassifier(nn.Module):
    """Cosine logits s * cos(theta) between the normalised embedding and normalised class centres.

    This is the "softmax" head: no margin. Using cosines (NormFace) rather than a free linear
    layer keeps the ablation to one variable, the margin, and keeps embeddings cosine-comparable.
    Subclasses change the target-class cosine in `_target_logit`.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0,
                 margin: float = 0.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.scale = scale
        self.margin = margin
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, z: torch.Tensor) -> torch.Tensor:
        """Returns cos(theta) [B, num_classes] between normalised z [B, E] and the class centres."""
        return F.linear(F.normalize(z, dim=1), F.normalize(self.weight, dim=1))

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns scaled logits [B, num_classes]; the margin applies to the labelled class only."""
        cos = self.cosine(z)
        if labels is None:
            return cos * self.scale
        index = labels.long().view(-1, 1)
        target = self._target_logit(cos.gather(1, index))
        return cos.scatter(1, index, target) * self.scale


class ArcFaceHead(CosineClassifier):
    """Additive angular margin: the target logit is cos(theta + m) (Deng et al., 2019).

    Past theta = pi - m, cos(theta + m) stops decreasing in theta, so (as in insightface) the
    target falls back to cos(theta) - m*sin(m) there; with easy_margin the margin applies only
    where cos(theta) > 0.
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0,
                 margin: float = 0.5, easy_margin: bool = False) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)
        self.easy_margin = easy_margin
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        self.threshold = math.cos(math.pi - margin)
        self.fallback = math.sin(math.pi - margin) * margin

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        # clamp away from +-1: d/dx sqrt(1 - x^2) is infinite there
        cos_t = cos_target.clamp(-1.0 + 1e-7, 1.0 - 1e-7)
        sin_t = torch.sqrt(1.0 - cos_t * cos_t)
        cos_t_m = cos_t * self.cos_m - sin_t * self.sin_m  # cos(theta + m)
        if self.easy_margin:
            return torch.where(cos_t > 0, cos_t_m, cos_t)
        return torch.where(cos_t > self.threshold, cos_t_m, cos_t - self.fallback)


class CosFaceHead(CosineClassifier):
    """Additive cosine margin: the target logit is cos(theta) - m (Wang et al., 2018)."""

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0,
                 margin: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, scale, margin)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin


HEAD_CLASSES: dict[str, type[CosineClassifier]] = {
    "arcface": ArcFaceHead,
    "cosface": CosFaceHead,
    "softmax": CosineClassifier,
}


def build_head(name: str, embedding_size: int, num_classes: int, scale: float = 64.0,
               margin: float = 0.0, easy_margin: bool = False) -> CosineClassifier:
    """Returns the classifier named `name` ("arcface", "cosface" or "softmax")."""
    if name not in HEAD_CLASSES:
        raise ConfigError(None, f"unknown head {name!r}", field="head",
                          fix=f"use one of: {', '.join(HEAD_CLASSES)}")
    if name == "arcface":
        return ArcFaceHead(embedding_size, num_classes, scale, margin, easy_margin)
    if name == "cosface":
        return CosFaceHead(embedding_size, num_classes, scale, margin)
    return CosineClassifier(embedding_size, num_classes, scale, 0.0)
