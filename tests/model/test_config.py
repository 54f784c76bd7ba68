"""Tests of facefuse/model/config.py: defaults, round-trips and errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from facefuse.errors import ConfigError
from facefuse.model import FusionConfig


def test_defaults_are_valid_and_round_trip() -> None:
    cfg = FusionConfig()
    assert cfg.channels_a == cfg.channels_b == 512
    assert cfg.num_sources == 2
    assert cfg.resolved_margin == 0.5 and cfg.scale == 64.0
    again = FusionConfig.from_dict(cfg.to_dict())
    assert again == cfg


def test_channel_layouts_and_margins_resolve() -> None:
    cfg = FusionConfig(in_channels=128, in_channels_b=64, head="cosface")
    assert (cfg.channels_a, cfg.channels_b) == (128, 64)
    assert cfg.resolved_margin == pytest.approx(0.35)
    assert FusionConfig(head="softmax").resolved_margin == 0.0
    assert FusionConfig(head="arcface", margin=0.3).resolved_margin == pytest.approx(0.3)
    assert FusionConfig(inputs="adaface").num_sources == 1


def test_sweep_values_are_coerced() -> None:
    cfg = FusionConfig(local_heads=np.int64(2), beta=1, dropout=np.float32(0.1), vib=np.bool_(False))
    assert type(cfg.local_heads) is int and cfg.local_heads == 2
    assert type(cfg.beta) is float and cfg.beta == 1.0
    assert type(cfg.dropout) is float
    assert cfg.vib is False


@pytest.mark.parametrize("overrides, field", [
    ({"local_heads": 3}, "local_heads"),
    ({"global_heads": 5}, "global_heads"),
    ({"d_model": 96, "local_heads": 4, "global_heads": 5}, "global_heads"),
    ({"local_window": 4}, "local_window"),
    ({"local_window": 0}, "local_window"),
    ({"local_window": 9}, "local_window"),
    ({"map_size": 5, "local_window": 7}, "local_window"),
    ({"dw_kernel": 2}, "dw_kernel"),
    ({"beta": -0.1}, "beta"),
    ({"beta": float("nan")}, "beta"),
    ({"head": "sphereface"}, "head"),
    ({"branches": "left"}, "branches"),
    ({"fusion": "sum"}, "fusion"),
    ({"inputs": "arc"}, "inputs"),
    ({"window_mode": "shifted"}, "window_mode"),
    ({"local_pool": "max"}, "local_pool"),
    ({"fusion": "concat", "branches": "local"}, "branches"),
    ({"head": "softmax", "margin": 0.3}, "margin"),
    ({"margin": -0.1}, "margin"),
    ({"margin": 2.0}, "margin"),
    ({"dropout": 1.0}, "dropout"),
    ({"scale": 0.0}, "scale"),
    ({"num_classes": -1}, "num_classes"),
    ({"in_channels_a": 0}, "in_channels_a"),
    ({"d_model": 0}, "d_model"),
    ({"local_heads": 2.5}, "local_heads"),
    ({"local_heads": True}, "local_heads"),
    ({"vib": "yes"}, "vib"),
    ({"head": None}, "head"),
])
def test_invalid_configs_raise_naming_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        FusionConfig(**overrides)
    assert info.value.field == field
    assert f"[{field}]" in str(info.value)
    assert info.value.fix


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError) as info:
        FusionConfig.from_dict({"beta": 0.1, "lokal_window": 3})
    assert info.value.field == "lokal_window"
    assert "local_window" in str(info.value)


def test_largest_and_smallest_windows_are_valid() -> None:
    for w in (1, 3, 5, 7):
        assert FusionConfig(local_window=w).local_window == w
