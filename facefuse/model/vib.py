"""Variational Information Bottleneck: Gaussian embedding heads and their KL to N(0, I)."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Returns KL(N(mu, exp(logvar)) || N(0, I)) summed over dimensions, averaged over the batch.

    Closed form per dimension: 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1).
    """
    per_dim = mu.pow(2) + logvar.exp() - logvar - 1.0
    return 0.5 * per_dim.sum(dim=1).mean()


class VariationalBottleneck(nn.Module):
    """Mean and log-variance heads; samples z = mu + sigma * eps in training, z = mu in eval."""

    def __init__(self, in_features: int, embedding_size: int = 512,
                 logvar_init: float = -4.0) -> None:
        super().__init__()
        self.mu = nn.Linear(in_features, embedding_size)
        self.logvar = nn.Linear(in_features, embedding_size)
        # Start close to deterministic so the margin head sees the signal before the
        # bottleneck (pulled by beta * KL) widens sigma; logvar_init = 0 starts at the prior.
        nn.init.zeros_(self.logvar.weight)
        nn.init.constant_(self.logvar.bias, logvar_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (mu, logvar, z), each [B, embedding_size], for features x [B, in_features]."""
        mu = self.mu(x)
        logvar = self.logvar(x)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return mu, logvar, z
