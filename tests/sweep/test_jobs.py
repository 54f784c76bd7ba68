"""Job files: validation names the file, the key and the fix; paths resolve in the driver."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from facefuse.errors import ConfigError
from facefuse.sweep.jobs import (fixed_config, load_job, parse_job, resolve_paths,
                                 resolve_tracking_uri, trial_context)
from tests.sweep.conftest import REPO, write_job


def _raw(tmp_path: Path, **overrides) -> dict:
    return yaml.safe_load(write_job(tmp_path, **overrides).read_text())


def test_small_job_loads_with_defaults(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path))
    assert job.name == "t" and job.trials == 6 and job.epochs == 3
    assert job.max_t == 3 and job.objective.quality == "all"
    assert job.resources.cpus_per_worker == 0.5 and job.max_failures == 1


@pytest.mark.parametrize("shipped", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_jobs_load_and_resolve(shipped: Path, tmp_path: Path) -> None:
    job = resolve_paths(load_job(shipped), REPO)
    assert Path(job.search_space).is_file()
    ctx = trial_context(job)
    assert Path(ctx["data_root"]).is_absolute() and Path(ctx["arcface_checkpoint"]).is_absolute()


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["trails"] = raw.pop("trials")
    with pytest.raises(ConfigError) as err:
        parse_job(raw, tmp_path / "job.yaml")
    assert err.value.field == "trails" and "did you mean trials" in str(err.value)
    assert "job.yaml" in str(err.value)


def test_unknown_nested_key_is_dotted(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["asha"]["grace"] = 2
    with pytest.raises(ConfigError) as err:
        parse_job(raw, "j.yaml")
    assert err.value.field == "asha.grace" and "asha.grace_period" in str(err.value)


def test_unknown_param_suggests_model_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_job(_raw(tmp_path, params={"d_modle": 64}), "j.yaml")
    assert err.value.field == "params.d_modle" and "d_model" in str(err.value)


def test_fixed_mix_is_checked_against_its_domain(tmp_path: Path) -> None:
    job = parse_job(_raw(tmp_path, params={"mix": "learned"}), "j.yaml")
    assert fixed_config(job)["mix"] == "learned"  # so every trial run records it as a param
    assert parse_job(_raw(tmp_path, params={"mix": 0.25}), "j.yaml").params["mix"] == 0.25
    for bad in (1.5, "learnt"):
        with pytest.raises(ConfigError) as err:
            parse_job(_raw(tmp_path, params={"mix": bad}), "j.yaml")
        assert err.value.field == "params.mix" and "[0, 1]" in str(err.value)


@pytest.mark.parametrize("section,key,value,field", [
    (None, "epochs", "three", "epochs"),
    (None, "trials", 2.5, "trials"),
    ("resources", "gpus_per_worker", "one", "resources.gpus_per_worker"),
    ("data", "eval", "synth_lfw", "data.eval"),
])
def test_wrong_type_names_the_key(tmp_path: Path, section, key, value, field) -> None:
    raw = _raw(tmp_path)
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ConfigError) as err:
        parse_job(raw, "j.yaml")
    assert err.value.field == field


@pytest.mark.parametrize("section,key,value,field", [
    (None, "trials", 0, "trials"),
    ("asha", "reduction_factor", 1, "asha.reduction_factor"),
    ("asha", "max_t", 9, "asha.max_t"),
    ("resources", "cpus_per_worker", 0, "resources.cpus_per_worker"),
    ("resources", "checkpoint_every_steps", -1, "resources.checkpoint_every_steps"),
    ("resources", "checkpoint_every_minutes", -5.0, "resources.checkpoint_every_minutes"),
])
def test_bad_ranges(tmp_path: Path, section, key, value, field) -> None:
    raw = _raw(tmp_path)
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ConfigError) as err:
        parse_job(raw, "j.yaml")
    assert err.value.field == field


def test_objective_forms(tmp_path: Path) -> None:
    assert parse_job(_raw(tmp_path, objective="synth_ijbc/tar_far_1e-4")).objective.to_context() \
        == {"dataset": "synth_ijbc", "metric": "tar_far_1e-4"}
    assert parse_job(_raw(tmp_path, objective="mean:low")).objective.to_context() == \
        {"quality": "low"}
    with pytest.raises(ConfigError) as err:
        parse_job(_raw(tmp_path, objective={"dataset": "synth_cplfw"}), "j.yaml")
    assert err.value.field == "objective.dataset"
    with pytest.raises(ConfigError) as err:  # no mixed-quality set among the evaluated ones
        parse_job(_raw(tmp_path, objective="mean:mixed"), "j.yaml")
    assert err.value.field == "objective.quality"


def test_unknown_dataset_suggests(tmp_path: Path) -> None:
    raw = _raw(tmp_path)
    raw["data"]["eval"] = ["synth_lfv"]
    with pytest.raises(ConfigError) as err:
        parse_job(raw, "j.yaml")
    assert err.value.field == "data.eval[0]" and "synth_lfw" in str(err.value)


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        load_job(p)
    assert "bad.yaml" in str(err.value) and "line" in str(err.value)


def test_resolve_paths_makes_everything_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FACEFUSE_DATA", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = _raw(tmp_path, tracking={"uri": "sqlite:///sub/m.db"}, storage="res",
               search_space="search_spaces/low_quality.yaml")
    raw["data"].update(root="embedded", cache_dir="embedded")
    job = parse_job(raw, tmp_path / "j.yaml")
    r = resolve_paths(job, REPO)
    assert r.data.root == str(REPO / ".facefuse" / "data")
    assert r.data.cache_dir == str(REPO / ".facefuse" / "cache")
    assert r.backbones.arcface.startswith(str(REPO / ".facefuse" / "backbones"))
    assert r.tracking.uri == f"sqlite:///{REPO}/sub/m.db"
    assert r.storage == str(REPO / "res")
    assert r.search_space == str(REPO / "search_spaces" / "low_quality.yaml")
    assert fixed_config(r)["epochs"] == 3 and job.resolved is False and r.resolved is True


def test_tracking_uri_precedence(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_data_root_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FACEFUSE_DATA", str(tmp_path / "real"))
    raw = _raw(tmp_path)
    del raw["data"]["root"]
    assert resolve_paths(parse_job(raw), tmp_path).data.root == str(tmp_path / "real")


def test_identity_hash_ignores_resources_not_budget(tmp_path: Path) -> None:
    base = parse_job(_raw(tmp_path))
    more_cpus = parse_job(_raw(tmp_path, resources={"cpus_per_worker": 1.0}))
    more_epochs = parse_job(_raw(tmp_path, epochs=4))
    assert base.identity_hash() == more_cpus.identity_hash()
    assert base.identity_hash() != more_epochs.identity_hash()


def test_missing_search_space_file(tmp_path: Path) -> None:
    job = parse_job(_raw(tmp_path, search_space="nope.yaml"), tmp_path / "j.yaml")
    with pytest.raises(ConfigError) as err:
        resolve_paths(job, tmp_path)
    assert err.value.field == "search_space"


def test_identity_does_not_depend_on_the_starting_directory(tmp_path: Path) -> None:
    # `ray job submit` runs each driver in a fresh copy of the project: same job, same sweep.
    raw = _raw(tmp_path, search_space="search_spaces/low_quality.yaml")
    raw["data"]["cache_dir"] = "embedded"
    job = parse_job(raw)
    copy = tmp_path / "copy"
    (copy / "search_spaces").mkdir(parents=True)
    (copy / "search_spaces" / "low_quality.yaml").write_bytes(
        (REPO / "search_spaces" / "low_quality.yaml").read_bytes())
    a, b = resolve_paths(job, REPO), resolve_paths(job, copy)
    assert a.data.cache_dir != b.data.cache_dir
    assert a.identity_hash() == b.identity_hash()
    (copy / "search_spaces" / "low_quality.yaml").write_text(
        "params: {beta: {distribution: loguniform, low: 1.0e-3, high: 0.5}}\n")
    assert resolve_paths(job, copy).identity_hash() != a.identity_hash()


def test_self_test_sweeps_get_their_own_id(tmp_path: Path) -> None:
    from facefuse.sweep.tuner import DEFAULT_TRAINABLE, sweep_id_for

    job = parse_job(_raw(tmp_path))
    real = sweep_id_for(job, DEFAULT_TRAINABLE)
    assert real.startswith("t-") and real == sweep_id_for(job)
    assert sweep_id_for(job, "facefuse.sweep.selftest.quadratic_trainable") != real


def test_each_ablation_grid_is_its_own_sweep(tmp_path: Path) -> None:
    # the same job run with --seeds 1 after --seeds 0 must be a new grid, not a resume of the first
    from facefuse.ablation import ablation_param_space
    from facefuse.sweep.tuner import sweep_id_for

    job = parse_job(_raw(tmp_path))
    seed0 = sweep_id_for(job, param_space=ablation_param_space(["full"], [0.1], [0]))
    again = sweep_id_for(job, param_space=ablation_param_space(["full"], [0.1], [0]))
    seed1 = sweep_id_for(job, param_space=ablation_param_space(["full"], [0.1], [1]))
    other_beta = sweep_id_for(job, param_space=ablation_param_space(["full"], [1.0], [0]))
    assert seed0 == again
    assert len({seed0, seed1, other_beta, sweep_id_for(job)}) == 4
    # Tune domains have address-bearing reprs; equal spaces must still give one id (resume)
    from ray import tune

    def space(high: float) -> dict:
        return {"lr": tune.loguniform(1e-4, high), "heads": tune.choice([2, 4])}

    assert sweep_id_for(job, param_space=space(1e-2)) == sweep_id_for(job, param_space=space(1e-2))
    assert sweep_id_for(job, param_space=space(1e-2)) != sweep_id_for(job, param_space=space(1e-1))


def test_default_trainable_is_recognised_by_identity() -> None:
    from facefuse.sweep.tuner import DEFAULT_TRAINABLE, _trainable_name, resolve_trainable

    assert _trainable_name(resolve_trainable(None)) == DEFAULT_TRAINABLE
    assert _trainable_name(resolve_trainable("facefuse.sweep.selftest.quadratic_trainable")) == \
        "facefuse.sweep.selftest.quadratic_trainable"


def test_cluster_fields_reach_the_trial_context(tmp_path: Path) -> None:
    job = load_job(write_job(tmp_path, tracking={"uri": "postgresql+psycopg://u:p@db/mlflow",
                                                 "artifact_location": "arts"}))
    ctx = trial_context(resolve_paths(job, tmp_path))
    assert ctx["checkpoint_every_s"] == 15 * 60.0 and ctx["checkpoint_every_steps"] == 0
    assert ctx["storage"] == str(tmp_path / "results") and ctx["train_driver_resource"] is None
    resolved = resolve_paths(job, tmp_path)
    assert resolved.tracking.uri == "postgresql+psycopg://u:p@db/mlflow"
    assert resolved.tracking.artifact_location == (tmp_path / "arts").as_uri()


def test_selection_section(tmp_path: Path) -> None:
    job = parse_job(_raw(tmp_path))
    assert job.selection.confirm_top == 0 and job.selection.validation == []  # off by default
    job = parse_job(_raw(tmp_path, selection={"confirm_top": 3, "seeds": 2}))
    assert (job.selection.confirm_top, job.selection.seeds) == (3, 2)
    # The confirmation round does not change the main round: same sweep id.
    assert job.identity_hash() == parse_job(_raw(tmp_path)).identity_hash()
    for sel, field, words in [
            ({"confirm_top": -1}, "selection.confirm_top", ">= 0"),
            ({"seed": 2}, "selection.seed", "did you mean selection.seeds?"),
            ({"seeds": 0}, "selection.seeds", ">= 1"),
            ({"validation": ["synth_lfw"]}, "selection.validation[0]", "evaluated set"),
            ({"validation": ["synth_ijbz"]}, "selection.validation[0]", "did you mean"),
            # mean:all is checked against the validation sets: none is of quality mixed
            ({"validation": ["synth_cplfw"]}, None, None)]:
        raw = _raw(tmp_path, selection=sel)
        if field is None:
            raw["objective"] = "mean:mixed"
        with pytest.raises(ConfigError) as err:
            parse_job(raw, "j.yaml")
        text = str(err.value)
        assert text.startswith("j.yaml: [") and " -- " in text and "\n" not in text
        assert err.value.field == (field or "objective.quality"), text
        assert words is None or words in text, text


def test_validation_sets_join_the_trial_context(tmp_path: Path) -> None:
    job = resolve_paths(parse_job(_raw(tmp_path, selection={"validation": ["synth_ijbb"]})),
                        tmp_path)
    ctx = trial_context(job)
    assert ctx["eval_datasets"] == ["synth_lfw", "synth_ijbc", "synth_ijbb"]
    assert ctx["objective"] == {"quality": "all", "validation": ["synth_ijbb"]}
    assert job.identity_hash() != parse_job(_raw(tmp_path)).identity_hash()


def test_train_subset_and_flips_are_params_of_every_trial(tmp_path: Path) -> None:
    from facefuse.tracking.writer import safe_params

    raw = _raw(tmp_path)
    raw["data"]["train_subset"] = {"identities": 10, "per_identity": 4, "seed": 3}
    cfg = fixed_config(parse_job(raw, "j.yaml"))
    params = safe_params(cfg)  # what the writer logs for each trial run
    assert params["train_subset_identities"] == "10" and params["train_subset_per_identity"] == "4"
    assert params["train_subset_seed"] == "3" and params["flip_augment"] == "True"
    # the synthetic suite keeps mirrored train maps (the quickstart's numbers); real data does not
    raw["data"]["train"] = "ms1mv2"
    assert fixed_config(parse_job(raw, "j.yaml"))["flip_augment"] is False
    raw["params"] = {"flip_augment": True}
    assert fixed_config(parse_job(raw, "j.yaml"))["flip_augment"] is True
    del raw["data"]["train_subset"]
    assert fixed_config(parse_job(raw, "j.yaml"))["train_subset_identities"] is None


def test_flip_test_off_drops_the_eval_sets_mirrored_maps(tmp_path: Path) -> None:
    from facefuse.pipeline import job_datasets

    raw = _raw(tmp_path)
    job = parse_job(raw, "j.yaml")
    assert fixed_config(job)["flip_test"] is True
    assert all(w.flips for w in job_datasets(job)[1:])
    raw["params"] = {"flip_test": False}
    job = parse_job(raw, "j.yaml")
    assert fixed_config(job)["flip_test"] is False
    evals = job_datasets(job)[1:]
    assert evals and not any(w.flips for w in evals)


@pytest.mark.parametrize("subset,field", [
    ({"identities": 0, "per_identity": 4}, "data.train_subset.identities"),
    ({"identities": 5}, "data.train_subset.per_identity"),
    ({"identities": 5, "per_identity": 4, "seeds": 1}, "data.train_subset.seeds"),
    ({"identities": 5.5, "per_identity": 4}, "data.train_subset.identities"),
    ("10x4", "data.train_subset"),
])
def test_bad_train_subset_names_the_key(tmp_path: Path, subset, field) -> None:
    raw = _raw(tmp_path)
    raw["data"]["train_subset"] = subset
    with pytest.raises(ConfigError) as err:
        parse_job(raw, "j.yaml")
    assert err.value.field == field and "j.yaml" in str(err.value)
    assert "\n" not in str(err.value)


def test_train_subset_params_are_reserved(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        parse_job(_raw(tmp_path, params={"train_subset_seed": 1}), "j.yaml")
    assert err.value.field == "params.train_subset_seed" and "data.train_subset" in str(err.value)
