"""python -m platform.sweep JOB.yaml: run (or resume) a job's Ray Tune sweep, tracked in MLflow.

With the embedded default (jobs/quickstart.yaml) it first builds the synthetic benchmark,
pretrains the two tiny backbones and fills the feature cache, each skipped when done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facefuse.errors import FacefuseError
from facefuse.selection import select_beta
from facefuse.tables import format_table


def best_beta_lines(tracking_uri: str, experiment: str, datasets: list[str]) -> list[str]:
    """Returns one line per dataset with the beta facefuse.selection chooses from this experiment."""
    lines = []
    for ds in datasets:
        try:
            sel = select_beta(tracking_uri, ds, experiment=experiment)
        except FacefuseError as exc:
            lines.append(f"  {ds:16s} no choice: {exc}")
            continue
        interval = (f" [{sel.beta_interval[0]:.2g}, {sel.beta_interval[1]:.2g}]"
                    if sel.beta_interval is not None else " [no interval]")
        held = (f"  held-out {sel.heldout_value:.4f}" if sel.heldout_value is not None
                else "  held-out -")
        full = f"  full set {sel.full_value:.4f}" if sel.full_value is not None else ""
        lines.append(f"  {ds:16s} beta={sel.beta:.2g}{interval}  {sel.metric}={sel.value:.4f}"
                     f"{held}{full}  ({sel.n_trials} trials, run {sel.run_id[:8]})")
        if sel.verdict:
            lines.append(f"  {'':16s} {sel.verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform.sweep", description=__doc__)
    parser.add_argument("job", type=Path, help="job YAML file, e.g. jobs/quickstart.yaml")
    parser.add_argument("--fresh", action="store_true",
                        help="start a new sweep instead of resuming this job's last one")
    parser.add_argument("--retry-failed", action="store_true",
                        help="on resume, also retry trials that failed")
    parser.add_argument("--verbose", action="store_true",
                        help="also print Ray Tune's own result boxes and status tables "
                             "(default: one line per trial event)")
    args = parser.parse_args(argv)

    from platform._cli import run_command

    def body() -> int:
        # torch and ray: imported only once the arguments are known to be good
        from facefuse.pipeline import prepare_job, sweep_rows
        from facefuse.sweep import run_sweep
        from facefuse.sweep.study import dashboard_command
        from facefuse.tracking.names import experiment_ui_url
        from facefuse.sweep_report import summary_handler, trial_roc_plot

        job, _ = prepare_job(args.job)
        qualities = []
        if job.selection.quality:
            from facefuse.quality import measure_datasets
            qualities = measure_datasets(job.data.eval, job.data.root, job.backbones.adaface,
                                         job.selection.quality)
        result = run_sweep(job, resume=not args.fresh, retry_errored=args.retry_failed,
                           verbose=args.verbose, summary_handler=summary_handler,
                           roc_plot=trial_roc_plot)
        if qualities and result.parent_run_id:
            from facefuse.quality import log_qualities
            log_qualities(result.tracking_uri, result.parent_run_id, qualities)
        datasets = list(job.data.eval)
        rows = sweep_rows(result.tracking_uri, result.sweep_id, datasets)
        cols = ["trial", "status", "epochs", "beta", "local_heads", "global_heads",
                "local_window", "lr", "objective", *datasets]
        print(f"\nsweep {result.sweep_id} ({'resumed' if result.resumed else 'new'}): "
              f"{len(result.trials)} trials, {result.num_errors} failed, {result.wall_s:.0f}s")
        if result.confirmed_betas:
            print(f"confirmation round: betas {', '.join(f'{b:g}' for b in result.confirmed_betas)}"
                  f", {len(result.confirmation_trials)} trials (tagged facefuse.confirmation)")
        shown = [c for c in cols if any(c in r for r in rows)]
        print(format_table(shown, [[r.get(c) for c in shown] for r in rows], markdown=False))
        print("\nbest beta per dataset (python -m platform.best_beta --dataset NAME for details):")
        print("\n".join(best_beta_lines(result.tracking_uri, result.experiment_name, datasets)))
        if qualities:
            print(f"\nmeasured quality ({qualities[0].measure}, logged on the parent run; "
                  f"python -m platform.report plots best beta against it):")
            for q in qualities:
                print(f"  {q.dataset:16s} {q.value:.4g} +- {q.se:.2g} ({q.n_images} images)")
        if result.pending_tracking_ops:
            print(f"\nwarning: {result.pending_tracking_ops} tracking writes could not be "
                  "delivered; rerun the command to retry them", file=sys.stderr)
        uri = result.shown_tracking_uri
        print(f"\nexperiment {result.experiment_name!r} in {uri}")
        print(f"compare trials:  mlflow ui --backend-store-uri {uri}")
        if result.experiment_id:
            print(f"  then open {experiment_ui_url('http://127.0.0.1:5000', result.experiment_id)}")
        dashboard = dashboard_command(job.tracking.uri or "")
        if dashboard:
            print(f"optuna study:    {dashboard}   # study {result.sweep_id}")
        return 1 if result.num_errors == len(result.trials) and result.trials else 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
