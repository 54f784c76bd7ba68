"""facefuse/similarity_report.py and its part of the report: the two backbones compared on a real
feature store of the tiny synthetic world, found through a sweep's resolved_job.json in a real
sqlite MLflow store, beside the fusion's gain from ablation runs."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from facefuse.backbones import load_backbone
from facefuse.backbones.iresnet import to_input
from facefuse.data import dataset_path, read_verification_bin
from facefuse.evaluation import fuse_flips, verification_accuracy
from facefuse.features.dataset import BackbonePair, load_eval_sets
from facefuse.report import make_report
from facefuse.similarity_report import StoreSource, compare_sources, source_from_job
from platform.report import add_report_args, format_report, run_report

SETS = ["synth_lfw", "synth_ijbb"]


@pytest.fixture(scope="module")
def stored(world: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A feature store holding SETS only (synth_cfp_fp is left out on purpose)."""
    cache = tmp_path_factory.mktemp("sim") / "cache"
    pair = BackbonePair(world["arcface"], world["adaface"])
    load_eval_sets(SETS, world["data"], pair, str(cache), build=True, progress=False)
    return {"cache": str(cache), **world}


def _job(stored: dict, cache_dir, evals) -> dict:
    return {"data": {"root": str(stored["data"]), "cache_dir": cache_dir, "eval": evals,
                     "train": "synth_train"},
            "backbones": {"arcface": str(stored["arcface"]), "adaface": str(stored["adaface"])}}


def _reference_wrong_share(stored: dict, ckpt: Path) -> float:
    """1 - the backbone's 10-fold accuracy, run on the .bin images themselves (no store)."""
    images, issame = read_verification_bin(dataset_path("synth_lfw", stored["data"]))
    net = load_backbone(ckpt)
    with torch.no_grad():
        emb = fuse_flips(net(to_input(images)).numpy(), net(to_input(images, flip=True)).numpy(),
                         dtype=np.float64)
    return 1.0 - verification_accuracy(emb[0::2], emb[1::2], issame)[0]


def test_comparisons_from_the_store_match_the_backbones_on_images(stored: dict) -> None:
    src = source_from_job(_job(stored, stored["cache"], SETS + ["synth_cfp_fp"]), "s1")
    comps, skipped = compare_sources([src, src], n_boot=200)  # the same maps are compared once
    assert [c.dataset for c in comps] == SETS
    assert len(skipped) == 1 and "synth_cfp_fp" in skipped[0] and "prepare" in skipped[0]
    lfw, ijbb = comps
    for c in comps:
        assert 0.0 <= c.cka_pooled <= 1.0 and 0.0 <= c.cka_flat <= 1.0
        assert c.cka_shuffled < c.cka_pooled  # the same images' maps agree more than unrelated
        assert c.genuine.n + c.impostor.n == c.errors.n
        assert c.genuine.wrong_a + c.impostor.wrong_a == c.errors.wrong_a
        assert c.sweep_id == "s1"
    assert lfw.errors.n == 60 and lfw.images == 120 and lfw.decided_at == "10-fold thresholds"
    assert ijbb.decided_at == "threshold at FAR 0.0001"
    # The error counts are the protocol's: 1 - accuracy of each backbone on the raw images
    # (stored maps are fp16, so a pair on the threshold may flip: one pair of slack).
    assert abs(lfw.errors.wrong_a / 60 - _reference_wrong_share(stored, stored["arcface"])) \
        <= 1 / 60 + 1e-12
    assert abs(lfw.errors.wrong_b / 60 - _reference_wrong_share(stored, stored["adaface"])) \
        <= 1 / 60 + 1e-12
    row = lfw.to_row()
    assert row["pairs"] == 60 and row["genuine_pairs"] + row["impostor_pairs"] == 60


def test_a_sweep_without_a_store_or_checkpoints_is_a_reason(stored: dict) -> None:
    with pytest.raises(Exception, match=r"\[data.cache_dir\].*prepare features"):
        source_from_job(_job(stored, None, SETS), "s0", "run x/resolved_job.json")
    gone = StoreSource(str(stored["data"]), stored["cache"], "/nonexistent/a.pth",
                       str(stored["adaface"]), ("synth_lfw",), "s2")
    comps, skipped = compare_sources([gone])
    assert comps == [] and "/nonexistent/a.pth" in skipped[0]


def _parent(client: MlflowClient, exp: str, sweep_id: str, job: dict, tmp: Path) -> str:
    run = client.create_run(exp, tags={"facefuse.kind": "sweep", "facefuse.sweep_id": sweep_id})
    path = tmp / sweep_id / "resolved_job.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"sweep_id": sweep_id, "job": job}))
    client.log_artifact(run.info.run_id, str(path))
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _ablation_run(client: MlflowClient, exp: str, parent: str, variant: str, seed: int,
                  acc: float) -> None:
    tags = {"mlflow.parentRunId": parent, "facefuse.kind": "trial", "facefuse.sweep_id": "abl",
            "facefuse.datasets": "synth_lfw", "facefuse.full_budget": "true",
            "facefuse.seed": str(seed), "facefuse.variant": variant}
    run = client.create_run(exp, tags=tags)
    client.log_batch(run.info.run_id, metrics=[Metric("synth_lfw/acc", acc, 0, 3)],
                     params=[Param("beta", "0.1"), Param("seed", str(seed)),
                             Param("variant", variant)])
    client.set_terminated(run.info.run_id)


def test_report_logs_and_prints_the_table_beside_the_fusion_gain(stored: dict,
                                                                  tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("sim", artifact_location=(tmp_path / "art").as_uri())
    sweep = _parent(client, exp, "s1", _job(stored, stored["cache"], SETS), tmp_path)
    _parent(client, exp, "s0", _job(stored, None, SETS), tmp_path)  # on-the-fly maps: a reason
    for variant, accs in (("full", (0.90, 0.92)), ("arcface_only", (0.88, 0.90)),
                          ("adaface_only", (0.80, 0.84))):
        for seed, acc in enumerate(accs):
            _ablation_run(client, exp, sweep, variant, seed, acc)

    args = add_report_args(argparse.ArgumentParser()).parse_args(
        ["--experiment", "sim", "--out", str(tmp_path / "out"), "--tracking-uri", uri])
    report = run_report(args)
    names = {p.name for p in report.files}
    assert {"backbone_similarity.md", "backbone_similarity.csv"} <= names
    assert [c.dataset for c in report.backbones] == SETS
    assert any("sweep s0" in s and "data.cache_dir" in s for s in report.skipped)
    md = (tmp_path / "out" / "backbone_similarity.md").read_text()
    lfw_line = next(line for line in md.splitlines() if line.startswith("| synth_lfw"))
    assert "+2.00 pts vs arcface_only" in lfw_line  # 91 - 89
    ijbb_line = next(line for line in md.splitlines() if line.startswith("| synth_ijbb"))
    assert ijbb_line.rstrip(" |").endswith("-")  # no ablation runs on that set
    csv = (tmp_path / "out" / "backbone_similarity.csv").read_text().splitlines()
    header = csv[0].split(",")
    lfw = dict(zip(header, csv[1].split(",")))
    assert float(lfw["fusion_gain"]) == pytest.approx(2.0)
    assert math.isclose(float(lfw["cka_pooled"]), report.backbones[0].cka_pooled)
    logged = {a.path for a in client.list_artifacts(sweep, "report")}
    assert "report/backbone_similarity.md" in logged
    printed = format_report(report)
    assert printed.startswith("backbone similarity") and "synth_ijbb" in printed
    assert "## Backbone similarity" in (tmp_path / "out" / "report.md").read_text()

    quick = make_report(uri, "sim", tmp_path / "quick", log_artifacts=False, backbones=False)
    assert not quick.backbones and "backbone_similarity.md" not in {p.name for p in quick.files}


def test_a_sweep_without_the_flip_test_compares_the_original_maps_only(stored: dict,
                                                                       tmp_path: Path) -> None:
    """params.flip_test false: the store holds no mirrored eval maps, and none are asked for."""
    cache = tmp_path / "cache"
    pair = BackbonePair(stored["arcface"], stored["adaface"])
    load_eval_sets(["synth_lfw"], stored["data"], pair, str(cache), build=True, progress=False,
                   flips=False)
    job = {**_job(stored, str(cache), ["synth_lfw"]), "params": {"flip_test": False}}
    src = source_from_job(job, "nf")
    assert src.flips is False
    (c,), skipped = compare_sources([src], n_boot=100)
    assert skipped == [] and c.decided_at == "10-fold thresholds, no flip test"
    with_flips, _ = compare_sources([source_from_job(_job(stored, str(cache), ["synth_lfw"]))])
    assert with_flips == []  # the flip test's mirrored maps were never extracted here
