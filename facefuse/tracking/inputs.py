"""The benchmarks a trial used, as MLflow dataset inputs (the UI's Dataset column and filters).

``sweep_datasets`` describes, once per sweep in the driver, every dataset a trial reads: its
name, a content fingerprint of its files (the digest), where it lives (the file or folder, or a
store URI) and its role: ``train`` (the training set), ``selection`` (the sets the objective
averages, which choose hyperparameters) or ``test`` (the other evaluation sets). ``log_inputs``
logs them to one run; MLflow stores each dataset once per experiment and links it to each run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

#: Files up to this size are hashed whole; larger ones (RecordIO train sets run to tens of GB)
#: by SAMPLE_CHUNKS evenly spaced chunks plus their size, so a sweep does not read them in full.
WHOLE_FILE_BYTES = 64 << 20
SAMPLE_CHUNKS = 16
CHUNK_BYTES = 1 << 20
SAMPLE_FILES = 4096
DIGEST_CHARS = 16  # MLflow caps dataset digests at 36 characters
CONTEXTS = ("train", "selection", "test")


@dataclass(frozen=True)
class DatasetRef:
    """One dataset as a run input."""

    name: str
    digest: str
    source: str
    context: str
    quality: str
    kind: str


def _hash_file(path: Path, h: "hashlib._Hash") -> None:
    size = path.stat().st_size
    h.update(f"{size}:".encode())
    with open(path, "rb") as fh:
        if size <= WHOLE_FILE_BYTES:
            for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
                h.update(chunk)
            return
        step = (size - CHUNK_BYTES) // (SAMPLE_CHUNKS - 1)
        for i in range(SAMPLE_CHUNKS):
            fh.seek(i * step)
            h.update(fh.read(CHUNK_BYTES))


def content_fingerprint(path: Path) -> str:
    """Returns a digest of a file's or folder's contents (relative names, sizes and bytes).

    Copies of a dataset get the same digest wherever they live (no paths or mtimes enter it);
    files over WHOLE_FILE_BYTES contribute sampled chunks, and folders of more than SAMPLE_FILES
    files the bytes of a sample of them (all names and sizes count), so a sweep never reads a
    large benchmark in full.
    """
    h = hashlib.sha256()
    if path.is_dir():
        files = sorted(q for q in path.rglob("*") if q.is_file())
        # IJB-C holds ~470k loose crops: every name and size enters the digest, the bytes of an
        # evenly spaced sample of at most SAMPLE_FILES of them
        step = max(1, math.ceil(len(files) / SAMPLE_FILES))
        for i, p in enumerate(files):
            h.update(f"{p.relative_to(path)}\0{p.stat().st_size}\0".encode())
            if i % step == 0:
                _hash_file(p, h)
    else:
        _hash_file(path, h)
    return h.hexdigest()[:DIGEST_CHARS]


def dataset_context(name: str, train: str, objective: dict[str, Any],
                    eval_datasets: Sequence[str]) -> str:
    """Returns "train", "selection" (the objective reads it) or "test" for one dataset."""
    from facefuse.data import get_dataset

    if name == train:
        return "train"
    if "dataset" in objective:
        return "selection" if objective["dataset"] == name else "test"
    quality = objective.get("quality", "all")
    if name in eval_datasets and (quality == "all" or get_dataset(name).quality == quality):
        return "selection"
    return "test"


def sweep_datasets(data_root: str, train: str, eval_datasets: Sequence[str],
                   objective: dict[str, Any], cache_file: Optional[Path] = None
                   ) -> list[DatasetRef]:
    """Returns the datasets of a sweep's trials with their digests, sources and contexts.

    ``cache_file`` keeps digests between runs of the same sweep, keyed by path, size and mtime
    of every file, so a resume does not hash the data again.
    """
    from facefuse.data import dataset_path, get_dataset
    from facefuse.errors import FacefuseError

    cache: dict[str, Any] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    out: list[DatasetRef] = []
    for name in [train, *[d for d in eval_datasets if d != train]]:
        spec = get_dataset(name)
        context = dataset_context(name, train, objective, eval_datasets)
        if "://" in str(data_root):
            # A store URI: its objects are read by the trials, not hashed by the driver here.
            source = f"{str(data_root).rstrip('/')}/{spec.relpath}"
            digest = hashlib.sha256(source.encode()).hexdigest()[:DIGEST_CHARS]
        else:
            try:
                path = dataset_path(name, data_root)
            except FacefuseError as exc:
                # the self-test trainable reads no data; a real trial fails on its own, clearly
                logger.warning("dataset %s not logged as a run input: %s", name, exc)
                continue
            source = str(path)
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            stamp = hashlib.sha256("".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                                           for p in files).encode()).hexdigest()
            digest = cache.get(stamp) or content_fingerprint(path)
            cache[stamp] = digest
        out.append(DatasetRef(name=name, digest=digest, source=source, context=context,
                              quality=spec.quality, kind=spec.kind))
    if cache_file is not None:
        from facefuse.data._io import atomic_write

        with atomic_write(cache_file, "w") as fh:
            fh.write(json.dumps(cache, indent=1, sort_keys=True))
    return out


def _mlflow_dataset(ref: DatasetRef) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        # MLflow registers its local-file source twice and warns that a file URI is ambiguous
        # between the two identical candidates
        warnings.filterwarnings("ignore", message="The specified dataset source can be "
                                "interpreted in multiple ways")
        source = resolve_dataset_source(ref.source if "://" in ref.source
                                        else Path(ref.source).as_uri())
    return MetaDataset(source, name=ref.name, digest=ref.digest)


def log_inputs(client: "MlflowClient", run_id: str, refs: Sequence[DatasetRef]) -> None:
    """Logs the datasets to a run as inputs tagged with their context (train/selection/test)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(dataset=_mlflow_dataset(r)._to_mlflow_entity(),
                           tags=[InputTag(MLFLOW_DATASET_CONTEXT, r.context)]) for r in refs]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def refs_to_json(refs: Sequence[DatasetRef]) -> list[dict[str, str]]:
    """Returns the refs as plain dicts (they travel in the tracking queue and its backlog)."""
    return [asdict(r) for r in refs]


def refs_from_json(data: Sequence[dict[str, str]]) -> list[DatasetRef]:
    """Returns refs from ``refs_to_json`` output."""
    return [DatasetRef(**d) for d in data]
