"""The ablation grid (variants x betas x seeds), its results from MLflow, and the paper-style table.

Variants are the ``VARIANTS`` registry below (name -> model overrides, each described there);
their names are used in MLflow tags (``facefuse.variant``), JSON rows and tables.

The grid runs as one Ray Tune ``grid_search`` over whole trial configs (not a product of
per-key grids, which would cross no_vib with every beta); see ``ablation_param_space``.

Table decision: by default each cell is the variant's result at the beta that is best *for that
dataset* (mean over seeds), matching how ``best_beta`` picks beta per dataset. When the runs logged
the held-out parts (``facefuse.evaluation.splits``), beta is chosen on the selection part and the
cell reports the report part, so no cell is chosen on the data it reports; the betas used are
reported beside the table. Cells are the mean over seeds with its 90% Student-t interval.
``beta="all"`` gives one row per (variant, beta) with no selection at all (full-set values), and
a number fixes one beta for every variant. Values are each run's metric at its final epoch (fixed
budget, no per-run selection on the benchmark). ``facefuse.claims`` turns the rows into the
paper's claims, each a paired difference over seeds with its interval.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import pandas as pd

from facefuse.data._io import atomic_write_text
from facefuse.errors import ConfigError
from facefuse.stats import LEVEL, t_half_width
from facefuse.tables import format_table
from facefuse.selection import higher_is_better, is_seed_param, run_params, run_variant
from facefuse.tracking import schema as S
from facefuse.tracking.store import (experiment_ids, open_tracking, resolve_tracking_uri,
                                     search_all_runs)

logger = logging.getLogger(__name__)

#: Model overrides (facefuse.model.FusionConfig fields) of each variant, in table order.
VARIANTS: dict[str, dict[str, Any]] = {
    # local + global attention, VIB, both backbones (the proposed model)
    "full": {"branches": "both", "vib": True, "fusion": "attention", "inputs": "both"},
    # only the local attention branch
    "local_only": {"branches": "local", "vib": True, "fusion": "attention", "inputs": "both"},
    # only the global attention branch
    "global_only": {"branches": "global", "vib": True, "fusion": "attention", "inputs": "both"},
    # no bottleneck (plain embedding; beta does not apply: one row per seed)
    "no_vib": {"branches": "both", "vib": False, "fusion": "attention", "inputs": "both"},
    # concatenated maps instead of attention (the fusion baseline)
    "concat": {"branches": "both", "vib": True, "fusion": "concat", "inputs": "both"},
    # the ArcFace backbone's map alone
    "arcface_only": {"branches": "both", "vib": True, "fusion": "attention", "inputs": "arcface"},
    # the AdaFace backbone's map alone
    "adaface_only": {"branches": "both", "vib": True, "fusion": "attention", "inputs": "adaface"},
    # the full model with the local/global weight learned (a sigmoid gate starting at 0.5)
    "mix_learned": {"branches": "both", "vib": True, "fusion": "attention", "inputs": "both",
                    "mix": "learned"},
    # the full model weighing the global branch up (local 0.25, global 0.75) ...
    "mix_0.25": {"branches": "both", "vib": True, "fusion": "attention", "inputs": "both",
                 "mix": 0.25},
    # ... and the local branch up (local 0.75, global 0.25); "full" is 0.5, equal weights
    "mix_0.75": {"branches": "both", "vib": True, "fusion": "attention", "inputs": "both",
                 "mix": 0.75},
}
DEFAULT_BETAS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
#: Key of the single grid_search in the param space. Deliberately without a leading underscore:
#: a trainable that forgot to flatten it fails loudly (unknown parameter) instead of silently
#: training the full model for every variant.
ABLATION_KEY = "ablation"
QUALITY_ORDER = ("high", "mixed", "low")

BetaMode = Union[str, float]


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------
def _check_variants(variants: Optional[Sequence[str]]) -> list[str]:
    names = list(VARIANTS) if not variants else list(dict.fromkeys(variants))
    for name in names:
        if name not in VARIANTS:
            raise ConfigError(None, f"unknown ablation variant {name!r}", field="variants",
                              fix=f"use some of: {', '.join(VARIANTS)}")
    return names


def _check_betas(betas: Optional[Sequence[float]]) -> list[float]:
    values = list(DEFAULT_BETAS) if betas is None else [float(b) for b in betas]
    if not values:
        raise ConfigError(None, "the ablation needs at least one beta", field="betas",
                          fix=f"give e.g. {list(DEFAULT_BETAS)}")
    for b in values:
        if not (math.isfinite(b) and b > 0):
            raise ConfigError(None, f"beta must be a positive number, got {b!r}", field="betas",
                              fix="use betas > 0 (the no_vib variant covers 'no bottleneck')")
    return list(dict.fromkeys(values))


def _check_seeds(seeds: Optional[Sequence[int]]) -> list[int]:
    values = list(DEFAULT_SEEDS) if seeds is None else list(seeds)
    if not values:
        raise ConfigError(None, "the ablation needs at least one seed", field="seeds",
                          fix="give e.g. [0, 1, 2]")
    out = []
    for s in values:
        if isinstance(s, bool) or int(s) != s or int(s) < 0:
            raise ConfigError(None, f"seed must be a non-negative integer, got {s!r}",
                              field="seeds", fix="use e.g. [0, 1, 2]")
        out.append(int(s))
    return list(dict.fromkeys(out))


def ablation_grid(variants: Optional[Sequence[str]] = None,
                  betas: Optional[Sequence[float]] = None,
                  seeds: Optional[Sequence[int]] = None) -> list[dict[str, Any]]:
    """Returns one flat trial config per (variant, beta, seed); no_vib has no beta.

    Each config holds ``variant``, ``seed``, ``beta`` (not for no_vib) and the variant's
    FusionConfig overrides (``branches``, ``vib``, ``fusion``, ``inputs``).
    """
    names = _check_variants(variants)
    beta_values = _check_betas(betas)
    seed_values = _check_seeds(seeds)
    grid = []
    for name in names:
        overrides = VARIANTS[name]
        for beta in ([None] if not overrides["vib"] else beta_values):
            for seed in seed_values:
                config: dict[str, Any] = {"variant": name, "seed": seed}
                if beta is not None:
                    config["beta"] = beta
                config.update(overrides)
                grid.append(config)
    return grid


def ablation_param_space(variants: Optional[Sequence[str]] = None,
                         betas: Optional[Sequence[float]] = None,
                         seeds: Optional[Sequence[int]] = None,
                         base: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Returns a Tune param space: ``base`` plus one grid_search over the ablation configs.

    The trainable receives ``config[ABLATION_KEY]`` (one grid entry) and merges it over the
    top level before building its model (``facefuse.tracking.schema.flat_config``, which the
    sweep's MLflow callback also uses, so the entry's keys are logged as plain params).
    """
    from ray import tune

    space = dict(base or {})
    space[ABLATION_KEY] = tune.grid_search(ablation_grid(variants, betas, seeds))
    return space


# ---------------------------------------------------------------------------------------------
# Rows from MLflow
# ---------------------------------------------------------------------------------------------
def dataset_order(datasets: Iterable[str]) -> list[str]:
    from facefuse.data import DATASETS

    names = list(dict.fromkeys(datasets))
    registry = list(DATASETS)

    def key(name: str) -> tuple[int, int, str]:
        spec = DATASETS.get(name)
        quality = QUALITY_ORDER.index(spec.quality) if spec and spec.quality in QUALITY_ORDER else 9
        return (quality, registry.index(name) if name in registry else len(registry), name)

    return sorted(names, key=key)


def _run_datasets(run: Any) -> list[str]:
    tagged = [d.strip() for d in S.tag_list(run.data.tags.get(S.TAG_DATASETS)) if d.strip()]
    if tagged:
        return tagged
    return sorted({k.split("/", 1)[0] for k in run.data.metrics if "/" in k
                   and not k.startswith(("train/", "system/"))})


def _run_seed(run: Any) -> Optional[int]:
    raw = run.data.tags.get(S.TAG_SEED)
    if raw is None:
        raw = next((v for k, v in run_params(run).items() if is_seed_param(k)), None)
    try:
        return None if raw is None else int(float(raw))
    except ValueError:
        return None


def rows_from_runs(runs: Sequence[Any]) -> list[dict[str, Any]]:
    """Returns one row (variant, beta, seed, dataset, metric, value, sel, test, run_id) per run and dataset.

    ``value`` is the full set's final-epoch primary metric, ``sel`` and ``test`` its selection and
    report parts' (``facefuse.evaluation.splits``; None when the run did not log them).
    """
    from facefuse.data import DATASETS

    rows = []
    for run in runs:
        variant = run_variant(run)
        if not variant:
            continue
        params = run_params(run)
        beta: Optional[float] = None
        no_bottleneck = VARIANTS.get(variant, {}).get("vib") is False or \
            str(params.get("vib", "")).lower() == "false"
        if not no_bottleneck and "beta" in params:
            try:
                beta = float(params["beta"])
            except ValueError:
                beta = None
        for dataset in _run_datasets(run):
            spec = DATASETS.get(dataset)
            if spec is None:
                continue
            key = S.metric_key(dataset, spec.primary_metric)
            if key not in run.data.metrics:
                continue
            sel = run.data.metrics.get(S.part_key(dataset, spec.primary_metric, S.PART_SELECTION))
            test = run.data.metrics.get(S.part_key(dataset, spec.primary_metric, S.PART_REPORT))
            rows.append({"variant": variant, "beta": beta, "seed": _run_seed(run),
                         "dataset": dataset, "metric": key,
                         "value": float(run.data.metrics[key]),
                         "sel": None if sel is None else float(sel),
                         "test": None if test is None else float(test),
                         "run_id": run.info.run_id})
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows.sort(key=lambda r: (order.get(r["variant"], len(order)), r["variant"],
                             -1.0 if r["beta"] is None else r["beta"],
                             -1 if r["seed"] is None else r["seed"], r["dataset"]))
    return rows


def collect_ablation_rows(tracking_uri: Optional[str], experiment: str,
                          sweep_id: Optional[str] = None) -> list[dict[str, Any]]:
    """Returns the ablation rows of an experiment (one sweep's when sweep_id is given).

    Each finished trial run with a ``facefuse.variant`` tag gives one row per evaluated dataset:
    its primary metric at the final epoch (MLflow's latest value).
    """
    client = open_tracking(tracking_uri)
    ids = experiment_ids(client, experiment)
    filt = S.FINISHED_TRIAL_FILTER
    if sweep_id is not None:
        filt += " and " + S.sweep_filter(sweep_id)
    return rows_from_runs(search_all_runs(client, ids, filt))


def write_rows_json(rows: Sequence[dict[str, Any]], path: Union[str, os.PathLike]) -> Path:
    """Returns the path after writing the rows as a JSON list (atomically)."""
    return atomic_write_text(Path(path), json.dumps(list(rows), indent=1, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def parse_beta_mode(beta: BetaMode) -> BetaMode:
    if isinstance(beta, str) and beta not in ("best", "all"):
        try:
            return float(beta)
        except ValueError:
            raise ConfigError(None, f"unknown table beta {beta!r}", field="table_beta",
                              fix="use 'best', 'all' or a beta value such as 0.1") from None
    return beta


def _with_parts(df: pd.DataFrame) -> bool:
    return ("sel" in df and "test" in df and bool(df["sel"].notna().all())
            and bool(df["test"].notna().all()))


def ablation_stats(rows: Sequence[dict[str, Any]], beta: BetaMode = "best",
                   level: float = LEVEL) -> pd.DataFrame:
    """Returns mean, interval and n over seeds per (variant, beta, dataset), filtered by the beta mode.

    Columns: variant, dataset, metric, beta, mean, std (sample std; NaN for one seed), n, low and
    high (the Student-t interval of the mean at ``level``; NaN for one seed) and reported_on.
    ``beta``: "best" keeps each (variant, dataset)'s best beta, "all" keeps every beta, a
    number keeps that beta (variants without a bottleneck keep their single row). With "best"
    and rows carrying both held-out parts, beta is chosen on the selection part's mean and the
    cell reports the report part (reported_on "test"): selection and reporting on different
    subjects. Otherwise (no selection, or runs without parts) cells are full-set values
    (reported_on "full").
    """
    beta = parse_beta_mode(beta)
    cols = ["variant", "dataset", "metric", "beta", "mean", "std", "n", "low", "high",
            "reported_on"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(list(rows))
    heldout = beta == "best" and _with_parts(df)
    df["beta_key"] = df["beta"].fillna(-1.0)
    keys = ["variant", "dataset", "metric", "beta_key"]
    grouped = (df.groupby(keys, sort=False)["test" if heldout else "value"]
               .agg(mean="mean", std="std", n="count").reset_index())
    grouped["pick"] = (df.groupby(keys, sort=False)["sel"].mean().to_numpy() if heldout
                       else grouped["mean"])
    half = [t_half_width(sd, n, level) for sd, n in zip(grouped["std"], grouped["n"])]
    grouped["low"] = grouped["mean"] - half
    grouped["high"] = grouped["mean"] + half
    grouped["reported_on"] = "test" if heldout else "full"
    grouped["beta"] = grouped["beta_key"].where(grouped["beta_key"] >= 0)
    grouped = grouped.drop(columns="beta_key")
    if beta == "best":
        picks = []
        for (_, _, metric), part in grouped.groupby(["variant", "dataset", "metric"], sort=False):
            idx = part["pick"].idxmax() if higher_is_better(metric) else part["pick"].idxmin()
            picks.append(idx)
        grouped = grouped.loc[picks]
    elif beta != "all":
        target = float(beta)
        keep = grouped["beta"].isna() | grouped["beta"].apply(
            lambda b: b == b and math.isclose(b, target, rel_tol=1e-9))
        grouped = grouped[keep]
    order = {name: i for i, name in enumerate(VARIANTS)}
    datasets = {d: i for i, d in enumerate(dataset_order(grouped["dataset"]))}
    grouped = grouped.assign(
        _v=grouped["variant"].map(lambda v: order.get(v, len(order))),
        _d=grouped["dataset"].map(datasets), _b=grouped["beta"].fillna(-1.0))
    grouped = grouped.sort_values(["_v", "variant", "_b", "_d"]).drop(columns=["_v", "_d", "_b"])
    return grouped[cols].reset_index(drop=True)


#: The variants that read one backbone's map: the fusion's gain is measured against the better.
SINGLE_BACKBONE_VARIANTS = ("arcface_only", "adaface_only")


def fusion_gains(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Returns per dataset the full model's gain over the better single-backbone variant.

    Each variant's value is its mean over seeds at its best beta for that dataset (the
    ablation table's default cells). Keys: ``gain`` (full minus the better single, in percent
    points for fractions; positive = the fusion is better, also for lower-is-better metrics),
    ``unit`` (" pts" or ""), ``versus`` (that variant), ``full`` and ``single`` (their means, same
    units) and ``n`` (seeds behind the full model's mean). Datasets without the full model or
    either single-backbone variant are left out.
    """
    stats = ablation_stats(rows, "best")
    if stats.empty:
        return {}
    factor = _scale(stats)
    out: dict[str, dict[str, Any]] = {}
    for dataset, part in stats.groupby("dataset", sort=False):
        means = dict(zip(part["variant"], part["mean"]))
        singles = {v: means[v] for v in SINGLE_BACKBONE_VARIANTS if v in means}
        if "full" not in means or not singles:
            continue
        sign = 1.0 if higher_is_better(str(part["metric"].iloc[0])) else -1.0
        versus = max(singles, key=lambda v: sign * singles[v])
        f = factor[dataset]
        out[str(dataset)] = {
            "gain": sign * (means["full"] - singles[versus]) * f,
            "unit": " pts" if f == 100.0 else "", "versus": versus,
            "full": means["full"] * f, "single": singles[versus] * f,
            "n": int(part.loc[part["variant"] == "full", "n"].iloc[0])}
    return out


def _scale(stats: pd.DataFrame) -> dict[str, float]:
    # Accuracies and TARs are fractions; the field reads them in percent.
    scale = {}
    for dataset, part in stats.groupby("dataset"):
        values = part["mean"].dropna()
        scale[dataset] = 100.0 if len(values) and values.between(0.0, 1.0).all() else 1.0
    return scale


def _cell(mean: float, low: float, high: float, factor: float) -> str:
    if math.isnan(low):
        return f"{mean * factor:.2f}"
    return f"{mean * factor:.2f} [{low * factor:.2f}, {high * factor:.2f}]"


def ablation_table(rows: Sequence[dict[str, Any]], beta: BetaMode = "best") -> pd.DataFrame:
    """Returns the paper-style table: rows = variants, columns = datasets, "mean [low, high]" cells.

    Values in percent when they are fractions. With ``beta="all"`` the rows are (variant, beta).
    ``table.attrs["beta"]`` holds the beta behind each cell (a DataFrame of the same shape) and
    ``table.attrs["stats"]`` the numeric ``ablation_stats``.
    """
    beta = parse_beta_mode(beta)
    stats = ablation_stats(rows, beta)
    if stats.empty:
        table = pd.DataFrame()
        table.attrs.update(stats=stats, beta=pd.DataFrame(), beta_mode=beta)
        return table
    factor = _scale(stats)
    stats = stats.assign(cell=[_cell(m, lo, hi, factor[d]) for m, lo, hi, d in
                               zip(stats["mean"], stats["low"], stats["high"], stats["dataset"])])
    datasets = dataset_order(stats["dataset"])
    variants = list(dict.fromkeys(stats["variant"]))
    if beta == "all":
        stats = stats.assign(beta_label=stats["beta"].map(lambda b: "-" if b != b else f"{b:g}"))
        index = list(dict.fromkeys(zip(stats["variant"], stats["beta_label"])))
        table = stats.pivot(index=["variant", "beta_label"], columns="dataset", values="cell")
        table = table.reindex(index=pd.MultiIndex.from_tuples(index, names=["variant", "beta"]),
                              columns=datasets)
        betas = pd.DataFrame()
    else:
        table = stats.pivot(index="variant", columns="dataset", values="cell")
        table = table.reindex(index=variants, columns=datasets)
        betas = stats.pivot(index="variant", columns="dataset", values="beta")
        betas = betas.reindex(index=variants, columns=datasets)
    table = table.fillna("")
    table.columns.name = None
    table.attrs.update(stats=stats.drop(columns="cell").reset_index(drop=True), beta=betas,
                       beta_mode=beta)
    return table


def table_markdown(table: pd.DataFrame) -> str:
    """Returns the table as GitHub markdown, followed by the betas behind its cells."""
    if table.empty:
        return "(no ablation runs)"
    stats: pd.DataFrame = table.attrs.get("stats", pd.DataFrame())
    mode = table.attrs.get("beta_mode", "best")
    percent = not stats.empty and all(v == 100.0 for v in _scale(stats).values())
    if isinstance(table.index, pd.MultiIndex):
        header = list(table.index.names) + list(table.columns)
        body = [list(idx) + list(row) for idx, row in zip(table.index, table.values.tolist())]
    else:
        header = ["variant"] + list(table.columns)
        body = [[idx] + list(row) for idx, row in zip(table.index, table.values.tolist())]
    unit = "%, " if percent else ""
    if mode == "best" and not stats.empty and (stats["reported_on"] == "test").all():
        how = ("each cell at the variant's best beta for that dataset, chosen on the selection "
               "part and reported on the report part (subject-disjoint)")
    elif mode == "best":
        how = "each cell at the variant's best beta for that dataset (chosen and reported on it)"
    elif mode == "all":
        how = "one row per beta"
    else:
        how = f"beta = {float(mode):g}"
    n = stats["n"] if not stats.empty else pd.Series(dtype=int)
    seeds = f"{int(n.min())}" if len(n) and n.min() == n.max() else \
        (f"{int(n.min())}-{int(n.max())}" if len(n) else "0")
    # Cells as str() writes them (a beta of the index reads 0.1, not format_cell's 4 digits).
    parts = [format_table(header, [[str(c) for c in r] for r in body]), "",
             f"Final-epoch primary metric ({unit}mean and {LEVEL:.0%} Student-t interval over "
             f"{seeds} seeds), {how}."]
    betas: pd.DataFrame = table.attrs.get("beta", pd.DataFrame())
    if mode == "best" and not betas.empty:
        bbody = [[str(idx)] + ["-" if b != b else f"{b:g}" for b in row]
                 for idx, row in zip(betas.index, betas.values.tolist())]
        parts += ["", "Beta behind each cell:", "", format_table(["variant"] + list(betas.columns),
                                                               bbody)]
    return "\n".join(parts) + "\n"


def write_table(table: pd.DataFrame, out_dir: Union[str, os.PathLike],
                stem: str = "ablation") -> list[Path]:
    """Returns [markdown, csv] after writing the table and its numbers (long-form CSV)."""
    out = Path(out_dir)
    md = atomic_write_text(out / f"{stem}.md", table_markdown(table))
    stats: pd.DataFrame = table.attrs.get("stats", pd.DataFrame())
    csv = atomic_write_text(out / f"{stem}.csv", stats.to_csv(index=False))
    return [md, csv]


# ---------------------------------------------------------------------------------------------
# Command layer helpers (platform/ablation.py)
# ---------------------------------------------------------------------------------------------
@dataclass
class AblationResult:
    """Rows and table of one ablation (or of every ablation run in an experiment)."""

    tracking_uri: str
    experiment: str
    sweep_id: Optional[str]
    rows: list[dict[str, Any]]
    table: pd.DataFrame
    json_path: Optional[Path] = None


def ablation_results(tracking_uri: Optional[str], experiment: str, sweep_id: Optional[str] = None,
                     beta: BetaMode = "best", json_path: Optional[Union[str, os.PathLike]] = None
                     ) -> AblationResult:
    """Returns the rows and table of an ablation already run; writes the rows when json_path."""
    uri = resolve_tracking_uri(tracking_uri)
    rows = collect_ablation_rows(uri, experiment, sweep_id)
    written = write_rows_json(rows, json_path) if json_path else None
    return AblationResult(tracking_uri=uri, experiment=experiment, sweep_id=sweep_id, rows=rows,
                          table=ablation_table(rows, beta), json_path=written)


def run_ablation_grid(job: Any, param_space: dict[str, Any], tracking_uri: Optional[str] = None
                      ) -> tuple[Optional[str], str, str]:
    """Returns (tracking URI, experiment, sweep id) after running the grid as the job's sweep.

    ``tracking_uri`` replaces the job's store when given.
    """
    from facefuse.sweep import run_sweep  # ray and optuna: only when a grid really runs

    if tracking_uri:
        job = job.model_copy(update={"tracking": job.tracking.model_copy(
            update={"uri": tracking_uri})})
    # Every grid point runs its full budget: ASHA would stop variants on early-epoch noise.
    result = run_sweep(job, param_space=param_space, use_asha=False)
    return result.tracking_uri or None, result.experiment_name, result.sweep_id
