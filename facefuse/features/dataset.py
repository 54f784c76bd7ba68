"""Feature maps plus protocol metadata for a job's train and evaluation sets.

The training loop sees only this module's objects. Maps come either from the feature store
(memory-mapped float16) or from backbones run on the fly; both index the same way, so the loop
cannot tell.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np
import torch

from facefuse.data._io import atomic_write
from facefuse.data.fingerprint import content_fingerprint
from facefuse.errors import DataFormatError
from facefuse.features.extract import ImageSource, image_source, maps_for_indices

logger = logging.getLogger(__name__)


class MapArray(Protocol):
    """Anything indexable by an integer array that returns float16 maps [n, C, H, W]."""

    shape: tuple[int, ...]

    def __getitem__(self, idx: Any) -> np.ndarray: ...

    def __len__(self) -> int: ...


class LiveMaps:
    """Maps computed by a frozen backbone at access time (data too large for a cache)."""

    def __init__(self, backbone: torch.nn.Module, source: ImageSource, flip: bool) -> None:
        self.backbone, self.source, self.flip = backbone, source, flip
        probe = maps_for_indices(backbone, source, [0], flip)
        self.shape = (source.count,) + tuple(probe.shape[1:])

    def __len__(self) -> int:
        return self.source.count

    def __getitem__(self, idx: Any) -> np.ndarray:
        idx = np.arange(self.source.count)[idx] if not isinstance(idx, np.ndarray) else idx
        return maps_for_indices(self.backbone, self.source, np.atleast_1d(idx), self.flip)


@dataclass
class PairMaps:
    """The two backbones' maps for one dataset, original and mirrored images."""

    a: MapArray
    b: MapArray
    a_flip: Optional[MapArray]  # None where mirrored maps were not needed (train sets without
    b_flip: Optional[MapArray]  # flip augmentation); evaluation always has them

    def __len__(self) -> int:
        return len(self.a)


@dataclass
class TrainSet:
    name: str
    maps: PairMaps
    labels: np.ndarray
    num_classes: int


class SubsetMaps:
    """The maps of some images of another map array: ``maps[i]`` is ``base[index[i]]``."""

    def __init__(self, base: MapArray, index: np.ndarray) -> None:
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index),) + tuple(base.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, idx: Any) -> np.ndarray:
        # a sorted index keeps the loop's sorted batch reads sorted in the memory-mapped base
        return self.base[self.index[idx]]


def subset_train_set(train: TrainSet, identities: int, per_identity: int, seed: int) -> TrainSet:
    """Returns the class-balanced, seeded subset of a train set, labels renumbered from 0."""
    from facefuse.data.subset import class_balanced_subset

    index = class_balanced_subset(train.labels, identities, per_identity, seed, train.name)
    m = train.maps
    maps = PairMaps(*(None if arr is None else SubsetMaps(arr, index)
                      for arr in (m.a, m.b, m.a_flip, m.b_flip)))
    _, labels = np.unique(train.labels[index], return_inverse=True)
    logger.info("train subset of %s: %d identities x %d images (seed %d)", train.name,
                identities, per_identity, seed)
    return TrainSet(train.name, maps, labels.astype(np.int64), identities)


@dataclass
class EvalSet:
    """An evaluation set: maps and what its protocol needs (issame, or IJB templates)."""

    name: str
    kind: str  # "verification" | "ijb"
    maps: PairMaps
    meta: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class BackbonePair:
    arcface: Path
    adaface: Path


def _dataset_meta(name: str, data_root: Path, cache_root: Path) -> dict[str, np.ndarray]:
    """Returns a dataset's protocol metadata, cached beside its maps so warm trials skip decoding."""
    from facefuse.data import RecordIODataset, ImageFolderDataset, dataset_path, get_dataset, read_ijb
    from facefuse.data import read_verification_bin

    spec = get_dataset(name)
    path = dataset_path(name, data_root)
    out = cache_root / name / f"meta_{content_fingerprint(name, data_root)}.npz"
    if out.exists():
        with np.load(out, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if spec.kind == "verification":
        _, issame = read_verification_bin(path)
        meta = {"issame": np.asarray(issame, dtype=bool)}
    elif spec.kind == "ijb":
        ijb = read_ijb(path, spec.ijb_name)
        meta = {k: np.asarray(getattr(ijb, k)) for k in
                ("templates", "medias", "face_scores", "p1", "p2", "labels")}
    else:
        ds = RecordIODataset(path) if spec.kind == "recordio" else ImageFolderDataset(path)
        meta = {"labels": np.asarray(ds.labels, dtype=np.int64),
                "num_classes": np.asarray(ds.num_classes)}
    with atomic_write(out, "wb") as fh:
        np.savez(fh, **meta)
    return meta


@lru_cache(maxsize=8)
def _load_backbone_cached(path: str) -> torch.nn.Module:
    """Returns a frozen backbone ready for extraction (eval mode, no grad, channels-last weights):
    on the GPU when this process has one (workers on GPU nodes), else on the CPU.

    Channels-last is the faster layout on both: mkldnn at this project's narrow widths on CPU,
    and cuDNN's fp16 tensor-core convolutions on CUDA (``extract_maps`` runs those under fp16
    autocast with channels-last input).
    """
    from facefuse.backbones import load_backbone
    model = load_backbone(path)
    if torch.cuda.is_available():
        model = model.to("cuda")
        # every extraction batch has the same 112x112 shape: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark = True
    prepare = getattr(model, "prepare_channels_last_inference", None)
    return prepare() if prepare is not None else model.eval().requires_grad_(False)


@lru_cache(maxsize=16)
def _checkpoint_hash_cached(path: str, mtime_ns: int, size: int) -> str:
    from facefuse.backbones import checkpoint_hash
    return checkpoint_hash(path)


def checkpoint_hash_of(path: Path) -> str:
    """Returns the checkpoint's sha256, memoised per (path, mtime, size)."""
    st = Path(path).stat()
    return _checkpoint_hash_cached(str(path), st.st_mtime_ns, st.st_size)


def missing_entry_error(name: str, store: str, what: str) -> DataFormatError:
    """Returns the one error every reader raises for an entry the store does not hold."""
    from facefuse.features.store import build_command

    return DataFormatError(store, f"no complete feature entry for dataset {name} ({what})",
                           field=name, fix=f"run `{build_command()}` first (or set features: auto)")


def dataset_maps(name: str, data_root: Path, backbones: BackbonePair,
                 cache_root: Optional[str | Path], build: bool = True, batch_size: int = 64,
                 progress: bool = True, flips: bool = True) -> PairMaps:
    """Returns both backbones' maps (original, and mirrored when ``flips``) for a dataset.

    With ``cache_root`` (a path or a URI) the maps come from the sharded feature store, extracted
    in this process first on a miss when ``build``; without it the backbones run on the fly.
    """
    if cache_root is None:
        source = image_source(name, data_root)
        arrays: dict[tuple[str, bool], MapArray] = {}
        for which, ckpt in (("a", backbones.arcface), ("b", backbones.adaface)):
            for flip in ((False, True) if flips else (False,)):
                arrays[(which, flip)] = LiveMaps(_load_backbone_cached(str(ckpt)), source, flip)
        return PairMaps(arrays[("a", False)], arrays[("b", False)], arrays.get(("a", True)),
                        arrays.get(("b", True)))
    from facefuse.features.extraction import (DatasetWork, extract, keys_for)
    from facefuse.features.store import ShardStore

    store = ShardStore(cache_root)
    content = content_fingerprint(name, data_root)
    checkpoints = (Path(backbones.arcface), Path(backbones.adaface))
    keys = keys_for(name, content, checkpoints, flips)
    count = _image_count(name, data_root)
    got = [[store.maps(k, count) for k in per] for per in keys]
    if any(m is None for per in got for m in per):
        missing = next(k for per, ms in zip(keys, got) for k, m in zip(per, ms) if m is None)
        if not build:
            raise missing_entry_error(name, store.root, store.describe_missing(missing, count))
        extract(store, data_root, checkpoints, [DatasetWork(name, flips)], use_ray=False,
                batch_size=batch_size)
        got = [[store.maps(k, count) for k in per] for per in keys]
    a, b = got
    return PairMaps(a[0], b[0], a[1] if flips else None, b[1] if flips else None)


def _image_count(name: str, data_root: Path) -> int:
    """Returns the number of images of a dataset from its protocol metadata (no image decoding)."""
    from facefuse.data import get_dataset

    meta = _dataset_meta(name, data_root, Path(tempfile.gettempdir()) / "facefuse-meta")
    return expected_map_count(get_dataset(name).kind, meta)[0]


def _meta_root(cache_root: Optional[str | Path]) -> Path:
    """Returns the local folder of the protocol-metadata sidecars (beside a local store)."""
    from facefuse import storage

    if cache_root is None or storage.is_remote(cache_root):
        return Path(tempfile.gettempdir()) / "facefuse-meta"
    return Path(cache_root)


def load_train_set(name: str, data_root: Path, backbones: BackbonePair,
                   cache_root: Optional[str | Path], build: bool = True, progress: bool = True,
                   flips: bool = True) -> TrainSet:
    """Returns the training set's maps and labels (mirrored maps only when ``flips``)."""
    meta = _dataset_meta(name, data_root, _meta_root(cache_root))
    maps = dataset_maps(name, data_root, backbones, cache_root, build, progress=progress,
                        flips=flips)
    check_map_count(name, maps, len(meta["labels"]), "labels", cache_root)
    return TrainSet(name, maps, meta["labels"].astype(np.int64), int(meta["num_classes"]))


def expected_map_count(kind: str, meta: dict[str, np.ndarray]) -> tuple[int, str]:
    """Returns (number of images the protocol metadata describes, what it was counted from)."""
    if kind == "verification":
        return 2 * len(meta["issame"]), "2 x issame"
    if kind == "ijb":
        return len(meta["templates"]), "IJB faces"
    return len(meta["labels"]), "labels"


def check_map_count(name: str, maps: PairMaps, expected: int, what: str,
                    cache_root: Optional[Path]) -> None:
    """Raises a DataFormatError unless every map array holds one map per image of the dataset."""
    for arr in (maps.a, maps.b, maps.a_flip, maps.b_flip):
        if arr is not None and len(arr) != expected:
            where = getattr(arr, "filename", None) or cache_root or name
            raise DataFormatError(where, f"{len(arr)} feature maps for {name} but {expected} {what}",
                                  field="maps", fix="the entry was built from other data; delete it "
                                  "and run `python -m platform.prepare features JOB.yaml`")


def load_eval_sets(names: Sequence[str], data_root: Path, backbones: BackbonePair,
                   cache_root: Optional[str | Path], build: bool = True,
                   progress: bool = True, flips: bool = True) -> list[EvalSet]:
    """Returns every evaluation set a job names, with maps (mirrored too when ``flips``, for
    the flip test) and protocol metadata."""
    from facefuse.data import get_dataset

    out = []
    meta_root = _meta_root(cache_root)
    for name in names:
        spec = get_dataset(name)
        meta = _dataset_meta(name, data_root, meta_root)
        maps = dataset_maps(name, data_root, backbones, cache_root, build, progress=progress,
                            flips=flips)
        check_map_count(name, maps, *expected_map_count(spec.kind, meta), cache_root)
        out.append(EvalSet(name, spec.kind, maps, meta))
    return out


def describe(sets: Sequence[EvalSet]) -> str:
    """Returns a one-line summary of evaluation sets for logs."""
    return json.dumps({s.name: len(s.maps) for s in sets})
