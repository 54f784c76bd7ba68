"""The two backbones compared on every evaluated dataset, from the feature store a sweep filled.

Per dataset: linear CKA of their maps (spatially pooled over every image, up to a seeded
subsample; flattened on a smaller subsample; and the shuffled-rows baseline), and the correlation
of their verification errors: each backbone's own embedding (its head on its stored map, plus the
mirrored map's when the sweep used the flip test) decides every pair at its own threshold (verification
sets: the 10-fold protocol's, each fold at the threshold chosen on the others; IJB sets: the
threshold where the ROC is read at the dataset's primary FAR), and phi of "A wrong" against
"B wrong" comes with a bootstrap interval (``facefuse.evaluation.similarity``).

Nothing is extracted here: a dataset whose entries the store lacks is skipped with the reason.
``facefuse.report`` finds the stores from the sweeps' ``resolved_job.json`` and puts the table
beside the fusion's gain over the better single backbone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from facefuse.errors import ConfigError, FacefuseError
from facefuse.evaluation import (ErrorCorrelation, error_correlation, ijb_scores,
                                 threshold_at_far, verification_decisions)
from facefuse.evaluation.similarity import (flat_maps, linear_cka, pooled_maps, shuffled_cka,
                                            subsample)
from facefuse.features.dataset import BackbonePair, EvalSet, load_eval_sets
from facefuse.train.evaluate import embed_with_flip

logger = logging.getLogger(__name__)

#: Most images whose pooled maps enter CKA (a seeded subsample beyond it).
MAX_POOLED_ITEMS = 10_000
#: Most images whose flattened maps enter CKA: C*H*W columns (25,088 at r100) make the n x n
#: Gram matrix the affordable side, and it grows with n squared.
MAX_FLAT_ITEMS = 1_000
#: Images per batch through a backbone's head.
HEAD_BATCH = 256


@dataclass
class BackboneComparison:
    """The two backbones on one dataset: CKA of their maps and their errors' correlation."""

    dataset: str
    quality: str
    kind: str  # "verification" | "ijb"
    images: int
    cka_pooled: float  # spatially pooled maps [n, C]
    cka_flat: float  # flattened maps [n, C*H*W], on a smaller subsample
    cka_shuffled: float  # pooled, rows of one backbone shuffled: what unrelated images give
    pooled_items: int
    flat_items: int
    decided_at: str  # the operating point the errors are counted at
    errors: ErrorCorrelation  # over all pairs; a = ArcFace, b = AdaFace
    # Within each class: at a strict FAR nearly every error of both backbones is a genuine
    # pair's, so phi over all pairs mostly says which class a pair is in.
    genuine: ErrorCorrelation  # false rejections
    impostor: ErrorCorrelation  # false acceptances
    sweep_id: str = ""

    def to_row(self) -> dict[str, Any]:
        """Returns the comparison as one flat CSV row."""
        row = {k: v for k, v in asdict(self).items()
               if k not in ("errors", "genuine", "impostor")}
        for prefix, e in (("", self.errors), ("genuine_", self.genuine),
                          ("impostor_", self.impostor)):
            row.update({f"{prefix}pairs": e.n, f"{prefix}wrong_arcface": e.wrong_a,
                        f"{prefix}wrong_adaface": e.wrong_b, f"{prefix}both_wrong": e.both,
                        f"{prefix}both_wrong_if_independent": e.expected_both,
                        f"{prefix}phi": e.phi, f"{prefix}phi_low": e.low,
                        f"{prefix}phi_high": e.high})
        row["phi_level"] = self.errors.level
        return row


class _OwnEmbedding(torch.nn.Module):
    """One backbone's own embedding (its head on its map) behind the fusion model's ``embed``."""

    def __init__(self, backbone: torch.nn.Module, which: str) -> None:
        super().__init__()
        self.backbone, self.which = backbone, which

    def embed(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Returns the backbone's embedding [N, E] of its own map ([N, C, 7, 7])."""
        return self.backbone.forward_head(a if self.which == "a" else b)


def primary_far(metric: str) -> float:
    """Returns the FAR of an IJB metric name ('tar_far_1e-4' -> 1e-4)."""
    return float(metric.rsplit("_", 1)[1])


def _labels(s: EvalSet) -> np.ndarray:
    """Returns whether each pair of the set's protocol is genuine."""
    return np.asarray(s.meta["issame" if s.kind == "verification" else "labels"], dtype=bool)


def _wrong(s: EvalSet, emb: np.ndarray, far: float) -> np.ndarray:
    """Returns, per pair of the set's protocol, whether this embedding decides it wrongly."""
    labels = _labels(s)
    if s.kind == "verification":
        return verification_decisions(emb[0::2], emb[1::2], labels) != labels
    m = s.meta
    scores = ijb_scores(emb, m["face_scores"], m["templates"], m["medias"], m["p1"], m["p2"])
    return (scores >= threshold_at_far(labels, scores, far)) != labels


def compare_backbones(s: EvalSet, arcface: torch.nn.Module, adaface: torch.nn.Module,
                      max_pooled: int = MAX_POOLED_ITEMS, max_flat: int = MAX_FLAT_ITEMS,
                      seed: int = 0, n_boot: int = 2000, level: float = 0.9,
                      sweep_id: str = "") -> BackboneComparison:
    """Returns the comparison of the two backbones (loaded checkpoints) on one evaluation set."""
    from facefuse.data import get_dataset

    spec = get_dataset(s.name)
    n = len(s.maps.a)
    pooled_idx = subsample(n, max_pooled, seed)
    flat_idx = subsample(n, max_flat, seed)
    pa, pb = pooled_maps(s.maps.a, pooled_idx), pooled_maps(s.maps.b, pooled_idx)
    cka_pooled = linear_cka(pa, pb)
    cka_shuffled = shuffled_cka(pa, pb, seed)
    cka_flat = linear_cka(flat_maps(s.maps.a, flat_idx), flat_maps(s.maps.b, flat_idx))

    far = primary_far(spec.primary_metric) if s.kind == "ijb" else math.nan
    wrong = []
    for net, which in ((arcface, "a"), (adaface, "b")):
        emb = embed_with_flip(_OwnEmbedding(net, which), s, HEAD_BATCH, torch.device("cpu"))
        wrong.append(_wrong(s, emb, far))
    labels = _labels(s)
    errors, genuine, impostor = (
        error_correlation(wrong[0][part], wrong[1][part], level=level, n_boot=n_boot, seed=seed)
        for part in (slice(None), labels, ~labels))
    decided_at = ("10-fold thresholds" if s.kind == "verification"
                  else f"threshold at FAR {far:g}")
    if s.maps.a_flip is None:
        decided_at += ", no flip test"
    logger.info("%s: CKA pooled %.3f (shuffled %.3f), flat %.3f; errors %d / %d, both %d, "
                "phi %.3f (genuine %.3f, impostor %.3f)", s.name, cka_pooled, cka_shuffled,
                cka_flat, errors.wrong_a, errors.wrong_b, errors.both, errors.phi, genuine.phi,
                impostor.phi)
    return BackboneComparison(
        dataset=s.name, quality=spec.quality, kind=s.kind, images=n, cka_pooled=cka_pooled,
        cka_flat=cka_flat, cka_shuffled=cka_shuffled, pooled_items=len(pooled_idx),
        flat_items=len(flat_idx), decided_at=decided_at, errors=errors, genuine=genuine,
        impostor=impostor, sweep_id=sweep_id)


@dataclass(frozen=True)
class StoreSource:
    """Where a sweep's maps live: data root, feature store, the two checkpoints, its datasets."""

    data_root: str
    cache_dir: str
    arcface: str
    adaface: str
    datasets: tuple[str, ...]
    sweep_id: str = ""
    flips: bool = True  # the sweep's flip test (params.flip_test): mirrored maps in the store

    @property
    def key(self) -> tuple[str, str, str, str, bool]:
        """Returns what identifies the maps (sweeps sharing it share comparisons)."""
        return (self.data_root, self.cache_dir, self.arcface, self.adaface, self.flips)


def source_from_job(job: Mapping[str, Any], sweep_id: str = "",
                    where: Optional[str] = None) -> StoreSource:
    """Returns the StoreSource of a resolved job (``JobSpec.to_dict()``); raises ConfigError
    naming ``where`` when the job kept no feature store."""
    data = job.get("data") or {}
    backbones = job.get("backbones") or {}
    if not data.get("cache_dir"):
        raise ConfigError(where, "the sweep ran with data.cache_dir: none, so there are no "
                          "stored maps to compare", field="data.cache_dir",
                          fix="extract them with `python -m platform.prepare features JOB.yaml` "
                              "(data.cache_dir set) and report again")
    missing = [k for k in ("root",) if not data.get(k)] + \
        [f"backbones.{k}" for k in ("arcface", "adaface") if not backbones.get(k)]
    if missing:
        raise ConfigError(where, f"the resolved job lacks {', '.join(missing)}",
                          field=missing[0], fix="report on a sweep run by platform.sweep")
    sel = job.get("selection") or {}
    names = list(data.get("eval") or []) + list(sel.get("validation") or [])
    flips = bool((job.get("params") or {}).get("flip_test", True))
    return StoreSource(str(data["root"]), str(data["cache_dir"]), str(backbones["arcface"]),
                       str(backbones["adaface"]), tuple(dict.fromkeys(names)), sweep_id, flips)


def compare_sources(sources: Sequence[StoreSource], **options: Any
                    ) -> tuple[list[BackboneComparison], list[str]]:
    """Returns (comparisons, reasons for what was skipped) over every dataset of the sources,
    each (maps, dataset) once; ``options`` go to ``compare_backbones``."""
    from facefuse.backbones import load_backbone

    out: list[BackboneComparison] = []
    skipped: list[str] = []
    done: set[tuple[tuple[str, str, str, str, bool], str]] = set()
    for src in sources:
        todo = [d for d in src.datasets if (src.key, d) not in done]
        if not todo:
            continue
        done.update((src.key, d) for d in todo)
        missing = [p for p in (src.arcface, src.adaface) if not Path(p).is_file()]
        if missing:
            skipped.append(f"backbone similarity of sweep {src.sweep_id or '?'}: checkpoint "
                           f"{missing[0]} not found on this machine")
            continue
        arcface, adaface = load_backbone(src.arcface), load_backbone(src.adaface)
        pair = BackbonePair(Path(src.arcface), Path(src.adaface))
        for name in todo:
            try:
                (s,) = load_eval_sets([name], Path(src.data_root), pair, src.cache_dir,
                                      build=False, progress=False, flips=src.flips)
                out.append(compare_backbones(s, arcface, adaface, sweep_id=src.sweep_id,
                                             **options))
            except FacefuseError as exc:
                skipped.append(f"backbone similarity of {name}: {exc}")
    return out, skipped


def _num(value: float, fmt: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else format(value, fmt)


def _phi_cell(e: ErrorCorrelation) -> str:
    if math.isnan(e.phi):
        return "- (no errors)" if not (e.wrong_a and e.wrong_b) else "-"
    return f"{_num(e.phi, '.2f')} [{_num(e.low, '.2f')}, {_num(e.high, '.2f')}]"


def comparison_rows(comparisons: Sequence[BackboneComparison],
                    gains: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Returns (header, rows) of the per-dataset table: CKA, errors, phi (all pairs, genuine,
    impostor), and the fusion's gain over the better single backbone
    (``facefuse.ablation.fusion_gains``; "-" without ablation runs)."""
    header = ["dataset", "quality", "CKA pooled", "CKA flat", "CKA shuffled", "pairs",
              "wrong Arc / Ada", "both (if indep.)", "phi all", "phi genuine", "phi impostor",
              "fusion gain"]
    rows = []
    for c in comparisons:
        e = c.errors
        g = gains.get(c.dataset)
        gain = f"{g['gain']:+.2f}{g['unit']} vs {g['versus']}" if g else "-"
        rows.append([c.dataset, c.quality, _num(c.cka_pooled), _num(c.cka_flat),
                     _num(c.cka_shuffled), str(e.n), f"{e.wrong_a} / {e.wrong_b}",
                     f"{e.both} ({e.expected_both:.1f})", _phi_cell(e), _phi_cell(c.genuine),
                     _phi_cell(c.impostor), gain])
    return header, rows
