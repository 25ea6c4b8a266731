"""Semantic locks: the isolation aid for sagas (they have no I in ACID).

A record touched by an unfinished saga is marked *pending* in the same local
transaction as the business write (the order is PENDING, the reserved stock
is PENDING), and unmarked when the saga completes or compensates. Whoever
meets a pending record gets the answer its policy asks for:

- `FAIL_FAST`: `RecordPending` at once (a saga step raising it is retried by
  its retry policy, which is how a step *waits* without holding a worker);
- `WAIT`: poll until the record is released or `timeout_s` passes;
- `READ_PENDING`: read the value with its pending flag, so "is this item
  available?" is answered "reserved by an order in progress", not a wrong "no".

The marks live in a table of the user's own database (`dtxn_pending`), so a
mark commits or rolls back with the business change it guards; use the
functions that take a `sqlite3.Connection` inside `SqliteBarrier.run` work.
"""

from __future__ import annotations

import enum
import sqlite3
from collections.abc import Callable
from typing import Any

import aiosqlite
import msgspec
from dtxn.protocols.errors import ConfigError
from dtxn.runtime.clock import Clock
from dtxn.runtime.hosting.sagas import StepError
from dtxn.runtime.wal import on_sqlite_thread


class PendingPolicy(enum.Enum):
    FAIL_FAST = "fail_fast"
    WAIT = "wait"
    READ_PENDING = "read_pending"


class RecordPending(StepError):
    """Raised when a record is held pending by another unfinished saga."""

    def __init__(self, key: str, holder: str) -> None:
        super().__init__(f"record {key!r} is pending: held by saga {holder!r}", retriable=True)
        self.key = key
        self.holder = holder


class PendingRead(msgspec.Struct, frozen=True):
    """A value read under READ_PENDING, with the saga holding it (if any)."""

    value: Any
    pending_by: str | None

    @property
    def pending(self) -> bool:
        return self.pending_by is not None


class SemanticLocks:
    """Pending marks in table `table` of a user's SQLite database."""

    def __init__(self, *, table: str = "dtxn_pending") -> None:
        if not table.isidentifier():
            raise ConfigError(f"pending-mark table name must be an identifier, got {table!r}")
        self.table = table

    # -- inside a local transaction (sqlite3.Connection) ---------------------------

    def setup(self, db: sqlite3.Connection) -> None:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} "
            "(key TEXT PRIMARY KEY, saga_id TEXT NOT NULL)"
        )

    def holder(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute(f"SELECT saga_id FROM {self.table} WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def acquire(self, db: sqlite3.Connection, key: str, saga_id: str) -> None:
        """Mark `key` pending for `saga_id` (idempotent); `RecordPending` if another holds it."""
        holder = self.holder(db, key)
        if holder is None:
            db.execute(f"INSERT INTO {self.table} (key, saga_id) VALUES (?, ?)", (key, saga_id))
        elif holder != saga_id:
            raise RecordPending(key, holder)

    def release_all(self, db: sqlite3.Connection, saga_id: str) -> int:
        """Unmark every record `saga_id` holds; returns how many."""
        cursor = db.execute(f"DELETE FROM {self.table} WHERE saga_id = ?", (saga_id,))
        return cursor.rowcount

    def held(self, db: sqlite3.Connection) -> dict[str, str]:
        """Every pending mark (key -> saga); empty once all sagas ended (G5)."""
        return {str(k): str(s) for k, s in db.execute(f"SELECT key, saga_id FROM {self.table}")}

    # -- readers (aiosqlite) -------------------------------------------------------

    async def read(
        self,
        conn: aiosqlite.Connection,
        key: str,
        query: Callable[[sqlite3.Connection], Any],
        *,
        policy: PendingPolicy = PendingPolicy.READ_PENDING,
        timeout_s: float = 5.0,
        poll_s: float = 0.01,
        clock: Clock | None = None,
    ) -> PendingRead:
        """Read `query(db)` for record `key`, meeting a pending mark as `policy` says."""
        if policy is PendingPolicy.WAIT and clock is None:
            raise ConfigError("PendingPolicy.WAIT needs the runtime's clock to wait on")

        def once() -> PendingRead:
            db: sqlite3.Connection = conn._conn
            return PendingRead(query(db), self.holder(db, key))

        waited_s = 0.0
        while True:
            found = await on_sqlite_thread(conn, once)
            if found.pending_by is None or policy is PendingPolicy.READ_PENDING:
                return found
            if policy is PendingPolicy.FAIL_FAST or waited_s >= timeout_s:
                raise RecordPending(key, found.pending_by)
            assert clock is not None
            await clock.sleep(poll_s)
            waited_s += poll_s
