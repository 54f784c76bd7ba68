"""Benchmark: facefuse.data throughput (IJB alignment, .bin decoding, RecordIO random access).

Builds small synthetic data in a temp folder, then times:
- IJB aligned_images: loose-crop JPEG decode + 5-point similarity warp, one thread (the
  insightface eval_ijbc.py way: one image after another) vs the thread pool; OpenCV warp vs the
  scikit-image fallback;
- read_verification_bin: restricted unpickle + JPEG decode of 112x112 faces;
- RecordIODataset.images on shuffled indices (random access through the .idx).
Prints images/s and ratios. Numbers depend on the cores free at the time; re-run to compare.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data_io.py [--n 2000] [--crop 250]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def _faces(n: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:112, 0:112].astype(np.float32)
    out = np.empty((n, 112, 112, 3), np.uint8)
    for i in range(n):
        wave = np.sin(xx / 112 * 6.28 * rng.uniform(0.5, 2) + rng.uniform(0, 6)) * np.cos(yy / 20)
        out[i] = np.clip(rng.uniform(60, 190, 3) + 50 * wave[..., None] + rng.normal(0, 8, (112, 112, 3)),
                         0, 255).astype(np.uint8)
    return out


def _time(fn, repeat: int = 2) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images per test")
    ap.add_argument("--crop", type=int, default=250, help="loose crop side in pixels")
    args = ap.parse_args()

    import facefuse.data.align as align_mod
    from facefuse.data import (ARCFACE_TEMPLATE, RecordIODataset, read_ijb, read_verification_bin, write_ijb,
                               write_recordio_dataset, write_verification_bin)
    from facefuse.data._io import default_workers
    from facefuse.data.align import warp_affine

    rng = np.random.default_rng(0)
    faces = _faces(args.n, rng)
    print(f"cpus={os.cpu_count()} workers={default_workers()} n={args.n} crop={args.crop} "
          f"alignment backend={align_mod.alignment_backend()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        s = args.crop / 112 * 0.6
        fwd = np.array([[s, 0, 0], [0, s, 0]], np.float64)
        fwd[:, 2] = args.crop / 2 - s * 56
        crops = [warp_affine(f, fwd, args.crop) for f in faces]
        lms = np.repeat((ARCFACE_TEMPLATE @ fwd[:, :2].T + fwd[:, 2])[None], args.n, 0)
        lms += rng.normal(0, 1.0, lms.shape)
        write_ijb(root / "ijb", "bench", crops, [f"{i}.jpg" for i in range(args.n)], np.arange(args.n) // 4,
                  np.arange(args.n) // 2, lms, np.ones(args.n), [0], [1], [1])
        t0 = time.perf_counter()
        ijb = read_ijb(root / "ijb", "bench")
        t_meta = time.perf_counter() - t0
        t1 = _time(lambda: ijb.aligned_images(workers=1))
        tp = _time(lambda: ijb.aligned_images())
        cv2_mod = align_mod._cv2
        align_mod._cv2 = None
        try:
            tsk = _time(lambda: ijb.aligned_images())
        finally:
            align_mod._cv2 = cv2_mod
        print(f"IJB read_ijb meta: {args.n / t_meta:,.0f} faces/s")
        print(f"IJB aligned_images, 1 thread:    {args.n / t1:,.0f} images/s")
        print(f"IJB aligned_images, pool:        {args.n / tp:,.0f} images/s  (x{t1 / tp:.2f} vs 1 thread)")
        print(f"IJB aligned_images, skimage warp: {args.n / tsk:,.0f} images/s  (opencv x{tsk / tp:.2f} faster)")

        n2 = args.n - args.n % 2
        write_verification_bin(root / "v.bin", faces[:n2], rng.random(n2 // 2) < 0.5)
        tb = _time(lambda: read_verification_bin(root / "v.bin"))
        print(f".bin read (unpickle + decode):   {n2 / tb:,.0f} images/s")

        write_recordio_dataset(root / "rec", faces, rng.integers(0, max(1, args.n // 20), args.n))
        ds = RecordIODataset(root / "rec")
        order = rng.permutation(len(ds))
        tr = _time(lambda: [ds.images(order[i:i + 256]) for i in range(0, len(order), 256)])
        print(f"RecordIO random-access images(): {len(ds) / tr:,.0f} images/s")


if __name__ == "__main__":
    main()
