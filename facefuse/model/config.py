"""The fusion head's configuration: plain data with defaults, validated at construction."""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import numpy as np

from facefuse.errors import ConfigError

logger = logging.getLogger(__name__)

BRANCHES = ("local", "global", "both")
FUSIONS = ("attention", "concat")
INPUTS = ("both", "arcface", "adaface")
HEADS = ("arcface", "cosface", "softmax")
WINDOW_MODES = ("clamped", "centered")
LOCAL_POOLS = ("flatten", "mean")
#: ``mix`` as a word: the local branch's weight is a learned gate (sigmoid of a scalar logit).
MIX_LEARNED = "learned"
#: The weight at which the two branches enter the fusion exactly as plain concatenation.
MIX_EQUAL = 0.5

# Margins of the published losses; `margin=None` picks these.
DEFAULT_MARGINS = {"arcface": 0.5, "cosface": 0.35, "softmax": 0.0}


@dataclass
class FusionConfig:
    """Every knob of the fusion head (docs/architecture.md, "The model").

    Defaults are the embedded (CPU) default: d_model 128 keeps a forward+backward step of the
    head at batch 128 fast on one core while the inputs stay the backbones' real 512 x 7 x 7.
    """

    # Inputs: backbone maps after the last BatchNorm2d, [N, C, map_size, map_size].
    in_channels: int = 512
    in_channels_a: Optional[int] = None  # ArcFace map channels; None -> in_channels
    in_channels_b: Optional[int] = None  # AdaFace map channels; None -> in_channels
    map_size: int = 7
    inputs: str = "both"

    # Token width and the two attention branches.
    d_model: int = 128
    local_heads: int = 4
    global_heads: int = 4
    local_window: int = 3
    window_mode: str = "clamped"
    dw_kernel: int = 3
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    branches: str = "both"
    fusion: str = "attention"
    local_pool: str = "flatten"
    # The local branch's share w of the fused vector, the global branch getting 1 - w: the
    # parts are scaled by 2w and 2(1 - w) before the fusion's LayerNorm, so 0.5 is the plain
    # concatenation bit for bit. "learned": w = sigmoid(a learned logit), starting at 0.5.
    mix: Union[float, str] = MIX_EQUAL
    fusion_hidden: int = 512

    # Bottleneck and classifier.
    embedding_size: int = 512
    vib: bool = True
    beta: float = 1e-2
    logvar_init: float = -4.0
    num_classes: int = 0  # 0: embedding only; training needs the number of identities
    head: str = "arcface"
    margin: Optional[float] = None  # None -> DEFAULT_MARGINS[head]
    scale: float = 64.0
    easy_margin: bool = False

    def __post_init__(self) -> None:
        self._coerce_types()
        self._validate()

    # ------------------------------------------------------------------ derived values
    @property
    def channels_a(self) -> int:
        """Returns the channel count of the ArcFace map."""
        return self.in_channels if self.in_channels_a is None else self.in_channels_a

    @property
    def channels_b(self) -> int:
        """Returns the channel count of the AdaFace map."""
        return self.in_channels if self.in_channels_b is None else self.in_channels_b

    @property
    def num_sources(self) -> int:
        """Returns how many maps feed the head (2 for inputs='both', else 1)."""
        return 2 if self.inputs == "both" else 1

    @property
    def resolved_margin(self) -> float:
        """Returns the margin the classifier uses (the head's published default when unset)."""
        return DEFAULT_MARGINS[self.head] if self.margin is None else float(self.margin)

    @property
    def uses_local(self) -> bool:
        """Returns whether the local attention branch is built."""
        return self.fusion == "attention" and self.branches in ("local", "both")

    @property
    def uses_global(self) -> bool:
        """Returns whether the global attention branch is built."""
        return self.fusion == "attention" and self.branches in ("global", "both")

    @property
    def mix_learned(self) -> bool:
        """Returns whether the local/global weight is a learned gate."""
        return self.mix == MIX_LEARNED

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a plain dict (round-trips through from_dict)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FusionConfig":
        """Returns a config built from a mapping; unknown keys raise ConfigError naming the key."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(None, f"unknown model field {key!r}", field=str(key),
                                  fix=f"use one of: {', '.join(sorted(known))}")
        return cls(**dict(data))

    # ------------------------------------------------------------------ checks
    def _coerce_types(self) -> None:
        # Sweeps hand us numpy scalars and YAML hands us ints where floats are meant.
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            hint = hints[f.name]
            optional = type(None) in typing.get_args(hint)
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if args else hint
            if value is None:
                if optional:
                    continue
                raise ConfigError(None, f"{f.name} must not be None", field=f.name,
                                  fix=f"give a {base.__name__}")
            if float in args and str in args:
                value = self._number_or_word(f.name, value)
            elif base is bool:
                if not isinstance(value, (bool, np.bool_, numbers.Integral)) or value not in (0, 1):
                    raise ConfigError(None, f"{f.name} must be true or false, got {value!r}",
                                      field=f.name, fix="use true or false")
                value = bool(value)
            elif base is int:
                whole = (isinstance(value, numbers.Integral)
                         or (isinstance(value, numbers.Real) and float(value).is_integer()))
                if isinstance(value, (bool, np.bool_)) or not whole:
                    raise ConfigError(None, f"{f.name} must be an integer, got {value!r}",
                                      field=f.name, fix="give a whole number")
                value = int(value)
            elif base is float:
                if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                    raise ConfigError(None, f"{f.name} must be a number, got {value!r}",
                                      field=f.name, fix="give a number")
                value = float(value)
                if not math.isfinite(value):
                    raise ConfigError(None, f"{f.name} must be finite, got {value!r}",
                                      field=f.name, fix="give a finite number")
            elif base is str:
                if not isinstance(value, str):
                    raise ConfigError(None, f"{f.name} must be a string, got {value!r}",
                                      field=f.name, fix="give one of the documented names")
            object.__setattr__(self, f.name, value)

    @staticmethod
    def _number_or_word(name: str, value: Any) -> Any:
        """Returns a float for a number (also one written as a string), else the word itself."""
        # MLflow params and some YAML readers hand numbers over as strings ("0.25").
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise ConfigError(None, f"{name} must be a number or a word, got {value!r}",
                              field=name, fix=f"use a number in [0, 1] or {MIX_LEARNED!r}")
        return float(value)

    def _validate(self) -> None:
        def fail(field: str, message: str, fix: str) -> None:
            raise ConfigError(None, message, field=field, fix=fix)

        for name, allowed in (("inputs", INPUTS), ("branches", BRANCHES), ("fusion", FUSIONS),
                              ("head", HEADS), ("window_mode", WINDOW_MODES),
                              ("local_pool", LOCAL_POOLS)):
            value = getattr(self, name)
            if value not in allowed:
                fail(name, f"unknown {name} {value!r}", f"use one of: {', '.join(allowed)}")

        for name in ("in_channels", "map_size", "d_model", "local_heads", "global_heads",
                     "fusion_hidden", "embedding_size"):
            if getattr(self, name) < 1:
                fail(name, f"{name} must be >= 1, got {getattr(self, name)}",
                     "give a positive integer")
        for name in ("in_channels_a", "in_channels_b"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(name, f"{name} must be >= 1, got {value}",
                     "give the backbone's channel count, or leave it unset to use in_channels")
        if self.num_classes < 0:
            fail("num_classes", f"num_classes must be >= 0, got {self.num_classes}",
                 "give the number of training identities (0 builds no classifier)")

        for name in ("local_heads", "global_heads"):
            heads = getattr(self, name)
            if self.d_model % heads:
                fail(name, f"{name}={heads} does not divide d_model={self.d_model}",
                     f"pick {name} from the divisors of d_model, or change d_model")
        if self.local_window < 1 or self.local_window % 2 == 0:
            fail("local_window", f"local_window must be odd and >= 1, got {self.local_window}",
                 "use 1, 3, 5 or 7 (a window centred on its position needs an odd side)")
        if self.local_window > self.map_size:
            fail("local_window",
                 f"local_window={self.local_window} is larger than the {self.map_size}x"
                 f"{self.map_size} map", f"use an odd window <= map_size ({self.map_size})")
        if self.dw_kernel < 1 or self.dw_kernel % 2 == 0:
            fail("dw_kernel", f"dw_kernel must be odd and >= 1, got {self.dw_kernel}",
                 "use 1, 3, 5 or 7 (odd keeps the map size with 'same' padding)")
        if self.mlp_ratio <= 0:
            fail("mlp_ratio", f"mlp_ratio must be > 0, got {self.mlp_ratio}", "use e.g. 2.0 or 4.0")
        if not 0.0 <= self.dropout < 1.0:
            fail("dropout", f"dropout must be in [0, 1), got {self.dropout}", "use e.g. 0.0 or 0.1")
        if self.beta < 0:
            fail("beta", f"beta must be >= 0, got {self.beta}",
                 "use beta >= 0 (0 trains with plain CE; search it log-uniformly, e.g. 1e-4..10)")
        if self.scale <= 0:
            fail("scale", f"scale must be > 0, got {self.scale}", "use e.g. 64.0")
        if isinstance(self.mix, str) and self.mix != MIX_LEARNED:
            fail("mix", f"unknown mix {self.mix!r}",
                 f"use a number in [0, 1] (the local branch's weight) or {MIX_LEARNED!r}")
        if not isinstance(self.mix, str) and not 0.0 <= self.mix <= 1.0:
            fail("mix", f"mix must be in [0, 1], got {self.mix}",
                 f"use the local branch's weight in [0, 1] ({MIX_EQUAL} weighs both equally)")
        if self.mix != MIX_EQUAL and not (self.uses_local and self.uses_global):
            fail("mix", f"mix={self.mix!r} weighs the local against the global branch, but "
                 f"branches={self.branches!r}, fusion={self.fusion!r} build only one or none",
                 f"leave mix at {MIX_EQUAL} or use branches='both' with fusion='attention'")
        if self.fusion == "concat" and self.branches != "both":
            fail("branches", f"fusion='concat' has no attention branches, got branches="
                 f"{self.branches!r}", "leave branches='both' with the concat baseline")

        if self.margin is not None:
            if self.margin < 0:
                fail("margin", f"margin must be >= 0, got {self.margin}",
                     "use e.g. 0.5 (ArcFace) or 0.35 (CosFace)")
            if self.head == "softmax" and self.margin != 0:
                fail("margin", f"head='softmax' has no margin, got margin={self.margin}",
                     "leave margin unset (or 0) with head='softmax'")
            if self.head == "arcface" and self.margin >= math.pi / 2:
                fail("margin", f"ArcFace margin is an angle in radians, got {self.margin}",
                     "use a margin below pi/2, e.g. 0.5")
            if self.head == "cosface" and self.margin >= 2:
                fail("margin", f"CosFace margin is subtracted from a cosine, got {self.margin}",
                     "use a margin below 2, e.g. 0.35")
