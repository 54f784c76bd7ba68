"""The parent-run summary on a real sqlite store holding enough full-budget trials for Optuna's
parameter importances (runs written with MlflowClient the way the sweep writes them)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def test_final_summary_has_importances_and_chosen_beta(tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    from facefuse.sweep_report import summarise_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("imp", artifact_location=(tmp_path / "art").as_uri())
    sweep = "imp-0123456789"
    parent = client.create_run(exp, tags={"facefuse.kind": "sweep", "facefuse.sweep_id": sweep},
                               run_name=sweep).info.run_id
    values = {}
    for i in range(12):
        beta, window = 10 ** (-4 + 3 * i / 11), (1, 3, 5)[i % 3]
        # accuracy peaks at beta = 1e-2 and barely depends on the window
        acc = 0.9 - 0.05 * (math.log10(beta) + 2) ** 2 + 0.001 * window
        run = client.create_run(exp, tags={
            "mlflow.parentRunId": parent, "facefuse.kind": "trial", "facefuse.sweep_id": sweep,
            "facefuse.trial_id": f"tr{i}", "facefuse.full_budget": "true",
            "facefuse.objective": "synth_lfw/acc"}, run_name=f"t{i + 1:02d} beta={beta:.2g}")
        rid = run.info.run_id
        client.log_batch(rid, params=[Param("beta", repr(beta)), Param("local_window", str(window))],
                         metrics=[Metric(k, v, 0, step) for step in (1, 2) for k, v in
                                  (("synth_lfw/acc", acc - 0.1 * (2 - step)),
                                   ("objective", acc - 0.1 * (2 - step)))])
        client.set_terminated(rid, "FINISHED")
        values[rid] = acc
    summary = summarise_sweep(client, uri, exp, "imp", parent, sweep, ["synth_lfw"], final=True)

    best_id = max(values, key=values.get)
    assert summary["best"]["synth_lfw"]["run_id"] == best_id
    assert summary["importance"]["trials"] == 12
    imp = summary["importance"]["values"]
    assert set(imp) == {"beta", "local_window"} and imp["beta"] > imp["local_window"]
    choice = summary["chosen_beta"]["synth_lfw"]
    assert 1e-3 <= choice["beta"] <= 1e-1
    arts = {a.path for a in client.list_artifacts(parent, "summary")}
    assert {"summary/param_importance.png", "summary/metric_vs_beta.png",
            "summary/trials.csv", "summary/summary.json",
            "summary/best_beta_synth_lfw.json"} <= arts
    got = client.get_run(parent).data
    assert got.metrics["best/synth_lfw/acc"] == values[best_id]
    assert got.metrics["chosen_beta/synth_lfw"] == choice["beta"]
    assert got.tags["facefuse.chosen_beta.synth_lfw"] == f"{choice['beta']:g}"
    local = Path(client.download_artifacts(parent, "summary/summary.json", str(tmp_path)))
    assert json.loads(local.read_text())["final"] is True
