"""Semantic locks: pending marks committed with the business write, three reader policies."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import anyio
import pytest
from dtxn.runtime.clock import Clock
from dtxn.runtime.resources.semantic_locks import PendingPolicy, RecordPending, SemanticLocks
from dtxn.runtime.wal import on_sqlite_thread

pytestmark = pytest.mark.anyio

LOCKS = SemanticLocks()


def stock(db: sqlite3.Connection) -> int:
    (count,) = db.execute("SELECT count FROM stock WHERE item = 'lamp'").fetchone()
    return int(count)


async def _shop(tmp_path: Path) -> aiosqlite.Connection:
    conn = await aiosqlite.connect(tmp_path / "shop.db")
    await conn.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, count INTEGER)")
    await conn.execute("INSERT INTO stock VALUES ('lamp', 1)")
    await conn.commit()

    def setup() -> None:
        LOCKS.setup(conn._conn)
        conn._conn.commit()

    await on_sqlite_thread(conn, setup)
    return conn


async def _in_txn(conn: aiosqlite.Connection, fn: object) -> object:
    def run() -> object:
        db = conn._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)  # type: ignore[operator]
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    return await on_sqlite_thread(conn, run)


async def test_a_pending_record_is_refused_to_another_saga_and_released_at_its_end(
    tmp_path: Path,
) -> None:
    conn = await _shop(tmp_path)
    try:
        await _in_txn(conn, lambda db: LOCKS.acquire(db, "lamp", "order-1"))
        await _in_txn(conn, lambda db: LOCKS.acquire(db, "lamp", "order-1"))  # idempotent
        with pytest.raises(RecordPending, match="order-1") as pending:
            await _in_txn(conn, lambda db: LOCKS.acquire(db, "lamp", "order-2"))
        assert pending.value.retriable  # a saga step meeting it retries with backoff
        assert await _in_txn(conn, lambda db: LOCKS.release_all(db, "order-1")) == 1
        await _in_txn(conn, lambda db: LOCKS.acquire(db, "lamp", "order-2"))
        assert await _in_txn(conn, LOCKS.held) == {"lamp": "order-2"}
    finally:
        await conn.close()


async def test_a_mark_rolls_back_with_the_business_write_it_guards(tmp_path: Path) -> None:
    conn = await _shop(tmp_path)

    def reserve_then_fail(db: sqlite3.Connection) -> None:
        LOCKS.acquire(db, "lamp", "order-1")
        db.execute("UPDATE stock SET count = count - 1")
        raise RuntimeError("card declined")

    try:
        with pytest.raises(RuntimeError):
            await _in_txn(conn, reserve_then_fail)
        assert await _in_txn(conn, LOCKS.held) == {}
        assert await _in_txn(conn, stock) == 1
    finally:
        await conn.close()


async def test_readers_get_the_answer_their_policy_asks_for(tmp_path: Path) -> None:
    conn = await _shop(tmp_path)
    clock = Clock()
    try:
        await _in_txn(conn, lambda db: LOCKS.acquire(db, "lamp", "order-1"))
        seen = await LOCKS.read(conn, "lamp", stock)  # READ_PENDING is the default
        assert (seen.value, seen.pending, seen.pending_by) == (1, True, "order-1")
        with pytest.raises(RecordPending):
            await LOCKS.read(conn, "lamp", stock, policy=PendingPolicy.FAIL_FAST)
        with pytest.raises(RecordPending):
            await LOCKS.read(
                conn, "lamp", stock, policy=PendingPolicy.WAIT, timeout_s=0.05, clock=clock
            )

        async def release_soon() -> None:
            await clock.sleep(0.05)
            await _in_txn(conn, lambda db: LOCKS.release_all(db, "order-1"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(release_soon)
            waited = await LOCKS.read(
                conn, "lamp", stock, policy=PendingPolicy.WAIT, timeout_s=5.0, clock=clock
            )
        assert not waited.pending and waited.value == 1
    finally:
        await conn.close()
