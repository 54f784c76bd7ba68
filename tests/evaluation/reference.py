"""Plain reference implementations of the protocols, written the way insightface's
eval/verification.py and eval_ijbc.py compute them (loops, np.where, sklearn).

Independent of facefuse.evaluation on purpose: the tests and benchmarks/bench_ijb_eval.py
compare the fast code against these.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

REF_FARS = [10 ** -6, 10 ** -5, 10 ** -4, 10 ** -3, 10 ** -2, 10 ** -1]


def _accuracy(threshold: float, dist: np.ndarray, actual_issame: np.ndarray) -> float:
    predict_issame = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict_issame, actual_issame))
    tn = np.sum(np.logical_and(np.logical_not(predict_issame), np.logical_not(actual_issame)))
    return float(tp + tn) / dist.size


def ref_verification_accuracy(emb1: np.ndarray, emb2: np.ndarray, issame: np.ndarray,
                              n_folds: int = 10) -> tuple[float, float]:
    """Returns (mean, std) of fold accuracies, insightface calculate_roc style."""
    e1 = normalize(np.asarray(emb1, dtype=np.float64))
    e2 = normalize(np.asarray(emb2, dtype=np.float64))
    actual = np.asarray(issame).astype(bool)
    thresholds = np.arange(0, 4, 0.01)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    indices = np.arange(len(actual))
    if n_folds > 1:
        splits = KFold(n_splits=n_folds, shuffle=False).split(indices)
    else:
        splits = [(indices, indices)]
    accuracy = np.zeros(n_folds)
    for fold_idx, (train_set, test_set) in enumerate(splits):
        acc_train = np.zeros(len(thresholds))
        for t_idx, threshold in enumerate(thresholds):
            acc_train[t_idx] = _accuracy(threshold, dist[train_set], actual[train_set])
        best = np.argmax(acc_train)
        accuracy[fold_idx] = _accuracy(thresholds[best], dist[test_set], actual[test_set])
    return float(np.mean(accuracy)), float(np.std(accuracy))


def ref_template_features(img_feats: np.ndarray, face_scores: np.ndarray, templates: np.ndarray,
                          medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Returns (normalised template features, unique templates): loop over templates and
    their media with np.where, all in float64."""
    feats = np.asarray(img_feats, dtype=np.float64) * np.asarray(face_scores, dtype=np.float64)[:, None]
    unique_templates = np.unique(templates)
    template_feats = np.zeros((len(unique_templates), feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats = feats[ind_t]
        face_medias = medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            if ct == 1:
                media_feats.append(face_feats[ind_m])
            else:
                media_feats.append(np.mean(face_feats[ind_m], axis=0, keepdims=True))
        template_feats[count] = np.sum(np.array(media_feats), axis=0)
    return normalize(template_feats), unique_templates


def ref_pair_scores(template_norm_feats: np.ndarray, unique_templates: np.ndarray,
                    p1: np.ndarray, p2: np.ndarray, batch: int = 100_000) -> np.ndarray:
    """Returns cosine scores, gathering float64 template rows 100,000 pairs at a time."""
    template2id = np.zeros((int(max(unique_templates)) + 1, 1), dtype=int)
    for count, uqt in enumerate(unique_templates):
        template2id[uqt] = count
    score = np.zeros((len(p1),))
    for start in range(0, len(p1), batch):
        s = slice(start, start + batch)
        feat1 = template_norm_feats[template2id[p1[s]]]
        feat2 = template_norm_feats[template2id[p2[s]]]
        score[s] = np.sum(feat1 * feat2, -1).flatten()
    return score


def ref_ijb_scores(img_feats, face_scores, templates, medias, p1, p2) -> np.ndarray:
    feats, unique_templates = ref_template_features(img_feats, face_scores, np.asarray(templates),
                                                    np.asarray(medias))
    return ref_pair_scores(feats, unique_templates, np.asarray(p1), np.asarray(p2))


def ref_tar_at_far(labels: np.ndarray, scores: np.ndarray, fars=REF_FARS) -> dict[float, float]:
    """Returns {far: tar} exactly as eval_ijbc.py reads its table."""
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr = np.flipud(fpr)
    tpr = np.flipud(tpr)
    out = {}
    for far in fars:
        _, min_index = min(list(zip(abs(fpr - far), range(len(fpr)))))
        out[float(far)] = float(tpr[min_index])
    return out
