"""Filling the feature cache: one pass per dataset with channels-last backbones vs entry by entry.

Both ways write real cache entries for the embedded default's tiny backbones, in the same run:

- per entry (the first implementation): for each (backbone, flip) a separate pass over the
  dataset, images read and decoded again each time, NCHW-contiguous backbones, batch 256;
- one pass (facefuse.features.dataset.dataset_maps): every missing (backbone, flip) of a dataset
  computed from the same decoded batch, channels-last backbones, batch 64.

Prints seconds per dataset, the ratio, and the largest difference between the two caches' maps.

    .venv/bin/python benchmarks/bench_cache_fill.py [--data .facefuse/data] [--sets synth_lfw ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(".facefuse/data"))
    ap.add_argument("--backbones", type=Path, default=Path(".facefuse/backbones"))
    ap.add_argument("--sets", nargs="+", default=["synth_train", "synth_lfw", "synth_ijbb"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from facefuse.backbones import load_backbone
    from facefuse.features.cache import CacheKey, FeatureCache
    from facefuse.features.dataset import BackbonePair, checkpoint_hash_of, dataset_maps
    from facefuse.features.extract import PREPROCESSING, image_source

    data = args.data.resolve()
    pair = BackbonePair((args.backbones / "arcface_tiny/backbone.pth").resolve(),
                        (args.backbones / "adaface_tiny/adaface_tiny.ckpt").resolve())
    plain = {p: load_backbone(p).eval() for p in (pair.arcface, pair.adaface)}
    print("| dataset | entries | per entry (s) | one pass (s) | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    totals = [0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        old_root, new_root = Path(tmp) / "per_entry", Path(tmp) / "one_pass"
        for name in args.sets:
            flips = (False,) if name.endswith("train") else (False, True)
            keys = [(CacheKey(checkpoint_hash_of(p), name, PREPROCESSING, f), p)
                    for p in (pair.arcface, pair.adaface) for f in flips]
            t0 = time.perf_counter()
            old = [FeatureCache(old_root).build(k, plain[p], image_source(name, data), batch_size=256,
                                                progress=False) for k, p in keys]
            t_old = time.perf_counter() - t0
            t0 = time.perf_counter()
            dataset_maps(name, data, pair, new_root, build=True, progress=False,
                         flips=len(flips) == 2)
            t_new = time.perf_counter() - t0
            new = [FeatureCache(new_root).get(k) for k, _ in keys]
            diff = max(float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())
                       for a, b in zip(old, new))
            totals[0] += t_old
            totals[1] += t_new
            print(f"| {name} | {len(keys)} | {t_old:.1f} | {t_new:.1f} | {t_old / t_new:.2f}x | "
                  f"{diff:.2g} |")
    print(f"| **total** | | {totals[0]:.1f} | {totals[1]:.1f} | **{totals[0] / totals[1]:.2f}x** | |")


if __name__ == "__main__":
    main()
