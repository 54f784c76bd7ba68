"""Tests of facefuse/model/global_attention.py."""

from __future__ import annotations

import torch

from facefuse.model import GlobalBlock


def test_shapes_for_one_and_two_maps() -> None:
    assert GlobalBlock(32, 4, num_sources=2)(torch.randn(3, 98, 32)).shape == (3, 2, 32)
    assert GlobalBlock(32, 8, num_sources=1)(torch.randn(3, 49, 32)).shape == (3, 1, 32)


def test_pooled_queries_see_every_token_and_ignore_token_order() -> None:
    torch.manual_seed(0)
    block = GlobalBlock(16, 2).eval()
    x = torch.randn(2, 98, 16)
    y = block(x)
    # any single token changes both pooled outputs (global reach, across maps)
    for n in (0, 48, 49, 97):
        x2 = x.clone()
        x2[:, n] += torch.randn(2, 16)  # not a constant: LayerNorm would cancel it
        assert ((block(x2) - y).abs().amax(dim=(0, 2)) > 1e-6).all()
    # shuffling positions within each map changes nothing: position lives in the embeddings
    perm = torch.randperm(49)
    shuffled = torch.cat([x[:, perm], x[:, 49 + perm]], dim=1)
    assert torch.allclose(block(shuffled), y, atol=1e-5)
