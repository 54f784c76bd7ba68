"""python -m platform.prepare {synth,backbones,cache}: build what sweeps read."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.prepare", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("synth", help="write the synthetic benchmark in the real file formats")
    p.add_argument("--out", type=Path, required=True, help="data root to write (e.g. .facefuse/data)")
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("backbones", help="pretrain the two tiny backbones on the synthetic train set")
    p.add_argument("--data", type=Path, required=True, help="data root holding faces_synth/")
    p.add_argument("--out", type=Path, default=None, help="default: <data>/../backbones")
    p.add_argument("--seed", type=int, default=0)
    for name in ("features", "cache"):  # "cache": the command's earlier name, kept working
        p = sub.add_parser(name, help="extract the feature maps a job needs into its store "
                           "(one Ray Data job; data.cache_dir may be a path or s3:// URI)")
        p.add_argument("job", type=Path, help="job YAML file")
        p.add_argument("--shard-size", type=int, default=None, help="images per shard (default 4096)")
        p.add_argument("--actors", type=int, default=1, help="backbone actors (default 1)")
        p.add_argument("--no-ray", action="store_true", help="extract in this process instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from facefuse.errors import FacefuseError

    try:
        if args.what == "synth":
            from facefuse.embedded import ensure_synth
            built = ensure_synth(args.out.resolve(), args.seed)
            print(f"synthetic suite {'written to' if built else 'already complete in'} {args.out.resolve()}")
        elif args.what == "backbones":
            from facefuse.embedded import ensure_tiny_backbones
            out = (args.out or args.data.resolve().parent / "backbones").resolve()
            trained = ensure_tiny_backbones(args.data.resolve(), out, args.seed)
            print(f"tiny backbones {'trained into' if trained else 'already present in'} {out}")
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
