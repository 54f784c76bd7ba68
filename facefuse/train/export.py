"""A trial's best checkpoint as an MLflow model that loads and embeds maps.

``log_fusion_model`` turns the trainable's ``best/model.pt`` (weights + model config, read with
``weights_only=True``) into a ``facefuse.model.FusionEmbedder`` and logs it with
``mlflow.pytorch.log_model`` in the ``pt2`` format (``torch.export``): the saved program holds
the graph and the weights, so loading it needs neither facefuse nor unrestricted unpickling.
Its signature names the two backbones' maps (``arcface_map``, ``adaface_map``, [N, C, H, W]
float32) and the embedding; the metadata repeats the map shapes, beta and the trial.

The run gets tag ``facefuse.model_id``; ``facefuse.selection.register_choice`` registers that
model, so ``models:/facefuse-fusion@best-<dataset>`` loads with ``mlflow.pytorch.load_model``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from facefuse import storage
from facefuse.tracking import schema as S

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its run
MODEL_ID_TAG = S.TAG_MODEL_ID
#: Batch of the export example: above 1, so torch.export keeps the batch dimension dynamic.
EXAMPLE_BATCH = 2


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    # mlflow.pytorch.log_model writes through the fluent API, which reads the global URI.
    import mlflow
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    before = mlflow.get_tracking_uri() if is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before or "")


def load_embedder(model_pt: Path) -> Any:
    """Returns the FusionEmbedder of a trainable's best/model.pt and the file's content."""
    import torch

    from facefuse.model.embedder import FusionEmbedder

    saved = torch.load(model_pt, map_location="cpu", weights_only=True)
    if not saved.get("model_config"):
        raise ValueError(f"{model_pt}: [model_config] checkpoint has no model config (written "
                         "by an older facefuse) -- rerun the trial to log it as a model")
    return FusionEmbedder.from_checkpoint(saved["model_config"], saved["model"]), saved


def log_fusion_model(tracking_uri: str, run_id: str, model_pt: Path,
                     trial_id: Optional[str] = None) -> str:
    """Returns the model id after logging a best checkpoint as an MLflow pytorch model."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    embedder, saved = load_embedder(Path(model_pt))
    shapes = embedder.map_shapes
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, *shape), name=name)
                     for name, shape in shapes.items()])
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, embedder.embedding_size),
                                 name="embedding")])
    generator = torch.Generator().manual_seed(0)
    example = tuple(torch.randn(EXAMPLE_BATCH, *shape, generator=generator)
                    for shape in shapes.values())
    config = saved.get("config", {})
    metadata = {"feature_map_shapes": shapes, "inputs": list(shapes),
                "embedding_size": embedder.embedding_size, "epoch": int(saved.get("epoch", 0)),
                "beta": config.get("beta"), "trial_id": trial_id,
                "model_class": "facefuse.model.embedder.FusionEmbedder"}
    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    # Created here, in the run's experiment: left to itself log_model would put the model in
    # the process's current experiment (Default, artifacts under ./mlruns).
    logged = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id,
        params={k: v for k, v in run.data.params.items()}, model_type="facefuse-fusion",
        tags={"facefuse.trial_id": str(trial_id or "")})
    with _tracking_uri(tracking_uri):
        info = mlflow.pytorch.log_model(
            embedder, name=MODEL_NAME, run_id=run_id, model_id=logged.model_id,
            serialization_format="pt2",
            signature=ModelSignature(inputs=inputs, outputs=outputs), input_example=example,
            metadata=metadata,
            # the requirements are known; inferring them would load the model in a subprocess
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"mlflow=={mlflow.__version__}"])
    client.set_tag(run_id, MODEL_ID_TAG, info.model_id)
    logger.debug("logged the best checkpoint of run %s as model %s", run_id, info.model_id)
    return str(info.model_id)


def model_handler(writer: Any, op: dict[str, Any]) -> None:
    """Executes a queued "model" operation with the sweep's writer (``SweepWriter.handlers``)."""
    path = op["path"]
    if not storage.exists(path):
        return
    # A checkpoint in a store (s3:// storage) is read into a temporary folder first.
    with tempfile.TemporaryDirectory(prefix="facefuse-model-") as tmp:
        log_fusion_model(writer.tracking_uri, writer.run_for(op["trial"]),
                         storage.download(path, tmp), op["trial"])
