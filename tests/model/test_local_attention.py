"""Tests of facefuse/model/local_attention.py: the window mask, ConvQKV and windowed attention."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facefuse.model import ConvQKV, LocalAttention, LocalBlock, window_mask


def _pos(i: int, j: int, h: int = 7) -> int:
    return i * h + j


def test_window_one_is_same_position_across_maps() -> None:
    m = window_mask(7, 1)
    hw = 49
    eye = torch.eye(hw, dtype=torch.bool)
    assert torch.equal(m, eye.repeat(2, 2))  # position p sees p in map A and p in map B only
    assert torch.equal(window_mask(7, 1, "centered"), m)


@pytest.mark.parametrize("w", [3, 5])
def test_clamped_window_always_covers_w_by_w(w: int) -> None:
    m = window_mask(7, w, "clamped")
    assert torch.all(m.sum(1) == 2 * w * w)
    # the corner's window is shifted inward, not cut
    row = m[_pos(0, 0)].reshape(2, 7, 7)
    assert row[0, :w, :w].all() and row[0].sum() == w * w


def test_centered_window_is_cut_at_the_border() -> None:
    m = window_mask(7, 3, "centered")
    assert m[_pos(0, 0)].sum() == 2 * 4  # 2x2 inside the map, in both maps
    assert m[_pos(0, 3)].sum() == 2 * 6
    assert m[_pos(3, 3)].sum() == 2 * 9
    row = m[_pos(3, 3)].reshape(2, 7, 7)
    assert row[1, 2:5, 2:5].all()


def test_full_window_is_full_attention() -> None:
    assert window_mask(7, 7, "clamped") is None  # no mask: every token sees every token
    assert window_mask(7, 7, "centered") is not None  # a centred 7x7 window at a corner is cut
    assert window_mask(7, 7, "clamped", num_sources=1) is None


def test_conv_qkv_is_depthwise_then_pointwise() -> None:
    torch.manual_seed(0)
    d, k = 6, 3
    mod = ConvQKV(d, k)
    x = torch.randn(2, d, 7, 7)
    for got, proj in zip(mod(x), (mod.q, mod.k, mod.v)):
        dw, pw = proj[0], proj[1]
        assert dw.groups == d and dw.kernel_size == (k, k) and pw.kernel_size == (1, 1)
        ref = F.conv2d(F.conv2d(x, dw.weight, padding=k // 2, groups=d), pw.weight, pw.bias)
        assert torch.allclose(got, ref, atol=1e-5)
    # a change at one position reaches only its k x k neighbourhood
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    reach = (mod.q(x2) - mod.q(x)).abs().amax(dim=(0, 1)) > 1e-7
    assert reach[:2, :2].all() and reach.sum() == 4


@pytest.mark.parametrize("window, mode", [(1, "clamped"), (3, "clamped"), (3, "centered"),
                                          (5, "clamped"), (7, "clamped")])
def test_masked_dense_attention_equals_explicit_windows(window: int, mode: str) -> None:
    torch.manual_seed(1)
    d, heads, h, s = 8, 2, 7, 2
    attn = LocalAttention(d, heads, window, kernel_size=3, map_size=h, num_sources=s,
                          window_mode=mode).eval()
    x = torch.randn(2, s * h * h, d)
    got = attn(x)
    # reference: per query, gather its window's keys in both maps and attend over only those
    q, k, v = (attn._to_tokens(t, 2) for t in attn.qkv(attn._to_maps(x)))
    r = window // 2
    ref = torch.empty_like(q)
    for n in range(s * h * h):
        i, j = divmod(n % (h * h), h)
        if mode == "clamped":
            i0, j0 = min(max(i - r, 0), h - window), min(max(j - r, 0), h - window)
            rows, cols = range(i0, i0 + window), range(j0, j0 + window)
        else:
            rows = range(max(i - r, 0), min(i + r + 1, h))
            cols = range(max(j - r, 0), min(j + r + 1, h))
        keys = [src * h * h + a * h + c for src in range(s) for a in rows for c in cols]
        dh = d // heads
        for hd in range(heads):
            sl = slice(hd * dh, (hd + 1) * dh)
            scores = (q[:, n:n + 1, sl] @ k[:, keys, sl].transpose(1, 2)) / math.sqrt(dh)
            ref[:, n:n + 1, sl] = scores.softmax(-1) @ v[:, keys, sl]
    ref = attn.proj(ref)
    assert torch.allclose(got, ref, atol=1e-5)


def _changed_positions(block: LocalBlock, x: torch.Tensor, source: int, p: int) -> set[int]:
    hw = 49
    y = block(x)
    x2 = x.clone()
    # a random change: LayerNorm would cancel a constant shift of the token
    x2[:, source * hw + p] += 3.0 * torch.randn(x.shape[0], x.shape[2])
    diff = (block(x2) - y).abs().amax(dim=(0, 2))
    return set(torch.nonzero(diff > 1e-6).flatten().tolist())


def test_window_one_mixes_only_the_same_position() -> None:
    torch.manual_seed(0)
    block = LocalBlock(16, 2, window=1, kernel_size=1).eval()
    x = torch.randn(2, 98, 16)
    p = _pos(2, 5)
    assert _changed_positions(block, x, source=1, p=p) == {p, 49 + p}
    assert _changed_positions(block, x, source=0, p=p) == {p, 49 + p}


def test_window_three_reaches_only_the_neighbourhood() -> None:
    torch.manual_seed(0)
    block = LocalBlock(16, 2, window=3, kernel_size=1, window_mode="centered").eval()
    x = torch.randn(1, 98, 16)
    p = _pos(3, 3)
    near = {_pos(i, j) for i in (2, 3, 4) for j in (2, 3, 4)}
    assert _changed_positions(block, x, source=1, p=p) == near | {49 + n for n in near}


def test_depthwise_kernel_widens_the_reach_of_window_one() -> None:
    # with a 3x3 depth-wise Q/K/V conv, keys at q carry q's neighbours: reach grows by one
    torch.manual_seed(0)
    block = LocalBlock(16, 2, window=1, kernel_size=3).eval()
    x = torch.randn(1, 98, 16)
    p = _pos(3, 3)
    changed = _changed_positions(block, x, source=1, p=p)
    near = {_pos(i, j) for i in (2, 3, 4) for j in (2, 3, 4)}
    assert {p, 49 + p} <= changed <= near | {49 + n for n in near}
    assert len(changed) > 2


def test_single_source_block_runs() -> None:
    block = LocalBlock(16, 4, window=5, kernel_size=3, num_sources=1)
    assert block(torch.randn(3, 49, 16)).shape == (3, 49, 16)
