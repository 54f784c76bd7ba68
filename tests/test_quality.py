"""Best beta against measured quality: the fit on constructed data, and best_beta --predict and the
report against real sqlite MLflow stores holding sweeps logged the way sweeps log them."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from facefuse.errors import ConfigError
from facefuse.quality import QualityScore, beta_vs_quality, log_qualities, measure_quality
from facefuse.stats import TooFewLevelsError, fit_beta_vs_quality, log_beta_sd
from facefuse.tracking import schema as S
from platform.best_beta import main as best_beta_main
from platform.report import format_report, run_report, add_report_args
from tests.conftest import REPO
from tests.test_selection import _experiment, _store, add_parent, add_trial, template_db  # noqa: F401

LEVELS = ("synth_q0", "synth_q1", "synth_q2", "synth_q3", "synth_q4")


# ---------------------------------------------------------------------------------------------
# The fit on constructed data
# ---------------------------------------------------------------------------------------------
def _draw(rng: np.random.Generator, slope: float, n: int = 5) -> tuple[np.ndarray, ...]:
    q = np.linspace(10.0, 20.0, n) + rng.normal(0, 0.05, n)
    q_se = np.full(n, 0.05)
    sd = rng.uniform(0.15, 0.45, n)
    y = -4.0 + slope * q + rng.normal(0.0, sd)
    return q, q_se, y, sd


def test_a_known_relation_is_recovered_with_an_interval_covering_it() -> None:
    rng = np.random.default_rng(0)
    fit = fit_beta_vs_quality(*_draw(rng, 0.2))
    assert fit.relation and fit.slope_interval[0] <= 0.2 <= fit.slope_interval[1]
    assert "log10(beta) =" in fit.verdict("adaface_norm")
    covered = predicted = 0
    n = 300
    for _ in range(n):
        fit = fit_beta_vs_quality(*_draw(rng, 0.2))
        covered += fit.slope_interval[0] <= 0.2 <= fit.slope_interval[1]
        # a new dataset of quality 15, its best beta as a sweep would find it
        _, (lo, hi) = fit.predict(15.0, 0.05)
        predicted += lo <= -4.0 + 0.2 * 15.0 + rng.normal(0, 0.3) <= hi
    assert covered / n >= 0.88 and predicted / n >= 0.88


def test_no_relation_is_said_when_the_slope_interval_covers_zero() -> None:
    rng = np.random.default_rng(1)
    flat = [fit_beta_vs_quality(*_draw(rng, 0.0)) for _ in range(200)]
    assert np.mean([not f.relation for f in flat]) >= 0.88
    f = next(f for f in flat if not f.relation)
    assert f.verdict("adaface_norm").startswith("no relation between best beta and adaface_norm")


def test_fewer_than_three_levels_or_one_quality_are_refused() -> None:
    with pytest.raises(TooFewLevelsError, match="at least 3"):
        fit_beta_vs_quality([1.0, 2.0], [0.1, 0.1], [-2.0, -1.0], [0.2, 0.2])
    with pytest.raises(TooFewLevelsError, match="same measured quality"):
        fit_beta_vs_quality([1.0, 1.0, 1.0], [0.1] * 3, [-2.0, -1.0, -3.0], [0.2] * 3)


def test_an_interval_at_the_searched_edge_is_widened() -> None:
    inner = log_beta_sd((1e-3, 1e-2), (1e-5, 1.0))
    edge = log_beta_sd((1e-5, 1e-4), (1e-5, 1.0))
    assert inner == pytest.approx(1.0 / (2 * 1.6449), rel=1e-3)
    assert edge == pytest.approx(2.0 / (2 * 1.6449), rel=1e-3)


# ---------------------------------------------------------------------------------------------
# best_beta --predict and the report on real stores
# ---------------------------------------------------------------------------------------------
def _optimum(q: float, qs: dict[str, float], slope_decades: float) -> float:
    lo, hi = min(qs.values()), max(qs.values())
    return -4.0 + slope_decades * (q - lo) / (hi - lo)


def write_quality_sweep(uri: str, client, exp: str, sweep_id: str, levels: dict[str, float],
                        scores: list[QualityScore], slope_decades: float, data_root: Path,
                        adaface: Path, seed: int = 0, n_trials: int = 30) -> str:
    """Writes a sweep whose trials evaluate every level (sel, test and full-set metrics, as the
    sweep callback logs them), each level's true best log10(beta) on a line in its quality, and
    the levels' measured qualities on the parent run as the sweep command logs them."""
    from facefuse.backbones.checkpoints import checkpoint_hash

    parent = add_parent(client, exp, sweep_id)
    client.log_param(parent, "data.root", str(data_root))
    client.log_param(parent, "backbones.adaface", str(adaface))
    client.set_tag(parent, S.TAG_ADAFACE_SHA256, checkpoint_hash(adaface))
    log_qualities(uri, parent, scores)
    rng = np.random.default_rng(seed)
    for i in range(n_trials):
        x = float(rng.uniform(-5.0, 0.0))
        hist = {}
        for name, q in levels.items():
            top = 0.95 - 0.05 * list(levels).index(name)
            final = top - 0.02 * (x - _optimum(q, levels, slope_decades)) ** 2 + rng.normal(0, 0.004)
            curve = [final - 0.02 * (2 - e) for e in range(3)]
            hist[f"{name}/sel/acc"] = curve
            hist[f"{name}/sel/acc_se"] = [0.004] * 3
            hist[f"{name}/test/acc"] = [v + rng.normal(0, 0.004) for v in curve]
            hist[f"{name}/acc"] = curve
        add_trial(client, exp, parent, {"beta": 10.0 ** x, "lr": ("0.001", "0.002")[i % 2]},
                  hist, seed=i, sweep_id=sweep_id)
    return parent


@pytest.fixture(scope="module")
def quality_world(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> dict:  # noqa: F811
    from facefuse.backbones import get_model, save_adaface
    from facefuse.synth import build_ladder

    tmp = tmp_path_factory.mktemp("quality")
    data = build_ladder(tmp / "data", seed=0, pairs=20, workers=1, progress=False)
    torch.manual_seed(0)
    adaface = tmp / "adaface.ckpt"
    save_adaface(get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32, layout="adaface"), adaface)
    scores = {n: measure_quality(n, data, adaface) for n in LEVELS}
    uri, client = _store(tmp, template_db)
    swept = {n: scores[n].value for n in LEVELS if n != "synth_q2"}
    exp = _experiment(client, tmp, "ladder")
    parent = write_quality_sweep(uri, client, exp, "lad", swept,
                                 [scores[n] for n in swept], 3.0, data, adaface)
    return {"uri": uri, "client": client, "tmp": tmp, "data": data, "adaface": adaface,
            "scores": scores, "swept": swept, "parent": parent, "template": template_db}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = best_beta_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_for_a_level_that_was_not_swept(quality_world: dict,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    w = quality_world
    qs = {n: s.value for n, s in w["scores"].items()}
    truth = _optimum(qs["synth_q2"], w["swept"], 3.0)
    code, out, err = _run(["--dataset", "synth_q2", "--predict", "--json", "--tracking-uri",
                           w["uri"], "--experiment", "ladder"], capsys)
    assert code == 0, out + err
    obj = json.loads(out)
    # the quality was measured now, from the images, with the sweep's own AdaFace checkpoint
    assert obj["quality"]["value"] == pytest.approx(qs["synth_q2"], rel=1e-6)
    assert obj["quality"]["backbone_sha256"] and not obj["swept"]
    lo, hi = (math.log10(v) for v in obj["beta_interval"])
    assert lo <= truth <= hi and lo < math.log10(obj["beta"]) < hi
    study = obj["study"]
    assert study["fit"]["relation"] and len(study["points"]) == 4
    s_lo, s_hi = study["fit"]["slope_interval"]
    true_slope = 3.0 / (max(w["swept"].values()) - min(w["swept"].values()))
    assert s_lo <= true_slope <= s_hi
    code, out, _ = _run(["--dataset", "synth_q2", "--predict", "--tracking-uri", w["uri"],
                         "--experiment", "ladder"], capsys)
    assert code == 0 and out.startswith("predicted beta for synth_q2: ")
    assert "90% prediction interval" in out and "log10(beta) =" in out


def test_predict_for_a_swept_level_leaves_it_out(quality_world: dict,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    w = quality_world
    code, out, err = _run(["--dataset", "synth_q1", "--predict", "--json", "--tracking-uri",
                           w["uri"]], capsys)
    assert code == 0, err
    obj = json.loads(out)
    assert obj["swept"] and "synth_q1" not in [p["dataset"] for p in obj["study"]["points"]]
    assert obj["quality"]["value"] == pytest.approx(w["swept"]["synth_q1"])


def test_a_foreign_backbone_is_refused(quality_world: dict, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from facefuse.backbones import get_model, save_adaface

    torch.manual_seed(5)
    other = tmp_path / "other.ckpt"
    save_adaface(get_model("ir_tiny", widths=(4, 8, 16, 32), num_features=32, layout="adaface"), other)
    code, _, err = _run(["--dataset", "synth_q2", "--predict", "--tracking-uri",
                         quality_world["uri"], "--backbone", str(other)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert str(other) in err and "[backbone]" in err and "--backbone" in err


def test_fewer_than_three_levels_and_no_relation_each_say_so_in_one_line(
        quality_world: dict, capsys: pytest.CaptureFixture[str]) -> None:
    w = quality_world
    client, uri, tmp = w["client"], w["uri"], w["tmp"]
    two = {n: w["swept"][n] for n in ("synth_q0", "synth_q4")}
    exp = _experiment(client, tmp, "two_levels")
    write_quality_sweep(uri, client, exp, "two", two, [w["scores"][n] for n in two], 3.0,
                        w["data"], w["adaface"], seed=1, n_trials=12)
    code, out, _ = _run(["--dataset", "synth_q2", "--predict", "--tracking-uri", uri,
                         "--experiment", "two_levels"], capsys)
    assert code == 1 and out.count("\n") == 1
    assert out.startswith("no prediction for synth_q2: 2 swept level(s)") and "at least 3" in out
    exp = _experiment(client, tmp, "flat")
    write_quality_sweep(uri, client, exp, "flat", w["swept"], [w["scores"][n] for n in w["swept"]],
                        0.0, w["data"], w["adaface"], seed=2)
    code, out, _ = _run(["--dataset", "synth_q2", "--predict", "--tracking-uri", uri,
                         "--experiment", "flat"], capsys)
    assert code == 1 and out.count("\n") == 1
    assert out.startswith("no prediction for synth_q2: no relation between best beta and "
                          "adaface_norm")
    code, out, _ = _run(["--dataset", "synth_q2", "--predict", "--tracking-uri", uri,
                         "--experiment", "ladder", "--sweep", "nope"], capsys)
    assert code == 1 and "no dataset qualities logged by sweep nope" in out


def test_report_plots_best_beta_against_quality_and_logs_it(quality_world: dict,
                                                            tmp_path: Path) -> None:
    import argparse

    w = quality_world
    args = add_report_args(argparse.ArgumentParser()).parse_args(
        ["--experiment", "ladder", "--out", str(tmp_path / "rep"), "--tracking-uri", w["uri"]])
    report = run_report(args)
    assert len(report.beta_quality) == 1 and report.beta_quality[0].fit is not None
    png = tmp_path / "rep" / "beta_vs_quality_lad.png"
    assert png in report.files and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "rep" / "beta_vs_quality_lad.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("dataset,quality,quality_se,beta,beta_low")
    text = format_report(report)
    assert "best beta vs adaface_norm (sweep lad, 4 levels): log10(beta) =" in text
    logged = [a.path for a in w["client"].list_artifacts(w["parent"], "report")]
    assert "report/beta_vs_quality_lad.png" in logged
    # the same study from the library: the points are the levels, ordered by quality
    study = beta_vs_quality(w["uri"], "ladder")
    assert [p.quality for p in study.points] == sorted(w["swept"].values())


def test_quality_job_field_is_validated(tmp_path: Path) -> None:
    import yaml

    from facefuse.sweep.jobs import load_job

    raw = yaml.safe_load(Path("jobs/beta_vs_quality.yaml").read_text())
    raw["selection"] = {"quality": "brisque"}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"\[selection.quality\] unknown quality measure"):
        load_job(path)


@pytest.mark.slow
def test_a_real_sweep_logs_each_level_quality_on_its_parent_run(world_job, world: dict, tmp_path: Path,
                                                                ray_local: None,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """The sweep command measures every evaluated level's quality with the job's AdaFace backbone
    and logs it on the parent run; a 3-trial sweep is too small for intervals, so --predict says so."""
    from mlflow import MlflowClient

    from facefuse.synth import build_ladder, ladder_is_complete
    from platform.sweep import main as sweep_main

    # The shared world stays as it is (other tests expect no ladder in it): a linked copy of
    # its data root gets the ladder; the feature store is keyed by content, so it is shared.
    root = tmp_path / "data"
    shutil.copytree(world["data"], root, copy_function=os.symlink)
    build_ladder(root, seed=0, pairs=20, workers=1, progress=False)
    assert ladder_is_complete(root, 0, pairs=20)
    levels = ["synth_q0", "synth_q2", "synth_q4"]
    data = {"root": str(root), "train": "synth_train", "eval": levels,
            "cache_dir": str(world["base"] / "cache")}
    job = world_job(tmp_path, "bvq", data=data, trials=3, epochs=1,
                    search_space=str(REPO / "search_spaces" / "quality_ladder.yaml"),
                    selection={"quality": "adaface_norm"})
    assert sweep_main([str(job)]) == 0
    out = capsys.readouterr().out
    assert "measured quality (adaface_norm" in out
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.search_runs([client.get_experiment_by_name("bvq").experiment_id],
                                "tags.`facefuse.kind` = 'sweep'")[0]
    assert parent.data.tags[S.TAG_QUALITY_MEASURE] == "adaface_norm"
    for name in levels:
        direct = measure_quality(name, root, world["adaface"])
        assert parent.data.metrics[S.quality_key(name, "adaface_norm")] == pytest.approx(direct.value)
        assert parent.data.metrics[S.quality_key(name, "adaface_norm", "_n")] == 40
    code, out, _ = _run(["--dataset", "synth_q1", "--predict", "--tracking-uri",
                         f"sqlite:///{tmp_path}/mlflow.db", "--experiment", "bvq"], capsys)
    assert code == 1 and out.count("\n") == 1 and "the relation needs at least 3" in out
