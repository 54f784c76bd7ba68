"""Benchmark protocols: 10-fold verification accuracy and IJB-B/C 1:1 TAR at FAR.

Same numbers as insightface's eval/verification.py and eval_ijbc.py (the field's
reference), computed without per-template Python loops or per-pair gathers.
"""

from .embeddings import (evaluate_ijb, evaluate_verification, fuse_flips, ijb_image_features,
                         verification_pairs)
from .ijb import ijb_scores, pair_scores, template_features
from .roc import DEFAULT_FARS, roc_curve, roc_curve_auc, tar_at_far, tar_from_roc, threshold_at_far
from .similarity import ErrorCorrelation, error_correlation, linear_cka, shuffled_cka
from .verification import (THRESHOLDS, kfold_sizes, l2_normalize, pair_distances,
                           verification_accuracy, verification_decisions)

__all__ = [
    "DEFAULT_FARS",
    "ErrorCorrelation",
    "THRESHOLDS",
    "error_correlation",
    "evaluate_ijb",
    "evaluate_verification",
    "fuse_flips",
    "ijb_image_features",
    "ijb_scores",
    "kfold_sizes",
    "l2_normalize",
    "linear_cka",
    "pair_distances",
    "pair_scores",
    "roc_curve",
    "roc_curve_auc",
    "shuffled_cka",
    "tar_at_far",
    "tar_from_roc",
    "template_features",
    "threshold_at_far",
    "verification_accuracy",
    "verification_decisions",
    "verification_pairs",
]
