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
    backbones:
      arcface: embedded                  # checkpoint path or "embedded" (the tiny ones)
      adaface: embedded
    search_space: search_spaces/mixed_quality.yaml
    objective: {dataset: ijbb, metric: tar_far_1e-4}   # or "mean:high", or "ijbb/tar_far_1e-4"
    trials: 16
    epochs: 6
    asha: {grace_period: 1, reduction_factor: 2, max_t: 6}
    resources: {workers_per_trial: 1, gpus_per_worker: 0, cpus_per_worker: 1,
                max_concurrent_trials: 2}
    max_failures: 1                      # retries of a failed trial (from its last checkpoint)
    tracking: {uri: null, experiment: ijbb_beta}
    storage: null                        # Ray Tune results; default <cwd>/.facefuse/ray_results
    variant: null                        # ablation label, written as the facefuse.variant tag
    params: {batch_size: 128, d_model: 128}   # fixed model/training settings of every trial

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
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml

from facefuse.errors import ConfigError
from facefuse.tracking.store import resolve_tracking_uri
from facefuse.train.context import TrialContext

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

EMBEDDED = "embedded"
QUALITY_GROUPS = ("high", "mixed", "low", "all")
METRIC_NAMES = ("acc", "tar_far_1e-4")

#: Environment variables whose values must never reach params, tags or artifacts.
SECRET_ENV_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                   "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "DATABRICKS_TOKEN")


@dataclass
class DataSpec:
    """Where the data is and which datasets a trial trains on and evaluates."""

    root: Optional[str] = None
    train: str = ""
    eval: list[str] = field(default_factory=list)
    cache_dir: Optional[str] = EMBEDDED


@dataclass
class BackboneSpec:
    """The two frozen backbone checkpoints (paths or "embedded")."""

    arcface: str = EMBEDDED
    adaface: str = EMBEDDED


@dataclass
class ObjectiveSpec:
    """What a sweep maximises: one dataset's metric, or a quality group's mean primary metric."""

    dataset: Optional[str] = None
    metric: Optional[str] = None
    quality: Optional[str] = None
    mode: str = "max"

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


@dataclass
class AshaSpec:
    """ASHA settings; max_t defaults to the job's epochs."""

    grace_period: int = 1
    reduction_factor: int = 2
    max_t: Optional[int] = None


@dataclass
class ResourceSpec:
    """Per-trial resources and concurrency."""

    workers_per_trial: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    max_concurrent_trials: int = 2


@dataclass
class TrackingSpec:
    """MLflow store and experiment; uri None means $MLFLOW_TRACKING_URI, else ./mlflow.db."""

    uri: Optional[str] = None
    experiment: Optional[str] = None


@dataclass
class JobSpec:
    """A validated job file. Paths stay as written until ``resolve_paths``."""

    name: str
    data: DataSpec
    search_space: str
    objective: ObjectiveSpec
    backbones: BackboneSpec = field(default_factory=BackboneSpec)
    trials: int = 8
    epochs: int = 3
    asha: AshaSpec = field(default_factory=AshaSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    max_failures: int = 1
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    storage: Optional[str] = None
    seed: int = 0
    variant: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)
    ablation: dict[str, Any] = field(default_factory=dict)  # variants, betas, seeds (ablation runs)
    source: Optional[str] = None  # the job file this came from
    resolved: bool = False
    written: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        d = dataclasses.asdict(self)
        d.pop("written", None)
        return d

    def identity_hash(self) -> str:
        """Returns a sha256 over what defines the sweep's results, as the job file wrote it.

        Paths count as written, not resolved: a ``ray job submit`` driver runs in a fresh copy
        of the project each time, and resubmitting the same job must find the same sweep.
        Resources, tracking, storage and retries do not count (changing concurrency after a
        crash still resumes); data, space (its content once resolved), objective, budget and
        fixed params do.
        """
        d = dict(self.written) if self.written else self.to_dict()
        for key in ("resources", "tracking", "storage", "source", "resolved", "max_failures"):
            d.pop(key, None)
        if self.resolved:
            try:
                d["search_space_sha256"] = hashlib.sha256(
                    Path(self.search_space).read_bytes()).hexdigest()
            except OSError:
                pass
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- validation helpers
_SECTIONS: dict[str, Any] = {
    "data": DataSpec, "backbones": BackboneSpec, "asha": AshaSpec, "resources": ResourceSpec,
    "tracking": TrackingSpec,
}
_TOP_KEYS = ("name", "seed", "data", "backbones", "search_space", "objective", "trials", "epochs",
             "asha", "resources", "max_failures", "tracking", "storage", "variant", "params",
             "ablation")
_ABLATION_KEYS = ("variants", "betas", "seeds")


def _fail(path: Optional[PathLike], key: str, msg: str, fix: Optional[str] = None) -> ConfigError:
    return ConfigError(path, msg, field=key, fix=fix)


def _check_keys(path: Optional[PathLike], prefix: str, given: Mapping[str, Any],
                allowed: Any) -> None:
    allowed = list(allowed)
    for key in given:
        if key in allowed:
            continue
        dotted = f"{prefix}{key}"
        close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
        fix = (f"did you mean {prefix}{close[0]!s}?" if close
               else f"valid keys here: {', '.join(allowed)}")
        raise _fail(path, dotted, f"unknown key {dotted!r}", fix)


def _type_name(kind: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list", dict: "a mapping"}.get(kind, str(kind))


def _coerce(path: Optional[PathLike], key: str, value: Any, kind: Any, optional: bool = False) -> Any:
    if value is None:
        if optional:
            return None
        raise _fail(path, key, f"{key} is required", f"give {_type_name(kind)}")
    ok = False
    if kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if not math.isfinite(value):
                raise _fail(path, key, f"{key} must be finite, got {value}", "give a finite number")
    elif kind is str:
        ok = isinstance(value, str) and value != ""
    elif kind is list:
        ok = isinstance(value, list)
    elif kind is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise _fail(path, key, f"{key} must be {_type_name(kind)}, got {value!r} "
                    f"({type(value).__name__})", f"give {_type_name(kind)}")
    return value


def _at_least(path: Optional[PathLike], key: str, value: Optional[float], low: float) -> None:
    if value is not None and value < low:
        raise _fail(path, key, f"{key} must be >= {low:g}, got {value}",
                    f"give a value >= {low:g}")


def _registry() -> Optional[Any]:
    """Returns facefuse.data's registry module when it exists (it is written by another part)."""
    try:
        from facefuse import data as data_mod
    except ImportError:  # pragma: no cover - the package exists; its registry may not yet
        return None
    return data_mod if hasattr(data_mod, "DATASETS") and hasattr(data_mod, "get_dataset") else None


def dataset_quality(name: str) -> str:
    """Returns a dataset's quality ("high", "mixed", "low") or "unknown" without a registry."""
    reg = _registry()
    if reg is None or name not in reg.DATASETS:
        return "unknown"
    return str(reg.get_dataset(name).quality)


def _check_dataset(path: Optional[PathLike], key: str, name: str) -> None:
    reg = _registry()
    if reg is None:
        return
    if name not in reg.DATASETS:
        names = sorted(reg.DATASETS)
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        fix = f"did you mean {close[0]!r}?" if close else f"known datasets: {', '.join(names)}"
        raise _fail(path, key, f"unknown dataset {name!r}", fix)


def _parse_objective(path: Optional[PathLike], raw: Any, eval_sets: list[str]) -> ObjectiveSpec:
    if isinstance(raw, str):
        if raw.startswith("mean:"):
            raw = {"quality": raw[len("mean:"):]}
        elif "/" in raw:
            ds, metric = raw.split("/", 1)
            raw = {"dataset": ds, "metric": metric}
        else:
            raw = {"dataset": raw}
    raw = _coerce(path, "objective", raw, dict)
    _check_keys(path, "objective.", raw, ("dataset", "metric", "quality", "mode"))
    spec = ObjectiveSpec(
        dataset=_coerce(path, "objective.dataset", raw.get("dataset"), str, optional=True),
        metric=_coerce(path, "objective.metric", raw.get("metric"), str, optional=True),
        quality=_coerce(path, "objective.quality", raw.get("quality"), str, optional=True),
        mode=_coerce(path, "objective.mode", raw.get("mode", "max"), str),
    )
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
        if spec.quality != "all" and _registry() is not None:
            if not any(dataset_quality(d) == spec.quality for d in eval_sets):
                raise _fail(path, "objective.quality",
                            f"no dataset of quality {spec.quality!r} in data.eval {eval_sets}",
                            "add one to data.eval or choose another group")
        return spec
    if spec.dataset not in eval_sets:
        raise _fail(path, "objective.dataset",
                    f"objective dataset {spec.dataset!r} is not evaluated (data.eval: {eval_sets})",
                    f"add {spec.dataset!r} to data.eval")
    if spec.metric is not None and spec.metric not in METRIC_NAMES and \
            not spec.metric.startswith("tar_far_"):
        raise _fail(path, "objective.metric", f"unknown metric {spec.metric!r}",
                    "use acc (verification sets) or tar_far_<far> such as tar_far_1e-4 (IJB)")
    return spec


def _check_params(path: Optional[PathLike], params: dict[str, Any]) -> None:
    """Checks fixed params name model or training settings (private "_" keys pass through)."""
    try:
        from facefuse.model import FusionConfig
        from facefuse.train import TrainConfig
    except ImportError:  # pragma: no cover - both exist in this repository
        return
    known = {f.name for f in dataclasses.fields(FusionConfig)} | \
        {f.name for f in dataclasses.fields(TrainConfig)}
    # Set by the platform from the job or the data, never by hand.
    reserved = {"epochs": "epochs", "seed": "seed", "num_classes": "data.train",
                "in_channels_a": "the backbones", "in_channels_b": "the backbones",
                "map_size": "the backbones"}
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


# --------------------------------------------------------------------------- loading
def parse_job(raw: Any, path: Optional[PathLike] = None) -> JobSpec:
    """Returns a validated JobSpec from parsed YAML; raises ConfigError naming the key."""
    if not isinstance(raw, dict):
        raise _fail(path, "(top level)", "a job file must be a YAML mapping",
                    "start from jobs/quickstart.yaml")
    _check_keys(path, "", raw, _TOP_KEYS)
    sections: dict[str, dict[str, Any]] = {}
    for name, cls in _SECTIONS.items():
        given = _coerce(path, name, raw.get(name, {}) if raw.get(name) is not None else {}, dict)
        _check_keys(path, f"{name}.", given, [f.name for f in dataclasses.fields(cls)])
        sections[name] = given

    name = _coerce(path, "name", raw.get("name"), str)
    if any(c in name for c in "/\\ ") or name.startswith("."):
        raise _fail(path, "name", f"name {name!r} must be usable as a directory name",
                    "use letters, digits, '-', '_' and '.' only")

    d = sections["data"]
    data = DataSpec(
        root=_coerce(path, "data.root", d.get("root"), str, optional=True),
        train=_coerce(path, "data.train", d.get("train"), str),
        eval=_coerce(path, "data.eval", d.get("eval"), list),
        cache_dir=_coerce(path, "data.cache_dir", d.get("cache_dir", EMBEDDED), str, optional=True),
    )
    if not data.eval:
        raise _fail(path, "data.eval", "data.eval is empty", "name at least one dataset to evaluate")
    for i, ds in enumerate(data.eval):
        _coerce(path, f"data.eval[{i}]", ds, str)
        _check_dataset(path, f"data.eval[{i}]", ds)
    if len(set(data.eval)) != len(data.eval):
        raise _fail(path, "data.eval", f"data.eval lists a dataset twice: {data.eval}",
                    "list each dataset once")
    _check_dataset(path, "data.train", data.train)

    b = sections["backbones"]
    backbones = BackboneSpec(
        arcface=_coerce(path, "backbones.arcface", b.get("arcface", EMBEDDED), str),
        adaface=_coerce(path, "backbones.adaface", b.get("adaface", EMBEDDED), str),
    )

    a = sections["asha"]
    asha = AshaSpec(
        grace_period=_coerce(path, "asha.grace_period", a.get("grace_period", 1), int),
        reduction_factor=_coerce(path, "asha.reduction_factor", a.get("reduction_factor", 2), int),
        max_t=_coerce(path, "asha.max_t", a.get("max_t"), int, optional=True),
    )
    r = sections["resources"]
    resources = ResourceSpec(
        workers_per_trial=_coerce(path, "resources.workers_per_trial",
                                  r.get("workers_per_trial", 1), int),
        gpus_per_worker=_coerce(path, "resources.gpus_per_worker", r.get("gpus_per_worker", 0), float),
        cpus_per_worker=_coerce(path, "resources.cpus_per_worker", r.get("cpus_per_worker", 1), float),
        max_concurrent_trials=_coerce(path, "resources.max_concurrent_trials",
                                      r.get("max_concurrent_trials", 2), int),
    )
    t = sections["tracking"]
    tracking = TrackingSpec(
        uri=_coerce(path, "tracking.uri", t.get("uri"), str, optional=True),
        experiment=_coerce(path, "tracking.experiment", t.get("experiment"), str, optional=True),
    )
    params = _coerce(path, "params", raw.get("params") if raw.get("params") is not None else {},
                     dict)
    for key, value in params.items():
        if not isinstance(value, (str, int, float, bool)) or value is None:
            raise _fail(path, f"params.{key}", f"params.{key} must be a number, string or "
                        f"boolean, got {value!r}", "fixed params are scalars; search lists "
                        "in a search space file")
    _check_params(path, params)

    ablation = _coerce(path, "ablation", raw.get("ablation") or {}, dict)
    _check_keys(path, "ablation.", ablation, _ABLATION_KEYS)
    for key in _ABLATION_KEYS:
        if key in ablation:
            _coerce(path, f"ablation.{key}", ablation[key], list)

    variant = raw.get("variant")
    if variant is not None:
        variant = str(_coerce(path, "variant", variant, (str)))
    job = JobSpec(
        name=name,
        data=data,
        backbones=backbones,
        search_space=_coerce(path, "search_space", raw.get("search_space"), str),
        objective=_parse_objective(path, raw.get("objective"), data.eval),
        trials=_coerce(path, "trials", raw.get("trials", 8), int),
        epochs=_coerce(path, "epochs", raw.get("epochs", 3), int),
        asha=asha,
        resources=resources,
        max_failures=_coerce(path, "max_failures", raw.get("max_failures", 1), int),
        tracking=tracking,
        storage=_coerce(path, "storage", raw.get("storage"), str, optional=True),
        seed=_coerce(path, "seed", raw.get("seed", 0), int),
        variant=variant,
        params=dict(params),
        ablation=dict(ablation),
        source=None if path is None else os.fspath(path),
    )
    _at_least(path, "trials", job.trials, 1)
    _at_least(path, "epochs", job.epochs, 1)
    _at_least(path, "seed", job.seed, 0)
    _at_least(path, "max_failures", job.max_failures, 0)
    _at_least(path, "asha.grace_period", asha.grace_period, 1)
    _at_least(path, "asha.reduction_factor", asha.reduction_factor, 2)
    _at_least(path, "asha.max_t", asha.max_t, 1)
    if asha.max_t is not None and asha.max_t > job.epochs:
        raise _fail(path, "asha.max_t", f"asha.max_t={asha.max_t} exceeds epochs={job.epochs}",
                    "leave asha.max_t unset (it defaults to epochs) or raise epochs")
    if asha.grace_period > job.max_t:
        raise _fail(path, "asha.grace_period",
                    f"asha.grace_period={asha.grace_period} exceeds max_t={job.max_t}",
                    "use a grace period of at most the number of epochs")
    _at_least(path, "resources.workers_per_trial", resources.workers_per_trial, 1)
    _at_least(path, "resources.gpus_per_worker", resources.gpus_per_worker, 0)
    _at_least(path, "resources.max_concurrent_trials", resources.max_concurrent_trials, 1)
    if resources.cpus_per_worker <= 0:
        raise _fail(path, "resources.cpus_per_worker",
                    f"resources.cpus_per_worker must be > 0, got {resources.cpus_per_worker}",
                    "give a positive number (fractions such as 0.5 are allowed)")
    if "beta" in params:
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
    out = dataclasses.replace(
        job, data=dataclasses.replace(job.data), backbones=dataclasses.replace(job.backbones),
        tracking=dataclasses.replace(job.tracking), params=dict(job.params), resolved=True)

    root = job.data.root or os.environ.get("FACEFUSE_DATA") or EMBEDDED
    out.data.root = str(emb.data_root) if root == EMBEDDED else _abs(root, base)
    cache = job.data.cache_dir
    if cache is None or cache.lower() == "none":
        out.data.cache_dir = None
    else:
        out.data.cache_dir = str(emb.cache_dir) if cache == EMBEDDED else _abs(cache, base)
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
    return out


def trial_context(job: JobSpec) -> dict[str, Any]:
    """Returns the trial context of a resolved job as the dict Tune hands to every trial.

    Built once per sweep in the driver; ``TrialContext`` is its one schema (and checks it).
    """
    if not job.resolved:
        raise ConfigError(job.source, "job paths are not resolved", field="(job)",
                          fix="call facefuse.sweep.jobs.resolve_paths(job) in the driver first")
    r = job.resources
    return TrialContext(
        data_root=job.data.root,
        cache_dir=job.data.cache_dir,
        arcface_checkpoint=job.backbones.arcface,
        adaface_checkpoint=job.backbones.adaface,
        train_dataset=job.data.train,
        eval_datasets=list(job.data.eval),
        objective=job.objective.to_context(),
        workers_per_trial=r.workers_per_trial,
        gpus_per_worker=r.gpus_per_worker,
        cpus_per_worker=r.cpus_per_worker,
        # Torch would otherwise start one thread per core in every concurrent trial.
        torch_threads=max(1, int(r.cpus_per_worker)),
    ).to_dict()


def fixed_config(job: JobSpec) -> dict[str, Any]:
    """Returns the settings every trial shares: fixed params, epochs and the seed."""
    cfg = dict(job.params)
    cfg["epochs"] = job.epochs
    cfg["seed"] = job.seed
    return cfg
