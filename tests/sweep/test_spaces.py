"""Search spaces: shipped files load and sample inside their ranges; bad files are refused."""

from __future__ import annotations

import pickle
from pathlib import Path

import optuna
import pytest
import yaml

from facefuse.errors import ConfigError
from facefuse.sweep.spaces import check_against_fixed, load_search_space
from tests.sweep.conftest import REPO

SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))


def _write(tmp_path: Path, params: dict) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump({"params": params}))
    return p


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spaces_sample_inside_their_ranges(path: Path) -> None:
    space = load_search_space(path)
    assert {"beta", "local_heads", "global_heads", "local_window", "dw_kernel", "lr"} <= \
        set(space.names)
    assert space.params["beta"].log
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=1))
    for _ in range(20):
        values = space.sample(study.ask())
        for name, value in values.items():
            assert space.params[name].contains(value), (name, value)
        assert values["local_window"] % 2 == 1 and values["dw_kernel"] % 2 == 1
    check_against_fixed(space, {"d_model": 128})


def test_beta_ranges_move_up_as_quality_drops() -> None:
    lows = [load_search_space(REPO / "search_spaces" / f"{q}_quality.yaml").params["beta"]
            for q in ("high", "mixed", "low")]
    assert lows[0].low < lows[1].low < lows[2].low
    assert lows[0].high < lows[1].high < lows[2].high


def test_define_by_run_pickles_and_returns_constants() -> None:
    space = load_search_space(SHIPPED[0])
    fn = pickle.loads(pickle.dumps(space.define_by_run({"d_model": 128, "epochs": 3})))
    trial = optuna.create_study().ask()
    assert fn(trial) == {"d_model": 128, "epochs": 3}
    assert set(trial.params) == set(space.names)


def test_empty_range_names_file_and_field(tmp_path: Path) -> None:
    p = _write(tmp_path, {"beta": {"distribution": "loguniform", "low": 0.1, "high": 0.01}})
    with pytest.raises(ConfigError) as err:
        load_search_space(p)
    assert err.value.field == "params.beta" and str(p) in str(err.value)
    assert "empty range" in str(err.value)


def test_yaml_exponent_without_dot_is_accepted(tmp_path: Path) -> None:
    # PyYAML reads 1e-4 as a string; the loader takes it as the number it looks like.
    p = _write(tmp_path, {"beta": {"distribution": "loguniform", "low": "1e-4", "high": "1e-1"}})
    assert load_search_space(p).params["beta"].low == pytest.approx(1e-4)


@pytest.mark.parametrize("params,field,words", [
    ({"beta": {"distribution": "lognormal", "low": 1, "high": 2}}, "params.beta.distribution",
     "unknown distribution"),
    ({"local_window": {"distribution": "categorical", "choices": [3, 4]}},
     "params.local_window.choices", "odd"),
    ({"dw_kernel": {"distribution": "int", "low": 2, "high": 6, "step": 2}}, "params.dw_kernel",
     "odd"),
    ({"beta": {"distribution": "float", "low": 0.0, "high": 1.0, "log": True}}, "params.beta.low",
     "log"),
    ({"betta": {"distribution": "float", "low": 0.0, "high": 1.0}}, "params.betta", "beta"),
    ({"beta": {"distribution": "float", "low": 0.0, "high": 1.0, "hgih": 2}}, "params.beta.hgih",
     "high"),
    ({"local_heads": {"distribution": "categorical", "choices": []}},
     "params.local_heads.choices", "non-empty"),
])
def test_bad_spaces_are_refused(tmp_path: Path, params: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_search_space(_write(tmp_path, params))
    assert err.value.field == field and words in str(err.value)


def test_heads_must_divide_d_model(tmp_path: Path) -> None:
    space = load_search_space(_write(tmp_path, {
        "local_heads": {"distribution": "categorical", "choices": [2, 3]}}))
    with pytest.raises(ConfigError) as err:
        check_against_fixed(space, {"d_model": 64})
    assert err.value.field == "params.local_heads"
    with pytest.raises(ConfigError):  # fixed and searched at once
        check_against_fixed(space, {"local_heads": 4})


def test_conditional_parameter(tmp_path: Path) -> None:
    space = load_search_space(_write(tmp_path, {
        "branches": {"distribution": "categorical", "choices": ["local", "global"]},
        "dw_kernel": {"distribution": "categorical", "choices": [3, 5],
                      "when": {"branches": ["local"]}}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [space.sample(study.ask()) for _ in range(12)]
    assert all(("dw_kernel" in s) == (s["branches"] == "local") for s in seen)
    assert {s["branches"] for s in seen} == {"local", "global"}


def test_mix_is_searchable_as_words_and_weights(tmp_path: Path) -> None:
    from facefuse.model import FusionConfig

    space = load_search_space(_write(tmp_path, {
        "mix": {"distribution": "categorical", "choices": ["learned", 0.25, 0.5, 0.75]}}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [space.sample(study.ask())["mix"] for _ in range(16)]
    assert {"learned", 0.25, 0.75} <= set(seen)
    for value in seen:  # every draw builds a model config
        assert FusionConfig(mix=value).mix == value
    ranged = load_search_space(_write(tmp_path, {
        "mix": {"distribution": "float", "low": 0.0, "high": 1.0}}))
    assert ranged.params["mix"].contains(0.3)


@pytest.mark.parametrize("spec,field", [
    ({"distribution": "categorical", "choices": ["learned", 1.5]}, "params.mix.choices"),
    ({"distribution": "categorical", "choices": ["learnt", 0.5]}, "params.mix.choices"),
    ({"distribution": "categorical", "choices": [True, 0.5]}, "params.mix.choices"),
    ({"distribution": "float", "low": 0.0, "high": 2.0}, "params.mix"),
    ({"distribution": "float", "low": -0.5, "high": 0.5}, "params.mix"),
])
def test_mix_outside_its_domain_is_refused(tmp_path: Path, spec: dict, field: str) -> None:
    p = _write(tmp_path, {"mix": spec})
    with pytest.raises(ConfigError) as err:
        load_search_space(p)
    assert err.value.field == field and str(p) in str(err.value)
    assert "[0, 1]" in str(err.value) and "learned" in str(err.value)
