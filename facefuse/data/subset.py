"""Class-balanced, seeded subsets of a training set (for a train set that does not fit)."""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from facefuse.errors import ConfigError

FIELD = "data.train_subset"


def class_balanced_subset(labels: np.ndarray, identities: int, per_identity: int,
                          seed: int = 0, dataset: str = "the train set",
                          source: Optional[Union[str, "os.PathLike[str]"]] = None) -> np.ndarray:
    """Returns the sorted image indices of ``identities`` identities x ``per_identity`` images.

    Identities are drawn among those with at least ``per_identity`` images, images within each
    identity likewise, all from one generator seeded by ``seed``: the same labels and seed give
    the same subset on every node and in every trial. ``source`` (the job file) is named in the
    error when the train set cannot give the subset.
    """
    labels = np.asarray(labels, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    eligible = classes[counts >= per_identity]
    if len(eligible) < identities:
        raise ConfigError(source, f"{dataset} has {len(eligible)} identities with at least "
                          f"{per_identity} images, the subset asks for {identities}",
                          field=f"{FIELD}.identities",
                          fix="ask for fewer identities or fewer images per identity")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(eligible, size=identities, replace=False))
    order = np.argsort(labels, kind="stable")  # images grouped by identity, in file order
    starts = np.searchsorted(labels[order], chosen)
    picked = [order[s + np.sort(rng.choice(int(c), size=per_identity, replace=False))]
              for s, c in zip(starts, counts[np.searchsorted(classes, chosen)])]
    return np.sort(np.concatenate(picked))
