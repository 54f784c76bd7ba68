"""Local attention: convolutional Q/K/V on each map, windowed cross-map attention (CvT-style)."""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import nn

from facefuse.model.layers import Mlp, multihead_attention

logger = logging.getLogger(__name__)


def window_mask(map_size: int, window: int, mode: str = "clamped",
                num_sources: int = 2) -> Optional[torch.Tensor]:
    """Returns a boolean [S*H*W, S*H*W] mask (True = may attend), or None when nothing is masked.

    Tokens are source-major (map 0's H*W positions, then map 1's). A query at position p of any
    map may attend to the positions inside the w x w window around p, in every map.
    mode "clamped" shifts the window inward at the border so it always covers w x w positions
    (neighbourhood attention; w = H is then exactly full attention). mode "centered" keeps the
    window centred on p and masks what falls outside the map (corners see fewer keys).
    """
    r = window // 2
    idx = torch.arange(map_size)
    if mode == "clamped":
        start = (idx - r).clamp(0, map_size - window)  # first row/col of each position's window
        near_1d = (idx[None, :] >= start[:, None]) & (idx[None, :] < start[:, None] + window)
    elif mode == "centered":
        near_1d = (idx[None, :] - idx[:, None]).abs() <= r
    else:
        raise ValueError(f"unknown window mode {mode!r}")
    # [H, H] x [W, W] -> [H, W, H, W] -> [HW, HW]
    near = (near_1d[:, None, :, None] & near_1d[None, :, None, :]).reshape(map_size ** 2, -1)
    mask = near.repeat(num_sources, num_sources)
    return None if bool(mask.all()) else mask


class ConvQKV(nn.Module):
    """Depth-wise k x k then point-wise convolution for each of Q, K and V (CvT's ConvProj).

    Three separate (depth-wise, point-wise) pairs: on CPU at 7x7 this measured about 2.5x faster
    than one depth-wise convolution with channel multiplier 3 and one 3-group point-wise
    convolution holding the same parameters (see .team/notes/model.md).
    """

    def __init__(self, dim: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.q = self._projection(dim, kernel_size, bias)
        self.k = self._projection(dim, kernel_size, bias)
        self.v = self._projection(dim, kernel_size, bias)

    @staticmethod
    def _projection(dim: int, kernel_size: int, bias: bool) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False),
            nn.Conv2d(dim, dim, kernel_size=1, bias=bias))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns q, k, v, each [B, dim, H, W], for x [B, dim, H, W]."""
        return self.q(x), self.k(x), self.v(x)


class LocalAttention(nn.Module):
    """Windowed multi-head attention across the maps, with convolutional Q/K/V.

    At 7x7 the window is a precomputed [S*HW, S*HW] mask over dense attention: 98 keys per query
    is cheap, and one fused attention call beats gathering w*w neighbourhoods (see the notes).
    """

    def __init__(self, dim: int, num_heads: int = 4, window: int = 3, kernel_size: int = 3,
                 map_size: int = 7, num_sources: int = 2, window_mode: str = "clamped",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.window = window
        self.map_size = map_size
        self.num_sources = num_sources
        self.dropout = dropout
        self.qkv = ConvQKV(dim, kernel_size)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.register_buffer("mask", window_mask(map_size, window, window_mode, num_sources),
                             persistent=False)

    def _to_maps(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        h = self.map_size
        # [B, S*H*W, d] -> [B*S, d, H, W]
        return x.reshape(b * self.num_sources, h * h, d).transpose(1, 2).reshape(-1, d, h, h)

    def _to_tokens(self, x: torch.Tensor, batch: int) -> torch.Tensor:
        # [B*S, d, H, W] -> [B, S*H*W, d]
        return x.flatten(2).transpose(1, 2).reshape(batch, -1, self.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the attended tokens [B, S*H*W, dim] for tokens x [B, S*H*W, dim]."""
        b = x.shape[0]
        q, k, v = (self._to_tokens(t, b) for t in self.qkv(self._to_maps(x)))
        out = multihead_attention(q, k, v, self.num_heads, mask=self.mask,
                                  dropout=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out))


class LocalBlock(nn.Module):
    """Pre-norm transformer block around LocalAttention: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int = 4, window: int = 3, kernel_size: int = 3,
                 map_size: int = 7, num_sources: int = 2, window_mode: str = "clamped",
                 mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LocalAttention(dim, num_heads, window, kernel_size, map_size, num_sources,
                                   window_mode, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns tokens [B, S*H*W, dim]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
