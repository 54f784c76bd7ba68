"""The registered best model of a real sweep loads with mlflow.pytorch.load_model in a fresh
process (no facefuse import, no unpickling) and embeds the two backbones' maps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

LOADER = """
import json, sys
import numpy as np, torch, mlflow.pytorch
from mlflow.models import get_model_info
uri = "models:/facefuse-fusion@best-synth_ijbc"
model = mlflow.pytorch.load_model(uri)
info = get_model_info(uri)
shapes = info.metadata["feature_map_shapes"]
g = torch.Generator().manual_seed(1)
a = torch.randn(5, *shapes["arcface_map"], generator=g)
b = torch.randn(5, *shapes["adaface_map"], generator=g)
emb = model(a, b)
np.save(sys.argv[1], emb.detach().numpy())
print(json.dumps({"facefuse_imported": any(m.split(".")[0] == "facefuse" for m in sys.modules),
                  "type": type(model).__name__, "metadata": info.metadata,
                  "inputs": [s.name for s in info.signature.inputs.inputs],
                  "input_shapes": [list(s.shape) for s in info.signature.inputs.inputs],
                  "outputs": [list(s.shape) for s in info.signature.outputs.inputs]}))
"""


@pytest.mark.slow
def test_registered_model_loads_and_embeds_in_a_fresh_process(real_sweep_store: dict,
                                                              tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from facefuse.train.export import MODEL_ID_TAG, load_embedder

    store = real_sweep_store
    client = MlflowClient(store["uri"])
    run = client.get_run(store["selection"].run_id)
    model_id = run.data.tags[MODEL_ID_TAG]
    assert store["choice"].source == client.get_logged_model(model_id).artifact_location
    version = client.get_model_version_by_alias("facefuse-fusion", "best-synth_ijbc")
    assert version.run_id == run.info.run_id and version.source == store["choice"].source
    # every finished trial logged its best checkpoint as a model of its run
    for trial in store["result"].trials:
        outputs = client.get_run(trial.run_id).outputs
        assert outputs is not None and len(outputs.model_outputs) == 1

    out = tmp_path / "emb.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = store["uri"]
    proc = subprocess.run([sys.executable, "-c", LOADER, str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["facefuse_imported"] is False  # the pt2 program needs no facefuse code
    assert got["inputs"] == ["arcface_map", "adaface_map"]
    assert got["input_shapes"] == [[-1, 16, 7, 7], [-1, 32, 7, 7]]  # the tiny world's backbones
    assert got["outputs"] == [[-1, 32]]
    assert got["metadata"]["feature_map_shapes"] == {"arcface_map": [16, 7, 7],
                                                     "adaface_map": [32, 7, 7]}
    assert float(got["metadata"]["beta"]) == pytest.approx(store["selection"].beta)

    # the same embeddings as the trial's own best checkpoint, rebuilt here
    local = Path(client.download_artifacts(run.info.run_id, "best_checkpoint/model.pt",
                                           str(tmp_path)))
    embedder, _ = load_embedder(local)
    g = torch.Generator().manual_seed(1)
    shapes = embedder.map_shapes
    a = torch.randn(5, *shapes["arcface_map"], generator=g)
    b = torch.randn(5, *shapes["adaface_map"], generator=g)
    with torch.no_grad():
        want = embedder(a, b).numpy()
    np.testing.assert_allclose(np.load(out), want, rtol=1e-4, atol=1e-5)
    assert np.load(out).shape == (5, 32)


@pytest.mark.slow
def test_models_live_in_the_sweeps_experiment(real_sweep_store: dict) -> None:
    from mlflow import MlflowClient

    from facefuse.train.export import MODEL_ID_TAG

    client = MlflowClient(real_sweep_store["uri"])
    exp = client.get_experiment_by_name("researcher")
    for trial in real_sweep_store["result"].trials:
        run = client.get_run(trial.run_id)
        model = client.get_logged_model(run.data.tags[MODEL_ID_TAG])
        assert model.experiment_id == exp.experiment_id and model.source_run_id == trial.run_id
        assert model.artifact_location.startswith(exp.artifact_location)
        assert model.status.to_proto() == model.status.READY.to_proto() or \
            str(model.status).endswith("READY")
