"""What a researcher sees of a self-test sweep: run names, the experiment kind, one console line
per trial event, the Optuna study in a database optuna can load, the parent run's summary and the
benchmarks as dataset inputs (real local Ray, real sqlite MLflow store)."""

from __future__ import annotations

import contextlib
import io
import logging
import re
from pathlib import Path

import pytest

from facefuse.sweep import load_job, run_sweep
from facefuse.sweep_report import summary_handler, trial_roc_plot
from tests.sweep.conftest import SELFTEST, write_job

FAIL_ABOVE = 0.03
STDOUT: dict[str, str] = {}  # what Tune printed during the module's sweep


@pytest.fixture(scope="module")
def sweep(ray_session, world, tmp_path_factory):
    """A 6-trial, 3-epoch ASHA self-test sweep (the highest betas fail) with its log records.

    Its job names the tiny world's real dataset files (the self-test trainable does not read
    them; the driver fingerprints them as the runs' dataset inputs).
    """
    tmp = tmp_path_factory.mktemp("view")
    job = load_job(write_job(tmp, name="view", max_failures=0,
                             data={"root": str(world["data"]), "train": "synth_train",
                                   "eval": ["synth_lfw", "synth_ijbc"], "cache_dir": "none"},
                             params={"_fail_above_beta": FAIL_ABOVE}))
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.INFO)
    console = logging.getLogger("facefuse.sweep.console")
    old_level = console.level
    console.setLevel(logging.INFO)
    console.addHandler(handler)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):  # what Tune prints to the terminal
            result = run_sweep(job, trainable=SELFTEST, flush_timeout_s=60,
                               summary_handler=summary_handler, roc_plot=trial_roc_plot)
    finally:
        console.removeHandler(handler)
        console.setLevel(old_level)
    STDOUT["sweep"] = out.getvalue()
    return tmp, job, result, [r.getMessage() for r in records]


def _client(tmp: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def _trial_runs(tmp: Path, result) -> list:
    client = _client(tmp)
    exp = client.get_experiment_by_name("view")
    return client.search_runs([exp.experiment_id], f"tags.`facefuse.sweep_id` = "
                                                   f"'{result.sweep_id}' and tags.`facefuse.kind`"
                                                   " = 'trial'", max_results=100)


def test_experiment_kind_and_run_names(sweep) -> None:
    from facefuse.tracking.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    tmp, job, result, _ = sweep
    exp = _client(tmp).get_experiment_by_name("view")
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    runs = _trial_runs(tmp, result)
    assert len(runs) == 6
    indices = []
    for run in runs:
        p = run.data.params
        name = run.info.run_name
        assert re.fullmatch(rf"t\d\d beta={float(p['beta']):.2g} w{p['local_window']} "
                            rf"h{p['local_heads']} g{p['global_heads']} k{p['dw_kernel']} "
                            rf"lr={float(p['lr']):.2g}", name), name
        indices.append(int(name[1:3]))
    assert sorted(indices) == [1, 2, 3, 4, 5, 6]  # Tune's trial counter, in creation order


def test_console_has_one_line_per_trial_event(sweep) -> None:
    tmp, job, result, lines = sweep
    started = [ln for ln in lines if ln.endswith(" started")]
    epochs = [ln for ln in lines if re.search(r" epoch \d+/3: objective \d\.\d{4} \(best ", ln)]
    stopped = [ln for ln in lines if " stopped by ASHA after epoch " in ln]
    finished = [ln for ln in lines if re.search(r" finished 3 epochs \(best objective ", ln)]
    failed = [ln for ln in lines if " failed after epoch " in ln]
    assert len(started) == 6
    errors = [t for t in result.trials if t.status == "ERROR"]
    assert len(failed) == len(errors) >= 1
    assert all("FloatingPointError" in ln for ln in failed)
    full = [t for t in result.trials if t.status != "ERROR" and t.epochs_done == 3]
    assert len(finished) == len(full) >= 1
    assert len(stopped) == 6 - len(errors) - len(full)
    assert len(epochs) == sum(t.epochs_done for t in result.trials)
    assert len(lines) == len(started) + len(epochs) + len(stopped) + len(finished) + len(failed)
    # without --verbose Tune prints none of its boxes, banners or status tables
    printed = STDOUT["sweep"]
    assert "Configuration for experiment" not in printed
    assert "Trial status" not in printed and "╭" not in printed, printed[-2000:]


def test_optuna_study_is_in_the_database_with_every_trial(sweep) -> None:
    import optuna

    from facefuse.sweep.study import study_storage_url

    tmp, job, result, _ = sweep
    url = study_storage_url(job.tracking.uri)
    assert url == f"sqlite:///{tmp}/mlflow.optuna.db"
    study = optuna.load_study(study_name=result.sweep_id, storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 6
    states = sorted(t.state.name for t in trials)
    assert states.count("FAIL") == result.num_errors
    assert states.count("COMPLETE") == 6 - result.num_errors
    # the study's trials are the sweep's: same betas as the MLflow runs
    betas = sorted(round(t.params["beta"], 12) for t in trials)
    assert betas == sorted(round(float(t.config["beta"]), 12) for t in result.trials)
    # optuna-dashboard reads the same storage through its own storage helper
    from optuna_dashboard._storage_url import get_storage

    summaries = optuna.get_all_study_summaries(get_storage(url))
    assert [s.study_name for s in summaries] == [result.sweep_id]
    assert summaries[0].n_trials == 6


def test_benchmarks_are_dataset_inputs_of_every_trial(sweep) -> None:
    from facefuse.data import dataset_path
    from facefuse.data.fingerprint import content_fingerprint

    tmp, job, result, _ = sweep
    client = _client(tmp)
    runs = _trial_runs(tmp, result)
    expected = {name: content_fingerprint(name, job.data.root)
                for name in ("synth_train", "synth_lfw", "synth_ijbc")}
    for run in runs:
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        got = {i.dataset.name: (i.dataset.digest, {t.key: t.value for t in i.tags},
                                i.dataset.source) for i in inputs}
        assert {k: v[0] for k, v in got.items()} == expected
        # objective mean:all -> both eval sets select hyperparameters
        assert {k: v[1]["mlflow.data.context"] for k, v in got.items()} == \
            {"synth_train": "train", "synth_lfw": "selection", "synth_ijbc": "selection"}
        assert str(dataset_path("synth_lfw", job.data.root)) in got["synth_lfw"][2]


def test_dataset_context_and_fingerprint(tmp_path: Path) -> None:
    from facefuse.data.fingerprint import content_fingerprint
    from facefuse.tracking.inputs import dataset_context

    ev = ["synth_lfw", "synth_ijbb", "synth_ijbc"]
    assert dataset_context("synth_ijbc", "synth_train", {"dataset": "synth_ijbc"}, ev) == \
        "selection"
    assert dataset_context("synth_lfw", "synth_train", {"dataset": "synth_ijbc"}, ev) == "test"
    assert dataset_context("synth_lfw", "synth_train", {"quality": "low"}, ev) == "test"
    assert dataset_context("synth_train", "synth_train", {"quality": "low"}, ev) == "train"
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "faces_synth").mkdir(parents=True)
        (d / "faces_synth" / "synth_lfw.bin").write_bytes(b"1 2 3\n")
    fp = content_fingerprint
    assert fp("synth_lfw", a) == fp("synth_lfw", b)  # copies: same digest
    (b / "faces_synth" / "synth_lfw.bin").write_bytes(b"1 2 4\n")
    assert fp("synth_lfw", a) != fp("synth_lfw", b)  # one byte differs


def test_parent_run_summarises_the_sweep(sweep, tmp_path: Path) -> None:
    import csv
    import json

    tmp, job, result, _ = sweep
    client = _client(tmp)
    parent = client.get_run(result.parent_run_id)
    runs = {r.info.run_id: r for r in _trial_runs(tmp, result)}
    finished = [r for r in runs.values() if r.info.status == "FINISHED"]
    for dataset, key in (("synth_lfw", "synth_lfw/acc"), ("synth_ijbc", "synth_ijbc/tar_far_1e-4")):
        best = max(finished, key=lambda r: r.data.metrics[key])
        assert parent.data.metrics[f"best/{key}"] == best.data.metrics[key]
        assert best.info.run_id in parent.data.tags[f"facefuse.best.{dataset}"]
        assert best.info.run_name in parent.data.tags[f"facefuse.best.{dataset}"]
        # logged as it went: one value per summary, the last one after every trial ended
        history = client.get_metric_history(parent.info.run_id, f"best/{key}")
        assert len(history) >= 2 and max(h.step for h in history) == 6
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "summary")}
    assert {"summary/trials.csv", "summary/summary.json", "summary/metric_vs_beta.png",
            "summary/best_beta_synth_lfw.json", "summary/best_beta_synth_ijbc.json"} <= arts
    local = Path(client.download_artifacts(parent.info.run_id, "summary", str(tmp_path)))
    with open(local / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {"beta", "objective", "synth_lfw"} <= set(rows[0])
    summary = json.loads((local / "summary.json").read_text())
    assert summary["final"] is True and summary["trials"] == 6
    # fewer than 8 full-budget trials: the importance plot is skipped, with the reason
    assert "summary/param_importance.png" not in arts
    assert any("importance" in s and "at least" in s for s in summary["skipped"])
    from facefuse.selection import select_beta

    for dataset in ("synth_lfw", "synth_ijbc"):
        choice = json.loads((local / f"best_beta_{dataset}.json").read_text())
        again = select_beta(job.tracking.uri, dataset, experiment="view").to_json()
        assert choice["beta"] == again["beta"] and choice["run_id"] == again["run_id"]
        assert parent.data.metrics[f"chosen_beta/{dataset}"] == choice["beta"]
    assert (local / "metric_vs_beta.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
