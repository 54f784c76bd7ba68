"""Job files: what a sweep trains on, evaluates, searches, and where it runs and records.

A job file is YAML with these sections (every key optional unless marked)::

    name: ijbb_beta                      # required; names the sweep, its storage and experiment
    seed: 0                              # Optuna sampler seed and the training seed
    data:
      root: embedded                     # path, or "embedded" (<cwd>/.facefuse/data);
                                         # omitted: $FACEFUSE_DATA, else embedded
      train: ms1mv2                      # required; a dataset registry name
      eval: [ijbb, lfw]                  # required; evaluated every epoch
      cache_dir: embedded                # feature cache; "embedded" = <cwd>/.facefuse/cache, "none"
      train_subset: {identities: 10000, per_identity: 20, seed: 0}   # class-balanced, seeded;
                                         # omitted: the whole train set
    backbones:
      arcface: embedded                  # checkpoint path or "embedded" (the tiny ones)
      adaface: embedded
    search_space: search_spaces/mixed_quality.yaml
    objective: {dataset: ijbb, metric: tar_far_1e-4}   # or "mean:high", or "ijbb/tar_far_1e-4"
    trials: 16
    epochs: 6
    asha: {grace_period: 1, reduction_factor: 2, max_t: 6}
    resources: {workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1,  # gpus: 0.25 shares
                max_concurrent_trials: 2,
                checkpoint_every_steps: 0,       # also checkpoint mid-epoch every N steps
                checkpoint_every_minutes: 15,    # ... and every M minutes of training (0: off)
                train_driver_resource: null}     # custom resource for multi-worker Train drivers
    max_failures: 1                      # retries of a failed trial (from its last checkpoint)
    tracking: {uri: null, experiment: ijbb_beta,   # uri: sqlite, mlflow server URL, postgresql+psycopg
               artifact_location: null}  # e.g. s3://bucket/mlflow for the experiments it creates
    storage: null                        # Ray Tune results; default <cwd>/.facefuse/ray_results
    variant: null                        # ablation label, written as the facefuse.variant tag
    params: {batch_size: 128, d_model: 128}   # fixed model/training settings of every trial
    selection: {confirm_top: 0, seeds: 3,      # confirmation round (off at 0)
                validation: [],                # sets of the job's own to tune on
                quality: null}                 # adaface_norm | sharpness: log each eval set's
                                               # measured quality on the parent run

Relative paths are resolved against the directory the command starts from (a ``ray job
submit`` driver starts in its unpacked working directory, i.e. the project root); a search space
path is also looked up beside the job file.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from facefuse.errors import ConfigError
from facefuse.sweep.spaces import check_domain
from facefuse.tracking.schema import QUALITY_MEASURES
from facefuse.tracking.store import resolve_tracking_uri
from facefuse.train.context import TrialContext

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

EMBEDDED = "embedded"
QUALITY_GROUPS = ("high", "mixed", "low", "all")
METRIC_NAMES = ("acc", "tar_far_1e-4")
#: Trial params that carry data.train_subset (None: the whole train set).
SUBSET_PARAMS = ("train_subset_identities", "train_subset_per_identity", "train_subset_seed")



class _Spec(BaseModel):
    """A section of a job file: unknown keys and wrong types are errors, numbers are finite."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False,
                              validate_default=False)


class TrainSubsetSpec(_Spec):
    """A class-balanced part of the train set: ``identities`` x ``per_identity`` images, seeded."""

    identities: int = Field(ge=1)
    per_identity: int = Field(ge=1)
    seed: int = Field(default=0, ge=0)


class DataSpec(_Spec):
    """Where the data is and which datasets a trial trains on and evaluates."""

    root: Optional[str] = Field(default=None, min_length=1)
    train: str = Field(min_length=1)
    eval: list[Annotated[str, Field(min_length=1)]]
    cache_dir: Optional[str] = Field(default=EMBEDDED, min_length=1)
    # issue 11: for a training set that does not fit
    train_subset: Optional[TrainSubsetSpec] = None


class BackboneSpec(_Spec):
    """The two frozen backbone checkpoints (paths or "embedded")."""

    arcface: str = Field(default=EMBEDDED, min_length=1)
    adaface: str = Field(default=EMBEDDED, min_length=1)


class ObjectiveSpec(_Spec):
    """What a sweep maximises: one dataset's metric, or a quality group's mean primary metric."""

    dataset: Optional[str] = Field(default=None, min_length=1)
    metric: Optional[str] = Field(default=None, min_length=1)
    quality: Optional[str] = Field(default=None, min_length=1)
    mode: str = Field(default="max", min_length=1)

    def describe(self) -> str:
        """Returns the objective as one string, e.g. "ijbb/tar_far_1e-4" or "mean:high"."""
        if self.quality is not None:
            return f"mean:{self.quality}"
        return f"{self.dataset}/{self.metric or 'primary'}"

    def to_context(self) -> dict[str, Any]:
        """Returns the spec the trainable's ``objective_value`` understands."""
        if self.quality is not None:
            return {"quality": self.quality}
        out: dict[str, Any] = {"dataset": self.dataset}
        if self.metric:
            out["metric"] = self.metric
        return out


class AshaSpec(_Spec):
    """ASHA settings; max_t defaults to the job's epochs."""

    grace_period: int = Field(default=1, ge=1)
    reduction_factor: int = Field(default=2, ge=2)
    max_t: Optional[int] = Field(default=None, ge=1)


class ResourceSpec(_Spec):
    """Per-trial resources and concurrency."""

    workers_per_trial: int = Field(default=1, ge=1)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    cpus_per_worker: float = 1.0  # > 0, checked with its own hint (fractions are fine)
    max_concurrent_trials: int = Field(default=2, ge=1)
    # Issue 12 (cluster) fields. Mid-epoch checkpoints: every N training steps (0: off) and at
    # least every M minutes of training (0: off), besides the one at each epoch end.
    checkpoint_every_steps: int = Field(default=0, ge=0)
    checkpoint_every_minutes: float = Field(default=15.0, ge=0)
    # A custom Ray resource (e.g. "train_driver") that the Train driver actors of multi-worker
    # trials ask for, so they land on a CPU node; None: Ray's default placement.
    train_driver_resource: Optional[str] = Field(default=None, min_length=1)


class TrackingSpec(_Spec):
    """MLflow store and experiment; uri None means $MLFLOW_TRACKING_URI, else ./mlflow.db."""

    uri: Optional[str] = Field(default=None, min_length=1)
    experiment: Optional[str] = Field(default=None, min_length=1)
    # Where the experiments this job creates keep their artifacts (s3://bucket/prefix on a
    # cluster); None: next to a sqlite store, or the server's --artifacts-destination.
    artifact_location: Optional[str] = Field(default=None, min_length=1)


class AblationSpec(_Spec):
    """The ablation command's defaults: variants, betas and seeds (each a list)."""

    variants: list[Any] = Field(default_factory=list)
    betas: list[Any] = Field(default_factory=list)
    seeds: list[Any] = Field(default_factory=list)


# --- selection: the confirmation round and named validation sets (issue 13) ---------------------
class SelectionSpec(_Spec):
    """How beta is selected: a confirmation round, or validation sets of the job's own.

    ``confirm_top`` > 0 reruns the top distinct betas of the main round with ``seeds`` seeds each
    at full budget (no ASHA) in the same sweep. ``validation`` names datasets whose full-set
    metrics drive the objective, ASHA and the best checkpoint instead of the evaluated sets'
    selection parts (the evaluated sets are then reported in full).
    """

    confirm_top: int = Field(default=0, ge=0)
    seeds: int = Field(default=3, ge=1)
    validation: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # issue 16: measure every evaluated set's image quality (facefuse.quality, e.g.
    # "adaface_norm") and log it on the parent run, for best beta against quality
    quality: Optional[str] = Field(default=None, min_length=1)


def _check_selection(path: Optional[PathLike], job: "JobSpec") -> None:
    sel = job.selection
    if sel.quality is not None and sel.quality not in QUALITY_MEASURES:
        raise _fail(path, "selection.quality", f"unknown quality measure {sel.quality!r}",
                    f"use one of {', '.join(QUALITY_MEASURES)}")
    for i, ds in enumerate(sel.validation):
        _check_dataset(path, f"selection.validation[{i}]", ds)
        if ds in job.data.eval:
            raise _fail(path, f"selection.validation[{i}]",
                        f"{ds!r} is both a validation set and an evaluated set (data.eval)",
                        "a set that selects cannot also report: remove it from one of the two")
    if len(set(sel.validation)) != len(sel.validation):
        raise _fail(path, "selection.validation", "selection.validation lists a dataset twice",
                    "list each dataset once")
    if sel.validation:
        # The objective is computed on the validation sets (their full metrics).
        _check_objective(path, job.objective, list(sel.validation))
# -----------------------------------------------------------------------------------------------


class JobSpec(_Spec):
    """A validated job file. Paths stay as written until ``resolve_paths``."""

    name: str = Field(min_length=1)
    seed: int = Field(default=0, ge=0)
    data: DataSpec
    backbones: BackboneSpec = Field(default_factory=BackboneSpec)
    search_space: str = Field(min_length=1)
    objective: ObjectiveSpec
    trials: int = Field(default=8, ge=1)
    epochs: int = Field(default=3, ge=1)
    asha: AshaSpec = Field(default_factory=AshaSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)
    max_failures: int = Field(default=1, ge=0)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    storage: Optional[str] = Field(default=None, min_length=1)
    variant: Optional[str] = Field(default=None, min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    ablation: dict[str, Any] = Field(default_factory=dict)  # variants, betas, seeds
    # issue 11 (feature store): "auto" extracts missing feature entries before the sweep,
    # "require" refuses to start without them
    features: Literal["require", "auto"] = "require"
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    # Not keys of the file: where it came from and what the driver did with it.
    source: Optional[str] = None
    resolved: bool = False
    written: dict[str, Any] = Field(default_factory=dict, repr=False, exclude=True)

    @property
    def experiment_name(self) -> str:
        """Returns the MLflow experiment name (tracking.experiment, else the job name)."""
        return self.tracking.experiment or self.name

    @property
    def max_t(self) -> int:
        """Returns ASHA's max_t (the job's epochs unless set)."""
        return self.asha.max_t or self.epochs

    def to_dict(self) -> dict[str, Any]:
        """Returns the job as plain data (what the resolved-config artifact holds)."""
        return self.model_dump()

    def identity_hash(self) -> str:
        """Returns a sha256 over what defines the sweep's results, as the job file wrote it.

        Paths count as written, not resolved: a ``ray job submit`` driver runs in a fresh copy
        of the project each time, and resubmitting the same job must find the same sweep.
        Resources, tracking, storage and retries do not count (changing concurrency after a
        crash still resumes); data, space (its content once resolved), objective, budget and
        fixed params do.
        """
        d = dict(self.written) if self.written else self.to_dict()
        for key in ("resources", "tracking", "storage", "source", "resolved", "max_failures",
                    "features"):
            d.pop(key, None)
        # The confirmation round does not change the main round: adding it to a finished sweep
        # resumes that sweep and runs only the round. Validation sets change every trial.
        sel = d.pop("selection", None)
        if sel and sel.get("validation"):
            d["selection.validation"] = list(sel["validation"])
        if self.resolved:
            try:
                d["search_space_sha256"] = hashlib.sha256(
                    Path(self.search_space).read_bytes()).hexdigest()
            except OSError:
                pass
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


#: Keys a job file may hold: JobSpec's fields less those the platform sets.
_FILE_KEYS = tuple(k for k in JobSpec.model_fields if k not in ("source", "resolved", "written"))
#: Sections whose value may be left empty (``data:`` with nothing under it) in the file.
_SECTIONS = ("data", "backbones", "asha", "resources", "tracking", "selection")


# --------------------------------------------------------------------------- validation messages
def _fail(path: Optional[PathLike], key: str, msg: str, fix: Optional[str] = None) -> ConfigError:
    return ConfigError(path, msg, field=key, fix=fix)


def _unknown_key(path: Optional[PathLike], prefix: str, key: Any, allowed: Sequence[str]
                 ) -> ConfigError:
    dotted = f"{prefix}{key}"
    close = difflib.get_close_matches(str(key), list(allowed), n=1, cutoff=0.5)
    fix = (f"did you mean {prefix}{close[0]!s}?" if close
           else f"valid keys here: {', '.join(allowed)}")
    return _fail(path, dotted, f"unknown key {dotted!r}", fix)


_TYPE_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "list": "a list", "dict": "a mapping"}
#: pydantic error types -> the kind of value the key wants.
_ERROR_KINDS = {"int_type": "int", "int_from_float": "int", "float_type": "float",
                "string_type": "str", "string_too_short": "str", "list_type": "list",
                "dict_type": "dict", "model_type": "dict", "bool_type": "bool"}


def _dotted(loc: Sequence[Union[str, int]]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _model_at(root: type[BaseModel], loc: Sequence[Union[str, int]]) -> Optional[type[BaseModel]]:
    """Returns the model whose field the last element of ``loc`` names."""
    model: Any = root
    for part in loc[:-1]:
        field_info = model.model_fields.get(part) if isinstance(part, str) else None
        ann = _section_model(getattr(field_info, "annotation", None))
        if ann is None:
            return None
        model = ann
    return model


def _section_model(ann: Any) -> Optional[type[BaseModel]]:
    """Returns the model of a field annotated ``Model`` or ``Optional[Model]``, else None."""
    for cand in (ann, *typing.get_args(ann)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def _translate(path: Optional[PathLike], exc: ValidationError, root: Optional[type[BaseModel]] = None,
               prefix: tuple[str, ...] = ()) -> ConfigError:
    """Returns the ConfigError of a job's first validation error, in the project's words.

    ``root`` is the model that was validated; ``prefix`` where it sits in the job file.
    """
    root = root or JobSpec
    errors = exc.errors()
    # Unknown keys and sections that are not mappings are reported before the values in them.
    order = {"extra_forbidden": 0, "model_type": 0}
    err = min(errors, key=lambda e: order.get(e["type"], 1))
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    key = _dotted(prefix + loc)
    if kind == "extra_forbidden":
        model = _model_at(root, loc)
        allowed = list(model.model_fields) if model is not None else []
        return _unknown_key(path, key[: -len(str(loc[-1]))], loc[-1], allowed)
    if kind == "missing" or (value is None and kind in _ERROR_KINDS):
        want = _ERROR_KINDS.get(kind, "str")
        model = _model_at(root, loc)
        if kind == "missing" and model is not None:
            ann = model.model_fields[str(loc[-1])].annotation
            if _section_model(ann) is not None:
                want = "dict"  # a section
            else:
                want = next((k for k in ("list", "dict", "int", "float") if k in str(ann)), "str")
        return _fail(path, key, f"{key} is required", f"give {_TYPE_NAMES[want]}")
    if kind == "finite_number":
        return _fail(path, key, f"{key} must be finite, got {float(value)}", "give a finite number")
    if kind == "greater_than_equal":
        low = err["ctx"]["ge"]
        model = _model_at(root, loc)
        if model is not None and model.model_fields[str(loc[-1])].annotation is float:
            value = float(value)  # a float setting given as 0 reads 0.0, as it is stored
        return _fail(path, key, f"{key} must be >= {low:g}, got {value}", f"give a value >= {low:g}")
    want = _TYPE_NAMES.get(_ERROR_KINDS.get(kind, ""), "a valid value")
    return _fail(path, key, f"{key} must be {want}, got {value!r} ({type(value).__name__})",
                 f"give {want}")


def _registry() -> Any:
    """Returns facefuse.data, whose registry names every dataset."""
    from facefuse import data as data_mod  # imports numpy and PIL; commands pay it only here

    return data_mod


def dataset_quality(name: str) -> str:
    """Returns a dataset's quality ("high", "mixed", "low") or "unknown" for an unknown name."""
    reg = _registry()
    if name not in reg.DATASETS:
        return "unknown"
    return str(reg.get_dataset(name).quality)


def _check_dataset(path: Optional[PathLike], key: str, name: str) -> None:
    reg = _registry()
    if name not in reg.DATASETS:
        names = sorted(reg.DATASETS)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        fix = f"did you mean {close[0]!r}?" if close else f"known datasets: {', '.join(names)}"
        raise _fail(path, key, f"unknown dataset {name!r}", fix)


def _objective_raw(raw: Any) -> Any:
    """Returns the mapping form of an objective written as "mean:high" or "ijbb/tar_far_1e-4"."""
    if isinstance(raw, str):
        if raw.startswith("mean:"):
            return {"quality": raw[len("mean:"):]}
        if "/" in raw:
            ds, metric = raw.split("/", 1)
            return {"dataset": ds, "metric": metric}
        return {"dataset": raw}
    return raw


def _check_objective(path: Optional[PathLike], spec: ObjectiveSpec, eval_sets: list[str]) -> None:
    if spec.mode != "max":
        raise _fail(path, "objective.mode", f"objective.mode must be 'max', got {spec.mode!r}",
                    "every reported metric (accuracy, TAR) is better when larger; use max")
    if (spec.dataset is None) == (spec.quality is None):
        raise _fail(path, "objective", "objective needs exactly one of dataset or quality",
                    "write e.g. {dataset: ijbb, metric: tar_far_1e-4} or \"mean:high\"")
    if spec.quality is not None:
        if spec.quality not in QUALITY_GROUPS:
            raise _fail(path, "objective.quality", f"unknown quality group {spec.quality!r}",
                        f"use one of: {', '.join(QUALITY_GROUPS)}")
        if spec.metric is not None:
            raise _fail(path, "objective.metric", "a quality-group objective averages each "
                        "dataset's primary metric and takes no metric",
                        "remove objective.metric")
        if spec.quality != "all" and not any(dataset_quality(d) == spec.quality
                                             for d in eval_sets):
            raise _fail(path, "objective.quality",
                        f"no dataset of quality {spec.quality!r} in data.eval {eval_sets}",
                        "add one to data.eval or choose another group")
        return
    if spec.dataset not in eval_sets:
        raise _fail(path, "objective.dataset",
                    f"objective dataset {spec.dataset!r} is not evaluated (data.eval: {eval_sets})",
                    f"add {spec.dataset!r} to data.eval")
    if spec.metric is not None and spec.metric not in METRIC_NAMES and \
            not spec.metric.startswith("tar_far_"):
        raise _fail(path, "objective.metric", f"unknown metric {spec.metric!r}",
                    "use acc (verification sets) or tar_far_<far> such as tar_far_1e-4 (IJB)")


def _check_params(path: Optional[PathLike], params: dict[str, Any]) -> None:
    """Checks fixed params are scalars naming model or training settings ("_" keys pass)."""
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)) or value is None:
            raise _fail(path, f"params.{key}", f"params.{key} must be a number, string or "
                        f"boolean, got {value!r}", "fixed params are scalars; search lists "
                        "in a search space file")
    # facefuse.train's config imports torch: seconds that a job with no params never pays.
    from facefuse.model import FusionConfig
    from facefuse.train.loop import TrainConfig

    known = {f.name for f in dataclasses.fields(FusionConfig)} | \
        {f.name for f in dataclasses.fields(TrainConfig)}
    # Set by the platform from the job or the data, never by hand.
    reserved = {"epochs": "epochs", "seed": "seed", "num_classes": "data.train",
                "in_channels_a": "the backbones", "in_channels_b": "the backbones",
                "map_size": "the backbones", **{k: "data.train_subset" for k in SUBSET_PARAMS}}
    for key in params:
        if key.startswith("_"):
            continue
        if key in reserved:
            raise _fail(path, f"params.{key}", f"params.{key} is set by the platform",
                        f"set it through {reserved[key]} instead")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
            fix = f"did you mean params.{close[0]}?" if close else \
                f"valid keys: {', '.join(sorted(known - set(reserved)))}"
            raise _fail(path, f"params.{key}", f"unknown key 'params.{key}'", fix)
        # a bounded model setting (mix) fails here, not in every trial
        check_domain(path, f"params.{key}", key, [params[key]])


# --------------------------------------------------------------------------- loading
def parse_job(raw: Any, path: Optional[PathLike] = None) -> JobSpec:
    """Returns a validated JobSpec from parsed YAML; raises ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise _fail(path, "(top level)", "a job file must be a YAML mapping",
                    "start from jobs/quickstart.yaml")
    for key in raw:
        if key not in _FILE_KEYS:
            raise _unknown_key(path, "", key, _FILE_KEYS)
    given = dict(raw)
    for name in (*_SECTIONS, "params"):
        if given.get(name) is None:
            given[name] = {}  # "data:" with nothing under it is an empty section
    if not given.get("ablation"):
        given["ablation"] = {}
    if "objective" in given:
        given["objective"] = _objective_raw(given["objective"])
    try:
        job = JobSpec.model_validate(given)
    except ValidationError as exc:
        raise _translate(path, exc) from None
    try:
        AblationSpec.model_validate(job.ablation)
    except ValidationError as exc:
        raise _translate(path, exc, AblationSpec, ("ablation",)) from None
    job.source = None if path is None else os.fspath(path)

    if any(c in job.name for c in "/\\ ") or job.name.startswith("."):
        raise _fail(path, "name", f"name {job.name!r} must be usable as a directory name",
                    "use letters, digits, '-', '_' and '.' only")
    data = job.data
    if not data.eval:
        raise _fail(path, "data.eval", "data.eval is empty", "name at least one dataset to evaluate")
    for i, ds in enumerate(data.eval):
        _check_dataset(path, f"data.eval[{i}]", ds)
    if len(set(data.eval)) != len(data.eval):
        raise _fail(path, "data.eval", f"data.eval lists a dataset twice: {data.eval}",
                    "list each dataset once")
    _check_dataset(path, "data.train", data.train)
    _check_params(path, job.params)
    if not job.selection.validation:
        _check_objective(path, job.objective, data.eval)
    _check_selection(path, job)

    asha, resources = job.asha, job.resources
    if asha.max_t is not None and asha.max_t > job.epochs:
        raise _fail(path, "asha.max_t", f"asha.max_t={asha.max_t} exceeds epochs={job.epochs}",
                    "leave asha.max_t unset (it defaults to epochs) or raise epochs")
    if asha.grace_period > job.max_t:
        raise _fail(path, "asha.grace_period",
                    f"asha.grace_period={asha.grace_period} exceeds max_t={job.max_t}",
                    "use a grace period of at most the number of epochs")
    if resources.cpus_per_worker <= 0:
        raise _fail(path, "resources.cpus_per_worker",
                    f"resources.cpus_per_worker must be > 0, got {resources.cpus_per_worker}",
                    "give a positive number (fractions such as 0.5 are allowed)")
    # Issue 12: fractional GPUs (several small heads share one); Ray only splits one device.
    gpus = resources.gpus_per_worker
    if gpus > 1 and not float(gpus).is_integer():
        raise _fail(path, "resources.gpus_per_worker",
                    f"resources.gpus_per_worker={gpus:g}: above 1 it must be a whole number",
                    "give a fraction of one GPU (e.g. 0.25: four trials share a GPU) or whole GPUs")
    if "beta" in job.params:
        logger.warning("%s: params.beta fixes beta for every trial", path)
    job.written = job.to_dict()
    return job


def load_job(path: PathLike) -> JobSpec:
    """Returns the validated job of a YAML file (paths not yet resolved)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(p, "job file not found", fix="give the path of a jobs/*.yaml file")
    except OSError as exc:
        raise ConfigError(p, f"cannot read job file: {exc}")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(p, f"not valid YAML{where}: {getattr(exc, 'problem', exc)}",
                          fix="check indentation and quoting")
    return parse_job(raw, p)


# --------------------------------------------------------------------------- path resolution
def _abs(value: str, cwd: Path) -> str:
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (cwd / p).resolve())


def resolve_paths(job: JobSpec, cwd: Optional[PathLike] = None) -> JobSpec:
    """Returns a copy of the job with every path absolute (run this in the driver)."""
    from facefuse.embedded import embedded_paths

    base = Path(cwd or os.getcwd()).resolve()
    emb = embedded_paths(base)
    out = job.model_copy(update={
        "data": job.data.model_copy(), "backbones": job.backbones.model_copy(),
        "tracking": job.tracking.model_copy(), "params": dict(job.params), "resolved": True})

    root = job.data.root or os.environ.get("FACEFUSE_DATA") or EMBEDDED
    out.data.root = str(emb.data_root) if root == EMBEDDED else _abs(root, base)
    cache = job.data.cache_dir
    if cache is None or cache.lower() == "none":
        out.data.cache_dir = None
    else:
        # a URI (s3://, gs://) is a store address, not a path relative to the job file
        out.data.cache_dir = str(emb.cache_dir) if cache == EMBEDDED else (
            cache if "://" in cache and not cache.startswith("file://") else _abs(cache, base))
    out.backbones.arcface = (str(emb.arcface_checkpoint) if job.backbones.arcface == EMBEDDED
                             else _abs(job.backbones.arcface, base))
    out.backbones.adaface = (str(emb.adaface_checkpoint) if job.backbones.adaface == EMBEDDED
                             else _abs(job.backbones.adaface, base))

    space = Path(os.path.expanduser(job.search_space))
    if not space.is_absolute():
        candidates = [base / space]
        if job.source:
            candidates.append(Path(job.source).resolve().parent / space)
        space = next((c for c in candidates if c.exists()), candidates[0])
    if not space.exists():
        raise ConfigError(job.source, f"search space file {str(space)!r} not found",
                          field="search_space",
                          fix="give a path relative to the directory you run from, "
                              "e.g. search_spaces/high_quality.yaml")
    out.search_space = str(space.resolve())

    storage = job.storage
    if storage is None:
        out.storage = str(emb.results_dir)
    elif "://" not in storage:
        out.storage = _abs(storage, base)
    out.tracking.uri = resolve_tracking_uri(job.tracking.uri, base)
    art = job.tracking.artifact_location
    if art is not None and "://" not in art:
        out.tracking.artifact_location = Path(_abs(art, base)).as_uri()
    return out


def trial_context(job: JobSpec) -> dict[str, Any]:
    """Returns the trial context of a resolved job as the dict Tune hands to every trial.

    Built once per sweep in the driver; ``TrialContext`` is its one schema (and checks it).
    """
    if not job.resolved:
        raise ConfigError(job.source, "job paths are not resolved", field="(job)",
                          fix="call facefuse.sweep.jobs.resolve_paths(job) in the driver first")
    r = job.resources
    validation = job.selection.validation
    return TrialContext(
        data_root=job.data.root,
        cache_dir=job.data.cache_dir,
        arcface_checkpoint=job.backbones.arcface,
        adaface_checkpoint=job.backbones.adaface,
        train_dataset=job.data.train,
        eval_datasets=list(job.data.eval) + list(validation),
        objective=({**job.objective.to_context(), "validation": list(validation)} if validation
                   else job.objective.to_context()),
        workers_per_trial=r.workers_per_trial,
        gpus_per_worker=r.gpus_per_worker,
        cpus_per_worker=r.cpus_per_worker,
        storage=job.storage,
        checkpoint_every_steps=r.checkpoint_every_steps,
        checkpoint_every_s=r.checkpoint_every_minutes * 60.0,
        train_driver_resource=r.train_driver_resource,
        # Torch would otherwise start one thread per core in every concurrent trial.
        torch_threads=max(1, int(r.cpus_per_worker)),
    ).to_dict()


def train_flips(job: JobSpec) -> bool:
    """Returns whether trials train on mirrored maps too: params.flip_augment, else the default.

    The default is on for the synthetic suite (the quickstart's numbers) and off for real data,
    where the mirrored train maps double a store that already does not fit (MS1MV2 at r100:
    about 291 GB per backbone and flip).
    """
    if "flip_augment" in job.params:
        return bool(job.params["flip_augment"])
    reg = _registry()
    return bool(reg.get_dataset(job.data.train).synthetic)


def eval_flips(job: JobSpec) -> bool:
    """Returns whether evaluation uses the flip test (params.flip_test, default on): off, the
    eval sets need no mirrored maps and each epoch embeds half as many (the quickstart)."""
    return bool(job.params.get("flip_test", True))


def fixed_config(job: JobSpec) -> dict[str, Any]:
    """Returns the settings every trial shares: fixed params, epochs, the seed and train data.

    The train-set choices (mirrored maps, the class-balanced subset) are in every trial's config
    so that each trial run records them as params.
    """
    cfg = dict(job.params)
    cfg["epochs"] = job.epochs
    cfg["seed"] = job.seed
    cfg["flip_augment"] = train_flips(job)
    cfg["flip_test"] = eval_flips(job)
    sub = job.data.train_subset
    cfg.update(zip(SUBSET_PARAMS, (sub.identities, sub.per_identity, sub.seed) if sub
                   else (None, None, None)))
    return cfg
