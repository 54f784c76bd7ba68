"""The feature-map cache: frozen backbones run once, every trial of every sweep reads the result.

An entry is one float16 ``.npy`` array [N, C, H, W] (read memory-mapped, so concurrent trials on
a node share the page cache) plus a ``.json`` sidecar that is written last. An entry counts as
complete only when the sidecar exists, names the same key and the array on disk has the
recorded shape, dtype and byte size; anything else is rebuilt, never read.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from facefuse.data._io import _umask, atomic_write
from facefuse.features.extract import PREPROCESSING, ImageSource, extract_maps

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the key holds the dataset's content fingerprint


@dataclass(frozen=True)
class CacheKey:
    """What a cache entry depends on: change any field and the entry is a different one."""

    checkpoint_hash: str
    dataset: str
    preprocessing: str = PREPROCESSING
    flip: bool = False
    #: the dataset's content fingerprint (facefuse.data.fingerprint): the name alone would let a
    #: dataset rebuilt under the same name read the old maps
    content: str = ""

    def stem(self) -> str:
        """Returns the entry's file stem inside its dataset folder."""
        side = "flip" if self.flip else "orig"
        content = f"_{self.content[:16]}" if self.content else ""
        return f"{self.checkpoint_hash[:16]}{content}_{self.preprocessing}_{side}"


class FeatureCache:
    """A directory of feature-map entries keyed by (checkpoint, dataset, preprocessing, flip)."""

    def __init__(self, root: os.PathLike[str] | str) -> None:
        self.root = Path(root).expanduser().resolve()

    def paths(self, key: CacheKey) -> tuple[Path, Path]:
        """Returns (array path, sidecar path) of an entry."""
        folder = self.root / key.dataset
        return folder / f"{key.stem()}.npy", folder / f"{key.stem()}.json"

    def get(self, key: CacheKey) -> Optional[np.memmap]:
        """Returns the entry's maps memory-mapped read-only, or None when absent or incomplete."""
        array_path, meta_path = self.paths(key)
        if not meta_path.exists() or not array_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            logger.warning("cache sidecar %s is unreadable; the entry will be rebuilt", meta_path)
            return None
        if meta.get("key") != asdict(key) or meta.get("format") != FORMAT_VERSION:
            logger.warning("cache entry %s was written for another key; rebuilding", array_path)
            return None
        if array_path.stat().st_size != meta.get("nbytes"):
            logger.warning("cache entry %s has %d bytes, expected %s; rebuilding",
                           array_path, array_path.stat().st_size, meta.get("nbytes"))
            return None
        try:
            arr = np.load(array_path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            logger.warning("cache entry %s is unreadable (%s); rebuilding", array_path, exc)
            return None
        if list(arr.shape) != meta.get("shape") or str(arr.dtype) != meta.get("dtype"):
            logger.warning("cache entry %s has shape %s, expected %s; rebuilding",
                           array_path, arr.shape, meta.get("shape"))
            return None
        return arr

    def build(self, key: CacheKey, backbone: torch.nn.Module, source: ImageSource,
              batch_size: int = 64, progress: bool = True) -> np.memmap:
        """Returns the entry after computing it from the backbone and writing it atomically."""
        return self.build_many([(key, backbone)], source, batch_size, progress)[0]

    def build_many(self, entries: Sequence[tuple[CacheKey, torch.nn.Module]], source: ImageSource,
                   batch_size: int = 64, progress: bool = True) -> list[np.memmap]:
        """Returns the entries after computing all of them in one pass over the source's images.

        Each batch of images is read (decoded, aligned) once and run through every (backbone,
        flip) the entries name. Every array is written under a temporary name and renamed, its
        sidecar written last; on any error no entry of this call is left looking complete.
        """
        if not entries:
            return []
        if len({key.dataset for key, _ in entries}) != 1 or entries[0][0].dataset != source.name:
            raise ValueError(f"build_many needs entries of the one dataset {source.name!r}, got "
                             f"{sorted({key.dataset for key, _ in entries})}")
        started = time.perf_counter()
        first = source.read(np.arange(min(source.count, 1)))
        temps: list[Path] = []
        outs: list[np.memmap] = []
        try:
            for key, backbone in entries:
                array_path, meta_path = self.paths(key)
                array_path.parent.mkdir(parents=True, exist_ok=True)
                meta_path.unlink(missing_ok=True)  # an old sidecar must never vouch for a new array
                shape = (source.count,) + extract_maps(backbone, first, flip=key.flip).shape[1:]
                fd, tmp_name = tempfile.mkstemp(dir=array_path.parent, prefix=f".{array_path.stem}.",
                                                suffix=".npy.tmp")
                os.close(fd)
                temps.append(Path(tmp_name))
                # mkstemp makes 0600; other users' trials on the node read the cache too
                os.chmod(tmp_name, 0o666 & ~_umask())
                outs.append(np.lib.format.open_memmap(tmp_name, mode="w+", dtype=np.float16,
                                                      shape=shape))
            sides = ", ".join(f"{k.stem()[:8]} {'flip' if k.flip else 'orig'}" for k, _ in entries)
            bar = tqdm(total=source.count, desc=f"{source.name} [{sides}]", unit="img",
                       disable=not progress, leave=False)
            for start, images in source.batches(batch_size):
                for (key, backbone), out in zip(entries, outs):
                    out[start:start + len(images)] = extract_maps(backbone, images, flip=key.flip)
                bar.update(len(images))
            bar.close()
            shapes = [out.shape for out in outs]
            for out in outs:
                out.flush()
            outs.clear()  # close the memmaps before the files are synced and renamed
            for tmp in temps:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
        except BaseException:
            outs.clear()
            for tmp in temps:
                tmp.unlink(missing_ok=True)
            raise
        seconds = round(time.perf_counter() - started, 3)
        results = []
        for (key, _), tmp, shape in zip(entries, temps, shapes):
            array_path, meta_path = self.paths(key)
            os.replace(tmp, array_path)
            meta = {
                "format": FORMAT_VERSION,
                "key": asdict(key),
                "shape": list(shape),
                "dtype": "float16",
                "nbytes": array_path.stat().st_size,
                "seconds": seconds,  # the whole pass, shared by the entries built together
                "built_with": len(entries),
            }
            with atomic_write(meta_path, "w") as fh:  # the sidecar last: it vouches for the array
                fh.write(json.dumps(meta, indent=1))
            logger.info("cached %s (%s); %d entr%s in %.1fs", array_path, shape, len(entries),
                        "y" if len(entries) == 1 else "ies", seconds)
            result = self.get(key)
            assert result is not None, f"cache entry {array_path} failed its own validation"
            results.append(result)
        return results

    def get_or_build(self, key: CacheKey, backbone_loader, source_loader,
                     batch_size: int = 64, progress: bool = True) -> np.memmap:
        """Returns the entry, building it first when it is missing or incomplete.

        ``backbone_loader`` and ``source_loader`` are called only on a miss, so a warm cache
        never loads a checkpoint or decodes an image.
        """
        hit = self.get(key)
        if hit is not None:
            return hit
        return self.build(key, backbone_loader(), source_loader(), batch_size, progress)
