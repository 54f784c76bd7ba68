"""Candidate recipes for the release tiny backbones, trained side by side (on a GPU where lent).

The release pair should resemble the real ArcFace/AdaFace pair: within 2 points of each other on
the high-quality synthetic sets and the AdaFace one ahead on the low-quality IJB-style ones. This
script trains a grid of candidate recipes (each in its own process, all on one device), saves each
checkpoint with its training metrics, and, with ``--eval``, scores each with
``facefuse.backbones.pretrain.evaluate_backbone``. It imports neither Ray nor MLflow, so it runs
on a machine that has only torch.

    python benchmarks/release_recipe_grid.py --data .facefuse/data --out /tmp/grid --device cuda
    python benchmarks/release_recipe_grid.py --data .facefuse/data --out /tmp/grid --eval-only
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: name -> (base recipe, overrides). Steps are upper bounds: ``--budget-seconds`` cuts them to what
#: the device trains in that time, measured by a short timed run of every candidate side by side.
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "arc_3k": ("arcface", {"steps": 3000}),
    "arc_6k": ("arcface", {"steps": 6000}),
    "ada_lp03_3k": ("adaface", {"steps": 3000, "aug_prob": 0.3}),
    "ada_lp03_6k": ("adaface", {"steps": 6000, "aug_prob": 0.3}),
    "ada_lp05_6k": ("adaface", {"steps": 6000, "aug_prob": 0.5}),
    "ada_lo05_6k": ("adaface", {"steps": 6000, "aug_prob": 0.5, "aug_ops": ("lowres",)}),
    "ada_all03_6k": ("adaface", {"steps": 6000, "aug_prob": 0.3,
                                 "aug_ops": ("crop", "lowres", "photometric")}),
    "ada_lp05_t01_6k": ("adaface", {"steps": 6000, "aug_prob": 0.5, "t_alpha": 0.01}),
    # second round: low resolution alone led the first (session 5), trained longer
    "ada_lo03_6k": ("adaface", {"steps": 6000, "aug_prob": 0.3, "aug_ops": ("lowres",)}),
    "ada_lo07_6k": ("adaface", {"steps": 6000, "aug_prob": 0.7, "aug_ops": ("lowres",)}),
    "ada_lo05_9k": ("adaface", {"steps": 9000, "aug_prob": 0.5, "aug_ops": ("lowres",)}),
}


def _train(name: str, data: str, out: str, device: str, seed: int,
           steps: int | None = None, save: bool = True) -> dict[str, Any]:
    import numpy as np
    import torch

    from facefuse.backbones.checkpoints import save_adaface, save_insightface
    from facefuse.backbones.pretrain import (ADAFACE_TINY, ARCFACE_TINY, TRAIN_SET, train_tiny_backbone,
                                             with_overrides)
    from facefuse.data import load_train_set

    torch.set_num_threads(1)
    base, over = CANDIDATES[name]
    if steps is not None:  # a smoke run, a timing run or a budget cut
        steps = min(steps, int(over["steps"]))
    else:
        steps = int(over["steps"])
    over = dict(over, steps=steps, warmup_steps=max(1, steps // 20))
    recipe = with_overrides(ARCFACE_TINY if base == "arcface" else ADAFACE_TINY, **over)
    train = load_train_set(TRAIN_SET, data)
    images = train.images()
    labels = np.asarray(train.labels, dtype=np.int64)
    model, head, metrics = train_tiny_backbone(images, labels, train.num_classes, recipe, seed,
                                               progress=False, device=device)
    path = Path(out) / name / Path(recipe.filename).name
    if not save:
        return {"name": name, "metrics": metrics}
    if recipe.layout == "insightface":
        save_insightface(model, path)
    else:
        save_adaface(model, path, head_state=head.state_dict())
    row = {"name": name, "path": str(path), "metrics": metrics, "base": base,
           "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in over.items()}}
    (path.parent / "result.json").write_text(json.dumps(row, indent=1))  # kept if the grid is cut off
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the synthetic suite's data root")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=None, help="candidate names (default: all)")
    ap.add_argument("--parallel", type=int, default=len(CANDIDATES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="override every candidate's steps (smoke runs)")
    ap.add_argument("--budget-seconds", type=float, default=None,
                    help="train each candidate at most this long: a timed run of --probe-steps "
                         "first, then each candidate's steps cut to fit (rounded down to 100)")
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--eval", action="store_true", help="score each checkpoint afterwards")
    ap.add_argument("--eval-only", action="store_true", help="score the checkpoints under --out")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = args.only or list(CANDIDATES)
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "grid.json"
    rows: list[dict[str, Any]] = json.loads(summary_path.read_text()) if summary_path.exists() else []
    if not args.eval_only:
        t0 = time.perf_counter()
        ctx = multiprocessing.get_context("spawn")
        steps: dict[str, int | None] = {n: args.steps for n in names}
        if args.budget_seconds is not None:
            with ProcessPoolExecutor(min(args.parallel, len(names)), mp_context=ctx) as pool:
                futures = [pool.submit(_train, n, str(args.data), str(args.out), args.device,
                                       args.seed, args.probe_steps, False) for n in names]
                probes = [f.result() for f in futures]
            for probe in probes:
                per_step = probe["metrics"]["train_seconds"] / args.probe_steps
                fit = int(args.budget_seconds / per_step) // 100 * 100
                steps[probe["name"]] = max(100, min(fit, args.steps or fit))
                print(f"probe {probe['name']}: {per_step * 1000:.1f} ms/step side by side -> "
                      f"at most {steps[probe['name']]} steps")
        with ProcessPoolExecutor(min(args.parallel, len(names)), mp_context=ctx) as pool:
            futures = [pool.submit(_train, n, str(args.data), str(args.out), args.device, args.seed,
                                   steps[n]) for n in names]
            rows = [f.result() for f in futures]
        print(f"trained {len(rows)} candidates in {time.perf_counter() - t0:.0f}s on {args.device}")
        summary_path.write_text(json.dumps(rows, indent=1))
    if args.eval or args.eval_only:
        from facefuse.backbones.pretrain import evaluate_backbone

        sets = ("synth_lfw", "synth_cfp_fp", "synth_agedb_30", "synth_ijbb", "synth_ijbc")
        for row in rows:
            row["eval"] = evaluate_backbone(row["path"], args.data, sets=sets)
        summary_path.write_text(json.dumps(rows, indent=1))
    for row in rows:
        m = row["metrics"]
        ev = row.get("eval", {})
        cells = " ".join(f"{k.split('/')[0][6:]}={v:.3f}" for k, v in ev.items() if not k.endswith("auc"))
        print(f"{row['name']:18s} {m['train_seconds']:7.1f}s loss {m['final_loss']:.2f} "
              f"train_acc {m['train_accuracy']:.3f} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
