"""The benchmarks a trial used, as MLflow dataset inputs (the UI's Dataset column and filters).

``sweep_datasets`` describes, once per sweep in the driver, every dataset a trial reads: its
name, a content fingerprint of its files (the digest), where it lives (the file or folder, or a
store URI) and its role: ``train`` (the training set), ``selection`` (the sets the objective
averages, which choose hyperparameters) or ``test`` (the other evaluation sets). ``log_inputs``
logs them to one run; MLflow stores each dataset once per experiment and links it to each run.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

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
                   objective: dict[str, Any]) -> list[DatasetRef]:
    """Returns the datasets of a sweep's trials with their digests, sources and contexts.

    The digest is the dataset's content fingerprint (facefuse.data.fingerprint), the same one
    that keys its feature-store entries, so a run input and the maps a trial read always agree.
    """
    from facefuse.data import dataset_path, get_dataset
    from facefuse.data.fingerprint import content_fingerprint
    from facefuse.errors import FacefuseError

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
            digest = content_fingerprint(name, data_root)[:DIGEST_CHARS]
        out.append(DatasetRef(name=name, digest=digest, source=source, context=context,
                              quality=spec.quality, kind=spec.kind))
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
