"""Checks of the Ray cluster launcher file (ray_cluster.yaml) with Ray's own schema."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Union

import yaml

from facefuse.errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]


def load_cluster_config(path: PathLike) -> dict[str, Any]:
    """Returns the cluster config after Ray's defaults and schema validation (as `ray up` does)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(p, f"cannot read cluster config: {exc}")
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except Exception as exc:  # jsonschema.ValidationError, ValueError: Ray's own messages
        path_in_doc = ".".join(str(x) for x in getattr(exc, "absolute_path", []) or [])
        first = str(exc).splitlines()[0]
        raise ConfigError(p, f"not a valid Ray cluster config: {first}",
                          field=path_in_doc or None,
                          fix="see https://docs.ray.io/en/latest/cluster/vms/references/"
                              "ray-cluster-configuration.html")
    return prepared


def public_bindings(config: dict[str, Any]) -> list[str]:
    """Returns every command that would bind a service to all interfaces (should be none)."""
    found = []
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "head_setup_commands",
                "setup_commands", "worker_setup_commands"):
        for cmd in config.get(key) or []:
            if re.search(r"0\.0\.0\.0|--host[= ]+::|--dashboard-host[= ]+(?!127\.0\.0\.1)", cmd):
                found.append(cmd)
    return found
