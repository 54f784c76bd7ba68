"""Tests of facefuse/model/vib.py: the KL against its closed form and the sampling rule."""

from __future__ import annotations

import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from facefuse.model import VariationalBottleneck, kl_divergence


def test_kl_matches_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(16, 32, generator=g) * 2
    logvar = torch.randn(16, 32, generator=g)
    expected = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(kl_divergence(mu, logvar), expected, rtol=1e-5, atol=1e-5)
    # by hand for one dimension: 0.5 * (mu^2 + s^2 - log s^2 - 1)
    m, lv = torch.tensor([[1.5]]), torch.tensor([[0.7]])
    hand = 0.5 * (1.5 ** 2 + torch.exp(torch.tensor(0.7)) - 0.7 - 1)
    assert torch.allclose(kl_divergence(m, lv), hand)


def test_kl_is_zero_at_the_prior_and_sums_over_dims() -> None:
    assert kl_divergence(torch.zeros(4, 8), torch.zeros(4, 8)).item() == 0.0
    one = kl_divergence(torch.ones(3, 1), torch.zeros(3, 1))
    many = kl_divergence(torch.ones(3, 10), torch.zeros(3, 10))
    assert torch.allclose(many, 10 * one)  # summed over dimensions, not averaged


def test_sampling_in_training_mean_in_eval() -> None:
    torch.manual_seed(0)
    vib = VariationalBottleneck(8, 64, logvar_init=-2.0)
    x = torch.randn(2048, 8)
    vib.train()
    mu, logvar, z = vib(x)
    assert torch.allclose(logvar, torch.full_like(logvar, -2.0))
    noise_std = (z - mu).std().item()
    assert abs(noise_std - torch.exp(torch.tensor(-1.0)).item()) < 0.01
    vib.eval()
    mu_e, _, z_e = vib(x)
    assert torch.equal(z_e, mu_e)
    assert torch.allclose(mu_e, mu)
