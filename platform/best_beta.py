"""python -m platform.best_beta --dataset NAME: the beta the tracked trials support for a dataset."""

from __future__ import annotations

import argparse
import sys

from platform._cli import run_command


def main(argv: list[str] | None = None) -> int:
    from facefuse.selection import add_best_beta_args, format_best_beta, run_best_beta

    parser = add_best_beta_args(argparse.ArgumentParser(prog="python -m platform.best_beta",
                                                        description=__doc__))
    args = parser.parse_args(argv)

    def body() -> int:
        print(format_best_beta(run_best_beta(args), as_json=args.json))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
