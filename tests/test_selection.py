"""Beta selection against a real sqlite MLflow store filled with synthetic sweeps."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import socket
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from facefuse.errors import ConfigError, FacefuseError
from facefuse.tracking.store import TrackingError
from platform.best_beta import add_best_beta_args, format_best_beta, run_best_beta
from facefuse.selection import (
    NoRunsError,
    fit_curve,
    register_choice,
    select_beta,
)

BETAS = [10.0 ** e for e in np.arange(-3.0, 1.01, 0.5)]  # 1e-3 .. 10, half decades


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Creating an MLflow schema takes seconds (migrations); tests copy one empty store instead.
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def _store(tmp_path: Path, template: Path) -> tuple[str, MlflowClient]:
    path = tmp_path / "mlflow.db"
    shutil.copyfile(template, path)
    uri = f"sqlite:///{path}"
    return uri, MlflowClient(uri)


def _experiment(client: MlflowClient, tmp_path: Path, name: str) -> str:
    return client.create_experiment(name, artifact_location=(tmp_path / "art" / name).as_uri())


def add_trial(client: MlflowClient, exp_id: str, parent_id: str, params: dict,
              histories: dict[str, Sequence[float]], full_budget: bool = True, seed: int = 0,
              status: str = "FINISHED", variant: Optional[str] = None,
              sweep_id: str = "s1") -> str:
    """Writes one trial run the way the sweep's MLflow callback does; returns its run id."""
    datasets = sorted({k.split("/")[0] for k in histories})
    tags = {"mlflow.parentRunId": parent_id, "facefuse.kind": "trial",
            "facefuse.sweep_id": sweep_id, "facefuse.trial_id": f"t{time.monotonic_ns()}",
            "facefuse.datasets": ",".join(datasets), "facefuse.quality": "high",
            "facefuse.full_budget": "true" if full_budget else "false",
            "facefuse.stopped_by_asha": "false" if full_budget else "true",
            "facefuse.seed": str(seed)}
    if variant:
        tags["facefuse.variant"] = variant
    run = client.create_run(exp_id, tags=tags)
    rid = run.info.run_id
    metrics = []
    for key, values in histories.items():
        for epoch, value in enumerate(values):
            metrics.append(Metric(key, float(value), 1000 + epoch, epoch))
            metrics.append(Metric("epoch", float(epoch), 1000 + epoch, epoch))
    params_all = {**{k: str(v) for k, v in params.items()}, "seed": str(seed)}
    client.log_batch(rid, metrics=metrics, params=[Param(k, v) for k, v in params_all.items()])
    client.set_terminated(rid, status)
    return rid


def add_parent(client: MlflowClient, exp_id: str, sweep_id: str = "s1") -> str:
    run = client.create_run(exp_id, tags={"facefuse.kind": "sweep", "facefuse.sweep_id": sweep_id})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def lfw_true(beta: float) -> float:
    return 0.95 - 0.02 * (math.log10(beta) + 1.0) ** 2  # peak at beta = 0.1


def ijbb_true(beta: float) -> float:
    return 0.80 - 0.05 * math.log10(beta) ** 2  # peak at beta = 1


def rising(final: float, epochs: int = 5) -> list[float]:
    return [final - 0.02 * (epochs - 1 - e) for e in range(epochs)]


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> dict:
    tmp_path = tmp_path_factory.mktemp("sweep")
    uri, client = _store(tmp_path, template_db)
    exp = _experiment(client, tmp_path, "beta_sweep")
    parent = add_parent(client, exp)
    rng = np.random.default_rng(0)
    ids = {}
    for beta in BETAS:
        for seed in (0, 1):
            hist = {"lfw/acc": rising(lfw_true(beta) + rng.normal(0, 0.002)),
                    "ijbb/tar_far_1e-4": rising(ijbb_true(beta) + rng.normal(0, 0.004))}
            ids[(beta, seed)] = add_trial(client, exp, parent, {"beta": beta, "lr": 0.001},
                                          hist, seed=seed)
    # Distractors that must not be chosen: an ASHA-stopped trial (full budget exists),
    # a failed run, and an ablation variant other than the full model.
    stopped = add_trial(client, exp, parent, {"beta": 10.0, "lr": 0.003},
                        {"lfw/acc": [0.999, 0.999]}, full_budget=False)
    failed = add_trial(client, exp, parent, {"beta": 10.0, "lr": 0.01},
                       {"lfw/acc": rising(0.999)}, status="FAILED")
    ablation = add_trial(client, exp, parent, {"beta": 10.0, "lr": 0.001},
                         {"lfw/acc": rising(0.999)}, variant="local_only")
    return {"uri": uri, "client": client, "ids": ids, "exp": exp, "tmp": tmp_path,
            "distractors": {stopped, failed, ablation}}


def test_picks_the_peak_beta_per_dataset(sweep_store: dict) -> None:
    lfw = select_beta(sweep_store["uri"], "lfw")
    assert lfw.metric == "lfw/acc"
    # beta is the estimator's (continuous) answer; the chosen run is a searched setting in it
    assert abs(math.log10(lfw.beta) + 1.0) < 0.15
    assert lfw.beta_interval[0] <= 0.1 <= lfw.beta_interval[1]
    assert float(lfw.params["beta"]) == pytest.approx(0.1)
    assert abs(math.log10(lfw.curve_beta) + 1.0) < 0.3
    assert lfw.run_id not in sweep_store["distractors"]
    assert lfw.run_id in {sweep_store["ids"][(0.1, s)] for s in (0, 1)}
    assert lfw.n_seeds == 2
    assert lfw.full_budget_only is True
    assert lfw.n_trials == 2 * len(BETAS)  # distractors left out
    assert lfw.experiment == "beta_sweep"
    assert lfw.epoch == 4
    assert lfw.n_support >= 2

    ijbb = select_beta(sweep_store["uri"], "ijbb")
    assert ijbb.metric == "ijbb/tar_far_1e-4"
    assert abs(math.log10(ijbb.beta)) < 0.15
    assert float(ijbb.params["beta"]) == pytest.approx(1.0)
    assert abs(math.log10(ijbb.curve_beta)) < 0.3
    band_ok = all(lo <= m + 1e-12 and m <= hi + 1e-12 for lo, m, hi in
                  zip(ijbb.curve.lower, ijbb.curve.mean, ijbb.curve.upper))
    assert band_ok


def test_other_metric_and_experiment_filter(sweep_store: dict) -> None:
    sel = select_beta(sweep_store["uri"], "lfw", metric="lfw/acc", experiment="beta_sweep")
    assert float(sel.params["beta"]) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="beta_sweep"):
        select_beta(sweep_store["uri"], "lfw", experiment="nope")
    with pytest.raises(NoRunsError, match="lfw/acc_std"):
        select_beta(sweep_store["uri"], "lfw", metric="acc_std")


def test_repeated_settings_are_averaged_not_argmaxed(tmp_path: Path, template_db: Path) -> None:
    uri, client = _store(tmp_path, template_db)
    exp = _experiment(client, tmp_path, "avg")
    parent = add_parent(client, exp)
    finals = {0.001: [0.90], 0.01: [0.99, 0.80], 0.1: [0.95, 0.95], 1.0: [0.93], 10.0: [0.90]}
    for beta, values in finals.items():
        for seed, v in enumerate(values):
            add_trial(client, exp, parent, {"beta": beta}, {"lfw/acc": rising(v)}, seed=seed)
    sel = select_beta(uri, "lfw")
    assert float(sel.params["beta"]) == pytest.approx(0.1)
    assert sel.trial_mean == pytest.approx(0.95)
    assert sel.n_seeds == 2
    assert sel.n_settings == 5 and sel.n_trials == 7
    assert sel.best_trial_beta == pytest.approx(0.01)
    assert sel.best_trial_value == pytest.approx(0.99)
    # the curve's optimum is about a decade away from the lucky single trial
    assert sel.distance_decades == pytest.approx(math.log10(sel.curve_beta) + 2.0)
    assert sel.distance_decades > 0.5
    lucky = [u for u in sel.runner_ups if u["beta"] == pytest.approx(0.01)]
    assert lucky and lucky[0]["value"] == pytest.approx(0.895) and lucky[0]["n"] == 2


def test_last_common_epoch_versus_best_epoch(tmp_path: Path, template_db: Path) -> None:
    uri, client = _store(tmp_path, template_db)
    exp = _experiment(client, tmp_path, "epochs")
    parent = add_parent(client, exp)
    # Neither ran its full budget, so both count; the short one stopped after epoch 2.
    short = add_trial(client, exp, parent, {"beta": 0.01}, {"lfw/acc": [0.80, 0.85, 0.90]},
                      full_budget=False)
    long = add_trial(client, exp, parent, {"beta": 1.0},
                     {"lfw/acc": [0.70, 0.80, 0.85, 0.90, 0.97]}, full_budget=False)
    common = select_beta(uri, "lfw")
    assert common.epoch_policy == "last_common" and common.epoch == 2
    assert common.full_budget_only is False
    assert common.run_id == short and common.value == pytest.approx(0.90)
    best = select_beta(uri, "lfw", epoch_policy="best")
    assert best.epoch is None and best.epoch_policy == "best"
    assert best.run_id == long and best.value == pytest.approx(0.97)
    with pytest.raises(ConfigError, match="epoch"):
        select_beta(uri, "lfw", epoch_policy="median")


def test_full_budget_trials_are_preferred(tmp_path: Path, template_db: Path) -> None:
    uri, client = _store(tmp_path, template_db)
    exp = _experiment(client, tmp_path, "budget")
    parent = add_parent(client, exp)
    full = add_trial(client, exp, parent, {"beta": 1.0}, {"lfw/acc": rising(0.90)})
    add_trial(client, exp, parent, {"beta": 0.01}, {"lfw/acc": [0.99, 0.99]}, full_budget=False)
    sel = select_beta(uri, "lfw")
    assert sel.run_id == full and sel.n_trials == 1 and sel.full_budget_only
    assert sel.epoch == 4  # the stopped trial does not pull the common epoch down


def test_json_shape(sweep_store: dict) -> None:
    sel = select_beta(sweep_store["uri"], "ijbb")
    obj = json.loads(format_best_beta(sel, as_json=True))
    for key in ("beta", "metric", "value", "run_id", "experiment", "n_trials", "curve",
                "curve_beta", "epoch_policy"):
        assert key in obj, key
    curve = obj["curve"]
    n = len(curve["beta"])
    assert n > 10 and all(len(curve[k]) == n for k in ("mean", "lower", "upper"))
    assert curve["beta"] == sorted(curve["beta"])
    assert obj["metric"] == "ijbb/tar_far_1e-4" and obj["n_trials"] == 2 * len(BETAS)
    text = format_best_beta(sel)
    assert "best beta for ijbb: " in text and "90% interval" in text and "verdict:" in text and "runner-ups" in text and sel.run_id in text


def test_register_choice_sets_alias_and_moves_the_tag(sweep_store: dict) -> None:
    uri, client = sweep_store["uri"], sweep_store["client"]
    sel = select_beta(uri, "lfw")
    reg = register_choice(uri, sel)
    mv = client.get_model_version_by_alias(reg.model_name, "best-lfw")
    assert str(mv.version) == reg.version and mv.run_id == sel.run_id
    assert reg.source.endswith("/best_beta")
    assert client.get_run(sel.run_id).data.tags["facefuse.best_beta_for"] == "lfw"
    logged = client.download_artifacts(sel.run_id, "best_beta/lfw.json", str(sweep_store["tmp"]))
    logged_choice = json.loads(Path(logged).read_text())
    assert abs(math.log10(logged_choice["beta"]) + 1.0) < 0.15
    assert float(logged_choice["params"]["beta"]) == pytest.approx(0.1)
    assert float(mv.tags["facefuse.beta"]) == pytest.approx(0.1)

    # A later choice for lfw on another run moves the tag; another dataset adds to it.
    other = sweep_store["ids"][(BETAS[0], 0)]
    moved = select_beta(uri, "lfw")
    moved.run_id = other
    register_choice(uri, moved)
    assert "facefuse.best_beta_for" not in client.get_run(sel.run_id).data.tags
    assert client.get_run(other).data.tags["facefuse.best_beta_for"] == "lfw"
    assert client.get_model_version_by_alias(reg.model_name, "best-lfw").run_id == other


def test_register_prefers_the_best_checkpoint_artifact(tmp_path: Path, template_db: Path) -> None:
    uri, client = _store(tmp_path, template_db)
    exp = _experiment(client, tmp_path, "ckpt")
    parent = add_parent(client, exp)
    rid = add_trial(client, exp, parent, {"beta": 0.1}, {"ijbb/tar_far_1e-4": rising(0.8)})
    ckpt = tmp_path / "best_checkpoint"
    ckpt.mkdir()
    (ckpt / "model.pt").write_bytes(b"not really weights")
    client.log_artifacts(rid, str(ckpt), "best_checkpoint")
    args = add_best_beta_args(argparse.ArgumentParser()).parse_args(
        ["--dataset", "ijbb", "--tracking-uri", uri, "--register", "--model-name", "m"])
    sel = run_best_beta(args)
    assert sel.registration is not None and sel.registration.source.endswith("/best_checkpoint")
    version = client.get_model_version_by_alias("m", "best-ijbb").version
    assert str(version) == sel.registration.version
    assert json.loads(format_best_beta(sel, as_json=True))["registered"]["alias"] == "best-ijbb"


def test_errors_are_one_line(tmp_path: Path, sweep_store: dict) -> None:
    with pytest.raises(ConfigError) as unknown:
        select_beta(sweep_store["uri"], "imagenet")
    assert "synth_ijbc" in str(unknown.value) and "synth_train" not in str(unknown.value)
    with pytest.raises(NoRunsError) as none:
        select_beta(sweep_store["uri"], "calfw")
    with pytest.raises(TrackingError) as missing:
        select_beta(f"sqlite:///{tmp_path / 'absent.db'}", "lfw")
    assert not (tmp_path / "absent.db").exists()
    for exc in (unknown, none, missing):
        assert isinstance(exc.value, FacefuseError)
        assert "\n" not in str(exc.value)


@pytest.mark.timeout(90)
def test_unreachable_server_fails_fast_with_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed now; nothing listens on it.
    with pytest.raises(TrackingError) as exc:
        select_beta(f"http://127.0.0.1:{port}", "lfw")
    assert f"127.0.0.1:{port}" in str(exc.value) and "\n" not in str(exc.value)


def test_fit_curve_recovers_a_known_peak() -> None:
    rng = np.random.default_rng(1)
    betas = 10.0 ** rng.uniform(-4, 1, 40)
    values = [0.9 - 0.01 * (math.log10(b) + 2) ** 2 + rng.normal(0, 0.001) for b in betas]
    curve = fit_curve(betas, values)
    peak = curve.beta[int(np.argmax(curve.mean))]
    assert abs(math.log10(peak) + 2) < 0.3
    single = fit_curve([0.1], [0.5])
    assert single.beta == [pytest.approx(0.1)] and single.mean == [pytest.approx(0.5)]


@pytest.mark.timeout(90)
def test_a_server_that_is_not_mlflow_gives_one_line() -> None:
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK" if self.path == "/health" else b"not here")

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(TrackingError) as exc:
            select_beta(f"http://127.0.0.1:{server.server_port}", "lfw")
    finally:
        server.shutdown()
        server.server_close()
    assert "\n" not in str(exc.value) and "tracking store error" in str(exc.value)
