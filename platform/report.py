"""python -m platform.report --experiment NAME --out DIR: tables and plots from MLflow (and the
backbone comparison from the feature stores its sweeps name)."""

from __future__ import annotations

import argparse
import sys

from facefuse.report import REPORT_ARTIFACT_DIR, Report, make_report
from platform._cli import run_command


def add_report_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Returns the parser with the report command's arguments added."""
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the job's name)")
    parser.add_argument("--out", required=True, help="directory for the report files")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--table-beta", default="best",
                        help="ablation cells at each variant's best beta per dataset ('best'), "
                             "one row per beta ('all'), or one beta value")
    parser.add_argument("--no-log", action="store_true",
                        help="do not log the files to the parent runs")
    parser.add_argument("--no-backbones", action="store_true",
                        help="skip comparing the two backbones (CKA, error correlation) on the "
                             "evaluated sets; it reads every stored map of those sets (IJB-C at "
                             "r100 with the flip test: about 94 GB)")
    return parser


def run_report(args: argparse.Namespace) -> Report:
    """Returns the Report for parsed report arguments."""
    return make_report(args.tracking_uri, args.experiment, args.out,
                       log_artifacts=not args.no_log, table_beta=args.table_beta,
                       backbones=not args.no_backbones)


def format_report(report: Report) -> str:
    """Returns the text the report command prints: files written, skipped parts, logging."""
    lines = []
    if report.backbone_table:
        lines += ["backbone similarity (backbone_similarity.md has the notes):",
                  report.backbone_table, ""]
    lines += [f"report written to {report.out_dir}:"]
    lines += [f"  {p.name}" for p in report.files]
    for study in report.beta_quality:
        lines.append(study.summary())
    if report.skipped:
        lines.append("skipped:")
        lines += [f"  {s}" for s in report.skipped]
    if report.logged_to:
        lines.append(f"logged under {REPORT_ARTIFACT_DIR}/ to parent run(s): "
                     f"{', '.join(report.logged_to)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = add_report_args(argparse.ArgumentParser(prog="python -m platform.report",
                                                     description=__doc__))
    args = parser.parse_args(argv)
    return run_command(lambda: (print(format_report(run_report(args))), 0)[1])


if __name__ == "__main__":
    sys.exit(main())
