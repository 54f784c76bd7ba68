"""Per-epoch evaluation of the fusion embedding with the field's protocols."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from facefuse.features.dataset import EvalSet, MapArray

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
    """Returns original + mirrored embeddings (the protocol's flip fusion), not normalised."""
    from facefuse.evaluation import fuse_flips

    e = embed_maps(model, s.maps.a, s.maps.b, batch_size, device)
    f = embed_maps(model, s.maps.a_flip, s.maps.b_flip, batch_size, device)
    return fuse_flips(e, f)


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
            mean, std = verification_accuracy(emb[0::2], emb[1::2], s.meta["issame"])
            metrics[f"{s.name}/acc"] = float(mean)
            metrics[f"{s.name}/acc_std"] = float(std)
        elif s.kind == "ijb":
            m = s.meta
            scores = ijb_scores(emb, m["face_scores"], m["templates"], m["medias"], m["p1"], m["p2"])
            tars = tar_at_far(m["labels"], scores, IJB_FARS)
            for far, tar in tars.items():
                metrics[f"{s.name}/{far_metric(far)}"] = float(tar)
            fpr, tpr, auc = roc_curve_auc(m["labels"], scores)
            metrics[f"{s.name}/auc"] = float(auc)
            extras["roc"][s.name] = {"fpr": fpr, "tpr": tpr}
        else:
            raise ValueError(f"evaluation set {s.name!r} has kind {s.kind!r}, expected "
                             "'verification' or 'ijb'")
    return metrics, extras
