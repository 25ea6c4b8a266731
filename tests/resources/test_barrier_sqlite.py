"""The idempotency barrier in a user's SQLite database: exactly-once effects, atomically."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.resources.barrier_sqlite import SqliteBarrier

pytestmark = pytest.mark.anyio


def reserve(db: sqlite3.Connection) -> int:
    db.execute("UPDATE stock SET reserved = reserved + 1 WHERE item = 'book'")
    (reserved,) = db.execute("SELECT reserved FROM stock WHERE item = 'book'").fetchone()
    return int(reserved)


def release(db: sqlite3.Connection) -> int:
    db.execute("UPDATE stock SET reserved = reserved - 1 WHERE item = 'book'")
    (reserved,) = db.execute("SELECT reserved FROM stock WHERE item = 'book'").fetchone()
    return int(reserved)


async def _open(tmp_path: Path) -> tuple[aiosqlite.Connection, SqliteBarrier]:
    conn = await aiosqlite.connect(tmp_path / "shop.db")
    await conn.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, reserved INTEGER)")
    await conn.execute("INSERT INTO stock VALUES ('book', 0)")
    await conn.commit()
    barrier = SqliteBarrier(conn)
    await barrier.setup()
    return conn, barrier


async def _reserved(conn: aiosqlite.Connection) -> int:
    async with conn.execute("SELECT reserved FROM stock") as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


ACTION = StepCall("s1", "stock", StepOp.ACTION, 1)
COMPENSATION = StepCall("s1", "stock", StepOp.COMPENSATION, 1)


async def test_a_duplicated_action_has_no_second_effect_and_returns_the_first_result(
    tmp_path: Path,
) -> None:
    conn, barrier = await _open(tmp_path)
    try:
        assert await barrier.run(ACTION, reserve) == 1
        assert await barrier.run(ACTION, reserve) == 1  # the recorded result
        assert await _reserved(conn) == 1
        assert barrier.duplicates == 1
    finally:
        await conn.close()


async def test_a_compensation_before_its_action_is_null_and_the_late_action_is_refused(
    tmp_path: Path,
) -> None:
    conn, barrier = await _open(tmp_path)
    try:
        assert await barrier.run(COMPENSATION, release) is None  # nothing to undo yet
        with pytest.raises(StepError, match="already compensated") as refused:
            await barrier.run(ACTION, reserve)
        assert not refused.value.retriable
        assert await _reserved(conn) == 0  # no hanging reservation
        assert (barrier.null_compensations, barrier.refused) == (1, 1)
    finally:
        await conn.close()


async def test_a_compensation_after_its_action_runs_once(tmp_path: Path) -> None:
    conn, barrier = await _open(tmp_path)
    try:
        await barrier.run(ACTION, reserve)
        assert await barrier.run(COMPENSATION, release) == 0
        assert await barrier.run(COMPENSATION, release) == 0  # duplicate
        assert await _reserved(conn) == 0
        with pytest.raises(StepError):
            await barrier.run(ACTION, reserve)  # a replayed action after its undo
        assert await _reserved(conn) == 0
    finally:
        await conn.close()


async def test_a_failing_business_write_rolls_back_with_its_barrier_row(tmp_path: Path) -> None:
    conn, barrier = await _open(tmp_path)

    def reserve_then_fail(db: sqlite3.Connection) -> int:
        reserve(db)
        raise RuntimeError("payment service down")

    try:
        with pytest.raises(RuntimeError, match="payment service down"):
            await barrier.run(ACTION, reserve_then_fail)
        assert await _reserved(conn) == 0
        assert await barrier.run(ACTION, reserve) == 1  # no barrier row was left behind
    finally:
        await conn.close()


def test_a_table_name_that_is_not_an_identifier_is_refused(tmp_path: Path) -> None:
    from dtxn.protocols.errors import ConfigError

    with pytest.raises(ConfigError, match="identifier"):
        SqliteBarrier(None, table="x; DROP TABLE stock")  # type: ignore[arg-type]
