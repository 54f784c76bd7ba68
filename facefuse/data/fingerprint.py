"""A dataset's content fingerprint: what its images, labels, pairs and templates are, not its name.

Feature entries are keyed by it, so a dataset rebuilt under the same name (another seed, another
release, two data roots sharing one store) gets new entries instead of the old maps. It must stay
cheap on MS1MV2 (a 40 GB .rec): index and metadata files are hashed whole, big payload files only
by their size and their first and last megabyte (a rebuilt RecordIO set moves its offsets, which
the .idx records; the sampled bytes catch a re-encode that happens to keep every size).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

from facefuse.data.registry import dataset_path, get_dataset

PathLike = Union[str, "os.PathLike[str]"]

_SAMPLE = 1 << 20  # bytes read from each end of a payload file
_WHOLE_LIMIT = 1 << 30  # files up to this size are hashed whole (every .bin verification set)


@lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """Returns the sha256 of a file (whole, or size + both ends when it is big); memoised per stat."""
    h = hashlib.sha256(f"{size}:".encode())
    with open(path, "rb") as fh:
        if size <= _WHOLE_LIMIT:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(fh.read(_SAMPLE))
            fh.seek(size - _SAMPLE)
            h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def file_digest(path: PathLike) -> str:
    """Returns the (memoised) content digest of one file."""
    st = os.stat(path)
    return _file_digest(os.fspath(path), st.st_size, st.st_mtime_ns)


def _payload_digest(path: Path) -> str:
    """Returns a digest of a big payload file from its size and both ends only."""
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(_SAMPLE))
        fh.seek(max(0, st.st_size - _SAMPLE))
        h.update(fh.read(_SAMPLE))
    return h.hexdigest()


def content_fingerprint(name: str, root: Optional[PathLike] = None) -> str:
    """Returns the 16-hex content fingerprint of a registered dataset under a data root."""
    spec = get_dataset(name)
    path = dataset_path(name, root)
    h = hashlib.sha256(f"{spec.kind}\n".encode())
    if spec.kind == "verification":
        h.update(file_digest(path).encode())  # images and issame are the file
    elif spec.kind == "recordio":
        for part in ("train.idx", "property", "train.lst"):
            if (path / part).is_file():
                h.update(f"{part}:{file_digest(path / part)}\n".encode())
        h.update(f"train.rec:{_payload_digest(path / 'train.rec')}\n".encode())
    elif spec.kind == "ijb":
        # names, templates, landmarks and pairs; a crop is read through these lines
        for meta in sorted((path / "meta").glob(f"{spec.ijb_name}_*.txt")):
            h.update(f"{meta.name}:{file_digest(meta)}\n".encode())
        # a regenerated set re-renders its crops: the first and last listed crop stand for them
        # (read through the meta lines, not a listing of 200k files)
        tid_mid = path / "meta" / f"{spec.ijb_name}_face_tid_mid.txt"
        lines = [ln.split() for ln in tid_mid.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for fields in lines[:1] + lines[-1:]:
            crop = path / "loose_crop" / fields[0]
            if crop.is_file() and crop.resolve().is_relative_to((path / "loose_crop").resolve()):
                h.update(f"{fields[0]}:{file_digest(crop)}\n".encode())
    else:  # imagefolder: identities and files are the labels; sizes catch a re-encode
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:16]
