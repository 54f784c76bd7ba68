"""Names and tags that make the MLflow UI read well: the experiment kind, trial run names."""

from __future__ import annotations

import logging
import math
import re
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

#: MLflow 3 opens an experiment without this tag on its GenAI overview (traces); a model
#: development experiment opens on the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

#: Short labels of the searched params, in the order the run name shows them. A param not
#: listed here is shown as name=value.
SHORT_LABELS = {"variant": "", "beta": "beta=", "local_window": "w", "local_heads": "h",
                "global_heads": "g", "dw_kernel": "k", "lr": "lr=", "seed": "s"}


def _value_text(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return f"{value:.2g}"
    return str(value)


def trial_index(trial_id: str, experiment_tag: str = "") -> Optional[int]:
    """Returns the trial's counter in its sweep, or None.

    Tune starts every trial's experiment tag with it ("7_beta=0.01,..."); grid trials also end
    their id with it ("ab12c_00007"), searcher trials do not ("3a61aede").
    """
    match = re.match(r"(\d+)_", experiment_tag) or re.search(r"_(\d+)$", trial_id)
    return int(match.group(1)) if match else None


def trial_run_name(trial_id: str, config: dict[str, Any],
                   searched: Optional[Sequence[str]] = None, index: Optional[int] = None) -> str:
    """Returns a run name such as "t07 beta=0.012 w3 h4" from a trial's flat config.

    ``searched`` names the params the sweep varies; only those are shown (beta always when the
    config has it), known ones first in a fixed order. Without it every known param is shown.
    """
    if index is None:
        index = trial_index(trial_id)
    parts = [f"t{index:02d}" if index is not None else trial_id]
    keys = list(SHORT_LABELS) if searched is None else \
        [k for k in SHORT_LABELS if k in searched or k == "beta"] + \
        sorted(k for k in searched if k not in SHORT_LABELS)
    for key in keys:
        if key not in config or config[key] is None:
            continue
        label = SHORT_LABELS.get(key, f"{key}=")
        parts.append(f"{label}{_value_text(config[key])}")
    return " ".join(parts)


def ensure_experiment_kind(client: "MlflowClient", experiment_id: str,
                           tags: dict[str, str]) -> None:
    """Sets the model-development kind on an experiment whose tags lack any kind."""
    if EXPERIMENT_KIND_TAG in tags:
        return  # a kind someone chose is theirs to keep
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    logger.info("experiment %s marked %s=%s so the MLflow UI opens on its runs", experiment_id,
                EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def trial_label(trial: Any, searched: Optional[Sequence[str]] = None) -> str:
    """Returns the run name of a Tune trial (see ``trial_run_name``)."""
    from facefuse.tracking.schema import flat_config

    index = trial_index(trial.trial_id, str(getattr(trial, "experiment_tag", "") or ""))
    return trial_run_name(trial.trial_id, flat_config(dict(trial.config)), searched, index)


def experiment_ui_url(ui_base: str, experiment_id: str) -> str:
    """Returns the MLflow UI address of an experiment's runs table.

    MLflow 3.17's UI picks its GenAI or model-training navigation from a workflow switch (the
    ``workflowType`` URL parameter, else the browser's last choice, GenAI by default) rather
    than from the experiment-kind tag; the parameter makes the link open on the runs table.
    """
    return f"{ui_base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"
