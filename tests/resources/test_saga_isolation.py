"""Isolation aids for sagas: two concurrent orders for the last item never oversell.

Each order saga reserves stock under a semantic lock (a pending mark written in
the same local transaction as the stock update, through the idempotency
barrier). The second order meets the pending mark, retries with backoff until
the first saga ends, then rereads the stock, finds none and is compensated.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest
from dtxn.protocols.saga import FOREVER, RetryPolicy, SagaDefinition, SagaStep
from dtxn.protocols.saga.records import SagaState
from dtxn.runtime import Runtime
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.resources.barrier_sqlite import SqliteBarrier
from dtxn.runtime.resources.semantic_locks import SemanticLocks
from dtxn.runtime.wal import on_sqlite_thread

pytestmark = pytest.mark.anyio

LOCKS = SemanticLocks()
PATIENT = RetryPolicy(max_attempts=200, backoff_ms_initial=2, backoff_ms_max=20, jitter=0.5)
ORDER = SagaDefinition(
    "order",
    (
        SagaStep("stock", "reserve", "release", retry=PATIENT),
        SagaStep("payment", "pay", None, ("stock",)),
        SagaStep("confirm", "confirm", None, ("payment",), retry=FOREVER),
    ),
    pivot="payment",
)


async def test_two_concurrent_sagas_on_the_last_item_never_oversell_or_leave_a_lock(
    tmp_path: Path,
) -> None:
    conn = await aiosqlite.connect(tmp_path / "shop.db")
    barrier = SqliteBarrier(conn)
    await barrier.setup()

    def schema() -> None:
        db = conn._conn
        db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER)")
        db.execute("INSERT INTO stock VALUES ('lamp', 1)")
        LOCKS.setup(db)
        db.commit()

    await on_sqlite_thread(conn, schema)
    paying = anyio.Event()
    release_payment = anyio.Event()

    async def reserve(call: StepCall) -> int:
        def work(db: sqlite3.Connection) -> int:
            LOCKS.acquire(db, "lamp", call.saga_id)  # RecordPending: retried by PATIENT
            # Reread inside the same local transaction: the value the decision
            # is based on cannot change before this step commits.
            (available,) = db.execute("SELECT available FROM stock").fetchone()
            if available < 1:
                LOCKS.release_all(db, call.saga_id)
                raise StepError("lamp is out of stock", retriable=False)
            # A commutative update: it composes with any other saga's -1/+1.
            db.execute("UPDATE stock SET available = available - 1")
            return int(available) - 1

        return int(await barrier.run(call, work))

    async def release(call: StepCall) -> None:
        def work(db: sqlite3.Connection) -> None:
            if call.results:  # the reservation was made: give it back
                db.execute("UPDATE stock SET available = available + 1")
            LOCKS.release_all(db, call.saga_id)

        await barrier.run(call, work)

    async def pay(call: StepCall) -> str:
        paying.set()
        await release_payment.wait()
        return "paid"

    async def confirm(call: StepCall) -> None:
        def work(db: sqlite3.Connection) -> None:
            LOCKS.release_all(db, call.saga_id)

        await barrier.run(call, work)

    outcomes: dict[str, Any] = {}
    try:
        async with Runtime("shop", wal_path=tmp_path / "wal.db") as rt:
            rt.register_saga(
                ORDER, {"reserve": reserve, "release": release, "pay": pay, "confirm": confirm}
            )

            async def order(saga_id: str) -> None:
                outcomes[saga_id] = await rt.run_saga("order", None, saga_id=saga_id)

            async with anyio.create_task_group() as tg:
                tg.start_soon(order, "order-1")
                await paying.wait()  # order-1 holds the lamp pending
                tg.start_soon(order, "order-2")  # meets the mark and waits
                await rt.clock.sleep(0.1)
                assert "order-2" not in outcomes
                release_payment.set()
        states = {k: v.state for k, v in outcomes.items()}
        assert states == {"order-1": SagaState.COMPLETED, "order-2": SagaState.COMPENSATED}
        assert "out of stock" in outcomes["order-2"].reason
        async with conn.execute("SELECT available FROM stock") as cursor:
            assert await cursor.fetchone() == (0,)  # sold exactly once
        assert await on_sqlite_thread(conn, lambda: LOCKS.held(conn._conn)) == {}
    finally:
        await conn.close()
