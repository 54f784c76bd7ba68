"""Training steps per second of the fusion head on cached-like maps (not a test).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fusion_head.py
    .venv/bin/python benchmarks/bench_fusion_head.py --channels 512 --threads 1 2 --d-model 128 256
    .venv/bin/python benchmarks/bench_fusion_head.py --attention-core   # masked dense vs gathered windows

A step is what the training loop does per batch on cached maps: fp16 maps -> fp32, forward with
labels, backward, AdamW step. Numbers depend on the machine and its load; rerun, don't compare
numbers taken on different machines.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

from facefuse.model import FusionConfig, FusionModel, window_mask


def _time(fn, steps: int, warmup: int) -> float:
    """Returns the median seconds per call of fn over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def bench_head(channels: int, threads: int, d_model: int, batch: int, num_classes: int,
               steps: int, warmup: int, overrides: dict) -> tuple[float, int]:
    """Returns (training steps per second, parameter count) of the head."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = FusionConfig(in_channels=channels, d_model=d_model, num_classes=num_classes, **overrides)
    model = FusionModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    # a few cached batches, stored fp16 like the feature cache
    pool = [(torch.randn(batch, channels, 7, 7).half(), torch.randn(batch, channels, 7, 7).half(),
             torch.randint(0, num_classes, (batch,))) for _ in range(4)]
    it = [0]

    def step() -> None:
        a16, b16, labels = pool[it[0] % len(pool)]
        it[0] += 1
        out = model(a16.float(), b16.float(), labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    sec = _time(step, steps, warmup)
    return 1.0 / sec, sum(p.numel() for p in model.parameters())


def _gathered_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               idx: torch.Tensor) -> torch.Tensor:
    """Returns windowed attention computed by gathering each query's keys ([B, h, N, d_h])."""
    kg, vg = k[:, :, idx], v[:, :, idx]  # [B, h, N, K, d_h]
    scores = torch.einsum("bhnd,bhnkd->bhnk", q, kg) / math.sqrt(q.shape[-1])
    return torch.einsum("bhnk,bhnkd->bhnd", scores.softmax(-1), vg)


def bench_attention_core(threads: int, batch: int, d_model: int, heads: int,
                         steps: int, warmup: int) -> None:
    """Prints forward+backward time of the windowed attention core: masked dense vs gathered."""
    torch.set_num_threads(threads)
    n, dh = 98, d_model // heads
    print(f"\nattention core, fwd+bwd, batch {batch}, d_model {d_model}, {heads} heads, "
          f"{threads} thread(s), 98 tokens")
    print(f"{'window':>6} {'dense+mask ms':>14} {'gather ms':>10} {'gather/dense':>13}")
    for w in (1, 3, 5, 7):
        mask = window_mask(7, w, "clamped")
        full = torch.ones(n, n, dtype=torch.bool) if mask is None else mask
        idx = torch.stack([torch.nonzero(row).flatten() for row in full])  # [N, 2*w*w]
        q, k, v = (torch.randn(batch, heads, n, dh, requires_grad=True) for _ in range(3))

        def dense() -> None:
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()

        def gathered() -> None:
            _gathered_window_attention(q, k, v, idx).sum().backward()

        t_dense = _time(dense, steps, warmup)
        t_gather = _time(gathered, steps, warmup)
        print(f"{w:>6} {t_dense * 1e3:>14.2f} {t_gather * 1e3:>10.2f} {t_gather / t_dense:>13.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, nargs="+", default=[128, 512],
                        help="input channels per map (128: tiny backbones, 512: IResNet)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--d-model", type=int, nargs="+", default=[FusionConfig().d_model])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--window", type=int, default=FusionConfig().local_window)
    parser.add_argument("--branches", default="both", choices=["local", "global", "both"])
    parser.add_argument("--fusion", default="attention", choices=["attention", "concat"])
    parser.add_argument("--attention-core", action="store_true",
                        help="also time the window attention core: masked dense vs gathered")
    args = parser.parse_args()

    overrides = dict(local_window=args.window, branches=args.branches, fusion=args.fusion)
    print(f"fusion head training steps/s (fp16->fp32 maps, forward+backward+AdamW), batch "
          f"{args.batch}, {args.num_classes} classes, window {args.window}, "
          f"branches {args.branches}, fusion {args.fusion}; torch {torch.__version__}")
    print(f"{'C':>5} {'d_model':>7} {'params':>9} {'threads':>7} {'steps/s':>8} {'samples/s':>10}")
    for channels in args.channels:
        for d_model in args.d_model:
            for threads in args.threads:
                rate, params = bench_head(channels, threads, d_model, args.batch,
                                          args.num_classes, args.steps, args.warmup, overrides)
                print(f"{channels:>5} {d_model:>7} {params / 1e6:>8.2f}M {threads:>7} "
                      f"{rate:>8.2f} {rate * args.batch:>10.0f}")
    if args.attention_core:
        for threads in args.threads:
            bench_attention_core(threads, args.batch, args.d_model[0], 4, args.steps, args.warmup)


if __name__ == "__main__":
    main()
