"""The report, built from a real sqlite MLflow store: files, their validity, and their logging."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from facefuse.report import make_report, sweep_importances
from platform.report import add_report_args, format_report, run_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(client: MlflowClient, exp: str, parent: str, sweep_id: str, params: dict,
         finals: dict[str, float], full: bool = True, variant: str = "", seed: int = 0,
         objective: str = "ijbb/tar_far_1e-4") -> str:
    tags = {"mlflow.parentRunId": parent, "facefuse.kind": "trial", "facefuse.sweep_id": sweep_id,
            "facefuse.datasets": ",".join(finals), "facefuse.objective": objective,
            "facefuse.full_budget": str(full).lower(), "facefuse.seed": str(seed)}
    if variant:
        tags["facefuse.variant"] = variant
    run = client.create_run(exp, tags=tags)
    metrics = []
    for key, final in finals.items():
        name = f"{key}/acc" if key == "lfw" else f"{key}/tar_far_1e-4"
        metrics += [Metric(name, final - 0.03, 1, 0), Metric(name, final, 2, 1)]
        if variant:  # ablation runs log the held-out parts the claims select and report on
            part = name.replace("/", "/sel/", 1)
            metrics += [Metric(part, final + 0.01, 2, 1),
                        Metric(name.replace("/", "/test/", 1), final - 0.01, 2, 1)]
    if objective in (f"{k}/tar_far_1e-4" for k in finals):
        metrics.append(Metric("objective", finals[objective.split("/")[0]], 2, 1))
    client.log_batch(run.info.run_id, metrics=metrics,
                     params=[Param(k, str(v)) for k, v in {**params, "seed": seed}.items()])
    client.set_terminated(run.info.run_id)
    return run.info.run_id


SPACE = """params:
  beta:        {distribution: loguniform, low: 1.0e-3, high: 10.0}
  lr:          {distribution: loguniform, low: 1.0e-4, high: 1.0e-2}
  local_heads: {distribution: categorical, choices: [2, 4, 8]}
"""


def _parent(client: MlflowClient, exp: str, sweep_id: str, space: Path | None = None) -> str:
    tags = {"facefuse.kind": "sweep", "facefuse.sweep_id": sweep_id}
    if space is not None:  # the sweep logs its search space file on the parent run
        tags["facefuse.search_space"] = space.name
    run = client.create_run(exp, tags=tags)
    if space is not None:
        client.log_artifact(run.info.run_id, str(space))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _log_roc(client: MlflowClient, run_id: str, dataset: str, tmp: Path, strength: float) -> None:
    fpr = np.concatenate([[0.0], np.logspace(-6, 0, 50)])
    tpr = np.clip(1.0 - (1.0 - fpr) ** strength * 0.5, 0, 1)
    path = tmp / run_id / f"roc_{dataset}.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, fpr=fpr, tpr=tpr)
    client.log_artifact(run_id, str(path), "roc")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("quick", artifact_location=(tmp / "art").as_uri())
    space = tmp / "space" / "mixed.yaml"
    space.parent.mkdir()
    space.write_text(SPACE)
    sweep = _parent(client, exp, "s1", space)
    rng = np.random.default_rng(3)
    best_ijbb, best_value = None, -1.0
    for _ in range(16):
        beta = float(10.0 ** rng.uniform(-3, 1))
        lr = float(10.0 ** rng.uniform(-4, -2))
        heads = int(rng.choice([2, 4]))
        x = math.log10(beta)
        finals = {"lfw": 0.95 - 0.02 * (x + 1) ** 2 + rng.normal(0, 0.001),
                  "ijbb": 0.80 - 0.06 * x ** 2 + rng.normal(0, 0.002),
                  "synth_ijbc": 0.60 - 0.06 * (x - 0.5) ** 2 + rng.normal(0, 0.002)}
        rid = _run(client, exp, sweep, "s1", {"beta": beta, "lr": lr, "local_heads": heads},
                   finals)
        _log_roc(client, rid, "ijbb", tmp / "roc", strength=1 + 5 * finals["ijbb"])
        if finals["ijbb"] > best_value:
            best_ijbb, best_value = rid, finals["ijbb"]
    # A stopped trial with a better score must not be the ROC's "best trial".
    stopped = _run(client, exp, sweep, "s1", {"beta": 1.0, "lr": 1e-3, "local_heads": 4},
                   {"lfw": 0.99, "ijbb": 0.99, "synth_ijbc": 0.99}, full=False)
    _log_roc(client, stopped, "ijbb", tmp / "roc", strength=50)
    ablation = _parent(client, exp, "abl")
    for variant, base in (("full", 0.9), ("local_only", 0.85), ("no_vib", 0.86)):
        for seed in (0, 1):
            params = {} if variant == "no_vib" else {"beta": 0.1}
            _run(client, exp, ablation, "abl", params,
                 {"lfw": base + 0.01 * seed, "ijbb": base - 0.1 + 0.01 * seed},
                 variant=variant, seed=seed)
    return {"uri": uri, "client": client, "tmp": tmp, "sweep": sweep, "ablation": ablation,
            "best_ijbb": best_ijbb, "stopped": stopped}


def test_report_files_are_valid_and_logged(store: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = add_report_args(argparse.ArgumentParser()).parse_args(
        ["--experiment", "quick", "--out", str(out), "--tracking-uri", store["uri"]])
    report = run_report(args)
    names = {p.name for p in report.files}
    assert names == {"ablation.md", "ablation.csv", "claims.md", "claims.csv", "beta_tradeoff.png",
                     "best_beta_by_dataset.csv", "roc_best_trials.png", "importance_s1.csv",
                     "importance_s1.png", "report.md"}
    for path in report.files:
        assert path.parent == out.resolve() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC
            with Image.open(path) as im:
                im.verify()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left

    ablation = pd.read_csv(out / "ablation.csv")
    assert set(ablation["variant"]) == {"full", "local_only", "no_vib"}
    row = ablation[(ablation["variant"] == "full") & (ablation["dataset"] == "lfw")].iloc[0]
    assert row["n"] == 2
    assert "| full" in (out / "ablation.md").read_text()
    # reported on the report part (final - 0.01) at the beta chosen on the selection part
    assert row["mean"] == pytest.approx(0.895) and row["reported_on"] == "test"

    claims = pd.read_csv(out / "claims.csv")
    vib = claims[(claims["claim"] == "VIB on > off") & (claims["dataset"] == "lfw")].iloc[0]
    assert vib["diff"] == pytest.approx(4.0) and vib["n"] == 2 and vib["verdict"] == "holds"
    branch = claims[claims["claim"] == "local + global > local alone"]
    assert set(branch["dataset"]) == {"lfw", "ijbb", "all (mean over sets)"}
    assert "VIB on > off" in (out / "claims.md").read_text()

    best = pd.read_csv(out / "best_beta_by_dataset.csv").set_index("dataset")
    assert list(best.index) == ["lfw", "ijbb", "synth_ijbc"]  # high, mixed, low
    assert abs(math.log10(best.loc["lfw", "curve_beta"]) + 1) < 0.5
    assert abs(math.log10(best.loc["ijbb", "curve_beta"])) < 0.5
    assert best.loc["synth_ijbc", "quality"] == "low"
    assert bool(best.loc["ijbb", "full_budget_only"]) is True

    assert report.roc_runs == {"ijbb": store["best_ijbb"]}
    assert any("synth_ijbc" in s for s in report.skipped)  # no ROC file logged for it

    assert report.importance_space == {"s1": "search space mixed.yaml"}
    importances = report.importances["s1"]
    assert set(importances) == {"beta", "lr", "local_heads"}
    assert max(importances, key=importances.get) == "beta"
    frame = pd.read_csv(out / "importance_s1.csv")
    assert list(frame.columns) == ["param", "importance"] and len(frame) == 3

    client = store["client"]
    logged = {a.path.split("/")[-1] for a in client.list_artifacts(store["sweep"], "report")}
    assert logged == names
    logged_abl = {a.path.split("/")[-1] for a in client.list_artifacts(store["ablation"], "report")}
    assert logged_abl == names - {"importance_s1.csv", "importance_s1.png"}
    assert set(report.logged_to) == {store["sweep"], store["ablation"]}
    text = format_report(report)
    assert "beta_tradeoff.png" in text and "skipped" in text


def test_too_few_trials_and_no_parent_are_reported_not_raised(store: dict,
                                                              tmp_path: Path) -> None:
    # Same store, another experiment: a report only reads its own experiment.
    uri, client = store["uri"], store["client"]
    exp = client.create_experiment("tiny", artifact_location=(tmp_path / "art").as_uri())
    for beta in (0.01, 1.0, 10.0):
        _run(client, exp, "none", "s2", {"beta": beta, "lr": 1e-3 * (1 + beta)},
             {"lfw": 0.9 + 0.01 * beta, "ijbb": 0.7})
    report = make_report(uri, "tiny", tmp_path / "out")
    names = {p.name for p in report.files}
    assert names == {"beta_tradeoff.png", "best_beta_by_dataset.csv", "report.md"}
    skipped = " ".join(report.skipped)
    assert "importances of sweep s2" in skipped and "at least" in skipped
    assert "ablation table" in skipped and "ROC" in skipped and "no parent" in skipped
    assert report.logged_to == []
    assert "## Skipped" in (tmp_path / "out" / "report.md").read_text()


def test_importances_without_a_logged_space_infer_distributions(store: dict) -> None:
    client = store["client"]
    exp = client.get_experiment_by_name("quick").experiment_id
    runs = client.search_runs([exp], "tags.`facefuse.sweep_id` = 's1' and "
                                     "tags.`facefuse.kind` = 'trial'")
    importances, n_used, reason = sweep_importances(runs)
    assert n_used == 16 and reason == ""  # the stopped trial is left out
    assert set(importances) == {"beta", "lr", "local_heads"}
    assert max(importances, key=importances.get) == "beta"


@pytest.mark.slow
def test_reads_what_a_real_sweep_writes(ray_local, tmp_path: Path) -> None:
    """The readers against runs written by facefuse.sweep itself (self-test trainable)."""
    from facefuse.ablation import ablation_param_space, collect_ablation_rows
    from facefuse.selection import select_beta
    from facefuse.sweep import load_job, run_sweep
    from tests.sweep.conftest import SELFTEST, write_job

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_sweep(load_job(write_job(tmp_path, name="e2e")), trainable=SELFTEST,
                       flush_timeout_s=30)
    sel = select_beta(uri, "synth_ijbc", experiment="e2e")
    assert sel.run_id in {t.run_id for t in result.trials}
    assert sel.metric == "synth_ijbc/tar_far_1e-4" and sel.full_budget_only and sel.epoch == 3
    report = make_report(uri, "e2e", tmp_path / "report")
    names = {p.name for p in report.files}
    assert {"beta_tradeoff.png", "best_beta_by_dataset.csv", "roc_best_trials.png",
            "report.md"} <= names
    assert set(report.roc_runs) == {"synth_ijbc"}
    assert report.logged_to == [result.parent_run_id]

    space = ablation_param_space(["full", "no_vib"], betas=[0.01, 0.1], seeds=[0])
    job = load_job(write_job(tmp_path, name="e2e_abl"))
    grid = run_sweep(job, trainable=SELFTEST, param_space=space, use_asha=False,
                     flush_timeout_s=30)
    rows = collect_ablation_rows(uri, "e2e_abl", grid.sweep_id)
    assert sorted({(r["variant"], r["beta"], r["seed"]) for r in rows},
                  key=str) == sorted({("full", 0.01, 0), ("full", 0.1, 0), ("no_vib", None, 0)},
                                     key=str)
    assert {r["dataset"] for r in rows} == {"synth_lfw", "synth_ijbc"}
