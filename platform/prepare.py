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
    p = sub.add_parser("cache", help="fill the feature-map cache a job needs")
    p.add_argument("job", type=Path, help="job YAML file")
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
            from facefuse.pipeline import prepare_job
            job, ctx = prepare_job(args.job)
            print(f"feature cache for {job.name} ready in {ctx['cache_dir']}")
    except FacefuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
