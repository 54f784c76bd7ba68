"""The feature-map cache: entries are complete or absent, never half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from facefuse.features.cache import CacheKey, FeatureCache
from facefuse.features.extract import ImageSource, extract_maps


class ConvNet(torch.nn.Module):
    """A small real network with the backbone interface (forward_features -> [N, C, 7, 7])."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 16, stride=16)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _source(n: int = 10, seed: int = 0, fail_at: int | None = None) -> ImageSource:
    images = np.random.default_rng(seed).integers(0, 255, (n, 112, 112, 3), dtype=np.uint8)

    def read(idx: np.ndarray) -> np.ndarray:
        if fail_at is not None and idx.max() >= fail_at:
            raise RuntimeError("disk went away")
        return images[idx]

    return ImageSource("toy", n, read)


KEY = CacheKey("ab" * 32, "toy", "rgb112-pm1-v1", False)


def test_build_then_get_returns_the_backbone_maps(tmp_path: Path) -> None:
    cache, net, src = FeatureCache(tmp_path), ConvNet(), _source()
    built = cache.build(KEY, net, src, batch_size=3, progress=False)
    assert built.shape == (10, 8, 7, 7) and built.dtype == np.float16
    again = cache.get(KEY)
    assert again is not None and isinstance(again, np.memmap)
    np.testing.assert_array_equal(np.asarray(again), extract_maps(net, src.read(np.arange(10))))


def test_flip_and_other_keys_are_separate_entries(tmp_path: Path) -> None:
    cache, net, src = FeatureCache(tmp_path), ConvNet(), _source()
    cache.build(KEY, net, src, progress=False)
    flip = CacheKey(KEY.checkpoint_hash, KEY.dataset, KEY.preprocessing, True)
    assert cache.get(flip) is None
    other_ckpt = CacheKey("cd" * 32, KEY.dataset)
    assert cache.get(other_ckpt) is None
    f = cache.build(flip, net, src, progress=False)
    assert not np.array_equal(np.asarray(f), np.asarray(cache.get(KEY)))


def test_missing_sidecar_truncated_array_or_foreign_key_is_not_read(tmp_path: Path) -> None:
    cache, net, src = FeatureCache(tmp_path), ConvNet(), _source()
    cache.build(KEY, net, src, progress=False)
    array_path, meta_path = cache.paths(KEY)
    meta = json.loads(meta_path.read_text())

    with open(array_path, "r+b") as fh:  # truncate the array under a valid sidecar
        fh.truncate(array_path.stat().st_size - 100)
    assert cache.get(KEY) is None
    cache.build(KEY, net, src, progress=False)
    assert cache.get(KEY) is not None

    meta_path.write_text(json.dumps({**meta, "key": {**meta["key"], "dataset": "other"}}))
    assert cache.get(KEY) is None
    meta_path.unlink()
    assert cache.get(KEY) is None
    rebuilt = cache.get_or_build(KEY, lambda: net, lambda: src, progress=False)
    assert rebuilt.shape[0] == 10 and cache.get(KEY) is not None


def test_failure_while_writing_leaves_no_entry_and_no_temp_files(tmp_path: Path) -> None:
    cache, net = FeatureCache(tmp_path), ConvNet()
    with pytest.raises(RuntimeError, match="disk went away"):
        cache.build(KEY, net, _source(fail_at=6), batch_size=2, progress=False)
    assert cache.get(KEY) is None
    assert list((tmp_path / "toy").iterdir()) == []


def test_one_pass_build_of_several_entries_equals_building_each(tmp_path: Path) -> None:
    torch.manual_seed(1)
    other = ConvNet()
    with torch.no_grad():
        other.conv.weight.mul_(-0.5)
    src = _source(n=11)
    keys = [KEY, CacheKey(KEY.checkpoint_hash, "toy", KEY.preprocessing, True),
            CacheKey("cd" * 32, "toy", KEY.preprocessing, True)]
    nets = [ConvNet(), ConvNet(), other]
    together = FeatureCache(tmp_path / "a").build_many(list(zip(keys, nets)), src, batch_size=4,
                                                       progress=False)
    alone = [FeatureCache(tmp_path / "b").build(k, n, src, batch_size=5, progress=False)
             for k, n in zip(keys, nets)]
    for t, a in zip(together, alone):
        np.testing.assert_array_equal(np.asarray(t), np.asarray(a))
    assert not np.array_equal(np.asarray(together[1]), np.asarray(together[2]))
    with pytest.raises(ValueError, match="one dataset"):
        FeatureCache(tmp_path / "c").build_many([(CacheKey("ab" * 32, "other"), nets[0])], src)


def test_failure_in_a_one_pass_build_leaves_none_of_its_entries(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path)
    keys = [KEY, CacheKey(KEY.checkpoint_hash, "toy", KEY.preprocessing, True)]
    with pytest.raises(RuntimeError, match="disk went away"):
        cache.build_many([(k, ConvNet()) for k in keys], _source(fail_at=7), batch_size=3,
                         progress=False)
    assert all(cache.get(k) is None for k in keys)
    assert list((tmp_path / "toy").iterdir()) == []


def test_process_killed_mid_write_leaves_nothing_that_reads_as_complete(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time, numpy as np, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_cache import ConvNet, KEY
        from facefuse.features.cache import FeatureCache
        from facefuse.features.extract import ImageSource
        imgs = np.zeros((400, 112, 112, 3), np.uint8)
        def read(idx):
            if idx[0] == 40:
                print("WRITING", flush=True)
            if idx[0] >= 40:
                time.sleep(0.5)
            return imgs[idx]
        FeatureCache({str(tmp_path)!r}).build(KEY, ConvNet(), ImageSource("toy", 400, read),
                                             batch_size=20, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "WRITING"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    cache = FeatureCache(tmp_path)
    assert cache.get(KEY) is None
    array_path, meta_path = cache.paths(KEY)
    assert not meta_path.exists() and not array_path.exists()
    fresh = cache.get_or_build(KEY, ConvNet, lambda: _source(), progress=False)
    assert fresh.shape == (10, 8, 7, 7)
