"""Choreographed sagas: the order flow through events, compensation, duplicates, crashes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.saga import FOREVER
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.choreography import (
    Choreography,
    ChoreographyParticipant,
    ChoreoStep,
    SagaEvent,
    StepStatus,
    Topics,
)
from dtxn.runtime.hosting.sagas import StepCall, StepError
from nodes import eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
NODE = "shop"
TERMINAL = ("OrderApproved", "OrderRejected")
ACTIONS = ["order", "stock", "shipping", "payment", "confirm"]


class Shop:
    """The participants' business state; it outlives a participant's crash (a database).

    Every write goes through `once`, an in-memory idempotency barrier keyed
    by (saga, step, op), so a re-run after a crash has no second effect.
    """

    def __init__(self, stock: int = 1) -> None:
        self.stock = {"lamp": stock}
        self.orders: dict[str, str] = {}
        self.shipments: dict[str, str] = {}
        self.charges: dict[str, str] = {}
        self.pending: dict[str, str] = {}  # semantic locks: record -> saga holding it
        self.history: list[tuple[str, str, str]] = []  # (saga, step, op) business effects
        self.barrier: dict[tuple[str, str, str], Any] = {}
        self.gate: dict[str, anyio.Event] = {}
        self.runs: list[str] = []

    def once(self, call: StepCall, work: Callable[[], Any]) -> Any:
        key = (call.saga_id, call.step, call.op.value)
        if key not in self.barrier:
            self.barrier[key] = work()
            self.history.append(key)
        return self.barrier[key]

    def participants(self) -> list[Callable[[], ChoreographyParticipant]]:
        shop = self

        async def create_order(call: StepCall) -> str:
            def work() -> str:
                shop.orders[call.saga_id] = "PENDING"
                return "PENDING"
            return str(shop.once(call, work))

        async def reject_order(call: StepCall) -> None:
            def work() -> None:
                shop.orders[call.saga_id] = "REJECTED"
                shop.release(call.saga_id)
            shop.once(call, work)

        async def reserve_stock(call: StepCall) -> int:
            shop.runs.append("reserve_stock")
            if "stock" in shop.gate:
                await shop.gate["stock"].wait()

            def work() -> int:
                item = call.payload["item"]
                if shop.stock[item] < 1:
                    raise StepError(f"{item} is out of stock", retriable=False)
                shop.stock[item] -= 1
                shop.pending[item] = call.saga_id
                return shop.stock[item]
            return int(shop.once(call, work))

        async def release_stock(call: StepCall) -> None:
            def work() -> None:
                shop.stock[call.payload["item"]] += 1
                shop.release(call.saga_id)
            shop.once(call, work)

        async def book_shipping(call: StepCall) -> str:
            shop.once(call, lambda: shop.shipments.__setitem__(call.saga_id, "BOOKED"))
            return "BOOKED"

        async def cancel_shipping(call: StepCall) -> None:
            shop.once(call, lambda: shop.shipments.__setitem__(call.saga_id, "CANCELLED"))

        async def charge_card(call: StepCall) -> str:
            if call.payload["card"] == "declined":
                raise StepError("card declined", retriable=False)
            shop.once(call, lambda: shop.charges.__setitem__(call.saga_id, "PAID"))
            return "PAID"

        async def confirm_order(call: StepCall) -> None:
            def work() -> None:
                shop.orders[call.saga_id] = "APPROVED"
                shop.release(call.saga_id)
            shop.once(call, work)

        return [
            lambda: ChoreographyParticipant("orders", [
                ChoreoStep("order", "OrderPlaced", create_order, "OrderCreated",
                           fails_with="OrderRejected", compensation=reject_order,
                           compensate_on=("StockUnavailable", "StockReleased"),
                           compensated="OrderRejected"),
                ChoreoStep("confirm", "PaymentSucceeded", confirm_order, "OrderApproved",
                           retry=FOREVER),
            ]),
            lambda: ChoreographyParticipant("inventory", [
                ChoreoStep("stock", "OrderCreated", reserve_stock, "StockReserved",
                           fails_with="StockUnavailable", compensation=release_stock,
                           compensate_on=("ShippingCancelled", "ShippingFailed"),
                           compensated="StockReleased"),
            ]),
            lambda: ChoreographyParticipant("shipping", [
                ChoreoStep("shipping", "StockReserved", book_shipping, "ShippingBooked",
                           fails_with="ShippingFailed", compensation=cancel_shipping,
                           compensate_on=("PaymentFailed",), compensated="ShippingCancelled"),
            ]),
            lambda: ChoreographyParticipant("payment", [
                ChoreoStep("payment", "ShippingBooked", charge_card, "PaymentSucceeded",
                           fails_with="PaymentFailed"),
            ]),
        ]

    def release(self, saga_id: str) -> None:
        for key in [k for k, holder in self.pending.items() if holder == saga_id]:
            del self.pending[key]

    def effects(self, saga_id: str) -> list[tuple[str, str]]:
        return [(step, op) for saga, step, op in self.history if saga == saga_id]


def order_topics() -> Topics:
    def at(*actors: str) -> list[Any]:
        from dtxn.runtime import Address

        return [Address(NODE, actor) for actor in actors]

    return Topics({
        "OrderPlaced": at("orders"),
        "OrderCreated": at("inventory"),
        "StockReserved": at("shipping"),
        "StockUnavailable": at("orders"),
        "ShippingBooked": at("payment"),
        "ShippingFailed": at("inventory"),
        "PaymentSucceeded": at("orders"),
        "PaymentFailed": at("shipping"),
        "ShippingCancelled": at("inventory"),
        "StockReleased": at("orders"),
    })


@asynccontextmanager
async def shop_choreography(
    tmp_path: Path,
    shop: Shop,
    factories: list[Callable[[], ChoreographyParticipant]] | None = None,
    durability: str = "full",
) -> AsyncIterator[tuple[Choreography, list[SagaEvent]]]:
    transport = InProcessTransport(encode=True)  # every event goes through the codec
    async with (
        Runtime(NODE, transport=transport, wal_path=tmp_path / "node.db") as rt,
        Choreography(rt, order_topics(), wal_dir=tmp_path, durability=durability,
                     terminal=TERMINAL) as choreo,
    ):
        trace: list[SagaEvent] = []
        choreo.on_event(trace.append)
        for factory in factories or shop.participants():
            await choreo.start(factory)
        yield choreo, trace


def place(saga_id: str, card: str = "ok") -> SagaEvent:
    return SagaEvent("OrderPlaced", saga_id, {"item": "lamp", "card": card})


def assert_valid_execution(effects: list[tuple[str, str]]) -> None:
    """G1: actions T1..Tj in order, then the compensations of those in reverse."""
    actions = [step for step, op in effects if op == "action"]
    undone = [step for step, op in effects if op == "compensation"]
    assert actions == ACTIONS[: len(actions)]
    assert effects == [(s, "action") for s in actions] + [(s, "compensation") for s in undone]
    compensatable = [s for s in actions if s in ("order", "stock", "shipping")]
    if undone:
        assert undone == list(reversed(compensatable))


async def test_an_order_flows_through_every_participant_to_approval(tmp_path: Path) -> None:
    shop = Shop()
    async with shop_choreography(tmp_path, shop) as (choreo, trace):
        await choreo.publish(place("order-1"))
        with anyio.fail_after(10):
            final = await choreo.wait("order-1")
        assert final.topic == "OrderApproved"
        assert final.results == {"order": "PENDING", "stock": 0, "shipping": "BOOKED",
                                 "payment": "PAID", "confirm": None}
        assert [e.topic for e in trace] == ["OrderPlaced", "OrderCreated", "StockReserved",
                                            "ShippingBooked", "PaymentSucceeded",
                                            "OrderApproved"]
        assert choreo.participant("inventory").status("order-1", "stock") is StepStatus.SUCCEEDED
    assert shop.effects("order-1") == [(s, "action") for s in ACTIONS]
    assert shop.orders == {"order-1": "APPROVED"}
    assert shop.pending == {}  # G5


async def test_a_declined_card_compensates_shipping_then_stock_then_the_order(
    tmp_path: Path,
) -> None:
    shop = Shop()
    async with shop_choreography(tmp_path, shop) as (choreo, trace):
        await choreo.publish(place("order-2", card="declined"))
        with anyio.fail_after(10):
            final = await choreo.wait("order-2")
        assert final.topic == "OrderRejected"
        assert final.reason == "card declined"
        assert [e.topic for e in trace][4:] == ["PaymentFailed", "ShippingCancelled",
                                                "StockReleased", "OrderRejected"]
    effects = shop.effects("order-2")
    assert effects == [("order", "action"), ("stock", "action"), ("shipping", "action"),
                       ("shipping", "compensation"), ("stock", "compensation"),
                       ("order", "compensation")]
    assert_valid_execution(effects)  # G1
    assert shop.stock == {"lamp": 1}
    assert shop.orders == {"order-2": "REJECTED"}
    assert shop.shipments == {"order-2": "CANCELLED"}
    assert shop.charges == {}
    assert shop.pending == {}  # G5


async def test_an_item_out_of_stock_rejects_the_order_and_never_books_shipping(
    tmp_path: Path,
) -> None:
    shop = Shop(stock=0)
    async with shop_choreography(tmp_path, shop) as (choreo, _):
        await choreo.publish(place("order-3"))
        with anyio.fail_after(10):
            final = await choreo.wait("order-3")
        assert final.topic == "OrderRejected"
        assert "out of stock" in final.reason
    assert shop.effects("order-3") == [("order", "action"), ("order", "compensation")]
    assert shop.shipments == {}
    assert shop.pending == {}


async def test_duplicate_and_late_events_have_no_extra_effect(tmp_path: Path) -> None:
    shop = Shop(stock=5)
    async with shop_choreography(tmp_path, shop) as (choreo, trace):
        # A duplicate while the first delivery is still running...
        await choreo.publish(place("good"))
        await choreo.publish(place("good"))
        await choreo.publish(place("bad", card="declined"))
        with anyio.fail_after(10):
            await choreo.wait("good")
            await choreo.wait("bad")
            await choreo.settle()
        history, stock = list(shop.history), dict(shop.stock)
        first = list(trace)
        assert len(first) == 15  # 6 + 1 duplicate for "good", 8 for "bad"
        # ...and every event of both sagas delivered again, late (G4).
        for event in first:
            await choreo.publish(event)
        with anyio.fail_after(10):
            await choreo.settle()
        stats = [choreo.participant(n).statistics() for n in ("orders", "inventory",
                                                              "shipping", "payment")]
        # 13 of the 15 reach a participant (the terminal two only the outcomes);
        # the triggers of the compensated saga's steps are refused, not re-run.
        assert sum(s.duplicates for s in stats) == 1 + 13 - 3
        assert [s.refused for s in stats] == [1, 1, 1, 0]
        assert choreo.outcomes["good"].topic == "OrderApproved"
        assert choreo.outcomes["bad"].topic == "OrderRejected"
    assert shop.history == history
    assert shop.stock == stock == {"lamp": 4}
    assert_valid_execution(shop.effects("good"))
    assert_valid_execution(shop.effects("bad"))
    assert shop.pending == {}


class CrashBeforePublish(ChoreographyParticipant):
    """A participant that crashes once its progress is durable and before it publishes."""

    topic = "StockReserved"
    crashed = False
    choreo: Choreography | None = None

    async def before_publish(self, event: SagaEvent) -> None:
        if not CrashBeforePublish.crashed and event.topic == CrashBeforePublish.topic:
            CrashBeforePublish.crashed = True
            assert CrashBeforePublish.choreo is not None
            await CrashBeforePublish.choreo.crash(self.name)


EMITTED_BY = {
    "OrderCreated": "orders", "StockReserved": "inventory", "ShippingBooked": "shipping",
    "PaymentSucceeded": "payment", "OrderApproved": "orders", "PaymentFailed": "payment",
    "ShippingCancelled": "shipping", "StockReleased": "inventory", "OrderRejected": "orders",
}


@pytest.mark.parametrize("topic", list(EMITTED_BY))
async def test_a_crash_before_any_publish_still_ends_the_saga_validly(
    tmp_path: Path, topic: str
) -> None:
    card = "declined" if topic in ("PaymentFailed", "ShippingCancelled", "StockReleased",
                                   "OrderRejected") else "ok"
    shop = Shop()
    names = ["orders", "inventory", "shipping", "payment"]
    factories = shop.participants()
    victim = names.index(EMITTED_BY[topic])
    plain = factories[victim]

    def crashing() -> ChoreographyParticipant:
        template = plain()
        return CrashBeforePublish(template.name, list(template.steps.values()))

    factories[victim] = crashing
    CrashBeforePublish.topic, CrashBeforePublish.crashed = topic, False
    async with shop_choreography(tmp_path, shop, factories) as (choreo, _):
        CrashBeforePublish.choreo = choreo
        await choreo.publish(place("order-x", card=card))
        with anyio.fail_after(10):
            await eventually(lambda: EMITTED_BY[topic] not in choreo.running())
        await choreo.restart(EMITTED_BY[topic])
        with anyio.fail_after(10):
            final = await choreo.wait("order-x")
            await choreo.settle()
        assert final.topic == ("OrderApproved" if card == "ok" else "OrderRejected")
        assert choreo.participant(EMITTED_BY[topic]).statistics().republished == 1
    effects = shop.effects("order-x")
    assert_valid_execution(effects)  # G1, each effect once (G4)
    assert len(effects) == len(set(effects))
    assert shop.stock == {"lamp": 0 if card == "ok" else 1}
    assert shop.pending == {}  # G5


async def test_a_participant_crashing_between_its_force_and_its_publish_recovers(
    tmp_path: Path,
) -> None:
    shop = Shop()
    factories = shop.participants()
    plain_inventory = factories[1]

    def crashing_inventory() -> ChoreographyParticipant:
        plain = plain_inventory()
        return CrashBeforePublish(plain.name, list(plain.steps.values()))

    factories[1] = crashing_inventory
    CrashBeforePublish.topic, CrashBeforePublish.crashed = "StockReserved", False
    async with shop_choreography(tmp_path, shop, factories) as (choreo, trace):
        CrashBeforePublish.choreo = choreo
        await choreo.publish(place("order-4"))
        with anyio.fail_after(10):
            await eventually(lambda: "inventory" not in choreo.running())
        assert "order-4" not in choreo.outcomes
        assert "StockReserved" not in [e.topic for e in trace]
        await choreo.restart("inventory")
        with anyio.fail_after(10):
            final = await choreo.wait("order-4")
        assert final.topic == "OrderApproved"
        inventory = choreo.participant("inventory")
        assert inventory.statistics().republished == 1
        assert inventory.statistics().actions == 0  # the reservation was not run again
    assert shop.runs == ["reserve_stock"]
    assert shop.effects("order-4") == [(s, "action") for s in ACTIONS]
    assert shop.stock == {"lamp": 0}
    assert shop.pending == {}


@pytest.mark.parametrize("durability", ["full", "memory"])
async def test_a_participant_crashing_inside_its_action_reruns_it_through_the_barrier(
    tmp_path: Path, durability: str
) -> None:
    shop = Shop()
    shop.gate["stock"] = anyio.Event()
    async with shop_choreography(tmp_path, shop, durability=durability) as (choreo, _):
        await choreo.publish(place("order-5"))
        with anyio.fail_after(10):
            await eventually(lambda: shop.runs == ["reserve_stock"])
        await choreo.crash("inventory")  # the trigger was forced as started; no outcome yet
        shop.gate["stock"].set()
        await choreo.restart("inventory")
        with anyio.fail_after(10):
            final = await choreo.wait("order-5")
        assert final.topic == "OrderApproved"
    assert shop.runs == ["reserve_stock", "reserve_stock"]  # re-run after the crash...
    assert shop.stock == {"lamp": 0}  # ...with one effect (G4)
    assert shop.effects("order-5") == [(s, "action") for s in ACTIONS]


async def test_restarted_participants_run_no_completed_step_again(tmp_path: Path) -> None:
    shop = Shop(stock=3)
    async with shop_choreography(tmp_path, shop) as (choreo, _):
        await choreo.publish(place("a"))
        await choreo.publish(place("b", card="declined"))
        with anyio.fail_after(10):
            await choreo.wait("a")
            await choreo.wait("b")
            await choreo.settle()
        history = list(shop.history)
        for name in ("orders", "inventory", "shipping", "payment"):
            await choreo.stop(name)
            await choreo.restart(name)
        with anyio.fail_after(10):
            await choreo.settle()
        for name in ("orders", "inventory", "shipping", "payment"):
            stats = choreo.participant(name).statistics()
            assert (stats.actions, stats.compensations, stats.republished) == (0, 0, 0)
        inventory = choreo.participant("inventory")
        assert inventory.status("a", "stock") is StepStatus.SUCCEEDED
        assert inventory.status("b", "stock") is StepStatus.COMPENSATED
        # A late trigger after the restart is still recognised from the WAL.
        await choreo.publish(SagaEvent("OrderCreated", "b", {"item": "lamp", "card": "x"}))
        with anyio.fail_after(10):
            await choreo.settle()
        assert inventory.statistics().refused == 1
    assert shop.history == history


async def test_a_compensation_that_keeps_failing_is_stuck_until_an_operator_resumes(
    tmp_path: Path,
) -> None:
    shop = Shop()
    factories = shop.participants()
    broken = {"on": True}

    async def flaky_cancel(call: StepCall) -> None:
        if broken["on"]:
            raise RuntimeError("carrier API down")
        shop.once(call, lambda: shop.shipments.__setitem__(call.saga_id, "CANCELLED"))

    plain = factories[2]()
    step = plain.steps["shipping"]
    from dataclasses import replace

    from dtxn.protocols.saga import RetryPolicy

    fast = RetryPolicy(max_attempts=2, backoff_ms_initial=1, backoff_ms_max=2)
    factories[2] = lambda: ChoreographyParticipant("shipping", [
        replace(step, compensation=flaky_cancel, compensation_retry=fast)])
    async with shop_choreography(tmp_path, shop, factories) as (choreo, _):
        await choreo.publish(place("order-6", card="declined"))
        shipping = choreo.participant("shipping")
        with anyio.fail_after(10):
            await eventually(lambda: bool(shipping.stuck()))
        assert "carrier API down" in shipping.stuck()[("order-6", "shipping")]
        assert shop.stock == {"lamp": 0}  # upstream waits: nothing undone out of order
        broken["on"] = False
        shipping.resume("order-6", "shipping")
        with anyio.fail_after(10):
            final = await choreo.wait("order-6")
        assert final.topic == "OrderRejected"
    assert_valid_execution(shop.effects("order-6"))
    assert shop.stock == {"lamp": 1}


async def test_a_participant_not_subscribed_to_its_trigger_is_refused(tmp_path: Path) -> None:
    async def noop(call: StepCall) -> None:
        return None

    async with (
        Runtime(NODE, wal_path=tmp_path / "node.db") as rt,
        Choreography(rt, Topics(), wal_dir=tmp_path) as choreo,
    ):
        with pytest.raises(ConfigError, match="not subscribed"):
            await choreo.start(lambda: ChoreographyParticipant(
                "lonely", [ChoreoStep("s", "Ping", noop, "Pong", fails_with="Pang")]))


def test_step_definitions_are_checked() -> None:
    async def noop(call: StepCall) -> None:
        return None

    with pytest.raises(ConfigError, match="retry forever"):
        ChoreoStep("confirm", "Paid", noop, "Confirmed")
    with pytest.raises(ConfigError, match="needs a compensation"):
        ChoreoStep("s", "A", noop, "B", fails_with="C", compensate_on=("D",))
    with pytest.raises(ConfigError, match="distinct"):
        step = ChoreoStep("s", "A", noop, "B", fails_with="C")
        ChoreographyParticipant("p", [step, step])


def test_the_choreography_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "order_choreography.py")],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "order-1: OrderApproved" in done.stdout
    assert "order-2: OrderRejected" in done.stdout
    assert "pending marks left: {}" in done.stdout


async def test_an_undo_that_overtakes_its_action_is_null_and_the_late_action_is_refused(
    tmp_path: Path,
) -> None:
    shop = Shop()
    async with shop_choreography(tmp_path, shop) as (choreo, _):
        payload = {"item": "lamp", "card": "ok"}
        await choreo.publish(SagaEvent("ShippingCancelled", "order-7", payload))
        with anyio.fail_after(10):
            final = await choreo.wait("order-7")  # passed on upstream: stock, then order
            await choreo.settle()
        assert final.topic == "OrderRejected"
        inventory = choreo.participant("inventory")
        assert inventory.status("order-7", "stock") is StepStatus.NULL_COMPENSATED
        await choreo.publish(SagaEvent("OrderCreated", "order-7", payload))
        with anyio.fail_after(10):
            await choreo.settle()
        assert inventory.statistics().refused == 1
    assert shop.history == []  # nothing ran, nothing hangs
    assert shop.stock == {"lamp": 1}
