"""Feature entries are keyed by the dataset's content, and checked against its labels at read time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facefuse.data.fingerprint import content_fingerprint
from facefuse.errors import DataFormatError
from facefuse.features.dataset import BackbonePair, load_eval_sets, load_train_set
from facefuse.synth import build_suite

SMALL = dict(train_identities=6, train_images_per_identity=3, verification_pairs=20,
             ijb_identities=4, ijb_templates_per_identity=2, ijb_impostor_pairs=12)
SETS = ["synth_lfw", "synth_ijbb"]


def _maps(data: Path, world: dict[str, Path], cache: Path | None) -> dict[str, np.ndarray]:
    pair = BackbonePair(world["arcface"], world["adaface"])
    out = {s.name: np.asarray(s.maps.a[np.arange(len(s.maps))])
           for s in load_eval_sets(SETS, data, pair, cache, progress=False)}
    train = load_train_set("synth_train", data, pair, cache, progress=False, flips=False)
    out["synth_train"] = np.asarray(train.maps.a[np.arange(len(train.maps))])
    return out


def test_dataset_rebuilt_with_another_seed_never_reads_the_old_maps(
        tmp_path: Path, world: dict[str, Path]) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    build_suite(data, seed=1, workers=1, progress=False, **SMALL)
    before = {n: content_fingerprint(n, data) for n in [*SETS, "synth_train"]}
    first = _maps(data, world, cache)
    assert {n: content_fingerprint(n, data) for n in before} == before  # stable across reads
    build_suite(data, seed=2, workers=1, progress=False, **SMALL)  # same names, other content
    after = {n: content_fingerprint(n, data) for n in before}
    assert all(after[n] != before[n] for n in before)
    second = _maps(data, world, cache)
    live = _maps(data, world, None)  # the backbones on the fly: ground truth for the new data
    for name in before:
        np.testing.assert_array_equal(second[name], live[name])
        assert first[name].shape != second[name].shape or not np.array_equal(first[name], second[name])
    # both generations are separate folders of the store; nothing was overwritten in place
    assert len(list(cache.glob("synth_lfw-*/manifest.json"))) == 2


def test_entry_with_another_number_of_maps_than_labels_is_an_error(
        tmp_path: Path, world: dict[str, Path]) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    build_suite(data, seed=1, workers=1, progress=False, **SMALL)
    pair = BackbonePair(world["arcface"], world["adaface"])
    load_eval_sets(["synth_lfw"], data, pair, cache, progress=False)  # extracts
    (manifest,) = cache.glob("synth_lfw-*/manifest.json")
    doc = json.loads(manifest.read_text())
    count = doc["count"]
    manifest.write_text(json.dumps(dict(doc, count=count - 2)))
    with pytest.raises(DataFormatError) as err:
        load_eval_sets(["synth_lfw"], data, pair, cache, build=False, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(manifest))
    assert f"{count - 2} feature maps for synth_lfw but {count}" in msg and "prepare features" in msg


def test_manifest_naming_a_gone_shard_is_a_missing_entry(tmp_path: Path, world: dict[str, Path]) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    build_suite(data, seed=1, workers=1, progress=False, **SMALL)
    pair = BackbonePair(world["arcface"], world["adaface"])
    load_eval_sets(["synth_lfw"], data, pair, cache, progress=False)
    shard = sorted(cache.glob("synth_lfw-*/*_flip/shard-00000.npy"))[0]
    shard.unlink()
    with pytest.raises(DataFormatError) as err:
        load_eval_sets(["synth_lfw"], data, pair, cache, build=False, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(cache)) and "synth_lfw" in msg
    assert "python -m platform.prepare features JOB.yaml" in msg
