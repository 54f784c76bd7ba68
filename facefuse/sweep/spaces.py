"""Search spaces: YAML files turned into Optuna define-by-run functions.

File format (see search_spaces/*.yaml)::

    params:
      beta:         {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}
      lr:           {distribution: float, low: 1.0e-4, high: 3.0e-3, log: true}
      local_heads:  {distribution: categorical, choices: [2, 4, 8]}
      dropout:      {distribution: float, low: 0.0, high: 0.2, step: 0.05}
      fusion_hidden: {distribution: int, low: 256, high: 1024, step: 256}
      dw_kernel:    {distribution: categorical, choices: [3, 5], when: {branches: [local, both]}}

``when`` makes a parameter conditional on earlier ones (the order in the file is the order
they are sampled in); a parameter left out keeps the model's default.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from facefuse.errors import ConfigError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]


class _Keys(BaseModel):
    """The keys a distribution takes; values are checked by ``_parse_param`` (YAML reads 1e-4 as
    a string, which the range parser accepts)."""

    model_config = ConfigDict(extra="forbid")


class RangeKeys(_Keys):
    distribution: Any = None
    low: Any = None
    high: Any = None
    step: Any = None
    log: Any = False
    when: Any = None


class LogRangeKeys(_Keys):
    distribution: Any = None
    low: Any = None
    high: Any = None
    when: Any = None


class ChoiceKeys(_Keys):
    distribution: Any = None
    choices: Any = None
    when: Any = None


@dataclass(frozen=True)
class Distribution:
    """What a ``distribution:`` name means: its keys, and how Optuna draws from it."""

    keys: type[_Keys]
    categorical: bool = False
    integer: bool = False
    #: True: always log scale; None: the file's ``log`` key decides.
    log: Optional[bool] = None


#: Every distribution a search space may name; adding one here is all a new one needs.
DISTRIBUTIONS: dict[str, Distribution] = {
    "float": Distribution(RangeKeys),
    "int": Distribution(RangeKeys, integer=True),
    "loguniform": Distribution(LogRangeKeys, log=True),
    "categorical": Distribution(ChoiceKeys, categorical=True),
}
#: Parameters that must be odd: a window or kernel centred on its position.
ODD_PARAMS = ("local_window", "dw_kernel")


@dataclass(frozen=True)
class Domain:
    """The values a bounded parameter may take: numbers in [low, high] and some words."""

    low: float
    high: float
    words: tuple[str, ...] = ()
    fix: str = ""


#: Parameters whose values are bounded; a space reaching outside fails when it is loaded.
DOMAINS: dict[str, Domain] = {
    # the local branch's weight against the global one, or a learned gate
    "mix": Domain(0.0, 1.0, ("learned",), "give the local branch's weight in [0, 1] (0.5: "
                  "both equal) or learned; searched e.g. {distribution: categorical, choices: "
                  "[learned, 0.25, 0.5, 0.75]}"),
}


def check_domain(path: Optional[PathLike], key: str, name: str, values: list[Any]) -> None:
    """Raises ConfigError when a bounded parameter (``DOMAINS``) is given a value outside it."""
    domain = DOMAINS.get(name)
    if domain is None:
        return
    bad = [v for v in values if not (
        (isinstance(v, str) and v in domain.words)
        or (isinstance(v, numbers.Real) and not isinstance(v, bool)
            and domain.low <= v <= domain.high))]
    if bad:
        allowed = f"numbers in [{domain.low:g}, {domain.high:g}]" + \
            "".join(f" or {w!r}" for w in domain.words)
        raise ConfigError(path, f"{name} takes {allowed}; got {bad}", field=key,
                          fix=domain.fix or f"keep {name} within its domain")


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter."""

    name: str
    distribution: str
    low: Optional[float] = None
    high: Optional[float] = None
    step: Optional[float] = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def active(self, sampled: Mapping[str, Any]) -> bool:
        """Returns whether the parameter's conditions hold for the values sampled so far."""
        return all(name in sampled and sampled[name] in allowed for name, allowed in self.when)

    def suggest(self, trial: Any) -> Any:
        """Returns a value drawn through an Optuna trial."""
        dist = DISTRIBUTIONS[self.distribution]
        if dist.categorical:
            return trial.suggest_categorical(self.name, list(self.choices))
        if dist.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def optuna_distribution(self) -> Any:
        """Returns the parameter as an optuna distribution (for importances of a finished sweep)."""
        from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                          IntDistribution)

        dist = DISTRIBUTIONS[self.distribution]
        if dist.categorical:
            return CategoricalDistribution(list(self.choices))
        if dist.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log,
                                 step=None if self.log else self.step)

    def contains(self, value: Any) -> bool:
        """Returns whether a value lies in the parameter's domain."""
        if DISTRIBUTIONS[self.distribution].categorical:
            return value in self.choices
        return isinstance(value, numbers.Real) and self.low <= value <= self.high


@dataclass
class SearchSpace:
    """An ordered set of searched parameters loaded from a YAML file."""

    path: str
    params: dict[str, ParamSpec] = field(default_factory=dict)
    description: Optional[str] = None

    @property
    def names(self) -> list[str]:
        """Returns the parameter names in sampling order."""
        return list(self.params)

    def define_by_run(self, fixed: Optional[Mapping[str, Any]] = None) -> "DefineByRun":
        """Returns an Optuna define-by-run callable; its return value adds ``fixed`` constants."""
        return DefineByRun(tuple(self.params.values()), dict(fixed or {}))

    def sample(self, trial: Any) -> dict[str, Any]:
        """Returns the values one Optuna trial draws (for studies outside Tune)."""
        sampled: dict[str, Any] = {}
        for spec in self.params.values():
            if spec.active(sampled):
                sampled[spec.name] = spec.suggest(trial)
        return sampled


@dataclass(frozen=True)
class DefineByRun:
    """A picklable define-by-run space (OptunaSearch pickles its space with plain pickle)."""

    specs: tuple[ParamSpec, ...]
    constants: dict[str, Any]

    def __call__(self, trial: Any) -> dict[str, Any]:
        sampled: dict[str, Any] = {}
        for spec in self.specs:
            if spec.active({**self.constants, **sampled}):
                sampled[spec.name] = spec.suggest(trial)
        # OptunaSearch merges returned constants into the trial config.
        return dict(self.constants)


def _known_params() -> set[str]:
    """Returns the names a search space may search: model and training settings."""
    # facefuse.train.loop imports torch: seconds a command pays only when it reads a space.
    from facefuse.model import FusionConfig
    from facefuse.train.loop import TrainConfig

    return {f.name for f in dataclasses.fields(FusionConfig)} | \
        {f.name for f in dataclasses.fields(TrainConfig)}


def _number(path: Path, key: str, value: Any) -> float:
    # YAML 1.1 reads 1e-4 (no dot) as a string; accept it rather than make users write 1.0e-4.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(path, f"{key} must be a finite number, got {value!r}", field=key,
                          fix="write a number such as 1.0e-4")
    return float(value)


def _parse_param(path: Path, name: str, raw: Any, earlier: Mapping[str, ParamSpec],
                 known: set[str]) -> ParamSpec:
    key = f"params.{name}"
    if not name.startswith("_") and name not in known:
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.5)
        raise ConfigError(path, f"{name!r} is not a model or training setting", field=key,
                          fix=f"did you mean {close[0]!r}?" if close else
                          f"use one of: {', '.join(sorted(known))}")
    if not isinstance(raw, dict):
        raise ConfigError(path, f"{key} must be a mapping with a distribution", field=key,
                          fix="write e.g. {distribution: loguniform, low: 1.0e-4, high: 1.0e-1}")
    dist = raw.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(path, f"unknown distribution {dist!r}", field=f"{key}.distribution",
                          fix=f"use one of: {', '.join(DISTRIBUTIONS)}")
    kind = DISTRIBUTIONS[dist]
    try:
        kind.keys.model_validate(raw)
    except ValidationError as exc:
        k = exc.errors()[0]["loc"][0]  # the only error a keys model raises: an unknown key
        allowed = list(kind.keys.model_fields)
        close = difflib.get_close_matches(str(k), allowed, n=1, cutoff=0.5)
        raise ConfigError(path, f"unknown key {k!r} for a {dist} parameter",
                          field=f"{key}.{k}", fix=f"did you mean {close[0]!r}?" if close
                          else f"valid keys: {', '.join(allowed)}") from None

    when: list[tuple[str, tuple[Any, ...]]] = []
    cond = raw.get("when") or {}
    if not isinstance(cond, dict):
        raise ConfigError(path, f"{key}.when must map parameter names to allowed values",
                          field=f"{key}.when", fix="write e.g. when: {branches: [local, both]}")
    for other, allowed in cond.items():
        if other not in earlier and other not in known:
            raise ConfigError(path, f"condition on unknown parameter {other!r}",
                              field=f"{key}.when.{other}",
                              fix="condition on a parameter listed earlier in this file or a "
                                  "fixed job param")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        when.append((str(other), tuple(allowed)))

    if kind.categorical:
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(path, f"{key}.choices must be a non-empty list", field=f"{key}.choices",
                              fix="list the values to try, e.g. choices: [2, 4, 8]")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(path, f"{key}.choices repeats a value: {choices}",
                              field=f"{key}.choices", fix="list each value once")
        for c in choices:
            if not isinstance(c, (str, int, float, bool)) or c is None:
                raise ConfigError(path, f"{key}.choices holds {c!r}; choices are scalars",
                                  field=f"{key}.choices", fix="use numbers, strings or booleans")
        check_domain(path, f"{key}.choices", name, list(choices))
        spec = ParamSpec(name, dist, choices=tuple(choices), when=tuple(when))
        if name in ODD_PARAMS:
            even = [c for c in choices if not (isinstance(c, int) and c >= 1 and c % 2 == 1)]
            if even:
                raise ConfigError(path, f"{name} must be odd and >= 1; got {even}",
                                  field=f"{key}.choices",
                                  fix="use odd sizes such as 1, 3, 5, 7 (a window centred on "
                                      "its position needs an odd side)")
        return spec

    if "low" not in raw or "high" not in raw:
        raise ConfigError(path, f"{key} needs low and high", field=key,
                          fix="write e.g. low: 1.0e-4, high: 1.0e-1")
    low = _number(path, f"{key}.low", raw["low"])
    high = _number(path, f"{key}.high", raw["high"])
    if low >= high:
        raise ConfigError(path, f"empty range: low={low:g} >= high={high:g}", field=key,
                          fix="make low smaller than high (for a constant, put it in the job's "
                              "params instead)")
    log = kind.log if kind.log is not None else bool(raw.get("log", False))
    if log and low <= 0:
        raise ConfigError(path, f"a log-scale range needs low > 0, got {low:g}", field=f"{key}.low",
                          fix="use a positive lower bound such as 1.0e-5")
    step = raw.get("step")
    if step is not None:
        step = _number(path, f"{key}.step", step)
        if step <= 0:
            raise ConfigError(path, f"{key}.step must be > 0", field=f"{key}.step")
        if log:
            raise ConfigError(path, "a stepped range cannot be log-scale", field=f"{key}.step",
                              fix="drop step or log")
    check_domain(path, key, name, [low, high])
    if kind.integer:
        for k, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and not float(v).is_integer():
                raise ConfigError(path, f"{key}.{k} must be an integer, got {v:g}",
                                  field=f"{key}.{k}", fix="use whole numbers for an int range")
        if name in ODD_PARAMS and (low % 2 == 0 or (step or 1) % 2 == 1):
            raise ConfigError(path, f"{name} must take odd values only", field=key,
                              fix="start at an odd low with step: 2, or use categorical choices "
                                  "such as [1, 3, 5]")
    elif name in ODD_PARAMS:
        raise ConfigError(path, f"{name} is an odd integer, not a float", field=key,
                          fix="use distribution: categorical with odd choices such as [1, 3, 5]")
    return ParamSpec(name, dist, low=low, high=high, step=step, log=log, when=tuple(when))


def parse_search_space(raw: Any, path: PathLike) -> SearchSpace:
    """Returns a validated SearchSpace from parsed YAML."""
    p = Path(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("params"), dict) or not raw["params"]:
        raise ConfigError(p, "a search space needs a non-empty 'params' mapping", field="params",
                          fix="see search_spaces/high_quality.yaml")
    for k in raw:
        if k not in ("params", "description"):
            close = difflib.get_close_matches(str(k), ["params", "description"], n=1, cutoff=0.5)
            raise ConfigError(p, f"unknown key {k!r}", field=str(k),
                              fix=f"did you mean {close[0]!r}?" if close
                              else "top-level keys: params, description")
    known = _known_params()
    params: dict[str, ParamSpec] = {}
    for name, spec in raw["params"].items():
        params[str(name)] = _parse_param(p, str(name), spec, params, known)
    return SearchSpace(path=str(p), params=params, description=raw.get("description"))


def load_search_space(path: PathLike) -> SearchSpace:
    """Returns the SearchSpace of a YAML file; raises ConfigError naming the file and field."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, "search space file not found", field="search_space",
                          fix="see search_spaces/ for the shipped spaces")
    except yaml.YAMLError as exc:
        raise ConfigError(p, f"not valid YAML: {exc}", fix="check indentation and quoting")
    return parse_search_space(raw, p)


def check_against_fixed(space: SearchSpace, fixed: Mapping[str, Any],
                        job_path: Optional[PathLike] = None) -> None:
    """Raises ConfigError when a job fixes a searched parameter or heads cannot divide d_model."""
    for name in space.params:
        if name in fixed and name not in ("epochs", "seed"):
            raise ConfigError(job_path, f"params.{name} is fixed by the job and searched by "
                              f"{space.path}", field=f"params.{name}",
                              fix="remove it from one of the two")
    d_model = fixed.get("d_model")
    if d_model is None:
        from facefuse.model import FusionConfig

        d_model = FusionConfig.d_model
    for name in ("local_heads", "global_heads"):
        spec = space.params.get(name)
        if spec is None:
            continue
        values = spec.choices if DISTRIBUTIONS[spec.distribution].categorical else \
            range(int(spec.low), int(spec.high) + 1, int(spec.step or 1))
        bad = [v for v in values if int(d_model) % int(v)]
        if bad:
            raise ConfigError(space.path, f"{name} values {bad} do not divide d_model={d_model}",
                              field=f"params.{name}",
                              fix="choose divisors of d_model (the job's params.d_model)")
