"""The MLflow tracking schema of facefuse, as constants: the public interface of the store.

A sweep writes one parent run (``KIND_SWEEP``) and one nested run per trial (``KIND_TRIAL``).
Everything that reads the store (selection, ablation tables, reports, the sweep command's
summary, anyone's own queries) uses these names; docs/architecture.md lists them with what each
means and which are stable.
"""

from __future__ import annotations

from typing import Any, Optional

# --------------------------------------------------------------------------- run kinds
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
#: A trial run whose trial the restored Tune experiment no longer knows (kept for inspection).
KIND_ORPHANED_TRIAL = "orphaned_trial"

# --------------------------------------------------------------------------- MLflow's own tags
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

# --------------------------------------------------------------------------- identity tags
TAG_KIND = "facefuse.kind"
TAG_SWEEP_ID = "facefuse.sweep_id"
TAG_TRIAL_ID = "facefuse.trial_id"
TAG_TRIAL_NAME = "facefuse.trial_name"

# --------------------------------------------------------------------------- what a run is about
TAG_DATASETS = "facefuse.datasets"
TAG_TRAIN_DATASET = "facefuse.train_dataset"
TAG_QUALITY = "facefuse.quality"
TAG_QUALITIES = "facefuse.qualities"
TAG_OBJECTIVE = "facefuse.objective"
TAG_ARCFACE_SHA256 = "facefuse.backbone.arcface_sha256"
TAG_ADAFACE_SHA256 = "facefuse.backbone.adaface_sha256"
TAG_GIT_COMMIT = "facefuse.git_commit"
TAG_JOB = "facefuse.job"
TAG_JOB_HASH = "facefuse.job_hash"
TAG_JOB_FILE = "facefuse.job_file"
TAG_SEARCH_SPACE = "facefuse.search_space"
TAG_VARIANT = "facefuse.variant"
TAG_SEED = "facefuse.seed"

# --------------------------------------------------------------------------- how a trial ended
TAG_FULL_BUDGET = "facefuse.full_budget"
TAG_EPOCHS_DONE = "facefuse.epochs_done"
TAG_STOPPED_BY_ASHA = "facefuse.stopped_by_asha"
TAG_FAILED_ATTEMPTS = "facefuse.failed_attempts"
TAG_LAST_ATTEMPT_ERROR = "facefuse.last_attempt_error"
TAG_ERROR = "facefuse.error"
TAG_ERROR_TRACE = "facefuse.error_trace"
TAG_ORPHANED = "facefuse.orphaned"

# --------------------------------------------------------------------------- sweep parent run
TAG_RESUMED = "facefuse.resumed"
TAG_TRIALS_TOTAL = "facefuse.trials_total"
TAG_TRIALS_FAILED = "facefuse.trials_failed"

# --------------------------------------------------------------------------- beta selection
#: On the chosen run: comma-separated datasets it is the best beta for.
TAG_BEST_BETA_FOR = "facefuse.best_beta_for"
#: On a registered model version: what the choice was made on.
TAG_SELECTED_DATASET = "facefuse.dataset"
TAG_SELECTED_METRIC = "facefuse.metric"
TAG_SELECTED_BETA = "facefuse.beta"
TAG_SELECTED_VALUE = "facefuse.value"
TAG_HAS_CHECKPOINT = "facefuse.has_checkpoint"
#: On a registered model version: where the estimated curve peaks (TAG_SELECTED_BETA is the
#: chosen run's beta param).
TAG_SELECTED_BETA_ESTIMATE = "facefuse.beta_estimate"
#: On a trial of a confirmation round (top betas rerun with several seeds at full budget).
TAG_CONFIRMATION = "facefuse.confirmation"
TAG_LOADABLE_MODEL = "facefuse.loadable_model"  # the version loads with mlflow.pytorch
TAG_MODEL_ID = "facefuse.model_id"  # a trial run's logged MLflow model (its best checkpoint)
#: On the sweep's parent run: the betas its confirmation round reran (comma-separated) and how
#: many trials that round ran.
TAG_CONFIRMED_BETAS = "facefuse.confirmed_betas"
#: On the parent and trial runs of a job that names validation sets of its own
#: (``selection.validation``, comma-separated): the objective was computed on them, so
#: best_beta selects on ``objective`` and reports the evaluated sets in full.
TAG_VALIDATION = "facefuse.validation"
TAG_CONFIRMATION_TRIALS = "facefuse.confirmation_trials"
#: On the parent run of a sweep whose job sets ``selection.quality``: the quality measure(s) of
#: the evaluated sets it logged (comma-separated; metrics ``quality_key``).
TAG_QUALITY_MEASURE = "facefuse.quality_measure"

# --------------------------------------------------------------------------- metrics
METRIC_EPOCH = "epoch"
METRIC_OBJECTIVE = "objective"
#: Seconds one epoch took (Tune's ``time_this_iter_s``, renamed).
METRIC_EPOCH_SECONDS = "time/epoch_s"

#: Held-out parts of an evaluated benchmark (facefuse.evaluation.splits), subject-disjoint:
#: ``<dataset>/sel/<metric>`` is tuned and selected on, ``<dataset>/test/<metric>`` reported.
PART_SELECTION = "sel"
PART_REPORT = "test"
#: Suffix of a part metric's standard error (the benchmark's own sampling error).
SE_SUFFIX = "_se"

#: Image-quality measures of a dataset (facefuse.quality), logged on a sweep's parent run as
#: ``quality/<dataset>/<measure>`` with ``..._se`` (standard error over images), ``..._n`` (images
#: measured) and ``..._total`` (images in the set).
QUALITY_MEASURES = ("adaface_norm", "sharpness")
QUALITY_PREFIX = "quality"
QUALITY_N_SUFFIX = "_n"
QUALITY_TOTAL_SUFFIX = "_total"

# --------------------------------------------------------------------------- artifacts
ARTIFACT_CONFIG = "config"
ARTIFACT_ROC = "roc"
ARTIFACT_BEST_CHECKPOINT = "best_checkpoint"

# --------------------------------------------------------------------------- filters
#: Trial runs that ended normally (ASHA-stopped ones included); the input of every analysis.
FINISHED_TRIAL_FILTER = (f"tags.`{TAG_KIND}` = '{KIND_TRIAL}' and "
                         "attributes.status = 'FINISHED'")


def metric_key(dataset: str, metric: str) -> str:
    """Returns the MLflow metric key of a dataset's metric ('<dataset>/<metric>')."""
    return metric if metric.startswith(dataset + "/") else f"{dataset}/{metric}"


def part_key(dataset: str, metric: str, part: str) -> str:
    """Returns the key of a benchmark part's metric: ('lfw', 'acc', 'sel') -> 'lfw/sel/acc'."""
    name = metric[len(dataset) + 1:] if metric.startswith(dataset + "/") else metric
    return f"{dataset}/{part}/{name}"


def quality_key(dataset: str, measure: str, suffix: str = "") -> str:
    """Returns the parent-run metric of a dataset's measured quality: 'quality/lfw/adaface_norm'."""
    return f"{QUALITY_PREFIX}/{dataset}/{measure}{suffix}"


def parse_quality_key(key: str) -> Optional[tuple[str, str]]:
    """Returns (dataset, measure) of a quality metric key (not of its _se / _n), else None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[0] != QUALITY_PREFIX or parts[2] not in QUALITY_MEASURES:
        return None
    return parts[1], parts[2]


def kind_filter(kind: str) -> str:
    """Returns the filter string selecting every run of a kind (``KIND_SWEEP``, ``KIND_TRIAL``)."""
    return f"tags.`{TAG_KIND}` = '{kind}'"


def sweep_filter(sweep_id: str, kind: Optional[str] = None, trial_id: Optional[str] = None) -> str:
    """Returns the filter string selecting a sweep's runs (of one kind, of one trial)."""
    parts = [f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}'"]
    if kind is not None:
        parts.append(f"tags.`{TAG_KIND}` = '{kind}'")
    if trial_id is not None:
        parts.append(f"tags.`{TAG_TRIAL_ID}` = '{trial_id}'")
    return " and ".join(parts)


def is_true(value: Optional[str]) -> bool:
    """Returns whether a tag value means true (tags are strings: 'true', 'True', '1')."""
    return str(value).strip().lower() in ("true", "1", "yes")


def tag_list(value: Optional[str]) -> list[str]:
    """Returns the items of a comma-separated tag (empty items dropped)."""
    return [item for item in (value or "").split(",") if item]


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """Returns the config a trainable really uses: nested dict entries merged over the top level.

    A grid entry such as the ablation's (``{"__ablation": {"variant": ..., "beta": ...}}``) is
    merged by the trainable before use, so its keys are the run's params.
    """
    flat = {k: v for k, v in config.items() if not isinstance(v, dict)}
    for value in config.values():
        if isinstance(value, dict):
            flat.update(flat_config(value))
    return flat


def dotted_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Returns nested mappings flattened to dotted keys ({"asha": {"max_t": 3}} -> "asha.max_t")."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(dotted_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
