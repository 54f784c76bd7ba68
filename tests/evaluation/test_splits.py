"""Held-out parts of the benchmarks: subject-disjoint, fixed, and logged by evaluate()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facefuse.errors import DataFormatError
from facefuse.evaluation.splits import ijb_parts, verification_parts
from facefuse.features.dataset import EvalSet, PairMaps
from facefuse.train.evaluate import evaluate
from facefuse.train.trial import objective_value


def test_verification_halves_are_the_person_disjoint_folds() -> None:
    sel, rep = verification_parts(6000)
    assert sel.tolist() == list(range(3000)) and rep.tolist() == list(range(3000, 6000))
    with pytest.raises(DataFormatError, match="cannot be split"):
        verification_parts(15)


def _ijb_protocol(n_subjects: int, templates_per: int = 3) -> tuple[np.ndarray, ...]:
    subject = np.repeat(np.arange(n_subjects), templates_per)
    t = np.arange(len(subject))
    p1, p2 = np.meshgrid(t, t, indexing="ij")
    keep = p1 < p2
    p1, p2 = p1[keep], p2[keep]
    return p1 + 100, p2 + 100, (subject[p1] == subject[p2]).astype(int), subject


def test_ijb_parts_share_no_subject_and_keep_every_genuine_pair() -> None:
    p1, p2, labels, subject = _ijb_protocol(40)
    sel, rep = ijb_parts(p1, p2, labels)
    assert len(np.intersect1d(sel, rep)) == 0
    subj_sel = set(subject[p1[sel] - 100]) | set(subject[p2[sel] - 100])
    subj_rep = set(subject[p1[rep] - 100]) | set(subject[p2[rep] - 100])
    assert not subj_sel & subj_rep and len(subj_sel) == len(subj_rep) == 20
    assert labels[sel].sum() + labels[rep].sum() == labels.sum()
    again = ijb_parts(p1, p2, labels)
    assert np.array_equal(again[0], sel)  # seeded: every trial sees the same parts
    with pytest.raises(DataFormatError, match="cannot be split"):
        ijb_parts(*_ijb_protocol(3)[:3])


class _Embed(torch.nn.Module):
    def embed(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a + b).flatten(1)


def test_evaluate_logs_selection_and_report_parts_and_the_objective_uses_selection() -> None:
    rng = np.random.default_rng(0)
    n_pairs, dim = 600, 8
    ids = rng.integers(0, 50, n_pairs)
    issame = rng.integers(0, 2, n_pairs).astype(bool)
    centres = rng.normal(size=(50, dim))
    first = centres[ids] + 0.3 * rng.normal(size=(n_pairs, dim))
    other = np.where(issame[:, None], centres[ids], centres[(ids + 7) % 50])
    second = other + 0.3 * rng.normal(size=(n_pairs, dim))
    faces = np.stack([first, second], 1).reshape(-1, dim, 1, 1).astype(np.float32)
    zeros = np.zeros_like(faces)
    ver = EvalSet("lfw", "verification", PairMaps(faces, zeros, faces, zeros),
                  {"issame": issame})
    metrics, _ = evaluate(_Embed(), [ver], 64, torch.device("cpu"))
    for key in ("lfw/acc", "lfw/sel/acc", "lfw/test/acc", "lfw/sel/acc_se"):
        assert key in metrics, key
    assert 0.8 < metrics["lfw/sel/acc"] <= 1.0 and metrics["lfw/sel/acc_se"] >= 0.0
    spec = {"dataset": "lfw", "metric": "acc"}
    assert objective_value(metrics, spec, ["lfw"]) == metrics["lfw/sel/acc"]
    full_only = {"lfw/acc": 0.9}
    assert objective_value(full_only, spec, ["lfw"]) == 0.9


def test_objective_on_named_validation_sets_reads_their_full_metrics() -> None:
    metrics = {"lfw/acc": 0.9, "lfw/sel/acc": 0.8, "cplfw/acc": 0.7, "cplfw/sel/acc": 0.6,
               "ijbb/tar_far_1e-4": 0.5, "ijbb/sel/tar_far_1e-4": 0.4}
    # Without validation sets: the evaluated sets' selection parts.
    assert objective_value(metrics, {"quality": "all"}, ["lfw", "ijbb"]) == \
        pytest.approx((0.8 + 0.4) / 2)
    # With them: only the validation sets, whole; the evaluated sets are not looked at.
    spec = {"quality": "all", "validation": ["cplfw"]}
    assert objective_value(metrics, spec, ["lfw", "ijbb", "cplfw"]) == 0.7
    spec = {"dataset": "cplfw", "metric": "acc", "validation": ["cplfw"]}
    assert objective_value(metrics, spec, ["lfw", "cplfw"]) == 0.7


def test_evaluate_splits_an_ijb_set_by_subject_with_a_bootstrap_se() -> None:
    rng = np.random.default_rng(1)
    p1, p2, labels, subject = _ijb_protocol(30)
    dim = 8
    centres = rng.normal(size=(30, dim))
    feats = (centres[subject] + 0.8 * rng.normal(size=(len(subject), dim))).astype(np.float32)
    maps = feats.reshape(-1, dim, 1, 1)
    zeros = np.zeros_like(maps)
    tids = np.arange(len(subject)) + 100
    meta = {"templates": tids, "medias": tids, "face_scores": np.ones(len(subject)),
            "p1": p1, "p2": p2, "labels": labels}
    ijb = EvalSet("synth_ijbc", "ijb", PairMaps(maps, zeros, maps, zeros), meta)
    metrics, _ = evaluate(_Embed(), [ijb], 64, torch.device("cpu"))
    for key in ("synth_ijbc/tar_far_1e-2", "synth_ijbc/sel/tar_far_1e-2",
                "synth_ijbc/test/tar_far_1e-2", "synth_ijbc/sel/tar_far_1e-2_se"):
        assert key in metrics, key
    assert metrics["synth_ijbc/sel/tar_far_1e-2_se"] > 0.0


def test_the_bootstrap_se_of_tar_draws_only_the_head_yet_matches_the_full_bootstrap() -> None:
    from facefuse.evaluation.splits import tar_at_far_se

    rng = np.random.default_rng(1)
    fars = (1e-4, 1e-3, 1e-2, 1e-1)
    # small: the head is every pair, so the draws are the plain bootstrap's, number for number
    labels = np.r_[np.ones(300), np.zeros(1000)]
    scores = np.r_[rng.normal(1.5, 1, 300), rng.normal(0, 1, 1000)]
    assert tar_at_far_se(labels, scores, fars, n_boot=20) == tar_at_far_se(labels, scores, fars, n_boot=20, head_only=False)
    # a million-pair-like set: the same standard errors in distribution
    labels = np.r_[np.ones(3000), np.zeros(300_000)]
    scores = np.r_[rng.normal(2.5, 1, 3000), rng.normal(0, 1, 300_000)]
    fast = tar_at_far_se(labels, scores, fars, n_boot=300)
    slow = tar_at_far_se(labels, scores, fars, seed=7, n_boot=300, head_only=False)
    for far in fars:
        assert 0.8 < fast[far] / slow[far] < 1.25, (far, fast[far], slow[far])
