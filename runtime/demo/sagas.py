"""Demo scenarios 3 and 4: sagas, compensated in reverse order and isolated by semantic locks.

3: a travel booking (hotel, car, flight) whose flight is full: the car, then
the hotel, are cancelled. 4: an order saga whose stock reservation is a
semantic lock: a second customer asking for the same lamp is told it is
reserved by an order in progress; a declined order is compensated; no
pending mark is left at the end.

Saga steps are local calls on the saga's node, not wire messages: the steps
narrate themselves on the timeline (the call on the orchestrator's column,
what the service did on its own), beside the saga records the runtime forces.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from typing import Any

import aiosqlite
import anyio
from dtxn.protocols.saga import FOREVER, RetryPolicy, SagaDefinition, SagaStep
from dtxn.protocols.saga.records import SagaState
from dtxn.runtime.demo._stage import Stage, scenario
from dtxn.runtime.demo._timeline import Timeline
from dtxn.runtime.hosting.sagas import SAGA_ACTOR, StepCall, StepError, StepFn
from dtxn.runtime.resources.barrier_sqlite import SqliteBarrier
from dtxn.runtime.resources.semantic_locks import PendingPolicy, SemanticLocks
from dtxn.runtime.wal import on_sqlite_thread

__all__ = ["LOCKS", "ORDER", "TRIP", "Shop", "Trip"]

FLIGHT_ATTEMPTS = 2
QUICK = RetryPolicy(max_attempts=FLIGHT_ATTEMPTS, backoff_ms_initial=10)
QUICK_UNDO = RetryPolicy(max_attempts=5, backoff_ms_initial=10)


def _called(timeline: Timeline, orchestrator: str, call: StepCall, name: str) -> None:
    timeline.note(f"call {name} #{call.attempt}", orchestrator)


# -- scenario 3: travel booking ----------------------------------------------------------

TRIP = SagaDefinition(
    "trip",
    (
        SagaStep("hotel", "book_hotel", "cancel_hotel", compensation_retry=QUICK_UNDO),
        SagaStep("car", "book_car", "cancel_car", ("hotel",), compensation_retry=QUICK_UNDO),
        SagaStep("flight", "book_flight", "cancel_flight", ("car",), retry=QUICK,
                 compensation_retry=QUICK_UNDO),
    ),
)


class Trip:
    """The three booking services of scenario 3, with the journal of what they did."""

    def __init__(self, timeline: Timeline, orchestrator: str) -> None:
        self.timeline = timeline
        self.orchestrator = orchestrator
        self.journal: list[str] = []

    def _do(self, call: StepCall, service: str, name: str, done: str, shown: str) -> None:
        _called(self.timeline, self.orchestrator, call, name)
        self.journal.append(done)
        self.timeline.work(service, shown)

    async def book_hotel(self, call: StepCall) -> str:
        self._do(call, "hotel", "book_hotel", "book hotel", "booked: hotel-42")
        return "hotel-42"

    async def cancel_hotel(self, call: StepCall) -> None:
        booking = call.results.get("hotel")
        self._do(call, "hotel", "cancel_hotel", f"cancel hotel {booking}", f"cancelled {booking}")

    async def book_car(self, call: StepCall) -> str:
        self._do(call, "car", "book_car", "book car", "booked: car-7")
        return "car-7"

    async def cancel_car(self, call: StepCall) -> None:
        booking = call.results.get("car")
        self._do(call, "car", "cancel_car", f"cancel car {booking}", f"cancelled {booking}")

    async def book_flight(self, call: StepCall) -> str:
        self._do(call, "flight", "book_flight", "book flight (full)", "refused: LH123 full")
        raise StepError("flight LH123 is full", retriable=call.attempt < FLIGHT_ATTEMPTS)

    async def cancel_flight(self, call: StepCall) -> None:
        self._do(call, "flight", "cancel_flight", "cancel flight", "cancelled")

    def steps(self) -> dict[str, StepFn]:
        return {name: getattr(self, name) for name in (
            "book_hotel", "cancel_hotel", "book_car", "cancel_car", "book_flight",
            "cancel_flight")}


@scenario(
    "3",
    "travel-saga",
    "Travel booking saga: the flight is full, the car then the hotel are cancelled",
    "A trip is booked as an orchestrated saga on one node: the hotel, then the car, then the "
    "flight, each a local call to a booking service. Every step's start and result is a "
    "record in the node's WAL. The flight is full (one retry, then it gives up), so the saga "
    "compensates what it did, in reverse order: the car is cancelled, then the hotel. The "
    "flight, never booked, is not compensated.",
)
async def travel_saga_compensates(stage: Stage) -> None:
    orchestrator = f"{SAGA_ACTOR}@travel"
    # The orchestrator last: the rightmost column has room for record names.
    stage.add_node("travel", {}, ["hotel", "car", "flight", orchestrator])
    trip = Trip(stage.timeline, orchestrator)
    await stage.start_all()
    rt = stage.runtime("travel")
    rt.register_saga(TRIP, trip.steps())
    stage.note("book a trip for Ada to Lisbon: hotel, then car, then flight")
    outcome = await rt.run_saga("trip", {"traveller": "Ada", "to": "Lisbon"})
    stage.note(f"the caller is told: {outcome.state.value} ({outcome.reason})")
    recorded = rt.saga_status(outcome.saga_id)
    stage.check("the saga is compensated",
                outcome.state is SagaState.COMPENSATED
                and getattr(recorded, "state", None) is SagaState.COMPENSATED,
                f"{outcome.state.value}: {outcome.reason}")
    flights = [line for line in trip.journal if line.startswith("book flight")]
    expected = ["book hotel", "book car", *flights, "cancel car car-7", "cancel hotel hotel-42"]
    stage.check("journal: book hotel, book car, book flight (fails), cancel car, cancel hotel",
                bool(flights) and trip.journal == expected, "; ".join(trip.journal))
    cancels = Counter(line.split()[1] for line in trip.journal if line.startswith("cancel"))
    twice = sorted(step for step, n in cancels.items() if n > 1)
    stage.check("no step is compensated twice, the failed flight not at all",
                not twice and "flight" not in cancels,
                f"compensated more than once: {', '.join(twice)}" if twice else "")


# -- scenario 4: an order with a semantic lock ----------------------------------------------

ORDER = SagaDefinition(
    "order",
    (
        SagaStep("order", "create_order", "reject_order", compensation_retry=QUICK_UNDO),
        SagaStep("stock", "reserve_stock", "return_stock", ("order",),
                 compensation_retry=QUICK_UNDO),
        SagaStep("shipping", "book_shipping", "cancel_shipping", ("stock",),
                 compensation_retry=QUICK_UNDO),
        SagaStep("payment", "charge_card", None, ("shipping",)),
        SagaStep("confirm", "confirm_order", None, ("payment",), retry=FOREVER),
    ),
    pivot="payment",
)

LOCKS = SemanticLocks()
STOCK = 2  # lamps in the shop at the start


class Shop:
    """Scenario 4's shop: its own SQLite database, the barrier, and the saga's steps.

    Every step runs through the barrier, in the same local transaction as its
    business write and its pending marks.
    """

    def __init__(self, conn: aiosqlite.Connection, timeline: Timeline, orchestrator: str) -> None:
        self.conn = conn
        self.timeline = timeline
        self.orchestrator = orchestrator
        self.barrier = SqliteBarrier(conn)
        self.paying = anyio.Event()  # the first order reached its payment
        self.payment_gate = anyio.Event()

    async def setup(self) -> None:
        await self.barrier.setup()

        def schema() -> None:
            db: sqlite3.Connection = self.conn._conn
            db.execute("CREATE TABLE orders (id TEXT PRIMARY KEY, item TEXT, status TEXT)")
            db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER)")
            db.execute("CREATE TABLE shipments (order_id TEXT PRIMARY KEY, status TEXT)")
            db.execute("INSERT INTO stock VALUES ('lamp', ?)", (STOCK,))
            LOCKS.setup(db)
            db.commit()

        await on_sqlite_thread(self.conn, schema)

    async def _step(self, call: StepCall, name: str, work: Any, what: str) -> Any:
        _called(self.timeline, self.orchestrator, call, name)
        result = await self.barrier.run(call, work)
        self.timeline.work("store", f"{call.saga_id} {what}")
        return result

    async def create_order(self, call: StepCall) -> str:
        def work(db: sqlite3.Connection) -> str:
            db.execute("INSERT INTO orders VALUES (?, ?, 'PENDING')",
                       (call.saga_id, call.payload["item"]))
            return "PENDING"
        return str(await self._step(call, "create_order", work, "PENDING"))

    async def reject_order(self, call: StepCall) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("UPDATE orders SET status = 'REJECTED' WHERE id = ?", (call.saga_id,))
        await self._step(call, "reject_order", work, "REJECTED")

    async def reserve_stock(self, call: StepCall) -> int:
        def work(db: sqlite3.Connection) -> int:
            item = call.payload["item"]
            LOCKS.acquire(db, item, call.saga_id)  # RecordPending if another order holds it
            (available,) = db.execute("SELECT available FROM stock WHERE item = ?",
                                      (item,)).fetchone()
            if available < 1:
                raise StepError(f"{item} is out of stock", retriable=False)
            db.execute("UPDATE stock SET available = available - 1 WHERE item = ?", (item,))
            return int(available) - 1
        left = int(await self._step(call, "reserve_stock", work, "lamp -1"))
        self.timeline.work("store", f"{call.saga_id} lamp pending")
        return left

    async def return_stock(self, call: StepCall) -> None:
        def work(db: sqlite3.Connection) -> int:
            db.execute("UPDATE stock SET available = available + 1 WHERE item = ?",
                       (call.payload["item"],))
            return LOCKS.release_all(db, call.saga_id)
        cleared = await self._step(call, "return_stock", work, "lamp +1")
        self.timeline.work("store", f"{call.saga_id} mark cleared" if cleared else "no mark held")

    async def book_shipping(self, call: StepCall) -> str:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO shipments VALUES (?, 'BOOKED')", (call.saga_id,))
        await self._step(call, "book_shipping", work, "ship BOOKED")
        return "BOOKED"

    async def cancel_shipping(self, call: StepCall) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("UPDATE shipments SET status = 'CANCELLED' WHERE order_id = ?",
                       (call.saga_id,))
        await self._step(call, "cancel_shipping", work, "ship voided")

    async def charge_card(self, call: StepCall) -> str:
        _called(self.timeline, self.orchestrator, call, "charge_card")
        self.paying.set()
        await self.payment_gate.wait()
        if call.payload["card"] == "declined":
            self.timeline.work("payments", f"{call.saga_id} declined")
            raise StepError("card declined", retriable=False)
        self.timeline.work("payments", f"{call.saga_id} paid")
        return "PAID"

    async def confirm_order(self, call: StepCall) -> None:
        def work(db: sqlite3.Connection) -> int:
            db.execute("UPDATE orders SET status = 'APPROVED' WHERE id = ?", (call.saga_id,))
            return LOCKS.release_all(db, call.saga_id)
        cleared = await self._step(call, "confirm_order", work, "APPROVED")
        self.timeline.work("store", f"{call.saga_id} mark cleared" if cleared else "no mark held")

    def steps(self) -> dict[str, StepFn]:
        return {name: getattr(self, name) for name in (
            "create_order", "reject_order", "reserve_stock", "return_stock", "book_shipping",
            "cancel_shipping", "charge_card", "confirm_order")}

    async def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.conn.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def marks(self) -> dict[str, str]:
        return await on_sqlite_thread(self.conn, lambda: LOCKS.held(self.conn._conn))


@scenario(
    "4",
    "order-saga-semantic-lock",
    "Order saga with a semantic lock: a second customer is told the lamp is reserved",
    "An order is a saga: order (PENDING), stock reserved (marked pending), shipping booked, "
    "then the card is charged (the pivot) and the order confirmed, which clears the mark. "
    "Each step runs through an idempotency barrier in the shop's own SQLite database, in the "
    "same local transaction as its write. While the first order is paying, a second customer "
    "asks for the same lamp and, reading with READ_PENDING, is told it is reserved by an "
    "order in progress, not a wrong 'out of stock'. A later order whose card is declined is "
    "compensated: shipping cancelled, the lamp returned, the order rejected. At the end no "
    "pending mark is left.",
)
async def order_saga_semantic_lock(stage: Stage) -> None:
    orchestrator = f"{SAGA_ACTOR}@shop"
    stage.add_node("shop", {}, ["customer-2", "store", "payments", orchestrator])
    stage.directory.mkdir(parents=True, exist_ok=True)
    conn = await aiosqlite.connect(stage.directory / "shop-data.db")
    try:
        shop = Shop(conn, stage.timeline, orchestrator)
        await shop.setup()
        await stage.start_all()
        await _orders(stage, shop)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()


async def _orders(stage: Stage, shop: Shop) -> None:
    rt = stage.runtime("shop")
    rt.register_saga(ORDER, shop.steps())
    first: list[SagaState] = []

    async def place_first() -> None:
        outcome = await rt.run_saga("order", {"item": "lamp", "card": "ok"}, saga_id="order-1")
        first.append(outcome.state)
        stage.note(f"customer 1 is told: order-1 {outcome.state.value}")

    stage.note(f"the shop has {STOCK} lamps; customer 1 orders one (order-1)")
    async with anyio.create_task_group() as tg:
        tg.start_soon(place_first)
        await shop.paying.wait()
        seen = await LOCKS.read(
            shop.conn, "lamp",
            lambda db: db.execute("SELECT available FROM stock WHERE item = 'lamp'").fetchone()[0],
            policy=PendingPolicy.READ_PENDING,
        )
        stage.note(f"read lamp (READ_PENDING): available={seen.value}, "
                   f"pending_by={seen.pending_by}", "customer-2")
        answer = (f"reserved by an order in progress ({seen.pending_by})" if seen.pending
                  else f"available: {seen.value}")
        stage.note(f"customer 2 asks for the lamp while order-1 is paying; told: {answer}")
        stage.check("customer 2 is told the lamp is reserved by an order in progress",
                    seen.pending_by == "order-1", f"pending_by={seen.pending_by}")
        shop.payment_gate.set()
    stage.check("order-1 completed", first == [SagaState.COMPLETED],
                ", ".join(state.value for state in first) or "no answer")
    stage.note("order-2 for a lamp, with a card that will be declined")
    declined = await rt.run_saga("order", {"item": "lamp", "card": "declined"},
                                 saga_id="order-2")
    stage.note(f"customer is told: order-2 {declined.state.value} ({declined.reason})")
    orders = dict(await shop.query("SELECT id, status FROM orders"))
    shipments = dict(await shop.query("SELECT order_id, status FROM shipments"))
    (available,) = (await shop.query("SELECT available FROM stock WHERE item = 'lamp'"))[0]
    stage.check(
        "order-2 is compensated: shipping cancelled, the lamp returned, the order rejected",
        declined.state is SagaState.COMPENSATED and orders.get("order-2") == "REJECTED"
        and shipments.get("order-2") == "CANCELLED" and available == STOCK - 1,
        f"{declined.state.value}; order {orders.get('order-2')}, shipping "
        f"{shipments.get('order-2')}, {available} lamps available",
    )
    marks = await shop.marks()
    stage.check("no pending mark is left (G5)", not marks,
                ", ".join(f"{key} by {saga}" for key, saga in marks.items()))
    sold = sum(1 for status in orders.values() if status == "APPROVED")
    stage.check("stock is conserved: lamps available + lamps sold = lamps at the start",
                available + sold == STOCK, f"{available} + {sold}, started with {STOCK}")
