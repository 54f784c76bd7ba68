"""python -m platform.ablation JOB.yaml: the ablation grid as a Ray Tune grid, and its table."""

from __future__ import annotations

import argparse
import sys

from platform._cli import run_command


def main(argv: list[str] | None = None) -> int:
    from facefuse.ablation import add_ablation_args, format_ablation, run_ablation

    parser = add_ablation_args(argparse.ArgumentParser(prog="python -m platform.ablation",
                                                       description=__doc__))
    args = parser.parse_args(argv)

    def body() -> int:
        from facefuse.pipeline import prepare_job

        # Embedded data, backbones and the feature cache first; the job is parsed once, here.
        job, _ = prepare_job(args.job)
        print(format_ablation(run_ablation(args, job=job)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
