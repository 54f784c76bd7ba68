"""Experiment kind and trial run names, on a real sqlite MLflow store."""

from __future__ import annotations

from pathlib import Path

from facefuse.sweep.callback import MlflowTrackingCallback
from facefuse.tracking.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, trial_run_name


def test_run_names_read_as_the_searched_params() -> None:
    config = {"beta": 0.01234, "local_window": 3, "local_heads": 4, "global_heads": 2,
              "lr": 1e-3, "epochs": 5}
    assert trial_run_name("ab12c_00007", config, ["beta", "local_window", "local_heads"]) == \
        "t07 beta=0.012 w3 h4"
    # ablation trials: variant and seed are the axes
    assert trial_run_name("x_00012", {"variant": "no_vib", "beta": 0.1, "seed": 1},
                          ["variant", "seed", "beta"]) == "t12 no_vib beta=0.1 s1"
    assert trial_run_name("odd", {"beta": 0.5, "foo": 2}, ["foo"]) == "odd beta=0.5 foo=2"


def test_new_and_existing_experiments_open_on_the_runs_table(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    old = client.create_experiment("old")  # made before facefuse set the kind
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    chosen = client.create_experiment("chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("old", "new", "chosen"):
        cb = MlflowTrackingCallback(uri, name, f"sweep-{name}", str(tmp_path / name))
        cb.start()
        assert cb.flush(timeout_s=30)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert client.get_experiment_by_name("new").tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # a kind somebody chose is left alone
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
