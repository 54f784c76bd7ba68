"""The shard store's reader: staging from s3:// once per node, shared by concurrent processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facefuse.features.store import CacheKey, ShardStore

REPO = Path(__file__).resolve().parents[2]
KEY = CacheKey("ab" * 32, "toy", "rgb112-pm1-v1", False, "c0ffee" * 2)
COUNT, SHARD = 50, 16


def _fill(root: str) -> np.ndarray:
    maps = np.random.default_rng(0).standard_normal((COUNT, 4, 7, 7)).astype(np.float16)
    store = ShardStore(root)
    manifest = store.read_manifest(KEY.dataset, KEY.content)
    manifest.update(count=COUNT, shard_size=SHARD)
    for i, (start, stop) in enumerate(ShardStore.plan(COUNT, SHARD)):
        ShardStore.record(manifest, KEY, (4, 7, 7), i, store.write_shard(KEY, i, maps[start:stop]))
    store.write_manifest(manifest)
    return maps


READER = """
import sys, numpy as np
from facefuse.features.store import CacheKey, ShardStore
key = CacheKey("ab" * 32, "toy", "rgb112-pm1-v1", False, "c0ffee" * 2)
m = ShardStore(sys.argv[1]).maps(key, 50)
print(float(np.asarray(m[np.arange(50)], dtype=np.float64).sum()))
"""


def test_two_processes_staging_the_same_shards_share_one_copy(
        s3_bucket: str, tmp_path: Path) -> None:
    uri = f"{s3_bucket}/store"
    maps = _fill(uri)
    stage = tmp_path / "stage"
    env = dict(os.environ, PYTHONPATH=str(REPO), FACEFUSE_STAGE_DIR=str(stage))
    procs = [subprocess.Popen([sys.executable, "-c", READER, uri], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e for _, e in outs]
    expected = float(maps.astype(np.float64).sum())
    assert [float(o) for o, _ in outs] == [pytest.approx(expected)] * 2
    staged = sorted(stage.rglob("*.npy"))
    assert len(staged) == len(ShardStore.plan(COUNT, SHARD))  # one copy of each shard
    assert not list(stage.rglob("*.tmp"))
    got = ShardStore(uri, stage_dir=stage).maps(KEY, COUNT)
    idx = np.array([49, 0, 17, 16, 15])
    np.testing.assert_array_equal(got[idx], maps[idx])


def test_stage_limit_evicts_least_recently_used(s3_bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{s3_bucket}/store"
    maps = _fill(uri)
    one = SHARD * 4 * 49 * 2 + 128  # a shard's .npy: maps plus header
    monkeypatch.setenv("FACEFUSE_STAGE_LIMIT_BYTES", str(2 * one))
    got = ShardStore(uri, stage_dir=tmp_path).maps(KEY, COUNT)
    # 4 shards through a 2-shard budget: the first ones were evicted, every map still reads
    assert len(list(tmp_path.rglob("*.npy"))) <= 2
    np.testing.assert_array_equal(got[np.arange(COUNT)], maps)


def test_corrupt_staged_source_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    from facefuse import storage
    from facefuse.errors import DataFormatError

    uri = f"{s3_bucket}/store"
    _fill(uri)
    shard = ShardStore(uri).shard_uri(KEY, 1)
    data = bytearray(storage.read_bytes(shard))
    data[-1] ^= 0xFF  # same size, other content
    storage.write_bytes(shard, bytes(data))
    with pytest.raises(DataFormatError) as err:
        ShardStore(uri, stage_dir=tmp_path).maps(KEY, COUNT)
    assert str(err.value).startswith(shard) and "sha256" in str(err.value)
    assert not list(tmp_path.rglob("shard-00001.npy"))  # nothing staged under the final name


# ---- a local store: what the old single-file cache guaranteed, now asserted of the store ----
def test_local_store_reads_back_what_was_written_memory_mapped(tmp_path: Path) -> None:
    maps = _fill(str(tmp_path))
    got = ShardStore(tmp_path).maps(KEY, COUNT)
    assert got is not None and got.shape == (COUNT, 4, 7, 7) and got.dtype == np.float16
    assert all(isinstance(s, np.memmap) for s in got.shards)  # read in place, nothing staged
    np.testing.assert_array_equal(np.asarray(got), maps)


def test_flip_checkpoint_and_content_are_separate_entries(tmp_path: Path) -> None:
    from dataclasses import replace

    _fill(str(tmp_path))
    store = ShardStore(tmp_path)
    for other in (replace(KEY, flip=True), replace(KEY, checkpoint_hash="cd" * 32),
                  replace(KEY, preprocessing="bgr112-v0")):
        assert other.stem() != KEY.stem() and store.maps(other, COUNT) is None
    # another content fingerprint is another dataset generation: its own (empty) manifest
    assert store.maps(replace(KEY, content="beef" * 3), COUNT) is None


def test_truncated_or_unrecorded_shard_or_missing_manifest_is_not_read(tmp_path: Path) -> None:
    import json

    _fill(str(tmp_path))
    store = ShardStore(tmp_path)
    shard = Path(store.shard_uri(KEY, 2))
    with open(shard, "r+b") as fh:  # truncated under a valid manifest record
        fh.truncate(shard.stat().st_size - 100)
    assert store.maps(KEY, COUNT) is None and store.complete_shards(
        store.read_manifest(KEY.dataset, KEY.content), KEY) == {0, 1, 3}
    _fill(str(tmp_path))
    manifest_path = Path(store.folder(KEY.dataset, KEY.content)) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["entries"][KEY.stem()]["shards"]["3"]  # written, never recorded (a killed job)
    manifest_path.write_text(json.dumps(manifest))
    assert store.maps(KEY, COUNT) is None
    manifest_path.unlink()
    assert store.maps(KEY, COUNT) is None


def test_map_count_other_than_the_labels_is_an_error_never_a_silent_read(tmp_path: Path) -> None:
    from facefuse.errors import DataFormatError

    _fill(str(tmp_path))
    with pytest.raises(DataFormatError) as err:
        ShardStore(tmp_path).maps(KEY, COUNT + 1)
    assert "50 feature maps for toy but 51 images/labels" in str(err.value)
    assert "manifest.json" in str(err.value) and "platform.prepare features" in str(err.value)
