"""Small building blocks shared by the attention branches: token projection, MLP, multi-head attention."""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


class TokenProjection(nn.Module):
    """Projects each backbone map to d_model channels and adds position and source embeddings.

    The two maps come from different backbones (and may have different widths), so each source
    has its own 1x1 convolution; the position embedding is shared because both maps are the same
    7x7 grid over the same aligned face.
    """

    def __init__(self, in_channels: tuple[int, ...], d_model: int = 128, map_size: int = 7) -> None:
        super().__init__()
        self.num_sources = len(in_channels)
        self.d_model = d_model
        self.map_size = map_size
        self.proj = nn.ModuleList(nn.Conv2d(c, d_model, kernel_size=1) for c in in_channels)
        self.pos_embed = nn.Parameter(torch.zeros(1, d_model, map_size, map_size))
        self.source_embed = nn.Parameter(torch.zeros(self.num_sources, d_model, 1, 1))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.source_embed, std=0.02)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Returns tokens [B, S*H*W, d_model], source-major (all of map 0, then all of map 1)."""
        out = []
        for s, (proj, x) in enumerate(zip(self.proj, maps)):
            # [B, C, H, W] -> [B, d, H, W]
            y = proj(x) + self.pos_embed + self.source_embed[s]
            out.append(y.flatten(2).transpose(1, 2))  # [B, d, H, W] -> [B, H*W, d]
        return torch.cat(out, dim=1)


class Mlp(nn.Module):
    """Two-layer GELU MLP; returns a tensor of the input's shape with out_features last."""

    def __init__(self, in_features: int, hidden_features: int, out_features: Optional[int] = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns fc2(drop(gelu(fc1(x))))."""
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Returns x [B, N, C] reshaped to [B, heads, N, C/heads]."""
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """Returns x [B, heads, N, d_h] reshaped to [B, N, heads*d_h]."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                        mask: Optional[torch.Tensor] = None, dropout: float = 0.0) -> torch.Tensor:
    """Returns softmax(q k^T / sqrt(d_h)) v over heads, [B, Nq, C], for q [B, Nq, C], k/v [B, Nk, C].

    mask is boolean [Nq, Nk], True where a query may attend to a key.
    """
    out = F.scaled_dot_product_attention(
        split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads),
        attn_mask=mask, dropout_p=dropout)
    return merge_heads(out)
