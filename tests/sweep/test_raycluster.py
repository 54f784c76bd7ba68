"""ray_cluster.yaml passes Ray's own schema and opens nothing to the world."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facefuse.errors import ConfigError
from facefuse.sweep.raycluster import load_cluster_config, public_bindings
from tests.sweep.conftest import REPO

CLUSTER = REPO / "ray_cluster.yaml"


def test_shipped_cluster_config_is_valid() -> None:
    cfg = load_cluster_config(CLUSTER)
    assert cfg["head_node_type"] == "head"
    nodes = cfg["available_node_types"]
    assert "gpu_worker" in nodes
    # no trial CPUs on the head, but the custom resource the Train drivers ask for
    assert nodes["head"]["resources"] == {"CPU": 0, "train_driver": 1}
    spot = nodes["gpu_spot"]["node_config"]
    assert spot["InstanceMarketOptions"]["MarketType"] == "spot"
    assert "InstanceMarketOptions" not in nodes["gpu_worker"]["node_config"]


def test_token_and_settings_reach_every_node_and_the_server_reads_them() -> None:
    cfg = load_cluster_config(CLUSTER)
    assert cfg["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "~/facefuse_cluster.env" in cfg["file_mounts"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(cfg[key])
    head = " ".join(cfg["head_start_ray_commands"])
    assert ". ~/facefuse_cluster.env" in head and "sqlite" not in head


def test_services_bind_to_localhost_and_tracking_uri_is_exported() -> None:
    cfg = load_cluster_config(CLUSTER)
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert "mlflow server --host 127.0.0.1" in head
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head
    assert public_bindings(cfg) == []
    assert "0.0.0.0" not in CLUSTER.read_text()


def test_setup_installs_pinned_torch_before_the_project() -> None:
    setup = yaml.safe_load(CLUSTER.read_text())["setup_commands"]
    torch_at = next(i for i, c in enumerate(setup) if "torch==" in c)
    # the CUDA index that publishes the pinned version
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" in setup[torch_at]
    project_at = next(i for i, c in enumerate(setup) if "pip install -e" in c)
    assert torch_at < project_at


def test_public_dashboard_is_detected() -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    cfg["head_start_ray_commands"] = ["ray start --head --dashboard-host=0.0.0.0"]
    assert public_bindings(cfg)


def test_schema_violation_is_a_config_error(tmp_path: Path) -> None:
    cfg = yaml.safe_load(CLUSTER.read_text())
    node = cfg["available_node_types"]["gpu_worker"]
    node["node_confg"] = node.pop("node_config")
    bad = tmp_path / "cluster.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        load_cluster_config(bad)
    assert "cluster.yaml" in str(err.value) and "node_config" in str(err.value)
