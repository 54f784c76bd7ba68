"""python -m platform.best_beta --dataset NAME: the beta the tracked trials support for a dataset.

With --predict: the beta predicted for a dataset from its measured quality and the relation of
best beta to quality that the latest quality sweep (jobs/beta_vs_quality.yaml) fitted on its
levels, with a 90% prediction interval; or one line saying why there is no prediction (fewer
than three swept levels, or no relation in the data), exit status 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from facefuse.quality import BetaPrediction, NoPredictionError, predict_beta
from facefuse.selection import (DEFAULT_MODEL_NAME, EPOCH_POLICIES, BetaSelection, register_choice,
                                select_beta)
from facefuse.tables import format_table
from platform._cli import run_command


def add_best_beta_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Returns the parser with the best_beta command's arguments added."""
    parser.add_argument("--dataset", required=True,
                        help="registered dataset name (lfw, ijbb, synth_ijbc, ...)")
    parser.add_argument("--metric", default=None,
                        help="metric to maximise (default: the dataset's primary metric), e.g. "
                             "acc or tar_far_1e-3")
    parser.add_argument("--experiment", default=None,
                        help="only this MLflow experiment (default: every experiment)")
    parser.add_argument("--sweep", default=None,
                        help="only this sweep id (default: the latest sweep of the experiment)")
    parser.add_argument("--pool", action="store_true",
                        help="pool every sweep whose budget equals the latest sweep's")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                             "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--epoch-policy", choices=EPOCH_POLICIES, default="last_common",
                        help="compare trials at their last common epoch or each at its best "
                             "epoch (default: last_common)")
    parser.add_argument("--top", type=int, default=5, help="runner-ups to list (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--register", action="store_true",
                        help="tag the chosen run and register a model version with alias "
                             "best-<dataset>")
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME,
                        help=f"registered model name for --register (default {DEFAULT_MODEL_NAME})")
    parser.add_argument("--predict", action="store_true",
                        help="predict beta from the dataset's measured quality and the relation "
                             "the latest quality sweep fitted (the dataset need not be swept)")
    parser.add_argument("--data-root", default=None,
                        help="--predict: data root holding the dataset (default: the sweep's)")
    parser.add_argument("--backbone", default=None,
                        help="--predict: the AdaFace checkpoint the sweep measured quality with "
                             "(default: the sweep's path; its sha256 must match)")
    return parser


def run_best_beta(args: argparse.Namespace) -> BetaSelection:
    """Returns the selection for parsed best_beta arguments (registered when --register)."""
    selection = select_beta(args.tracking_uri, args.dataset, metric=args.metric,
                            experiment=args.experiment, epoch_policy=args.epoch_policy,
                            n_runner_ups=args.top, sweep=args.sweep, pool=args.pool)
    if args.register:
        register_choice(args.tracking_uri, selection, model_name=args.model_name)
    return selection


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def format_best_beta(selection: BetaSelection, as_json: bool = False) -> str:
    """Returns the text the best_beta command prints (one JSON object with as_json)."""
    if as_json:
        return json.dumps(selection.to_json(), sort_keys=True)
    s = selection
    when = (f"at the last common epoch {s.epoch}" if s.epoch_policy == "last_common"
            else "each trial at its best epoch")
    pool = "full-budget trials" if s.full_budget_only else "trials (none ran its full budget)"
    band_i = int(np.argmin(np.abs(np.log10(s.curve.beta) - math.log10(s.curve_beta))))
    scope = ("pooled sweeps of equal budget" if s.pooled
             else f"sweep {s.sweep_id}" if s.sweep_id else "all trials")
    head = f"best beta for {s.dataset}: {s.beta:.3g}"
    if s.beta_interval is not None:
        head += f" (90% interval {s.beta_interval[0]:.3g} to {s.beta_interval[1]:.3g})"
    lines = [head + f", {scope}"]
    part = "selection part" if s.selection_split else "full set"
    value_line = f"  {s.metric} at the choice: {_fmt(s.value)}"
    if s.value_interval is not None:
        value_line += f" (90% {_fmt(s.value_interval[0])}..{_fmt(s.value_interval[1])})"
    value_line += f" on the {part}"
    if s.heldout_value is not None:
        value_line += f"; held-out {_fmt(s.heldout_value)}"
    if s.full_value is not None and s.selection_split:
        value_line += f"; full set {_fmt(s.full_value)}"
    lines.append(value_line)
    if s.estimate is not None:
        e = s.estimate
        lines.append(f"  from {e.n_trials} trials: {e.n_full} at the full budget (epoch "
                     f"{e.budget_epoch}), {e.n_extrapolated} stopped early and extrapolated "
                     f"by the survivors' learning curves, {e.n_dropped} unusable")
    if s.verdict:
        lines.append(f"  verdict: {s.verdict}")
    chosen = (f"  chosen run {s.run_id} (beta {float(s.params.get('beta', s.beta)):g}, "
              f"experiment {s.experiment}): {_fmt(s.trial_mean)}")
    chosen += (f" ± {_fmt(s.value_std)} over {s.n_seeds} seeds" if s.n_seeds > 1
               else " (1 seed)")
    lines += [
        chosen,
        f"  compared {when}; {s.n_trials} {pool} in {s.n_settings} settings",
        (f"  local-linear curve prefers beta = {s.curve_beta:.3g}: {_fmt(s.curve_value)} "
         f"({int(round(s.curve.level * 100))}% band {_fmt(s.curve.lower[band_i])}"
         f"..{_fmt(s.curve.upper[band_i])}), bandwidth {s.curve.bandwidth_decades:g} decades, "
         f"supported by {s.n_support} trial{'s' if s.n_support != 1 else ''}"),
        (f"  best single trial: beta = {s.best_trial_beta:g}, {_fmt(s.best_trial_value)} "
         f"(run {s.best_trial_run_id}), {abs(s.distance_decades):.2f} decades and "
         f"{abs(s.distance_metric):.4f} from the curve's optimum"),
    ]
    if s.registration is not None:
        r = s.registration
        lines.append(f"  registered {r.model_name} version {r.version} as alias {r.alias}")
    if s.runner_ups:
        lines.append("runner-ups:")
        header = ["beta", "mean", "std", "n", "curve", "run_id"] + s.varying_params
        rows = [[f"{u['beta']:.4g}", _fmt(u["value"]), _fmt(u["std"]) if u["n"] > 1 else "-",
                 str(u["n"]),
                 _fmt(u["curve"]), u["run_id"]] + [u["params"].get(k, "") for k in s.varying_params]
                for u in s.runner_ups]
        table = format_table(header, rows, markdown=False)
        lines += ["  " + line for line in table.splitlines()]
    return "\n".join(lines)


def format_prediction(p: BetaPrediction, as_json: bool = False) -> str:
    """Returns the text best_beta --predict prints (one JSON object with as_json)."""
    if as_json:
        return json.dumps(p.to_json(), sort_keys=True)
    st = p.study
    assert st.fit is not None
    pct = int(round(st.fit.level * 100))
    lines = [f"predicted beta for {p.dataset}: {p.beta:.3g} ({pct}% prediction interval "
             f"{p.beta_interval[0]:.3g} to {p.beta_interval[1]:.3g}), at {st.measure} "
             f"{p.quality.value:.4g} +- {p.quality.se:.2g}",
             f"  from sweep {st.sweep_id}: {st.fit.verdict(st.measure)}; levels "
             + ", ".join(f"{q.dataset} (beta {q.beta:.2g} at {q.quality:.4g})" for q in st.points)]
    if p.swept:
        lines.append(f"  {p.dataset} is a level of that sweep: left out of the fit "
                     f"(leave-one-out); best_beta without --predict gives its own choice")
    if p.extrapolated:
        lo, hi = st.fit.quality_range
        lines.append(f"  extrapolated: its quality lies outside the levels' {lo:.4g} .. {hi:.4g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = add_best_beta_args(argparse.ArgumentParser(prog="python -m platform.best_beta",
                                                        description=__doc__))
    args = parser.parse_args(argv)

    def body() -> int:
        if args.predict:
            try:
                prediction = predict_beta(args.tracking_uri, args.dataset,
                                          experiment=args.experiment, sweep=args.sweep,
                                          data_root=args.data_root, backbone=args.backbone)
            except NoPredictionError as exc:
                print(json.dumps({"dataset": args.dataset, "predicted": False,
                                  "reason": str(exc)}) if args.json
                      else f"no prediction for {args.dataset}: {exc}")
                return 1
            print(format_prediction(prediction, as_json=args.json))
            return 0
        print(format_best_beta(run_best_beta(args), as_json=args.json))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
