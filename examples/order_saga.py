"""An order as an orchestrated saga with a semantic lock and an idempotency barrier.

order (PENDING) -> stock reserved (PENDING) -> shipping booked -> payment (pivot)
-> order confirmed (stock released from PENDING).

While the first order is paying, a second customer asks for the same lamp and
is told it is reserved by an order in progress (not a wrong "out of stock").
A second order whose card is declined is compensated: shipping cancelled, the
reservation returned, the order rejected, and no pending mark left behind.
Every step runs through the barrier in the shop's own SQLite database, in the
same local transaction as its business write. Run: python examples/order_saga.py
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from dtxn.protocols.saga import FOREVER, SagaDefinition, SagaStep
from dtxn.runtime import Runtime, run
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.resources.barrier_sqlite import SqliteBarrier
from dtxn.runtime.resources.semantic_locks import PendingPolicy, SemanticLocks
from dtxn.runtime.wal import on_sqlite_thread

ORDER = SagaDefinition(
    "order",
    (
        SagaStep("order", "create_order", "reject_order"),
        SagaStep("stock", "reserve_stock", "return_stock", ("order",)),
        SagaStep("shipping", "book_shipping", "cancel_shipping", ("stock",)),
        SagaStep("payment", "charge_card", None, ("shipping",)),
        SagaStep("confirm", "confirm_order", None, ("payment",), retry=FOREVER),
    ),
    pivot="payment",
)

LOCKS = SemanticLocks()


def execute(sql: str, *args: Any) -> Any:
    """A barrier work function that runs one statement and records no result."""

    def work(db: sqlite3.Connection) -> None:
        db.execute(sql, args)

    return work


class Shop:
    """The shop's own database, the barrier and the saga steps that use them."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.barrier = SqliteBarrier(conn)
        self.payment_gate = anyio.Event()

    async def setup(self) -> None:
        await self.barrier.setup()

        def schema(db: sqlite3.Connection) -> None:
            db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, item TEXT, status TEXT)")
            db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER)")
            db.execute("CREATE TABLE shipments (order_id TEXT PRIMARY KEY, status TEXT)")
            db.execute("INSERT INTO stock VALUES ('lamp', 2)")
            LOCKS.setup(db)
            db.commit()

        await on_sqlite_thread(self.conn, lambda: schema(self.conn._conn))

    def steps(self) -> dict[str, Any]:
        shop = self

        async def create_order(call: StepCall) -> str:
            def work(db: sqlite3.Connection) -> str:
                db.execute("INSERT INTO orders VALUES (?, ?, 'PENDING')",
                           (call.saga_id, call.payload["item"]))
                return "PENDING"
            return str(await shop.barrier.run(call, work))

        async def reject_order(call: StepCall) -> None:
            await shop.barrier.run(
                call, execute("UPDATE orders SET status = 'REJECTED' WHERE id = ?", call.saga_id)
            )

        async def reserve_stock(call: StepCall) -> int:
            def work(db: sqlite3.Connection) -> int:
                item = call.payload["item"]
                LOCKS.acquire(db, item, call.saga_id)  # RecordPending if another order holds it
                (available,) = db.execute("SELECT available FROM stock WHERE item = ?",
                                          (item,)).fetchone()
                if available < 1:
                    raise StepError(f"{item} is out of stock", retriable=False)
                db.execute("UPDATE stock SET available = available - 1 WHERE item = ?", (item,))
                return int(available) - 1
            return int(await shop.barrier.run(call, work))

        async def return_stock(call: StepCall) -> None:
            def work(db: sqlite3.Connection) -> None:
                db.execute("UPDATE stock SET available = available + 1 WHERE item = ?",
                           (call.payload["item"],))
                LOCKS.release_all(db, call.saga_id)
            await shop.barrier.run(call, work)

        async def book_shipping(call: StepCall) -> str:
            await shop.barrier.run(
                call, execute("INSERT INTO shipments VALUES (?, 'BOOKED')", call.saga_id)
            )
            return "BOOKED"

        async def cancel_shipping(call: StepCall) -> None:
            await shop.barrier.run(
                call,
                execute("UPDATE shipments SET status = 'CANCELLED' WHERE order_id = ?",
                        call.saga_id),
            )

        async def charge_card(call: StepCall) -> str:
            await shop.payment_gate.wait()
            if call.payload["card"] == "declined":
                raise StepError("card declined", retriable=False)
            return "PAID"

        async def confirm_order(call: StepCall) -> None:
            def work(db: sqlite3.Connection) -> None:
                db.execute("UPDATE orders SET status = 'APPROVED' WHERE id = ?", (call.saga_id,))
                LOCKS.release_all(db, call.saga_id)
            await shop.barrier.run(call, work)

        return {f.__name__: f for f in (create_order, reject_order, reserve_stock, return_stock,
                                        book_shipping, cancel_shipping, charge_card,
                                        confirm_order)}

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.conn.execute(sql, args) as cursor:
            return list(await cursor.fetchall())


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        conn = await aiosqlite.connect(Path(tmp) / "shop.db")
        try:
            shop = Shop(conn)
            await shop.setup()
            async with Runtime("shop", wal_path=Path(tmp) / "wal.db") as rt:
                rt.register_saga(ORDER, shop.steps())
                async with anyio.create_task_group() as tg:
                    first: list[Any] = []

                    async def place_first() -> None:
                        first.append(await rt.run_saga(
                            "order", {"item": "lamp", "card": "ok"}, saga_id="order-1"))

                    tg.start_soon(place_first)
                    while not await shop.query("SELECT 1 FROM shipments"):
                        await rt.clock.sleep(0.01)  # order-1 is now paying
                    seen = await LOCKS.read(
                        conn, "lamp",
                        lambda db: db.execute("SELECT available FROM stock").fetchone()[0],
                        policy=PendingPolicy.READ_PENDING,
                    )
                    print(f"customer 2 asks for the lamp: available={seen.value}, "
                          f"reserved by an order in progress: {seen.pending_by}")
                    shop.payment_gate.set()
                print(f"order-1: {first[0].state.value}")
                declined = await rt.run_saga("order", {"item": "lamp", "card": "declined"},
                                             saga_id="order-2")
                print(f"order-2: {declined.state.value} ({declined.reason})")
            print("orders:", await shop.query("SELECT id, status FROM orders ORDER BY id"))
            print("stock:", await shop.query("SELECT item, available FROM stock"))
            print("pending marks left:",
                  await on_sqlite_thread(conn, lambda: LOCKS.held(conn._conn)))
        finally:
            await conn.close()


if __name__ == "__main__":
    run(main)
