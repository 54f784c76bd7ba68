"""python -m platform.report --experiment NAME --out DIR: tables and plots from MLflow alone."""

from __future__ import annotations

import argparse
import sys

from platform._cli import run_command


def main(argv: list[str] | None = None) -> int:
    from facefuse.report import add_report_args, format_report, run_report

    parser = add_report_args(argparse.ArgumentParser(prog="python -m platform.report",
                                                     description=__doc__))
    args = parser.parse_args(argv)
    return run_command(lambda: (print(format_report(run_report(args))), 0)[1])


if __name__ == "__main__":
    sys.exit(main())
