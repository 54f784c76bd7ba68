"""The deployable form of a trained fusion head: two backbones' maps in, the embedding out."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from facefuse.model.config import FusionConfig
from facefuse.model.fusion import FusionModel


class FusionEmbedder(nn.Module):
    """Wraps a FusionModel for inference: ``forward(arcface_map, adaface_map)`` -> embedding.

    The classifier head only matters in training, so it is not part of this module (a
    checkpoint's head weights are dropped); dropout is off (eval mode) and the VIB gives its
    mean, as in evaluation.
    """

    def __init__(self, cfg: FusionConfig) -> None:
        super().__init__()
        self.fusion = FusionModel(FusionConfig.from_dict({**cfg.to_dict(), "num_classes": 0}))
        self.eval()

    @classmethod
    def from_checkpoint(cls, model_config: Mapping[str, Any],
                        state_dict: Mapping[str, torch.Tensor]) -> "FusionEmbedder":
        """Returns the embedder of a trained model's config and weights (head weights dropped)."""
        embedder = cls(FusionConfig.from_dict(dict(model_config)))
        weights = {k: v for k, v in state_dict.items() if not k.startswith("head.")}
        embedder.fusion.load_state_dict(weights, strict=True)
        return embedder.eval()

    @property
    def map_shapes(self) -> dict[str, list[int]]:
        """Returns the [C, H, W] of each input map."""
        cfg = self.fusion.cfg
        return {"arcface_map": [cfg.channels_a, cfg.map_size, cfg.map_size],
                "adaface_map": [cfg.channels_b, cfg.map_size, cfg.map_size]}

    @property
    def embedding_size(self) -> int:
        """Returns the width of the embedding."""
        return int(self.fusion.cfg.embedding_size)

    def forward(self, arcface_map: torch.Tensor, adaface_map: torch.Tensor) -> torch.Tensor:
        """Returns the embeddings [N, E] of the images whose maps ([N, C, H, W] each) are given."""
        return self.fusion.embed(arcface_map, adaface_map)
