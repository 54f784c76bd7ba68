"""Per-epoch evaluation of the fusion embedding with the field's protocols."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from facefuse.evaluation.splits import ijb_parts, tar_at_far_se, verification_parts
from facefuse.features.dataset import EvalSet, MapArray
from facefuse.tracking.schema import PART_REPORT, PART_SELECTION, SE_SUFFIX, part_key

logger = logging.getLogger(__name__)

#: FARs at which IJB sets are reported; the primary one is 1e-4.
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def far_metric(far: float) -> str:
    """Returns the metric suffix for a FAR, e.g. 1e-4 -> 'tar_far_1e-4'."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"tar_far_{mantissa}e{int(exponent)}"


@torch.no_grad()
def embed_maps(model: torch.nn.Module, a: MapArray, b: MapArray, batch_size: int,
               device: torch.device) -> np.ndarray:
    """Returns the model's inference embedding (mu) for every row of two map arrays."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(a), batch_size):
        sl = slice(start, start + batch_size)
        # float32 copies: memory-mapped slices are read-only and the model wants fp32 anyway.
        xa = torch.from_numpy(np.array(a[sl], dtype=np.float32)).to(device)
        xb = torch.from_numpy(np.array(b[sl], dtype=np.float32)).to(device)
        out.append(model.embed(xa, xb).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out).astype(np.float64)


def embed_with_flip(model: torch.nn.Module, s: EvalSet, batch_size: int,
                    device: torch.device) -> np.ndarray:
    """Returns original + mirrored embeddings (the protocol's flip test), not normalised; the
    original ones alone when the set was loaded without mirrored maps (``flip_test: false``)."""
    from facefuse.evaluation import fuse_flips

    e = embed_maps(model, s.maps.a, s.maps.b, batch_size, device)
    if s.maps.a_flip is None or s.maps.b_flip is None:
        return fuse_flips(e, None)
    f = embed_maps(model, s.maps.a_flip, s.maps.b_flip, batch_size, device)
    return fuse_flips(e, f)


#: The held-out parts every evaluated set is split into (facefuse.evaluation.splits).
PARTS = (PART_SELECTION, PART_REPORT)


def _parts(s: EvalSet, make: Callable[..., tuple[np.ndarray, np.ndarray]], *args: Any
           ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """Returns the set's (selection, report) indices, computed once; None if it cannot split."""
    from facefuse.errors import DataFormatError

    if "_parts" not in s.meta:
        try:
            s.meta["_parts"] = make(*args)
        except DataFormatError as exc:
            # The full-set metric is still logged; best_beta says the split is missing.
            logger.warning("%s: not split into selection/report parts: %s", s.name, exc)
            s.meta["_parts"] = None
    return s.meta["_parts"]


def evaluate(model: torch.nn.Module, sets: Sequence[EvalSet], batch_size: int,
             device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Returns ({'<set>/<metric>': value}, extras with ROC arrays per IJB set)."""
    if not sets:
        return {}, {"roc": {}}
    from facefuse.evaluation import ijb_scores, roc_curve_auc, tar_at_far, verification_accuracy

    metrics: dict[str, float] = {}
    extras: dict[str, Any] = {"roc": {}}
    for s in sets:
        emb = embed_with_flip(model, s, batch_size, device)
        if s.kind == "verification":
            e1, e2, same = emb[0::2], emb[1::2], np.asarray(s.meta["issame"])
            mean, std = verification_accuracy(e1, e2, same)
            metrics[f"{s.name}/acc"] = float(mean)
            metrics[f"{s.name}/acc_std"] = float(std)
            parts = _parts(s, verification_parts, len(same))
            for part, idx in zip(PARTS, parts or ()):
                # Each half holds 5 of the 10 person-disjoint folds: its accuracy is the
                # protocol's 5-fold one, its standard error the folds' spread.
                m, sd = verification_accuracy(e1[idx], e2[idx], same[idx], n_folds=5)
                metrics[part_key(s.name, "acc", part)] = float(m)
                if part == PART_SELECTION:
                    metrics[part_key(s.name, "acc" + SE_SUFFIX, part)] = float(sd / np.sqrt(5))
        elif s.kind == "ijb":
            m = s.meta
            scores = ijb_scores(emb, m["face_scores"], m["templates"], m["medias"], m["p1"], m["p2"])
            labels = np.asarray(m["labels"])
            tars = tar_at_far(labels, scores, IJB_FARS)
            for far, tar in tars.items():
                metrics[f"{s.name}/{far_metric(far)}"] = float(tar)
            parts = _parts(s, ijb_parts, m["p1"], m["p2"], labels)
            for part, idx in zip(PARTS, parts or ()):
                for far, tar in tar_at_far(labels[idx], scores[idx], IJB_FARS).items():
                    metrics[part_key(s.name, far_metric(far), part)] = float(tar)
                if part == PART_SELECTION:
                    # The benchmark's own sampling error: a bootstrap over the part's pairs.
                    for far, se in tar_at_far_se(labels[idx], scores[idx], IJB_FARS).items():
                        metrics[part_key(s.name, far_metric(far) + SE_SUFFIX, part)] = se
            fpr, tpr, auc = roc_curve_auc(labels, scores)
            metrics[f"{s.name}/auc"] = float(auc)
            extras["roc"][s.name] = {"fpr": fpr, "tpr": tpr}
        else:
            raise ValueError(f"evaluation set {s.name!r} has kind {s.kind!r}, expected "
                             "'verification' or 'ijb'")
    return metrics, extras
