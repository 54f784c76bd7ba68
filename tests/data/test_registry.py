"""Tests of facefuse/data/registry.py and the load_* helpers: names, qualities, paths, errors."""

from __future__ import annotations

import numpy as np
import pytest

from facefuse.data import (DATASETS, dataset_path, get_dataset, load_train_set, load_verification_set,
                           resolve_data_root, write_recordio_dataset, write_verification_bin)
from facefuse.errors import ConfigError, DataFormatError

from .conftest import smooth_images


def test_contract_table() -> None:
    verif = ["lfw", "cfp_fp", "agedb_30", "calfw", "cplfw"]
    for n in verif:
        assert (DATASETS[n].kind, DATASETS[n].relpath, DATASETS[n].quality, DATASETS[n].primary_metric,
                DATASETS[n].synthetic) == ("verification", f"faces_emore/{n}.bin", "high", "acc", False)
        s = DATASETS[f"synth_{n}"]
        assert (s.kind, s.relpath, s.quality, s.synthetic) == ("verification", f"faces_synth/synth_{n}.bin",
                                                               "high", True)
    assert (DATASETS["ms1mv2"].kind, DATASETS["ms1mv2"].relpath) == ("recordio", "faces_emore")
    assert (DATASETS["synth_train"].kind, DATASETS["synth_train"].relpath) == ("recordio", "faces_synth")
    expect = {"ijbb": ("IJB_release/IJBB", "mixed", False), "ijbc": ("IJB_release/IJBC", "mixed", False),
              "synth_ijbb": ("IJB_synth/SYNTH_IJBB", "mixed", True),
              "synth_ijbc": ("IJB_synth/SYNTH_IJBC", "low", True)}
    for n, (rel, quality, synthetic) in expect.items():
        s = get_dataset(n)
        assert (s.kind, s.relpath, s.quality, s.primary_metric, s.ijb_name, s.synthetic) == \
            ("ijb", rel, quality, "tar_far_1e-4", n, synthetic)


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        get_dataset("lfw2")
    message = str(info.value)
    assert "'lfw2'" in message and all(n in message for n in DATASETS)


def test_data_root_resolution(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FACEFUSE_DATA", raising=False)
    with pytest.raises(ConfigError, match="FACEFUSE_DATA"):
        resolve_data_root()
    monkeypatch.setenv("FACEFUSE_DATA", str(tmp_path))
    assert resolve_data_root() == tmp_path.resolve()
    assert resolve_data_root(tmp_path / "x") == (tmp_path / "x").resolve()


def test_missing_paths_are_named(tmp_path) -> None:
    with pytest.raises(DataFormatError) as info:
        dataset_path("lfw", tmp_path)
    assert str(tmp_path / "faces_emore" / "lfw.bin") in str(info.value)
    with pytest.raises(DataFormatError) as info:
        dataset_path("synth_ijbc", tmp_path)
    assert str(tmp_path / "IJB_synth" / "SYNTH_IJBC") in str(info.value) and "prepare synth" in str(info.value)
    (tmp_path / "IJB_release" / "IJBB" / "meta").mkdir(parents=True)
    with pytest.raises(DataFormatError) as info:
        dataset_path("ijbb", tmp_path)
    assert "ijbb_face_tid_mid.txt" in str(info.value)
    write_recordio_dataset(tmp_path / "faces_emore", smooth_images(2), [0, 1])
    (tmp_path / "faces_emore" / "property").unlink()
    with pytest.raises(DataFormatError) as info:
        dataset_path("ms1mv2", tmp_path)
    assert str(tmp_path / "faces_emore" / "property") in str(info.value)


def test_load_helpers(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("FACEFUSE_DATA", str(tmp_path))
    write_verification_bin(tmp_path / "faces_synth" / "synth_lfw.bin", smooth_images(4), [True, False])
    write_recordio_dataset(tmp_path / "faces_synth", smooth_images(3), [0, 0, 1])
    images, issame = load_verification_set("synth_lfw")
    assert images.shape == (4, 112, 112, 3) and issame.tolist() == [True, False]
    assert dataset_path("synth_lfw") == tmp_path.resolve() / "faces_synth" / "synth_lfw.bin"
    train = load_train_set("synth_train")
    assert len(train) == 3 and train.num_classes == 2 and np.array_equal(train.labels, [0, 0, 1])
    with pytest.raises(ConfigError, match="training set"):
        load_verification_set("synth_train")
    with pytest.raises(ConfigError, match="evaluation set"):
        load_train_set("synth_lfw")
