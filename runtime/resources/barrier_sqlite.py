"""The idempotency barrier in a user's own SQLite database.

Every delivery of a saga step's action or compensation goes through
`SqliteBarrier.run(call, work)`. In ONE local transaction, on the
connection's own thread (one aiosqlite trip), it reads the barrier rows of
(saga id, step), decides with `dtxn.protocols.saga.barrier.decide`, runs `work`
(your business write, a plain function taking the `sqlite3.Connection`) only
when told to, records the barrier row, and commits. The business change and
its barrier row therefore commit together or not at all:

- a duplicate delivery returns the recorded result and writes nothing;
- a compensation that arrives before its action records a NULL compensation
  and does nothing; the late action is then refused (`StepError`, not
  retriable), so nothing is left "hanging" after its saga was undone;
- if `work` raises, everything it wrote is rolled back with the barrier row.

Schema (created by `setup`): `dtxn_barrier(saga_id, step, op, is_null,
result)`, primary key (saga_id, step, op); `result` is msgpack.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite
import msgspec
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.saga.barrier import (
    BarrierDecision,
    BarrierRow,
    decide,
    recorded_result,
    row_to_write,
)
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.wal import on_sqlite_thread

T = TypeVar("T")

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()


class SqliteBarrier:
    """Barrier rows kept beside the business tables of `conn`'s database."""

    def __init__(self, conn: aiosqlite.Connection, *, table: str = "dtxn_barrier") -> None:
        if not table.isidentifier():
            raise ConfigError(f"barrier table name must be an identifier, got {table!r}")
        self.conn = conn
        self.table = table
        self.duplicates = 0
        self.refused = 0
        self.null_compensations = 0

    async def setup(self) -> None:
        """Create the barrier table if it is missing."""
        table = self.table

        def create() -> None:
            db: sqlite3.Connection = self.conn._conn
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                "saga_id TEXT NOT NULL, step TEXT NOT NULL, op TEXT NOT NULL, "
                "is_null INTEGER NOT NULL, result BLOB, PRIMARY KEY (saga_id, step, op))"
            )
            db.commit()

        await on_sqlite_thread(self.conn, create)

    async def run(self, call: StepCall, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `work` for this delivery at most once, atomically with its barrier row."""
        table = self.table

        def transaction() -> tuple[BarrierDecision, Any]:
            db: sqlite3.Connection = self.conn._conn
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = [
                    BarrierRow(StepOp(op), bool(is_null), _DECODER.decode(blob) if blob else None)
                    for op, is_null, blob in db.execute(
                        f"SELECT op, is_null, result FROM {table} WHERE saga_id = ? AND step = ?",
                        (call.saga_id, call.step),
                    )
                ]
                decision = decide(rows, call.op)
                result: Any = None
                if decision is BarrierDecision.RUN:
                    result = work(db)
                elif decision is BarrierDecision.DUPLICATE:
                    result = recorded_result(rows, call.op)
                row = row_to_write(decision, call.op, result)
                if row is not None:
                    try:
                        stored = _ENCODER.encode(row.result)
                    except (TypeError, msgspec.EncodeError) as exc:
                        raise ConfigError(
                            f"barrier work for step {call.step!r} returned "
                            f"{type(result).__name__}, which cannot be recorded; "
                            "return plain data (or None)"
                        ) from exc
                    db.execute(
                        f"INSERT INTO {table} (saga_id, step, op, is_null, result) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (
                            call.saga_id,
                            call.step,
                            row.op.value,
                            int(row.null),
                            stored,
                        ),
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return decision, result

        decision, result = await on_sqlite_thread(self.conn, transaction)
        if decision is BarrierDecision.DUPLICATE:
            self.duplicates += 1
        elif decision is BarrierDecision.RECORD_NULL:
            self.null_compensations += 1
        elif decision is BarrierDecision.REFUSE:
            self.refused += 1
            raise StepError(
                f"barrier refused {call.op.value} of step {call.step!r} of saga "
                f"{call.saga_id!r}: it was already compensated",
                retriable=False,
            )
        return result
