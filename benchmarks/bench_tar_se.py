"""TAR@FAR's bootstrap standard error per epoch: drawing weights for the ranking's head only
(facefuse.evaluation.splits.tar_at_far_se) against the plain bootstrap over every pair, on a
synthetic IJB-sized score set (a selection part of about half a million pairs), same run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tar_se.py [--pairs 520000] [--genuine 7000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from facefuse.evaluation.splits import N_BOOTSTRAP_SE, tar_at_far_se  # noqa: E402
from facefuse.train.evaluate import IJB_FARS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=520_000)
    ap.add_argument("--genuine", type=int, default=7_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(args.genuine), np.zeros(args.pairs - args.genuine)]
    scores = np.r_[rng.normal(2.5, 1, args.genuine), rng.normal(0, 1, args.pairs - args.genuine)]
    times = {"head only": [], "every pair": []}
    for _ in range(args.repeats):
        t = time.process_time()
        fast = tar_at_far_se(labels, scores, IJB_FARS)
        times["head only"].append(time.process_time() - t)
        t = time.process_time()
        slow = tar_at_far_se(labels, scores, IJB_FARS, head_only=False)
        times["every pair"].append(time.process_time() - t)
    best = {k: min(v) for k, v in times.items()}
    print(f"{args.pairs} pairs, {N_BOOTSTRAP_SE} replicates, CPU seconds (best of {args.repeats}):")
    for k, v in best.items():
        print(f"  {k:10s} {v:.3f} s")
    print(f"  speed-up {best['every pair'] / best['head only']:.1f}x")
    for far in IJB_FARS:
        print(f"  SE at FAR {far:g}: head only {fast[far]:.4f}, every pair {slow[far]:.4f}")


if __name__ == "__main__":
    main()
