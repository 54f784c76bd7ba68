"""Fusion-head training step on cached maps versus running both frozen backbones on the fly.

Same batch size, same run, same fusion head; only the data source differs. The cached path reads
fp16 maps from a memory-mapped .npy (random indices, as training does); the on-the-fly path runs
both backbones (no grad) on uint8 images already in memory (JPEG decoding excluded, which
favours the on-the-fly path). Prints seconds per step, the estimated epoch time for the embedded
default's train set and the ratio.

    .venv/bin/python benchmarks/bench_cache_vs_onthefly.py [--archs ir_tiny r100] [--steps 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from facefuse.backbones import get_model
from facefuse.features.extract import extract_maps
from facefuse.model import FusionConfig, FusionModel


def _step(model: FusionModel, opt: torch.optim.Optimizer, a: np.ndarray, b: np.ndarray,
          labels: torch.Tensor) -> None:
    out = model(torch.from_numpy(a).float(), torch.from_numpy(b).float(), labels)
    opt.zero_grad()
    out.loss.backward()
    opt.step()


def bench(arch: str, steps: int, batch: int, n_images: int, n_classes: int) -> dict[str, float]:
    torch.manual_seed(0)
    bb_a, bb_b = get_model(arch).eval(), get_model(arch).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (max(batch * 2, 256), 112, 112, 3), dtype=np.uint8)
    probe = extract_maps(bb_a, images[:1])
    c = probe.shape[1]
    model = FusionModel(FusionConfig(in_channels=c, num_classes=n_classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    labels = torch.from_numpy(rng.integers(0, n_classes, batch))
    with tempfile.TemporaryDirectory() as tmp:
        shape = (n_images, c, 7, 7)
        arr_a = np.lib.format.open_memmap(Path(tmp) / "a.npy", "w+", np.float16, shape)
        arr_b = np.lib.format.open_memmap(Path(tmp) / "b.npy", "w+", np.float16, shape)
        for s in range(0, n_images, 1000):  # chunked: r100 maps for 12k images are 600 MB each
            block = rng.normal(size=(min(1000, n_images - s),) + shape[1:]).astype(np.float16)
            arr_a[s:s + len(block)] = block
            arr_b[s:s + len(block)] = block
        arr_a.flush(), arr_b.flush()
        ma = np.load(Path(tmp) / "a.npy", mmap_mode="r")
        mb = np.load(Path(tmp) / "b.npy", mmap_mode="r")
        _step(model, opt, np.asarray(ma[:batch]), np.asarray(mb[:batch]), labels)  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = np.sort(rng.choice(n_images, batch, replace=False))
            _step(model, opt, ma[idx], mb[idx], labels)
        cached = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = rng.choice(len(images), batch, replace=False)
        imgs = images[idx]
        _step(model, opt, extract_maps(bb_a, imgs), extract_maps(bb_b, imgs), labels)
    live = (time.perf_counter() - t0) / steps
    steps_per_epoch = n_images // batch
    return {"arch": arch, "channels": c, "cached_s_per_step": cached, "live_s_per_step": live,
            "cached_epoch_s": cached * steps_per_epoch, "live_epoch_s": live * steps_per_epoch,
            "ratio": live / cached}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", nargs="+", default=["ir_tiny", "r100"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per path (r100: keep small)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=12000, help="train-set size for the epoch estimate")
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch threads={args.threads} batch={args.batch} train images={args.images}")
    print(f"{'arch':>8} {'C':>4} {'cached s/step':>14} {'on-the-fly s/step':>18} "
          f"{'cached epoch s':>15} {'on-the-fly epoch s':>19} {'ratio':>7}")
    for arch in args.archs:
        steps = args.steps if arch.startswith("ir_") else max(2, args.steps // 2)
        r = bench(arch, steps, args.batch, args.images, args.classes)
        print(f"{r['arch']:>8} {r['channels']:>4} {r['cached_s_per_step']:>14.4f} "
              f"{r['live_s_per_step']:>18.4f} {r['cached_epoch_s']:>15.1f} "
              f"{r['live_epoch_s']:>19.1f} {r['ratio']:>6.1f}x")


if __name__ == "__main__":
    main()
