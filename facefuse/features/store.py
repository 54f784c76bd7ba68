"""The sharded feature store on any URI (local path, shared mount, s3://), and its one reader.

Layout under the store's root URI::

    <root>/<dataset>-<content fingerprint>/manifest.json
    <root>/<dataset>-<content fingerprint>/<entry stem>/shard-00000.npy   images [0, N)
    <root>/<dataset>-<content fingerprint>/<entry stem>/shard-00001.npy   images [N, 2N) ...

An entry stem is ``CacheKey.stem()`` (checkpoint hash, content, preprocessing, flip). A shard is a
float16 ``.npy`` [n, C, H, W]. ``manifest.json`` is written by one writer (the extraction
driver) after shards land, through an atomic put::

    {"format": 1, "dataset": ..., "content": ..., "count": N_IMAGES, "shard_size": N,
     "entries": {STEM: {"key": {...CacheKey...}, "shape": [C, H, W],
                        "shards": {"0": {"size": BYTES, "sha256": HEX}, ...}}}}

A shard counts only when its manifest record exists and the stored object has that size (and,
when read, that sha256): a shard written by a job killed before it reached the manifest is
extracted again, never read.

Trials read through ``ShardStore.maps``: shards of a remote store are staged to node-local disk
once per node under a file lock (co-located trials share the copy), each verified against its
sha256 before it appears under its final name, then memory-mapped. The training loop gathers its
next batches from them in a background thread (``prefetch``), in the same order.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import queue
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np

from facefuse import storage
from facefuse.data._io import atomic_write
from facefuse.errors import DataFormatError
from facefuse.features.extract import PREPROCESSING

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
DEFAULT_SHARD_SIZE = 4096
STAGE_DIR_ENV = "FACEFUSE_STAGE_DIR"
STAGE_LIMIT_ENV = "FACEFUSE_STAGE_LIMIT_BYTES"
DEFAULT_STAGE_LIMIT = 200 * 10**9  # node-local bytes of staged shards before LRU eviction


@dataclass(frozen=True)
class CacheKey:
    """What a store entry depends on: change any field and the entry is a different one."""

    checkpoint_hash: str
    dataset: str
    preprocessing: str = PREPROCESSING
    flip: bool = False
    #: the dataset's content fingerprint (facefuse.data.fingerprint): the name alone would let a
    #: dataset rebuilt under the same name read the old maps
    content: str = ""

    def stem(self) -> str:
        """Returns the entry's folder name inside its dataset generation's folder."""
        side = "flip" if self.flip else "orig"
        content = f"_{self.content[:16]}" if self.content else ""
        return f"{self.checkpoint_hash[:16]}{content}_{self.preprocessing}_{side}"


T = TypeVar("T")
R = TypeVar("R")


def prefetch(fetch: Callable[[T], R], items: Iterable[T], depth: int = 2) -> Iterator[R]:
    """Returns ``fetch(item)`` for every item in order, computed up to ``depth`` items ahead.

    One background thread calls ``fetch`` in the items' order and a FIFO queue hands the results
    over, so the consumer sees exactly the sequence it would see without prefetch (``depth`` 0
    fetches inline). Reads of memory-mapped shards (page faults, staged files) then overlap the
    consumer's compute. An error in ``fetch`` is raised at the item that caused it; closing the
    iterator early (an error in the consumer) stops the thread.
    """
    if depth <= 0:
        for item in items:
            yield fetch(item)
        return
    done = object()
    out: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, fetch(item))):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        put((True, done))

    thread = threading.Thread(target=work, name="facefuse-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = out.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        thread.join()


def build_command() -> str:
    """Returns the command that fills a job's feature store (named in every missing-entry error)."""
    return "python -m platform.prepare features JOB.yaml"


def shard_bytes(maps: np.ndarray) -> bytes:
    """Returns the .npy encoding of a float16 map shard."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(maps, dtype=np.float16), allow_pickle=False)
    return buf.getvalue()


class ShardedMaps:
    """Memory-mapped shards read as one array: ``maps[idx]`` for an int array gives [n, C, H, W]."""

    def __init__(self, shards: list[np.ndarray], shard_size: int) -> None:
        self.shards, self.shard_size = shards, shard_size
        count = sum(len(s) for s in shards)
        self.shape = (count,) + tuple(shards[0].shape[1:])
        self.dtype = shards[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = np.arange(len(self))[idx] if not isinstance(idx, np.ndarray) else idx
        flat = np.atleast_1d(idx).astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"map index out of range [0, {len(self)})")
        out = np.empty((flat.size,) + self.shape[1:], dtype=self.dtype)
        which, within = np.divmod(flat, self.shard_size)
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.shards[int(s)][within[sel]]
        return out if np.ndim(idx) else out[0]


class ShardStore:
    """A feature store at a URI: manifests, shard writes and the staged, memory-mapped reader."""

    def __init__(self, root: storage.URI, stage_dir: Optional[os.PathLike[str] | str] = None) -> None:
        self.root = os.fspath(root)
        if not storage.is_remote(self.root):
            self.root = str(Path(self.root).expanduser().resolve())
        self.stage_dir = Path(stage_dir or os.environ.get(STAGE_DIR_ENV)
                              or Path(tempfile.gettempdir()) / "facefuse-stage")

    # ---- layout ----
    def folder(self, dataset: str, content: str) -> str:
        """Returns the URI of a dataset generation's folder."""
        return storage.join(self.root, f"{dataset}-{content}")

    def shard_uri(self, key: CacheKey, shard: int) -> str:
        """Returns the URI of one shard of an entry."""
        return storage.join(self.folder(key.dataset, key.content), key.stem(), f"shard-{shard:05d}.npy")

    # ---- manifest ----
    def read_manifest(self, dataset: str, content: str) -> dict[str, Any]:
        """Returns the manifest of a dataset generation, or an empty one when there is none."""
        uri = storage.join(self.folder(dataset, content), MANIFEST)
        if not storage.exists(uri):
            return {"format": FORMAT, "dataset": dataset, "content": content, "entries": {}}
        try:
            manifest = json.loads(storage.read_bytes(uri))
        except json.JSONDecodeError as exc:
            raise DataFormatError(uri, f"manifest is not JSON ({exc.msg})", field="manifest",
                                  fix=f"delete it and run `{build_command()}`") from exc
        if manifest.get("format") != FORMAT or manifest.get("content") != content:
            raise DataFormatError(uri, "manifest of another format or dataset generation",
                                  field="format", fix=f"delete it and run `{build_command()}`")
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Writes a manifest atomically (local: atomic_write; object store: one PUT)."""
        uri = storage.join(self.folder(manifest["dataset"], manifest["content"]), MANIFEST)
        storage.write_bytes(uri, json.dumps(manifest, indent=1, sort_keys=True).encode())

    @staticmethod
    def plan(count: int, shard_size: int) -> list[tuple[int, int]]:
        """Returns the (start, stop) image range of every shard of a dataset."""
        return [(s, min(s + shard_size, count)) for s in range(0, count, shard_size)]

    def complete_shards(self, manifest: dict[str, Any], key: CacheKey) -> set[int]:
        """Returns the shards of an entry whose manifest record exists and whose object has its size."""
        entry = manifest.get("entries", {}).get(key.stem())
        if not entry:
            return set()
        folder = storage.join(self.folder(key.dataset, key.content), key.stem())
        sizes = {e.name: e.size for e in storage.listing(folder)}
        return {int(i) for i, rec in entry["shards"].items()
                if sizes.get(f"shard-{int(i):05d}.npy") == rec["size"]}

    def write_shard(self, key: CacheKey, shard: int, maps: np.ndarray) -> dict[str, Any]:
        """Returns the manifest record (size, sha256) of a shard after writing it atomically."""
        data = shard_bytes(maps)
        storage.write_bytes(self.shard_uri(key, shard), data)
        return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    @staticmethod
    def record(manifest: dict[str, Any], key: CacheKey, shape: tuple[int, ...], shard: int,
               rec: dict[str, Any]) -> None:
        """Adds a written shard to a manifest (in memory; write_manifest makes it count)."""
        entry = manifest["entries"].setdefault(key.stem(), {"key": asdict(key), "shape": list(shape),
                                                            "shards": {}})
        entry["shards"][str(shard)] = rec

    # ---- reading ----
    def has(self, key: CacheKey, count: int, manifest: Optional[dict[str, Any]] = None) -> bool:
        """Returns whether every shard of an entry is recorded and present."""
        manifest = manifest or self.read_manifest(key.dataset, key.content)
        if not manifest.get("shard_size") or manifest.get("count") not in (None, count):
            return False
        return not self.missing_shards(key, count, manifest)

    def missing_shards(self, key: CacheKey, count: int,
                       manifest: Optional[dict[str, Any]] = None) -> list[int]:
        """Returns the shards of an entry that are not recorded, gone or incomplete (all when the
        manifest is missing or counts other images)."""
        manifest = manifest or self.read_manifest(key.dataset, key.content)
        shard_size = manifest.get("shard_size") or DEFAULT_SHARD_SIZE
        need = range(len(self.plan(count, shard_size)))
        if manifest.get("count") not in (None, count) or not manifest.get("shard_size"):
            return list(need)
        complete = self.complete_shards(manifest, key)
        return [i for i in need if i not in complete]

    def describe_missing(self, key: CacheKey, count: int) -> str:
        """Returns what of an entry the store lacks, for the missing-entry error, e.g.
        "flip, checkpoint 1b6f2d356188: shard 0 of 1 recorded but gone or incomplete"."""
        manifest = self.read_manifest(key.dataset, key.content)
        lost = self.missing_shards(key, count, manifest)
        total = len(self.plan(count, manifest.get("shard_size") or DEFAULT_SHARD_SIZE))
        recorded = {int(i) for i in manifest.get("entries", {}).get(key.stem(), {}).get("shards", {})}
        gone = [i for i in lost if i in recorded]
        what = (f"shard{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone[:5]))}"
                f"{' ...' if len(gone) > 5 else ''} of {total} recorded but gone or incomplete"
                if gone else "not extracted")
        return f"{'flip' if key.flip else 'orig'}, checkpoint {key.checkpoint_hash[:12]}: {what}"

    def maps(self, key: CacheKey, count: int) -> Optional[ShardedMaps]:
        """Returns an entry's maps (staged when remote, memory-mapped), or None when incomplete."""
        manifest = self.read_manifest(key.dataset, key.content)
        if manifest.get("count") is not None and manifest["count"] != count:
            uri = storage.join(self.folder(key.dataset, key.content), MANIFEST)
            raise DataFormatError(uri, f"{manifest['count']} feature maps for {key.dataset} but "
                                  f"{count} images/labels", field="count",
                                  fix=f"delete the folder and run `{build_command()}`")
        if not self.has(key, count, manifest):
            return None
        entry = manifest["entries"][key.stem()]
        shard_size = int(manifest["shard_size"])
        arrays = [self._open_shard(key, i, entry["shards"][str(i)])
                  for i in range(len(self.plan(count, shard_size)))]
        return ShardedMaps(arrays, shard_size)

    def _open_shard(self, key: CacheKey, shard: int, rec: dict[str, Any]) -> np.ndarray:
        """Returns the verified shard memory-mapped (from the store itself when it is local).

        A staged copy is opened under the staging lock: once mapped, a later eviction (unlink)
        by another trial cannot take it away.
        """
        uri = self.shard_uri(key, shard)
        if not storage.is_remote(uri):
            return np.load(uri, mmap_mode="r")
        from filelock import FileLock

        local = self.stage_dir / hashlib.sha256(uri.encode()).hexdigest()[:24] / Path(uri).name
        local.parent.mkdir(parents=True, exist_ok=True)
        # co-located trials wait for the one that stages; a staging that crashed leaves at most
        # a temp file (atomic_write), never a file under the final name
        with FileLock(str(local) + ".lock"):
            if local.exists() and local.stat().st_size == rec["size"]:
                os.utime(local)  # recency for least-recently-used eviction
                return np.load(local, mmap_mode="r")
            data = storage.read_bytes(uri)
            if len(data) != rec["size"] or hashlib.sha256(data).hexdigest() != rec["sha256"]:
                raise DataFormatError(uri, "shard differs from its manifest record (size or sha256)",
                                      field="sha256", fix=f"delete the shard and run `{build_command()}`")
            self._evict(len(data), keep=local)
            with atomic_write(local, "wb") as fh:
                fh.write(data)
            logger.info("staged %s (%d bytes) to %s", uri, len(data), local)
            return np.load(local, mmap_mode="r")

    def _evict(self, incoming: int, keep: Path) -> None:
        """Deletes least-recently-used staged shards until ``incoming`` more bytes fit the limit.

        Safe while other trials read them: a memory-mapped file stays readable after unlink.
        """
        limit = int(os.environ.get(STAGE_LIMIT_ENV, DEFAULT_STAGE_LIMIT))
        files = [(p.stat().st_mtime_ns, p.stat().st_size, p) for p in self.stage_dir.rglob("*.npy")
                 if p != keep]
        used = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if used + incoming <= limit:
                break
            path.unlink(missing_ok=True)
            used -= size
            logger.info("evicted staged shard %s (least recently used)", path)
