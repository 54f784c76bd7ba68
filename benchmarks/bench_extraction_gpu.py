"""Extraction on one GPU: the store's actor path against the backbones' forward-only limit.

Self-contained: needs torch, numpy, pyarrow and this repository (no Ray, no MLflow anywhere in its
imports), so it runs on a GPU machine that has neither. In one run, for two randomly initialised
backbones of ``--arch`` (insightface and AdaFace layouts, saved and loaded back the way the
store's extraction loads them: ``facefuse.features.dataset._load_backbone_cached``, i.e. frozen,
channels-last, on the GPU when there is one), at each batch size:

(a) forward only: ``forward_features`` under fp16 autocast on channels-last input already on the
    device, both backbones on the original and the mirrored batch (4 forwards per image), timed
    between device synchronisations: the limit extraction can reach;
(b) the Ray Data actor's work (``facefuse.features.extraction._Extract`` called directly on
    decoded uint8 images in host memory, one shard per call): both backbones on original and
    mirrored images in batches of that size (``_regroup``), fp16 maps back on the host, each
    shard written to a local ``ShardStore`` with its sha256; also (b0), the same without the
    writes (``_regroup`` alone);

and prints images/s of each per GPU and the ratio (b)/(a). The images are random uint8 (decoding
is a separate CPU stage in the job and is not timed here; the backbones' speed does not depend on
pixel values).

    python benchmarks/bench_extraction_gpu.py                       # r100, batch 64 128 256
    python benchmarks/bench_extraction_gpu.py --device cpu --arch ir_nano --images 64 \\
        --shard-size 32 --batch-sizes 16                            # the CPU smoke run (tests)

Run from the repository root with ``PYTHONPATH=$PWD`` and ``PYTHONUNBUFFERED=1`` for live progress.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="cpu hides any GPU, so the extractor takes its CPU branch")
    ap.add_argument("--arch", default="r100", help="facefuse.backbones name (r100, ir_nano, ...)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--images", type=int, default=4096, help="images timed per batch size")
    ap.add_argument("--shard-size", type=int, default=1024, help="images per shard in (b)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches per backbone first")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ff_extraction_gpu"))
    args = ap.parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch starts CUDA
    if args.images % args.shard_size:
        ap.error("--images must be a multiple of --shard-size")

    import numpy as np
    import torch

    from facefuse.backbones import checkpoint_hash, get_model, save_adaface, save_insightface
    from facefuse.features.dataset import _load_backbone_cached
    from facefuse.features.extract import PREPROCESSING, to_cuda_input, to_input
    from facefuse.features.extraction import _Extract, _regroup
    from facefuse.features.store import CacheKey

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU -- run on a GPU machine or pass "
              "--device cpu", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    _log(f"torch {torch.__version__}, device {device} ({gpu}), arch {args.arch}, "
         f"batch sizes {args.batch_sizes}, {args.images} images each")

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    torch.manual_seed(0)
    ckpts = (work / "arcface.pth", work / "adaface.ckpt")
    save_insightface(get_model(args.arch), ckpts[0])
    save_adaface(get_model(args.arch, layout="adaface"), ckpts[1])
    nets = [_load_backbone_cached(str(c)) for c in ckpts]
    assert all(next(n.parameters()).device.type == args.device for n in nets)
    _log(f"backbones saved and loaded ({sum(p.numel() for p in nets[0].parameters()) / 1e6:.1f}M "
         "parameters each)")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(args.images, 112, 112, 3), dtype=np.uint8)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn: Callable[..., Any], *fn_args: Any) -> float:
        sync()
        t0 = time.perf_counter()
        fn(*fn_args)
        sync()
        return time.perf_counter() - t0

    hashes = [checkpoint_hash(c) for c in ckpts]
    keys = [[CacheKey(h, "bench", PREPROCESSING, f, "bench") for f in (False, True)] for h in hashes]
    n_shards = args.images // args.shard_size
    tasks = [{"name": "bench", "content": "bench", "shard": s, "start": s * args.shard_size,
              "stop": (s + 1) * args.shard_size, "flips": True, "keys": keys}
             for s in range(n_shards)]

    def to_device(part: np.ndarray, flip: bool) -> torch.Tensor:
        if device.type == "cuda":
            return to_cuda_input(part, flip, device)
        return to_input(part, flip=flip).contiguous(memory_format=torch.channels_last)

    def forward_only(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16,
                                             enabled=device.type == "cuda"):
            for x, xf in batches:
                for net in nets:
                    net.forward_features(x)
                    net.forward_features(xf)

    def regroup_all(bs: int) -> None:
        for t in tasks:
            _regroup(nets, images[t["start"]:t["stop"]], True, bs)

    def actor_all(actor: _Extract) -> None:
        for i, t in enumerate(tasks):
            actor({"i": np.array([i]), "images": images[t["start"]:t["stop"]][None]})

    rows = []
    for bs in args.batch_sizes:
        # (a) forward only, input placed on the device beforehand
        placed = [(to_device(images[s:s + bs], False), to_device(images[s:s + bs], True))
                  for s in range(0, args.images, bs)]
        timed(forward_only, placed[:args.warmup])
        t_a = timed(forward_only, placed)
        del placed
        _log(f"batch {bs}: (a) forward only {args.images / t_a:9.1f} images/s ({t_a:.2f}s)")

        # (b0) the actor's compute alone: _regroup from host uint8 to host fp16 maps
        _regroup(nets, images[:bs * max(args.warmup, 1)], True, bs)
        t_b0 = timed(regroup_all, bs)
        _log(f"batch {bs}: (b0) _regroup, maps on host {args.images / t_b0:9.1f} images/s "
             f"({t_b0:.2f}s)")

        # (b) the actor's call: _regroup + shards written with sha256 to a local store
        root = work / f"store_{bs}"
        t_b = timed(actor_all, _Extract(str(root), tuple(str(c) for c in ckpts), tasks, bs))
        written = sum(f.stat().st_size for f in root.rglob("*.npy"))
        _log(f"batch {bs}: (b) actor path, shards written {args.images / t_b:9.1f} images/s "
             f"({t_b:.2f}s, {written / 1e9:.2f} GB written)")
        shutil.rmtree(root, ignore_errors=True)
        rows.append((bs, args.images / t_a, args.images / t_b0, args.images / t_b))

    print(f"\n{args.arch} on {gpu if device.type == 'cuda' else 'cpu'}, images/s per "
          f"{'GPU' if device.type == 'cuda' else 'process'} (4 forwards per image: 2 backbones "
          "x original + mirrored)")
    print(f"{'batch':>6} {'(a) forward':>12} {'(b0) regroup':>13} {'(b) actor':>10} "
          f"{'(b)/(a)':>8} {'(b0)/(a)':>9}")
    for bs, a, b0, b in rows:
        print(f"{bs:>6} {a:>12.1f} {b0:>13.1f} {b:>10.1f} {b / a:>8.2f} {b0 / a:>9.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
