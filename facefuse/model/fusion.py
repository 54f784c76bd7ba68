"""The fused model: token projection -> local and global attention -> fusion MLP -> VIB -> margin head."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from facefuse.errors import ConfigError
from facefuse.model.config import MIX_EQUAL, FusionConfig
from facefuse.model.global_attention import GlobalBlock
from facefuse.model.heads import CosineClassifier, build_head
from facefuse.model.layers import Mlp, TokenProjection
from facefuse.model.local_attention import LocalBlock
from facefuse.model.vib import VariationalBottleneck, kl_divergence

logger = logging.getLogger(__name__)


@dataclass
class FusionOutput:
    """What one forward pass returns; the training fields are None when no labels were given."""

    embedding: torch.Tensor  # [B, E]: mu with the VIB, else the deterministic embedding
    z: torch.Tensor  # [B, E]: the sample the classifier sees (equals embedding in eval mode)
    kl: torch.Tensor  # scalar: KL to N(0, I), summed over dims, batch mean (0 without the VIB)
    logvar: Optional[torch.Tensor] = None  # [B, E] with the VIB
    logits: Optional[torch.Tensor] = None  # [B, num_classes], margin applied, scaled
    ce: Optional[torch.Tensor] = None  # scalar cross-entropy
    loss: Optional[torch.Tensor] = None  # ce + beta * kl


class LocalPool(nn.Module):
    """Reduces the local branch's tokens to one d_model vector (flatten keeps where each token was)."""

    def __init__(self, dim: int, num_tokens: int, num_sources: int, mode: str = "flatten") -> None:
        super().__init__()
        self.mode = mode
        self.num_sources = num_sources
        in_features = dim * (num_tokens if mode == "flatten" else num_sources)
        self.proj = nn.Linear(in_features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns [B, dim] for tokens [B, S*H*W, dim]."""
        b, n, d = x.shape
        if self.mode == "mean":
            # [B, S*H*W, d] -> [B, S, d]: one average per map
            x = x.reshape(b, self.num_sources, n // self.num_sources, d).mean(dim=2)
        return self.proj(x.flatten(1))


ConfigLike = Union[FusionConfig, Mapping[str, Any]]


class FusionModel(nn.Module):
    """Fuses an ArcFace map A and an AdaFace map B ([N, C, 7, 7] each) into a face embedding.

    Ablations are config values: `branches` (local / global / both), `fusion` (attention /
    concat baseline), `vib` (on / off), `inputs` (both / arcface / adaface; the unused map
    may be None), `mix` (the local branch's weight against the global one: fixed or learned).
    """

    def __init__(self, cfg: Optional[ConfigLike] = None) -> None:
        super().__init__()
        if cfg is None:
            cfg = FusionConfig()
        elif not isinstance(cfg, FusionConfig):
            cfg = FusionConfig.from_dict(cfg)
        self.cfg = cfg
        d, s, hw = cfg.d_model, cfg.num_sources, cfg.map_size ** 2
        channels = {"both": (cfg.channels_a, cfg.channels_b), "arcface": (cfg.channels_a,),
                    "adaface": (cfg.channels_b,)}[cfg.inputs]
        self.tokens = TokenProjection(channels, d, cfg.map_size)

        fused = 0
        self.local_branch: Optional[LocalBlock] = None
        self.local_pool: Optional[LocalPool] = None
        self.global_branch: Optional[GlobalBlock] = None
        self.concat_proj: Optional[nn.Linear] = None
        if cfg.uses_local:
            self.local_branch = LocalBlock(d, cfg.local_heads, cfg.local_window, cfg.dw_kernel,
                                           cfg.map_size, s, cfg.window_mode, cfg.mlp_ratio,
                                           cfg.dropout)
            self.local_pool = LocalPool(d, s * hw, s, cfg.local_pool)
            fused += d
        if cfg.uses_global:
            self.global_branch = GlobalBlock(d, cfg.global_heads, s, cfg.mlp_ratio, cfg.dropout)
            fused += s * d
        # A learned gate starts at w = sigmoid(0) = 0.5: the model begins as the plain
        # concatenation and training moves the weight.
        self.mix_logit: Optional[nn.Parameter] = (nn.Parameter(torch.zeros(()))
                                                  if cfg.mix_learned else None)
        if cfg.fusion == "concat":
            # Same fused width as the attention model with both branches, so the MLP, VIB and
            # head that follow are identical and only the attention is ablated.
            fused = d + s * d
            self.concat_proj = nn.Linear(s * hw * d, fused)

        self.fusion_norm = nn.LayerNorm(fused)
        self.fusion_mlp = Mlp(fused, cfg.fusion_hidden, cfg.fusion_hidden, cfg.dropout)
        self.bottleneck: nn.Module
        if cfg.vib:
            self.bottleneck = VariationalBottleneck(cfg.fusion_hidden, cfg.embedding_size,
                                                    cfg.logvar_init)
        else:
            self.bottleneck = nn.Linear(cfg.fusion_hidden, cfg.embedding_size)
        self.head: Optional[CosineClassifier] = None
        if cfg.num_classes > 0:
            self.head = build_head(cfg.head, cfg.embedding_size, cfg.num_classes, cfg.scale,
                                   cfg.resolved_margin, cfg.easy_margin)
        logger.debug("FusionModel with %d parameters: %s",
                     sum(p.numel() for p in self.parameters()), cfg)

    # ------------------------------------------------------------------ inputs
    def _check_map(self, x: Optional[torch.Tensor], name: str, field: str,
                   channels: int) -> torch.Tensor:
        size = self.cfg.map_size
        if x is None:
            raise ConfigError(None, f"inputs={self.cfg.inputs!r} needs map {name}, got None",
                              field="inputs", fix=f"pass {name}, or set inputs to the map you have")
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
            raise ConfigError(None, f"map {name} has shape {tuple(x.shape)}, expected "
                              f"[N, {channels}, {size}, {size}]", field=field,
                              fix=f"set {field} and map_size to the backbone's feature map")
        return x.to(self.tokens.pos_embed.dtype)  # the cache stores fp16

    def _maps(self, a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> list[torch.Tensor]:
        maps = []
        if self.cfg.inputs in ("both", "arcface"):
            maps.append(self._check_map(a, "a", "in_channels_a", self.cfg.channels_a))
        if self.cfg.inputs in ("both", "adaface"):
            maps.append(self._check_map(b, "b", "in_channels_b", self.cfg.channels_b))
        if len(maps) == 2 and maps[0].shape[0] != maps[1].shape[0]:
            raise ConfigError(None, f"maps a and b have batch sizes {maps[0].shape[0]} and "
                              f"{maps[1].shape[0]}", field="inputs",
                              fix="pass the two backbones' maps of the same images")
        return maps

    # ------------------------------------------------------------------ mixing weight
    def mix_weight(self) -> Optional[float]:
        """Returns the local branch's weight w when it is learned (the gate's value now), else None."""
        if self.mix_logit is None:
            return None
        return float(torch.sigmoid(self.mix_logit.detach()).item())

    def _weigh(self, local: torch.Tensor, glob: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the two branch vectors scaled by 2w and 2(1 - w)."""
        if self.mix_logit is not None:
            w = torch.sigmoid(self.mix_logit)
            return local * (2.0 * w), glob * (2.0 * (1.0 - w))
        w = float(self.cfg.mix)
        if w == MIX_EQUAL:
            return local, glob  # factors of exactly 1: skip them so the graph is today's
        return local * (2.0 * w), glob * (2.0 * (1.0 - w))

    # ------------------------------------------------------------------ forward
    def forward_features(self, a: Optional[torch.Tensor],
                         b: Optional[torch.Tensor]) -> torch.Tensor:
        """Returns the fused feature vector [B, fusion_hidden] that the bottleneck reads."""
        x = self.tokens(self._maps(a, b))  # [B, S*H*W, d]
        parts = []
        if self.local_branch is not None and self.local_pool is not None:
            parts.append(self.local_pool(self.local_branch(x)))  # [B, d]
        if self.global_branch is not None:
            parts.append(self.global_branch(x).flatten(1))  # [B, S, d] -> [B, S*d]
        if len(parts) == 2:
            # The weight acts before the LayerNorm, whose statistics then span the weighted
            # parts: a branch scaled down also counts less in the normalisation.
            parts = list(self._weigh(parts[0], parts[1]))
        if self.concat_proj is not None:
            parts.append(self.concat_proj(x.flatten(1)))  # [B, S*H*W*d] -> [B, d + S*d]
        return self.fusion_mlp(self.fusion_norm(torch.cat(parts, dim=1)))

    def forward(self, a: Optional[torch.Tensor], b: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> FusionOutput:
        """Returns a FusionOutput; logits, ce and loss are filled when labels are given."""
        h = self.forward_features(a, b)
        if isinstance(self.bottleneck, VariationalBottleneck):
            mu, logvar, z = self.bottleneck(h)
            out = FusionOutput(embedding=mu, z=z, kl=kl_divergence(mu, logvar), logvar=logvar)
        else:
            emb = self.bottleneck(h)
            out = FusionOutput(embedding=emb, z=emb, kl=emb.new_zeros(()))
        if labels is not None:
            out.logits, out.ce, out.loss = self.forward_loss(out.z, out.kl, labels)
        return out

    def forward_loss(self, z: torch.Tensor, kl: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (logits, ce, loss) with loss = ce + beta * kl (exactly ce when beta is 0 or no VIB)."""
        if self.head is None:
            raise ConfigError(None, "labels were given but the model has no classifier",
                              field="num_classes",
                              fix="set num_classes to the number of training identities")
        logits = self.head(z, labels)
        ce = F.cross_entropy(logits, labels.long())
        beta = self.cfg.beta if self.cfg.vib else 0.0
        loss = ce if beta == 0 else ce + beta * kl
        return logits, ce, loss

    def embed(self, a: Optional[torch.Tensor], b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns the evaluation embedding [B, E] (mu; call model.eval() to switch off dropout)."""
        h = self.forward_features(a, b)
        if isinstance(self.bottleneck, VariationalBottleneck):
            return self.bottleneck.mu(h)
        return self.bottleneck(h)
