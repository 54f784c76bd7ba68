"""The class-balanced train subset: balanced, seeded, and refused when the set is too small."""

from __future__ import annotations

import numpy as np
import pytest

from facefuse.data.subset import class_balanced_subset
from facefuse.errors import ConfigError


def _labels() -> np.ndarray:
    # 12 identities of 3..8 images, shuffled as a RecordIO file need not be grouped
    rng = np.random.default_rng(1)
    labels = np.concatenate([np.full(3 + c % 6, c) for c in range(12)])
    return labels[rng.permutation(len(labels))]


def test_subset_is_class_balanced() -> None:
    labels = _labels()
    idx = class_balanced_subset(labels, identities=5, per_identity=4, seed=0)
    classes, counts = np.unique(labels[idx], return_counts=True)
    assert len(classes) == 5 and set(counts) == {4}
    assert len(set(idx)) == len(idx) == 20 and np.all(np.diff(idx) > 0)
    # only identities that have enough images are drawn
    have = {c: n for c, n in zip(*np.unique(labels, return_counts=True))}
    assert all(have[c] >= 4 for c in classes)


def test_same_seed_same_subset_other_seed_other_subset() -> None:
    labels = _labels()
    a = class_balanced_subset(labels, 5, 3, seed=7)
    np.testing.assert_array_equal(a, class_balanced_subset(labels, 5, 3, seed=7))
    assert not np.array_equal(a, class_balanced_subset(labels, 5, 3, seed=8))


def test_too_few_identities_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        class_balanced_subset(_labels(), identities=5, per_identity=8, seed=0, source="job.yaml")
    assert err.value.field == "data.train_subset.identities" and "job.yaml" in str(err.value)
    assert "2 identities with at least 8 images" in str(err.value)
