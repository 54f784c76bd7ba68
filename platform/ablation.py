"""python -m platform.ablation JOB.yaml: the ablation grid as a Ray Tune grid, and its table."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Optional

from facefuse.ablation import (DEFAULT_BETAS, DEFAULT_SEEDS, VARIANTS, AblationResult,
                               ablation_param_space, ablation_results, parse_beta_mode,
                               run_ablation_grid, table_markdown)
from facefuse.claims import check_claims, claims_markdown
from facefuse.sweep.jobs import load_job
from platform._cli import run_command


def beta_list(text: str) -> list[float]:
    """Returns the floats of a comma-separated argument ("0.01,0.1,1")."""
    return [float(v) for v in text.split(",") if v.strip()]


def seed_list(text: str) -> list[int]:
    """Returns the integers of a comma-separated argument ("0,1,2")."""
    return [int(v) for v in text.split(",") if v.strip()]


def variant_list(text: str) -> list[str]:
    """Returns the names of a comma-separated argument ("full,no_vib")."""
    return [v.strip() for v in text.split(",") if v.strip()]


def add_ablation_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Returns the parser with the ablation command's arguments added."""
    parser.add_argument("job", help="job YAML (data, backbones, epochs, resources, tracking)")
    parser.add_argument("--variants", type=variant_list, default=None,
                        help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--betas", type=beta_list, default=None,
                        help="comma-separated betas (default: the job's list, else "
                             f"{','.join(f'{b:g}' for b in DEFAULT_BETAS)})")
    parser.add_argument("--seeds", type=seed_list, default=None,
                        help="comma-separated seeds (default: the job's list, else "
                             f"{','.join(str(s) for s in DEFAULT_SEEDS)})")
    parser.add_argument("--json", dest="json_path", default=None, metavar="FILE",
                        help="write the rows (variant, beta, seed, dataset, metric, value) here")
    parser.add_argument("--table-beta", default="best",
                        help="table cells at each variant's best beta per dataset ('best', "
                             "default), one row per beta ('all'), or one beta value")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the job's, MLFLOW_TRACKING_URI, or "
                             "sqlite:///<cwd>/mlflow.db)")
    return parser


GridRunner = Callable[[argparse.Namespace, dict[str, Any]], tuple[Optional[str], str, str]]


def run_ablation(args: argparse.Namespace, run_grid: Optional[GridRunner] = None,
                 job: Optional[Any] = None) -> AblationResult:
    """Returns the ablation's rows and table after running its Tune grid.

    Variants, betas and seeds come from the arguments, else the job's ``ablation`` section
    (when the job schema has one), else the defaults. ``run_grid(args, param_space)`` returns
    (tracking_uri, experiment, sweep_id); by default ``facefuse.sweep.run_sweep`` runs the job
    with the grid as its param space and without ASHA. ``job`` is the job file already parsed
    (and prepared) by the command; without it the file is read here.
    """
    parse_beta_mode(args.table_beta)  # a wrong table option fails before any training
    if job is None and run_grid is None:
        job = load_job(args.job)
    defaults = dict(getattr(job, "ablation", None) or {})
    space = ablation_param_space(args.variants or defaults.get("variants"),
                                 args.betas or defaults.get("betas"),
                                 args.seeds or defaults.get("seeds"))
    if run_grid is None:
        uri, experiment, sweep_id = run_ablation_grid(job, space, args.tracking_uri)
    else:
        uri, experiment, sweep_id = run_grid(args, space)
    return ablation_results(uri, experiment, sweep_id, beta=args.table_beta,
                            json_path=args.json_path)


def format_ablation(result: AblationResult) -> str:
    """Returns the text the ablation command prints: the markdown table and where rows went."""
    lines = [f"ablation ({result.experiment}" + (f", sweep {result.sweep_id}" if result.sweep_id
                                                 else "") + f"): {len(result.rows)} rows", "",
             table_markdown(result.table).rstrip(), "", "Claims:", "",
             claims_markdown(check_claims(result.rows)).rstrip()]
    if result.json_path is not None:
        lines += ["", f"rows written to {result.json_path}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = add_ablation_args(argparse.ArgumentParser(prog="python -m platform.ablation",
                                                       description=__doc__))
    args = parser.parse_args(argv)

    def body() -> int:
        from facefuse.pipeline import prepare_job  # torch: not for `--help` or a bad argument

        # Embedded data, backbones and the feature cache first; the job is parsed once, here.
        job, _ = prepare_job(args.job)
        print(format_ablation(run_ablation(args, job=job)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
