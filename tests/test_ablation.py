"""The ablation grid, its rows from a real sqlite MLflow store, and the table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from facefuse.ablation import (
    ABLATION_KEY,
    VARIANTS,
    ablation_grid,
    ablation_param_space,
    ablation_results,
    ablation_stats,
    ablation_table,
    collect_ablation_rows,
    rows_from_runs,
    table_markdown,
    write_table,
)
from facefuse.errors import ConfigError
from platform.ablation import add_ablation_args, format_ablation, run_ablation
from facefuse.model import FusionConfig


def test_grid_holds_every_variant_beta_and_seed() -> None:
    grid = ablation_grid()
    # 9 variants with a bottleneck x 4 betas + no_vib once, x 3 seeds
    assert len(grid) == (9 * 4 + 1) * 3
    names = {g["variant"] for g in grid}
    assert names == set(VARIANTS) == {"full", "local_only", "global_only", "no_vib", "concat",
                                       "arcface_only", "adaface_only", "mix_learned", "mix_0.25",
                                       "mix_0.75"}
    no_vib = [g for g in grid if g["variant"] == "no_vib"]
    assert len(no_vib) == 3 and all("beta" not in g and g["vib"] is False for g in no_vib)
    full = [g for g in grid if g["variant"] == "full"]
    assert sorted({g["beta"] for g in full}) == [0.01, 0.1, 1.0, 10.0]
    assert sorted({g["seed"] for g in full}) == [0, 1, 2]
    by_name = {g["variant"]: g for g in grid}
    assert by_name["local_only"]["branches"] == "local"
    assert by_name["global_only"]["branches"] == "global"
    assert by_name["concat"]["fusion"] == "concat"
    assert by_name["arcface_only"]["inputs"] == "arcface"
    assert by_name["adaface_only"]["inputs"] == "adaface"
    assert by_name["full"] == {**by_name["full"], "branches": "both", "vib": True,
                               "fusion": "attention", "inputs": "both"}
    assert "mix" not in by_name["full"]  # the full model keeps the default: equal weights
    assert {by_name[v]["mix"] for v in ("mix_learned", "mix_0.25", "mix_0.75")} == \
        {"learned", 0.25, 0.75}
    assert all(by_name[v] == {**by_name["full"], "variant": v, "mix": by_name[v]["mix"],
                              "seed": by_name[v]["seed"], "beta": by_name[v]["beta"]}
               for v in ("mix_learned", "mix_0.25", "mix_0.75"))
    for g in grid:  # every entry is a valid model config
        FusionConfig.from_dict({k: v for k, v in g.items() if k not in ("variant", "seed")})


def test_grid_options_and_errors() -> None:
    grid = ablation_grid(["full", "no_vib"], betas=[0.5], seeds=[7])
    assert grid == [{"variant": "full", "seed": 7, "beta": 0.5, **VARIANTS["full"]},
                    {"variant": "no_vib", "seed": 7, **VARIANTS["no_vib"]}]
    with pytest.raises(ConfigError, match="local_only"):
        ablation_grid(["fusion_v2"])
    with pytest.raises(ConfigError, match="beta"):
        ablation_grid(betas=[0.0])
    with pytest.raises(ConfigError, match="seed"):
        ablation_grid(seeds=[-1])


def test_param_space_is_one_grid_search_tune_expands() -> None:
    from ray.tune.search.variant_generator import generate_variants

    space = ablation_param_space(["full", "no_vib"], betas=[0.1, 1.0], seeds=[0, 1],
                                 base={"epochs": 3, "lr": 1e-3})
    assert set(space[ABLATION_KEY]) == {"grid_search"}
    from facefuse.tracking.schema import flat_config

    configs = [flat_config(spec) for _, spec in generate_variants(space)]
    assert len(configs) == (2 + 1) * 2
    assert all(c["epochs"] == 3 and c["lr"] == 1e-3 and ABLATION_KEY not in c for c in configs)
    assert sorted((c["variant"], c.get("beta"), c["seed"]) for c in configs) == sorted(
        (g["variant"], g.get("beta"), g["seed"]) for g in ablation_grid(["full", "no_vib"],
                                                                        [0.1, 1.0], [0, 1]))


# Known results: value = BASE[variant] + BETA_EFFECT[beta] + seed offset (seeds -1, 0, +1 sigma)
BASE = {"full": 0.90, "local_only": 0.85, "no_vib": 0.87}
BETA_EFFECT = {0.1: 0.02, 1.0: 0.0}
SEED_OFFSET = {0: -0.01, 1: 0.0, 2: 0.01}


def _value(variant: str, beta, seed: int, dataset: str) -> float:
    effect = 0.0 if beta is None else BETA_EFFECT.get(beta, 0.0)
    if dataset == "synth_ijbc":  # the low-quality set prefers the larger beta
        effect = -effect
    offset = 0.1 if dataset == "synth_ijbc" else 0.0
    return BASE[variant] + effect + SEED_OFFSET.get(seed, 0.0) - offset


def _add_run(client: MlflowClient, exp: str, variant, beta, seed: int, sweep_id: str = "abl",
             status: str = "FINISHED", datasets=("synth_lfw", "synth_ijbc")) -> str:
    tags = {"facefuse.kind": "trial", "facefuse.sweep_id": sweep_id,
            "facefuse.datasets": ",".join(datasets), "facefuse.seed": str(seed),
            "facefuse.full_budget": "true"}
    if variant:
        tags["facefuse.variant"] = variant
    run = client.create_run(exp, tags=tags)
    params = [Param("seed", str(seed))]
    if beta is not None:
        params.append(Param("beta", str(beta)))
    if variant:  # the callback logs the grid entry's keys as plain params
        params += [Param(k, str(v)) for k, v in {"variant": variant, **VARIANTS[variant]}.items()]
    metrics = []
    for ds in datasets:
        key = f"{ds}/acc" if ds == "synth_lfw" else f"{ds}/tar_far_1e-4"
        final = _value(variant or "full", beta, seed, ds)
        # an earlier, better epoch must not be what the table reports
        metrics += [Metric(key, final + 0.05, 1, 0), Metric(key, final, 2, 1)]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("abl")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("ablation", artifact_location=(tmp / "art").as_uri())
    for variant in ("full", "local_only"):
        for beta in (0.1, 1.0):
            for seed in (0, 1, 2):
                _add_run(client, exp, variant, beta, seed)
    for seed in (0, 1, 2):
        _add_run(client, exp, "no_vib", None, seed)
    _add_run(client, exp, None, 0.1, 0)  # a plain sweep trial, not an ablation
    _add_run(client, exp, "full", 0.1, 3, status="FAILED")
    _add_run(client, exp, "full", 10.0, 0, sweep_id="other")
    return {"uri": uri, "client": client, "tmp": tmp}


def test_rows_from_mlflow(store: dict) -> None:
    rows = collect_ablation_rows(store["uri"], "ablation", sweep_id="abl")
    assert len(rows) == (2 * 2 * 3 + 3) * 2
    assert set(rows[0]) >= {"variant", "beta", "seed", "dataset", "metric", "value"}
    assert [r["variant"] for r in rows[:2]] == ["full", "full"]
    no_vib = [r for r in rows if r["variant"] == "no_vib"]
    assert len(no_vib) == 6 and all(r["beta"] is None for r in no_vib)
    row = next(r for r in rows if r["variant"] == "local_only" and r["beta"] == 1.0
               and r["seed"] == 2 and r["dataset"] == "synth_ijbc")
    assert row["metric"] == "synth_ijbc/tar_far_1e-4"
    assert row["value"] == pytest.approx(_value("local_only", 1.0, 2, "synth_ijbc"))
    everything = collect_ablation_rows(store["uri"], "ablation")
    assert len(everything) == len(rows) + 2  # the other sweep's run, never the failed one


def test_table_means_and_stds(store: dict) -> None:
    rows = collect_ablation_rows(store["uri"], "ablation", sweep_id="abl")
    stats = ablation_stats(rows, "all")
    full = stats[(stats["variant"] == "full") & (stats["dataset"] == "synth_lfw")
                 & (stats["beta"] == 0.1)].iloc[0]
    assert full["mean"] == pytest.approx(0.92) and full["std"] == pytest.approx(0.01)
    assert full["n"] == 3

    table = ablation_table(rows)  # best beta per (variant, dataset)
    assert list(table.index) == ["full", "local_only", "no_vib"]
    assert list(table.columns) == ["synth_lfw", "synth_ijbc"]  # high quality first
    assert table.loc["full", "synth_lfw"] == "92.00 [90.31, 93.69]"  # t(0.95, 2) * 1 / sqrt(3)
    assert table.loc["full", "synth_ijbc"] == "80.00 [78.31, 81.69]"  # at beta 1, not 0.1
    assert table.loc["no_vib", "synth_lfw"] == "87.00 [85.31, 88.69]"
    betas = table.attrs["beta"]
    assert betas.loc["full", "synth_lfw"] == 0.1 and betas.loc["full", "synth_ijbc"] == 1.0
    assert np.isnan(betas.loc["no_vib", "synth_lfw"])

    fixed = ablation_table(rows, beta=0.1)
    assert fixed.loc["full", "synth_ijbc"] == "78.00 [76.31, 79.69]"
    assert fixed.loc["no_vib", "synth_ijbc"] == "77.00 [75.31, 78.69]"
    per_beta = ablation_table(rows, beta="all")
    assert per_beta.loc[("full", "1"), "synth_lfw"] == "90.00 [88.31, 91.69]"
    assert per_beta.loc[("no_vib", "-"), "synth_lfw"] == "87.00 [85.31, 88.69]"

    md = table_markdown(table)
    assert md.startswith("| variant") and "92.00 [90.31, 93.69]" in md and "Beta behind" in md
    assert "90% Student-t interval over 3 seeds" in md and "chosen and reported on it" in md
    with pytest.raises(ConfigError):
        ablation_table(rows, beta="median")


def test_one_seed_has_no_std() -> None:
    rows = [{"variant": "full", "beta": 0.1, "seed": 0, "dataset": "lfw", "metric": "lfw/acc",
             "value": 0.99}]
    assert ablation_table(rows).loc["full", "lfw"] == "99.00"
    assert ablation_table([]).empty and table_markdown(ablation_table([])) == "(no ablation runs)"


def test_files_are_written_atomically_and_parse(store: dict, tmp_path: Path) -> None:
    json_path = tmp_path / "out" / "rows.json"
    result = ablation_results(store["uri"], "ablation", "abl", json_path=json_path)
    loaded = json.loads(json_path.read_text())
    assert loaded == result.rows and len(loaded) == 30
    assert not [p for p in json_path.parent.iterdir() if p.name.startswith(".")]
    md, csv = write_table(result.table, tmp_path / "tables")
    assert md.read_text().startswith("| variant")
    frame = pd.read_csv(csv)
    assert list(frame.columns) == ["variant", "dataset", "metric", "beta", "mean", "std", "n",
                                   "low", "high", "reported_on"]
    assert len(frame) == 3 * 2
    text = format_ablation(result)
    assert "30 rows" in text and str(json_path) in text


def test_run_ablation_calls_the_grid_runner_with_the_space(store: dict, tmp_path: Path) -> None:
    args = add_ablation_args(argparse.ArgumentParser()).parse_args(
        ["jobs/ablation_quickstart.yaml", "--variants", "full,no_vib", "--betas", "0.1,1",
         "--seeds", "0,1,2", "--json", str(tmp_path / "rows.json")])
    seen = {}

    def run_grid(parsed: argparse.Namespace, space: dict) -> tuple[str, str, str]:
        seen["n"] = len(space[ABLATION_KEY]["grid_search"])
        return store["uri"], "ablation", "abl"

    result = run_ablation(args, run_grid)
    assert seen["n"] == (2 + 1) * 3
    assert (tmp_path / "rows.json").exists() and len(result.rows) == 30
    bad = add_ablation_args(argparse.ArgumentParser()).parse_args(["j.yaml", "--table-beta", "x"])
    with pytest.raises(ConfigError):
        run_ablation(bad, run_grid)


def test_mix_variants_have_their_own_rows(tmp_path: Path) -> None:
    """A learned or fixed local/global weight is a row of its own, after the paper's variants."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("mix", artifact_location=(tmp_path / "art").as_uri())
    BASE.update({"mix_learned": 0.91, "mix_0.25": 0.89})
    try:
        for variant in ("mix_0.25", "mix_learned", "full"):
            for seed in (0, 1):
                _add_run(client, exp, variant, 0.1, seed)
        rows = rows_from_runs(client.search_runs([exp]))
    finally:
        for key in ("mix_learned", "mix_0.25"):
            BASE.pop(key)
    table = ablation_table(rows)
    assert list(table.index) == ["full", "mix_learned", "mix_0.25"]
    assert table.loc["mix_learned", "synth_lfw"] == "92.50 [89.34, 95.66]"  # two seeds: t(0.95, 1)
    learned = next(r for r in rows if r["variant"] == "mix_learned")
    assert learned["beta"] == 0.1
    run = client.get_run(learned["run_id"])
    assert run.data.params["mix"] == "learned"  # the grid entry's weight is a param of the run


def test_best_beta_is_chosen_on_the_selection_part_and_reported_on_the_other(tmp_path: Path) -> None:
    """With both held-out parts logged, no cell is chosen on the data it reports."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("parts", artifact_location=(tmp_path / "art").as_uri())
    # the selection part prefers beta 0.1, the report part (and the full set) beta 1
    values = {0.1: (0.95, 0.80, 0.88), 1.0: (0.90, 0.90, 0.90)}  # (sel, test, full)
    for beta, (sel, test, full) in values.items():
        for seed in (0, 1, 2):
            run = client.create_run(exp, tags={
                "facefuse.kind": "trial", "facefuse.sweep_id": "p", "facefuse.datasets": "synth_lfw",
                "facefuse.seed": str(seed), "facefuse.variant": "full"})
            d = 0.01 * (seed - 1)
            client.log_batch(run.info.run_id, params=[Param("seed", str(seed)), Param("beta", str(beta))],
                             metrics=[Metric("synth_lfw/acc", full + d, 1, 1),
                                      Metric("synth_lfw/sel/acc", sel + d, 1, 1),
                                      Metric("synth_lfw/test/acc", test + d, 1, 1)])
            client.set_terminated(run.info.run_id, "FINISHED")
    rows = collect_ablation_rows(uri, "parts")
    assert {(r["sel"], r["test"]) for r in rows if r["seed"] == 1} == {(0.95, 0.80), (0.9, 0.9)}
    stats = ablation_stats(rows, "best").iloc[0]
    assert stats["beta"] == 0.1 and stats["reported_on"] == "test"
    assert stats["mean"] == pytest.approx(0.80)  # the report part at the selected beta
    table = ablation_table(rows)
    assert table.loc["full", "synth_lfw"] == "80.00 [78.31, 81.69]"
    assert "chosen on the selection part and reported on the report part" in table_markdown(table)
    # no selection: the full set's values, the best of them at beta 1
    assert ablation_stats(rows, "all")["reported_on"].eq("full").all()
    assert ablation_table(rows, beta=1.0).loc["full", "synth_lfw"] == "90.00 [88.31, 91.69]"
