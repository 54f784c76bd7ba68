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
    assert "gpu_worker" in cfg["available_node_types"]
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}


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
