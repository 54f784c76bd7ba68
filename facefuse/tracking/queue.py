"""A durable FIFO of write operations for a store that may be down: nothing here knows MLflow.

Every write is an operation (a JSON-serialisable dict with an ``"op"`` key) executed in order by
a function the owner supplies. When the store does not answer (a transient error: connection
refused, timeout, database locked, 5xx), the queue is kept in memory and in a backlog file, a
warning is logged once, and sending is retried with exponential backoff. What is still unsent at
the end stays in the backlog file and is replayed by the next queue opened on the same file and
store. An operation that fails for another reason is retried ``MAX_PERMANENT_ATTEMPTS`` times and
then dropped with an error logged: one bad write must never block the rest.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from facefuse.data._io import atomic_write_json
from facefuse.tracking.store import redact_uri

logger = logging.getLogger(__name__)

Operation = dict[str, Any]

#: Substrings of errors that mean "the store is unreachable or busy": retried without limit.
_TRANSIENT = ("connection", "max retries exceeded", "timed out", "timeout", "temporarily",
              "database is locked", "503", "502", "504", "remote end closed", "broken pipe",
              "name or service not known", "connection refused", "reset by peer")
MAX_PERMANENT_ATTEMPTS = 3
#: While waiting for the store at the end, poll at least this often (not only at the backoff).
FLUSH_POLL_S = 5.0


def is_transient(exc: BaseException) -> bool:
    """Returns whether an error (or one it was raised from) means the store is down or busy."""
    seen: set[int] = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = type(cur).__name__.lower()
        if "connection" in name or "timeout" in name:
            return True
        text = str(cur).lower()
        if any(s in text for s in _TRANSIENT):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


class OperationQueue:
    """Operations waiting for a store, persisted to ``backlog_path`` while the store is down.

    ``store`` names the store in logs and in the backlog file (pass it redacted): a backlog
    written for another store is not replayed.
    """

    def __init__(self, backlog_path: Path, store: str, execute: Callable[[Operation], None],
                 initial_backoff_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        self.backlog_path = Path(backlog_path)
        self.store = store
        self._execute = execute
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self._ops: collections.deque[Operation] = collections.deque()
        self._next_try = 0.0
        self._backoff = initial_backoff_s
        self._outage_since: Optional[float] = None
        self.sent = 0

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._ops)

    @property
    def in_outage(self) -> bool:
        """Returns whether the store failed the last attempt to send."""
        return self._outage_since is not None

    def load_backlog(self) -> int:
        """Returns how many operations an earlier run left for this store (now queued first)."""
        try:
            backlog = json.loads(self.backlog_path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable tracking backlog %s (%s)", self.backlog_path, exc)
            return 0
        if backlog.get("tracking_uri") != self.store:
            return 0
        ops = list(backlog.get("ops", []))
        self._ops.extendleft(reversed(ops))
        if ops:
            logger.warning("replaying %d tracking operations left from an earlier run of this "
                           "sweep", len(ops))
        return len(ops)

    def save_backlog(self) -> None:
        """Writes the waiting operations to the backlog file (removes it when none wait)."""
        if self._ops:
            # The key says "tracking_uri" for backlogs written before the queue had its module.
            atomic_write_json(self.backlog_path, {"tracking_uri": self.store, "ops": list(self._ops)})
        else:
            self.backlog_path.unlink(missing_ok=True)

    def put(self, op: Operation) -> None:
        """Queues an operation (and persists the queue at once while the store is down)."""
        self._ops.append(op)
        if self._outage_since is not None:
            self.save_backlog()  # while the store is down, a killed process must lose nothing

    def drain(self, force: bool = False) -> bool:
        """Returns True when the queue is empty after sending what the store accepts.

        Without ``force``, nothing is tried before the backoff after a failure has passed.
        """
        if not self._ops:
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        sent = 0
        while self._ops:
            op = self._ops[0]
            try:
                self._execute(op)
            except Exception as exc:  # noqa: BLE001 - a write must never fail the caller
                if is_transient(exc):
                    self._note_outage(exc)
                    self.save_backlog()
                    return False
                op["attempts"] = op.get("attempts", 0) + 1
                if op["attempts"] < MAX_PERMANENT_ATTEMPTS:
                    logger.warning("tracking operation %s failed (%s: %s); will retry",
                                   op["op"], type(exc).__name__, exc)
                    self._note_outage(exc, quiet=True)
                    self.save_backlog()
                    return False
                logger.error("dropping tracking operation %s for trial %s after %d attempts: "
                             "%s: %s", op["op"], op.get("trial"), op["attempts"],
                             type(exc).__name__, exc)
            self._ops.popleft()
            sent += 1
            self.sent += 1
        if self._outage_since is not None:
            logger.warning("tracking store %s answers again after %.0fs; sent %d buffered "
                           "operations", self.store, time.monotonic() - self._outage_since, sent)
        self._outage_since = None
        self._backoff = self.initial_backoff_s
        self._next_try = 0.0
        self.save_backlog()
        return True

    def _note_outage(self, exc: BaseException, quiet: bool = False) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since = now
            if not quiet:
                logger.warning("tracking store %s does not answer (%s: %s); buffering %d "
                               "operations and retrying with backoff; the sweep goes on",
                               self.store, type(exc).__name__, redact_uri(str(exc))[:200],
                               len(self._ops))
        self._next_try = now + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)

    def flush(self, timeout_s: float) -> bool:
        """Returns True when every queued operation reached the store within the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.drain(force=True):
                return True
            # The caller is done and waits for us: poll at least every FLUSH_POLL_S.
            self._next_try = min(self._next_try, time.monotonic() + FLUSH_POLL_S)
            wait = min(self._next_try, deadline) - time.monotonic()
            if time.monotonic() >= deadline:
                logger.warning("tracking store %s still unreachable; %d operations kept in %s "
                               "and replayed when this sweep runs again", self.store,
                               len(self._ops), self.backlog_path)
                return False
            time.sleep(max(0.05, wait))
