"""The durable operation queue on its own, against a store stand-in that is a plain Python
object (the queue knows nothing of MLflow): order, outage buffering, backlog replay, drops."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from facefuse.tracking.queue import MAX_PERMANENT_ATTEMPTS, OperationQueue, is_transient


class Store:
    """A store that records what it receives and can be taken down."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.down = False
        self.reject: set[str] = set()

    def execute(self, op: dict) -> None:
        if self.down:
            raise ConnectionRefusedError("connection refused")
        if op["op"] in self.reject:
            raise ValueError(f"bad operation {op['op']}")
        self.received.append(op)


def _queue(tmp_path: Path, store: Store, name: str = "sqlite:////x.db") -> OperationQueue:
    return OperationQueue(tmp_path / "backlog.json", name, store.execute, initial_backoff_s=0.01,
                          max_backoff_s=0.02)


def test_operations_reach_the_store_in_order(tmp_path: Path) -> None:
    store = Store()
    q = _queue(tmp_path, store)
    for i in range(5):
        q.put({"op": "metrics", "step": i})
    assert q.drain() and len(q) == 0
    assert [op["step"] for op in store.received] == list(range(5))
    assert not (tmp_path / "backlog.json").exists()


def test_outage_keeps_a_backlog_that_a_new_queue_replays(tmp_path: Path, caplog) -> None:
    store = Store()
    store.down = True
    q = _queue(tmp_path, store, "http://***@host:5000")
    with caplog.at_level(logging.WARNING, logger="facefuse.tracking.queue"):
        q.put({"op": "parent"})
        assert not q.drain(force=True)
        q.put({"op": "tags", "tags": {"a": "b"}})  # written to disk at once during an outage
        assert not q.flush(timeout_s=0.1)
    assert "does not answer" in caplog.text and q.in_outage
    backlog = json.loads((tmp_path / "backlog.json").read_text())
    assert [op["op"] for op in backlog["ops"]] == ["parent", "tags"]

    # A killed process loses nothing: the next queue on the same store replays in order.
    store.down = False
    again = _queue(tmp_path, store, "http://***@host:5000")
    assert again.load_backlog() == 2
    assert again.flush(timeout_s=5.0)
    assert [op["op"] for op in store.received] == ["parent", "tags"]
    assert not (tmp_path / "backlog.json").exists()


def test_backlog_of_another_store_is_not_replayed(tmp_path: Path) -> None:
    store = Store()
    store.down = True
    q = _queue(tmp_path, store, "sqlite:////a.db")
    q.put({"op": "parent"})
    q.drain(force=True)
    other = _queue(tmp_path, Store(), "sqlite:////b.db")
    assert other.load_backlog() == 0 and len(other) == 0


def test_a_permanently_failing_operation_is_dropped_not_blocking(tmp_path: Path, caplog) -> None:
    store = Store()
    store.reject = {"bad"}
    q = _queue(tmp_path, store)
    q.put({"op": "bad"})
    q.put({"op": "good"})
    with caplog.at_level(logging.ERROR, logger="facefuse.tracking.queue"):
        assert q.flush(timeout_s=5.0)
    assert [op["op"] for op in store.received] == ["good"]
    assert f"after {MAX_PERMANENT_ATTEMPTS} attempts" in caplog.text


def test_transient_errors_are_recognised_through_their_cause() -> None:
    try:
        try:
            raise TimeoutError("read timed out")
        except TimeoutError as inner:
            raise RuntimeError("request failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer)
    assert not is_transient(ValueError("INVALID_PARAMETER_VALUE"))


def test_the_queue_does_not_import_mlflow() -> None:
    # Run in a fresh interpreter: this test process may have imported mlflow already.
    import subprocess

    code = ("import sys, facefuse.tracking.queue; "
            "sys.exit(1 if any(m == 'mlflow' or m.startswith('mlflow.') for m in sys.modules) "
            "else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("n", [1, 50])
def test_backlog_file_is_valid_json_after_each_put(tmp_path: Path, n: int) -> None:
    store = Store()
    store.down = True
    q = _queue(tmp_path, store)
    q.put({"op": "parent"})
    q.drain(force=True)
    for i in range(n):
        q.put({"op": "metrics", "step": i})
        assert len(json.loads((tmp_path / "backlog.json").read_text())["ops"]) == i + 2
