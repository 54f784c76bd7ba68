"""Global attention: one pooled query token per map attends to every token of both maps."""

from __future__ import annotations

import logging

import torch
from torch import nn

from facefuse.model.layers import Mlp, multihead_attention

logger = logging.getLogger(__name__)


class GlobalAttention(nn.Module):
    """Multi-head attention of S query tokens (global average pool of each map) over all S*H*W tokens."""

    def __init__(self, dim: int, num_heads: int = 4, num_sources: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.num_sources = num_sources
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Returns [B, S, dim] for pooled queries [B, S, dim] and tokens [B, S*H*W, dim]."""
        k, v = self.kv(tokens).chunk(2, dim=-1)
        out = multihead_attention(self.q(queries), k, v, self.num_heads,
                                  dropout=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out))


class GlobalBlock(nn.Module):
    """Pre-norm block: pools each map to a query token, attends, then an MLP; returns [B, S, dim]."""

    def __init__(self, dim: int, num_heads: int = 4, num_sources: int = 2,
                 mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_sources = num_sources
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GlobalAttention(dim, num_heads, num_sources, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns one token per map, [B, S, dim], for tokens x [B, S*H*W, dim]."""
        b, n, d = x.shape
        y = self.norm1(x)
        # [B, S*H*W, d] -> [B, S, H*W, d] -> [B, S, d]
        pooled = y.reshape(b, self.num_sources, n // self.num_sources, d).mean(dim=2)
        q = pooled + self.attn(pooled, y)
        return q + self.mlp(self.norm2(q))
