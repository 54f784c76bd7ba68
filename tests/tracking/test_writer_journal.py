"""The writer's journal: a sweep whose store was replaced gets its runs back, once, and says so."""

from __future__ import annotations

import logging
from pathlib import Path

from facefuse.tracking import schema as S
from facefuse.tracking.writer import JOURNAL_FILE, SweepWriter


def _ops(step: int) -> list[dict]:
    return [{"op": "trial", "trial": "t1", "params": {"beta": 0.1}, "tags": {}},
            {"op": "metrics", "trial": "t1", "step": step, "ts": 1000 + step,
             "metrics": {"objective": 0.5 + step, "epoch": float(step)}}]


def _trial_runs(uri: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp")
    runs = client.search_runs([exp.experiment_id], S.sweep_filter("sw", S.KIND_TRIAL))
    return [(r, [m.step for m in client.get_metric_history(r.info.run_id, "objective")])
            for r in runs]


def test_replaced_store_gets_the_journal_replayed(tmp_path: Path, caplog) -> None:
    state = tmp_path / "state"
    first = f"sqlite:///{tmp_path}/a.db"
    w = SweepWriter(first, "exp", "sw", str(state))
    w.load_map()
    for op in [{"op": "parent"}, *_ops(1)]:
        w.execute(op)
    assert len((state / JOURNAL_FILE).read_text().splitlines()) == 3

    # The store is replaced (here: the job now names an empty one); the map names dead ids.
    second = f"sqlite:///{tmp_path}/b.db"
    again = SweepWriter(second, "exp", "sw", str(state))
    again.load_map()
    with caplog.at_level(logging.WARNING, logger="facefuse.tracking"):
        again.execute(_ops(2)[1])
        again.execute(_ops(2)[1])  # a repeated epoch is not logged twice
    assert "replaying 3 journaled tracking operations" in caplog.text
    (run, steps), = _trial_runs(second)
    assert steps == [1, 2] and run.data.params == {"beta": "0.1"}
    (_, old_steps), = _trial_runs(first)
    assert old_steps == [1]  # the old store is left alone


def test_store_without_the_mapped_runs_is_detected(tmp_path: Path, caplog) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    w = SweepWriter(uri, "exp", "sw", str(tmp_path / "state"))
    w.load_map()
    for op in [{"op": "parent"}, *_ops(1)]:
        w.execute(op)
    # Someone renamed the experiment away: the map's experiment id now names another one.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exp")
    client.rename_experiment(exp.experiment_id, "exp-old")
    again = SweepWriter(uri, "exp", "sw", str(tmp_path / "state"))
    again.load_map()
    with caplog.at_level(logging.WARNING, logger="facefuse.tracking"):
        again.execute(_ops(2)[1])
    assert "does not hold this sweep's runs" in caplog.text
    (run, steps), = _trial_runs(uri)
    assert steps == [1, 2]
