"""The order flow of examples/order_saga.py, both ways: orchestrated and choreographed.

The local steps are the same functions (order_saga.Shop: a SQLite database,
the idempotency barrier and semantic locks); only the coordination differs.

- Orchestrated: one saga definition; the node's orchestrator calls each step
  and, on a failure, the compensations in reverse order.
- Choreographed: four participant actors (orders, inventory, shipping,
  payment) and a table of topics. Each reacts to an event, runs its local
  step, records its progress in its own WAL and publishes the next event:

      OrderPlaced -> OrderCreated -> StockReserved -> ShippingBooked
        -> PaymentSucceeded -> OrderApproved
      ... PaymentFailed -> ShippingCancelled -> StockReleased -> OrderRejected

Run: python examples/order_choreography.py
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from dtxn.protocols.saga import FOREVER
from dtxn.runtime import Address, Runtime, run
from dtxn.runtime.choreography import (
    Choreography,
    ChoreographyParticipant,
    ChoreoStep,
    SagaEvent,
    Topics,
)
from dtxn.runtime.wal import on_sqlite_thread
from order_saga import LOCKS, ORDER, Shop

NODE = "shop"


def participants(steps: dict[str, Any]) -> list[ChoreographyParticipant]:
    """The order flow as participants; each reacts to events and publishes its own."""
    return [
        ChoreographyParticipant("orders", [
            ChoreoStep("order", "OrderPlaced", steps["create_order"], "OrderCreated",
                       fails_with="OrderRejected", compensation=steps["reject_order"],
                       compensate_on=("StockUnavailable", "StockReleased"),
                       compensated="OrderRejected"),
            # After the pivot (payment): retried until it succeeds, never undone.
            ChoreoStep("confirm", "PaymentSucceeded", steps["confirm_order"], "OrderApproved",
                       retry=FOREVER),
        ]),
        ChoreographyParticipant("inventory", [
            ChoreoStep("stock", "OrderCreated", steps["reserve_stock"], "StockReserved",
                       fails_with="StockUnavailable", compensation=steps["return_stock"],
                       compensate_on=("ShippingCancelled", "ShippingFailed"),
                       compensated="StockReleased"),
        ]),
        ChoreographyParticipant("shipping", [
            ChoreoStep("shipping", "StockReserved", steps["book_shipping"], "ShippingBooked",
                       fails_with="ShippingFailed", compensation=steps["cancel_shipping"],
                       compensate_on=("PaymentFailed",), compensated="ShippingCancelled"),
        ]),
        # The pivot: no compensation; its failure starts the undo upstream.
        ChoreographyParticipant("payment", [
            ChoreoStep("payment", "ShippingBooked", steps["charge_card"], "PaymentSucceeded",
                       fails_with="PaymentFailed"),
        ]),
    ]


def topics() -> Topics:
    """Who hears what: the whole saga's wiring, in one explicit table."""
    table = {
        "OrderPlaced": "orders", "OrderCreated": "inventory", "StockReserved": "shipping",
        "StockUnavailable": "orders", "ShippingBooked": "payment", "ShippingFailed": "inventory",
        "PaymentSucceeded": "orders", "PaymentFailed": "shipping",
        "ShippingCancelled": "inventory", "StockReleased": "orders",
    }
    return Topics({topic: [Address(NODE, actor)] for topic, actor in table.items()})


async def report(shop: Shop, conn: aiosqlite.Connection) -> None:
    print("  orders:", await shop.query("SELECT id, status FROM orders ORDER BY id"))
    print("  stock:", await shop.query("SELECT item, available FROM stock"))
    print("  pending marks left:", await on_sqlite_thread(conn, lambda: LOCKS.held(conn._conn)))


async def orchestrated(tmp: Path) -> None:
    print("== orchestrated: one orchestrator calls the steps ==")
    conn = await aiosqlite.connect(tmp / "orchestrated-shop.db")
    try:
        shop = Shop(conn)
        await shop.setup()
        shop.payment_gate.set()
        async with Runtime(NODE, wal_path=tmp / "orchestrated-wal.db") as rt:
            rt.register_saga(ORDER, shop.steps())
            for saga_id, card in (("order-1", "ok"), ("order-2", "declined")):
                outcome = await rt.run_saga("order", {"item": "lamp", "card": card},
                                            saga_id=saga_id)
                print(f"{saga_id}: {outcome.state.value} {outcome.reason}".rstrip())
        await report(shop, conn)
    finally:
        await conn.close()


async def choreographed(tmp: Path) -> None:
    print("== choreographed: participants react to each other's events ==")
    conn = await aiosqlite.connect(tmp / "choreographed-shop.db")
    try:
        shop = Shop(conn)
        await shop.setup()
        shop.payment_gate.set()
        steps = shop.steps()
        async with Runtime(NODE, wal_path=tmp / "node-wal.db") as rt, Choreography(
            rt, topics(), wal_dir=tmp, terminal=("OrderApproved", "OrderRejected")
        ) as choreo:

            def show(event: SagaEvent) -> None:
                heard_by = [a.actor for a in choreo.topics.subscribers(event.topic)]
                print(f"  {event.saga_id}: {event.topic:<17} -> {', '.join(heard_by)}")

            choreo.on_event(show)
            for participant in participants(steps):
                # Bind now: the factory is called again when a participant restarts.
                await choreo.start(partial(_fresh, participant))
            for saga_id, card in (("order-1", "ok"), ("order-2", "declined")):
                await choreo.publish(
                    SagaEvent("OrderPlaced", saga_id, {"item": "lamp", "card": card}))
                with anyio.fail_after(30):
                    final = await choreo.wait(saga_id)
                print(f"{saga_id}: {final.topic} {final.reason}".rstrip())
        await report(shop, conn)
    finally:
        await conn.close()


def _fresh(template: ChoreographyParticipant) -> ChoreographyParticipant:
    """A new instance with the template's steps (volatile state starts empty)."""
    return ChoreographyParticipant(template.name, list(template.steps.values()))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await orchestrated(Path(tmp))
        await choreographed(Path(tmp))


if __name__ == "__main__":
    run(main)
