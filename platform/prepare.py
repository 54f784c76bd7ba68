"""python -m platform.prepare {synth [--ladder],backbones,features}: build what sweeps read."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _train_recipe(args: argparse.Namespace) -> None:
    """Trains a recipe set into --out, prints its scores and, with --ship, writes the release."""
    from dataclasses import asdict

    import torch

    from facefuse.backbones.pretrain import RECIPE_SETS, evaluate_backbone, pretrain_tiny_backbones
    from facefuse.backbones.release import HIGH_QUALITY, LOW_QUALITY, resemblance, ship_release

    data = args.data.resolve()
    out = (args.out or data.parent / ("backbones" if args.recipe == "quick" else "backbones_release")).resolve()
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    recipes = RECIPE_SETS[args.recipe]
    print(f"training the {args.recipe} recipe ({', '.join(f'{r.name}: {r.steps} steps' for r in recipes)}) "
          f"on {device} into {out}")
    result = pretrain_tiny_backbones(data, out, seed=args.seed, recipes=recipes, device=device)
    scores = {loss: evaluate_backbone(result[loss], data, sets=HIGH_QUALITY + LOW_QUALITY)
              for loss in ("arcface", "adaface")}
    for loss, s in scores.items():
        print(f"  {loss:8s} " + "  ".join(f"{k}={v:.4f}" for k, v in s.items() if not k.endswith("auc")))
    shape = resemblance(scores["arcface"], scores["adaface"])
    print(f"  high-quality gap (AdaFace - ArcFace): {shape['high_quality_gap']}")
    print(f"  low-quality lead (AdaFace - ArcFace, TAR@FAR=1e-4): {shape['low_quality_lead']}")
    print(f"  resembles the real pair (within 2 points, AdaFace ahead on low quality): "
          f"{shape['resembles_real_pair']}")
    if args.ship:
        by_loss = {r.loss: asdict(r) for r in recipes}
        command = (f"python -m platform.prepare backbones --data DATA --recipe {args.recipe} "
                   f"--seed {args.seed} --ship  (trained on {device})")
        path = ship_release({"arcface": result["arcface"], "adaface": result["adaface"]}, data,
                            by_loss, scores, command, seed=args.seed)
        print(f"release written: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.prepare", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("synth", help="write the synthetic benchmark in the real file formats")
    p.add_argument("--out", type=Path, required=True, help="data root to write (e.g. .facefuse/data)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ladder", action="store_true",
                   help="also write the quality ladder synth_q0..synth_q4 (the same pairs at five "
                        "graded levels of blur, noise, resolution, JPEG and pose)")
    p = sub.add_parser("backbones", help="pretrain the two tiny backbones on the synthetic train set")
    p.add_argument("--data", type=Path, required=True, help="data root holding faces_synth/")
    p.add_argument("--out", type=Path, default=None,
                   help="default: <data>/../backbones (quick), <data>/../backbones_release (release)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", choices=("quick", "release"), default="quick",
                   help="quick: the embedded default's fallback (minutes on 2 cores); release: the "
                   "shipped pair's long recipe (minutes on a GPU, about an hour on 2 cores)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--ship", action="store_true",
                   help="write the trained pair and its record into facefuse/backbones/release")
    for name in ("features", "cache"):  # "cache": the command's earlier name, kept working
        p = sub.add_parser(name, help="extract the feature maps a job needs into its store "
                           "(one Ray Data job; data.cache_dir may be a path or s3:// URI)")
        p.add_argument("job", type=Path, help="job YAML file")
        p.add_argument("--shard-size", type=int, default=None, help="images per shard (default 4096)")
        p.add_argument("--actors", type=int, default=None,
                       help="backbone actors (default: one per GPU of the cluster for a job with "
                       "resources.gpus_per_worker, else one per CPU; at most one per shard)")
        p.add_argument("--no-ray", action="store_true", help="extract in this process instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from facefuse.errors import FacefuseError

    try:
        if args.what == "synth":
            from facefuse.embedded import ensure_synth
            built = ensure_synth(args.out.resolve(), args.seed)
            print(f"synthetic suite {'written to' if built else 'already complete in'} {args.out.resolve()}")
            if args.ladder:
                from facefuse.embedded import ensure_ladder
                built = ensure_ladder(args.out.resolve(), args.seed)
                print(f"quality ladder {'written to' if built else 'already complete in'} {args.out.resolve()}")
        elif args.what == "backbones" and args.recipe == "quick" and not args.ship:
            from facefuse.embedded import ensure_tiny_backbones
            out = (args.out or args.data.resolve().parent / "backbones").resolve()
            trained = ensure_tiny_backbones(args.data.resolve(), out, args.seed)
            print(f"tiny backbones {'trained into' if trained else 'already present in'} {out}")
        elif args.what == "backbones":
            _train_recipe(args)
        else:
            from facefuse.pipeline import extract_features, prepare_job
            job, ctx = prepare_job(args.job, build_cache=False)
            summary = extract_features(job, use_ray=not args.no_ray, shard_size=args.shard_size,
                                       actors=args.actors)
            for name, ckpt, nbytes in summary["sizes"]:
                print(f"  {name:16s} {ckpt:24s} {nbytes / 1e9:9.3f} GB")
            print(f"features for {job.name} ready in {ctx['cache_dir']}: {summary['shards']} shard(s), "
                  f"{summary['images']} images extracted in {summary['seconds']:.1f}s "
                  f"({summary['images_per_s']:.1f} images/s)")
    except FacefuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
