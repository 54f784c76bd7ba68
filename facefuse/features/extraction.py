"""Filling a sharded feature store: one Ray Data job (cluster path) or one process (small sets).

Both paths extract the same shards the same way (``shard_maps``): each shard's images are decoded
and aligned once, and every backbone runs on the original and, where needed, the mirrored batch.
Only shards the store's manifest does not vouch for are extracted, so a killed job run again
does only what is missing. The manifest is written by the driver alone, after shards land.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from facefuse import storage
from facefuse.data.fingerprint import content_fingerprint
from facefuse.errors import StorageError
from facefuse.features.extract import PREPROCESSING, extract_maps, image_source
from facefuse.features.store import DEFAULT_SHARD_SIZE, CacheKey, ShardStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetWork:
    """One dataset of a job: which mirrored maps it needs."""

    name: str
    flips: bool


@dataclass
class Plan:
    """What an extraction will do: per dataset its keys, image count, missing shards and bytes."""

    store: ShardStore
    data_root: Path
    checkpoints: tuple[Path, Path]
    shard_size: int
    datasets: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing_shards(self) -> int:
        """Returns the number of shards still to extract (over every dataset)."""
        return sum(len(d["missing"]) for d in self.datasets)

    def bytes_per_dataset_backbone(self) -> list[tuple[str, str, int]]:
        """Returns (dataset, backbone checkpoint name, bytes of all its entries) rows."""
        rows = []
        for d in self.datasets:
            for ckpt, shape in zip(self.checkpoints, d["shapes"]):
                per_image = int(np.prod(shape)) * 2  # float16
                rows.append((d["name"], ckpt.name, per_image * d["count"] * (2 if d["flips"] else 1)))
        return rows

    def bytes_to_write(self) -> int:
        """Returns the bytes the missing shards will add to the store."""
        total = 0
        for d in self.datasets:
            per_image = sum(int(np.prod(s)) * 2 for s in d["shapes"]) * (2 if d["flips"] else 1)
            total += sum(stop - start for start, stop in
                         (ShardStore.plan(d["count"], self.shard_size)[i] for i in d["missing"])) * per_image
        return total


@lru_cache(maxsize=8)
def _source(name: str, data_root: str, content: str):
    return image_source(name, Path(data_root))


def keys_for(name: str, content: str, checkpoints: Sequence[Path], flips: bool) -> list[list[CacheKey]]:
    """Returns per backbone the keys of a dataset's entries (original, then mirrored if flips)."""
    from facefuse.features.dataset import checkpoint_hash_of

    return [[CacheKey(checkpoint_hash_of(c), name, PREPROCESSING, f, content)
             for f in ((False, True) if flips else (False,))] for c in checkpoints]


def plan_extraction(store: ShardStore, data_root: Path, checkpoints: tuple[Path, Path],
                    datasets: Sequence[DatasetWork], shard_size: int = DEFAULT_SHARD_SIZE) -> Plan:
    """Returns the plan: every dataset's entries, count, the shards not yet complete, map shapes."""
    from facefuse.features.dataset import _load_backbone_cached

    plan = Plan(store, data_root, checkpoints, shard_size)
    for work in datasets:
        content = content_fingerprint(work.name, data_root)
        source = _source(work.name, str(data_root), content)
        manifest = store.read_manifest(work.name, content)
        size = int(manifest.get("shard_size") or shard_size)  # a resumed store keeps its layout
        keys = keys_for(work.name, content, checkpoints, work.flips)
        n_shards = len(ShardStore.plan(source.count, size))
        done = set(range(n_shards))
        for per_backbone in keys:
            for key in per_backbone:
                done &= store.complete_shards(manifest, key)
        shapes = []
        probe = source.read(np.arange(1))
        for ckpt, per_backbone in zip(checkpoints, keys):
            recorded = manifest.get("entries", {}).get(per_backbone[0].stem(), {}).get("shape")
            shapes.append(tuple(recorded) if recorded else
                          extract_maps(_load_backbone_cached(str(ckpt)), probe).shape[1:])
        plan.shard_size = size
        plan.datasets.append({"name": work.name, "content": content, "count": source.count,
                              "flips": work.flips, "keys": keys, "shapes": shapes,
                              "missing": sorted(set(range(n_shards)) - done)})
    return plan


def check_space(plan: Plan) -> None:
    """Raises a StorageError before anything is written when a local store lacks the free space."""
    free = storage.free_bytes(plan.store.root)
    need = plan.bytes_to_write()
    if free is not None and need > free:
        raise StorageError(plan.store.root, f"needs {need / 1e9:.2f} GB for the missing shards, "
                           f"{free / 1e9:.2f} GB free", field="free space",
                           fix="free space, point data.cache_dir at a larger disk or s3://, or use "
                           "data.train_subset")


def shard_maps(backbones: Sequence[torch.nn.Module], images: np.ndarray, flips: bool) -> list[list[np.ndarray]]:
    """Returns per backbone [original maps, mirrored maps if flips] of one decoded batch."""
    return [[extract_maps(b, images, flip=f) for f in ((False, True) if flips else (False,))]
            for b in backbones]


def _write(store: ShardStore, keys: list[list[CacheKey]], shard: int,
           maps: list[list[np.ndarray]]) -> list[dict[str, Any]]:
    out = []
    for per_key, per_maps in zip(keys, maps):
        for key, arr in zip(per_key, per_maps):
            rec = store.write_shard(key, shard, arr)
            out.append({"stem": key.stem(), "shard": shard, "shape": list(arr.shape[1:]), **rec})
    return out


def _commit(store: ShardStore, d: dict[str, Any], shard_size: int,
            records: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
    manifest.update(count=d["count"], shard_size=shard_size)
    by_stem = {k.stem(): k for per in d["keys"] for k in per}
    for r in records:
        ShardStore.record(manifest, by_stem[r["stem"]], tuple(r["shape"]), r["shard"],
                          {"size": r["size"], "sha256": r["sha256"]})
    store.write_manifest(manifest)


def run_local(plan: Plan, batch_size: int = 64) -> tuple[int, float]:
    """Returns (shards extracted in this process, its CPU seconds): `prepare features --no-ray`
    and ``dataset_maps(build=True)``."""
    from facefuse.features.dataset import _load_backbone_cached

    cpu0 = time.process_time()
    nets = [_load_backbone_cached(str(c)) for c in plan.checkpoints]
    done = 0
    for d in plan.datasets:
        if not d["missing"]:
            continue
        source = _source(d["name"], str(plan.data_root), d["content"])
        manifest = plan.store.read_manifest(d["name"], d["content"])
        ranges = ShardStore.plan(d["count"], plan.shard_size)
        for shard in d["missing"]:
            start, stop = ranges[shard]
            images = source.read(np.arange(start, stop))
            maps = _regroup(nets, images, d["flips"], batch_size)
            _commit(plan.store, d, plan.shard_size, _write(plan.store, d["keys"], shard, maps), manifest)
            done += 1
    return done, time.process_time() - cpu0


def _batched(nets, images, flips, batch_size):
    for s in range(0, len(images), batch_size):
        yield shard_maps(nets, images[s:s + batch_size], flips)


def _regroup(nets: Sequence[torch.nn.Module], images: np.ndarray, flips: bool,
             batch_size: int) -> list[list[np.ndarray]]:
    """Returns shard_maps over a shard, run in batches of batch_size (bounded memory)."""
    parts = list(_batched(nets, images, flips, batch_size))
    return [[np.concatenate([p[b][f] for p in parts]) for f in range(len(parts[0][b]))]
            for b in range(len(nets))]


class _Decode:
    """Ray Data CPU stage: a task index to the decoded, aligned images of its shard."""

    def __init__(self, data_root: str, tasks: list[dict[str, Any]]) -> None:
        self.data_root, self.tasks = data_root, tasks

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (i,) = batch["id"]  # batch_size=1: one shard per call
        t = self.tasks[int(i)]
        images = _source(t["name"], self.data_root, t["content"]).read(np.arange(t["start"], t["stop"]))
        return {"i": np.array([i]), "images": images[None]}


class _Extract:
    """Ray Data actor stage: both backbones on one decoded shard, its shards written to the store."""

    def __init__(self, root: str, checkpoints: tuple[str, str], tasks: list[dict[str, Any]],
                 batch_size: int) -> None:
        from facefuse.features.dataset import _load_backbone_cached

        self.store, self.tasks, self.batch_size = ShardStore(root), tasks, batch_size
        # frozen channels-last inference models, on the GPU where the actor has one
        # (extract_maps then runs them under fp16 autocast)
        self.nets = [_load_backbone_cached(c) for c in checkpoints]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        (i,) = batch["i"]
        t = self.tasks[int(i)]
        images = batch["images"][0]
        maps = _regroup(self.nets, images, t["flips"], self.batch_size)
        rows = _write(self.store, t["keys"], t["shard"], maps)
        return {"record": np.array([json.dumps(dict(r, name=t["name"])) for r in rows])}


def _decode_fn(data_root: str, tasks: list[dict[str, Any]]):
    decode = _Decode(data_root, tasks)
    return lambda batch: decode(batch)


def _shard_tasks(plan: Plan) -> list[dict[str, Any]]:
    """Returns one task per missing shard, largest work first (images x maps per image), so the
    last shards to finish are the short ones and the actors end together."""
    tasks = []
    for d in plan.datasets:
        ranges = ShardStore.plan(d["count"], plan.shard_size)
        for shard in d["missing"]:
            tasks.append({"name": d["name"], "content": d["content"], "shard": shard,
                          "start": ranges[shard][0], "stop": ranges[shard][1], "flips": d["flips"],
                          "keys": d["keys"]})
    return sorted(tasks, key=lambda t: -(t["stop"] - t["start"]) * (2 if t["flips"] else 1))


def actor_count(gpus_per_actor: float, tasks: int, actors: Optional[int] = None) -> int:
    """Returns how many backbone actors the job runs: ``actors`` when given, else one per
    ``gpus_per_actor`` GPUs of the cluster (GPU jobs) or one per CPU, at most one per shard."""
    import ray

    if actors is None:
        have = ray.cluster_resources()
        actors = int(have.get("GPU", 0) // gpus_per_actor) if gpus_per_actor \
            else int(have.get("CPU", 1))
    return max(1, min(actors, tasks))


def run_ray(plan: Plan, gpus_per_actor: float = 0.0, actors: Optional[int] = None,
            batch_size: int = 64) -> tuple[int, Optional[float]]:
    """Returns (shards extracted by one Ray Data job, the CPU seconds of its tasks as Ray Data
    counted them, None if it did not say). Decode tasks and an actor pool.

    On GPU actors the decode runs in separate CPU tasks, pipelined with the actors' forwards.
    On CPU actors (1 CPU each, so Ray gives torch one thread per actor) Ray Data fuses the
    decode into the actor's stage, since both ask for the same resources: decoding is a few
    percent of a shard's time, and one actor per CPU, each on its own shard, keeps every core
    on the backbones without a decoded shard crossing the object store
    (benchmarks/README.md, "features: auto as the Ray Data job").
    """
    import ray

    tasks = _shard_tasks(plan)
    if not tasks:
        return 0, 0.0
    size = actor_count(gpus_per_actor, len(tasks), actors)
    logger.info("extraction job: %d shard(s) on %d backbone actor(s)%s", len(tasks), size,
                f", {gpus_per_actor:g} GPU each" if gpus_per_actor else "")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = True
    # task ids as in-memory blocks: a read stage (ray.data.range) would be a CPU task of its own,
    # never fused with the actors' stage, and with one CPU actor per CPU it never got a CPU
    ds = ray.data.from_items([{"id": i} for i in range(len(tasks))],
                             override_num_blocks=len(tasks))
    # decode + align: stateless CPU tasks (fused into the CPU actors' stage, see above)
    ds = ds.map_batches(_decode_fn(str(plan.data_root), tasks), batch_size=1, batch_format="numpy",
                        num_cpus=1)
    ds = ds.map_batches(_Extract, fn_constructor_kwargs={
        "root": plan.store.root, "checkpoints": tuple(str(c) for c in plan.checkpoints),
        "tasks": tasks, "batch_size": batch_size}, batch_size=1, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=size), num_gpus=gpus_per_actor or None,
        num_cpus=0.5 if gpus_per_actor else 1)
    by_name = {d["name"]: d for d in plan.datasets}
    manifests = {d["name"]: plan.store.read_manifest(d["name"], d["content"]) for d in plan.datasets}
    done = 0
    pending: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in ds.iter_rows():
        rec = json.loads(row["record"])
        pending.setdefault((rec["name"], rec["shard"]), []).append(rec)
        d = by_name[rec["name"]]
        group = pending[(rec["name"], rec["shard"])]
        if len(group) == sum(len(k) for k in d["keys"]):  # every entry of this shard has landed
            _commit(plan.store, d, plan.shard_size, group, manifests[rec["name"]])
            del pending[(rec["name"], rec["shard"])]
            done += 1
    # which stages Ray Data fused and where the time went (benchmarks/bench_auto_features.py)
    logger.debug("extraction job stats:\n%s", ds.stats())
    try:  # Ray Data keeps its stats summary private; the CPU seconds are for the summary only
        cpu: Optional[float] = float(ds._get_stats_summary().get_total_cpu_time())
    except Exception:  # noqa: BLE001 - a stats API change must not fail a finished job
        cpu = None
    return done, cpu


def extract(store: ShardStore, data_root: Path, checkpoints: tuple[Path, Path],
            datasets: Sequence[DatasetWork], shard_size: int = DEFAULT_SHARD_SIZE,
            use_ray: bool = True, gpus_per_actor: float = 0.0, actors: Optional[int] = None,
            batch_size: int = 64) -> dict[str, Any]:
    """Returns a summary (plan rows, shards extracted, images, seconds, CPU seconds of the
    extracting processes where known) after filling the store."""
    storage.check_writable(store.root)
    plan = plan_extraction(store, data_root, checkpoints, datasets, shard_size)
    for name, ckpt, nbytes in plan.bytes_per_dataset_backbone():
        logger.info("%s / %s: %.3f GB", name, ckpt, nbytes / 1e9)
    check_space(plan)
    started = time.perf_counter()
    images = sum(sum(stop - start for start, stop in
                     (ShardStore.plan(d["count"], plan.shard_size)[i] for i in d["missing"]))
                 for d in plan.datasets)
    shards, cpu_s = (run_ray(plan, gpus_per_actor, actors, batch_size) if use_ray
                     else run_local(plan, batch_size))
    seconds = time.perf_counter() - started
    return {"sizes": plan.bytes_per_dataset_backbone(), "shards": shards, "images": images,
            "seconds": seconds, "images_per_s": images / seconds if seconds > 0 else 0.0,
            "bytes": plan.bytes_to_write(), "cpu_s": cpu_s}
