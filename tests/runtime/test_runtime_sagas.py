"""Orchestrated sagas through a real runtime on a SQLite WAL, with crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
from dtxn.actors import Actor
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.records import kind_of
from dtxn.protocols.saga import FOREVER, RetryPolicy, SagaDefinition, SagaStep
from dtxn.protocols.saga.records import (
    SagaFinishedRecord,
    SagaStarted,
    SagaState,
    StepOp,
    StepStarted,
    StepSucceededRecord,
)
from dtxn.runtime import Runtime
from dtxn.runtime.hosting import LOG_ENCODER, LogEntry
from dtxn.runtime.hosting.saga_steps import ActorStep
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.wal import SqliteWal, read_wal
from nodes import Node, eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(max_attempts=3, backoff_ms_initial=1, backoff_ms_max=5)

TRIP = SagaDefinition(
    "trip",
    (
        SagaStep("hotel", "book_hotel", "cancel_hotel", retry=FAST, compensation_retry=FAST),
        SagaStep("car", "book_car", "cancel_car", ("hotel",), retry=FAST,
                 compensation_retry=FAST),
        SagaStep("flight", "book_flight", "cancel_flight", ("car",), retry=FAST,
                 compensation_retry=FAST),
    ),
)


class Agency:
    """Step callables that record every call; failures are scripted per step."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: set[str] = set()
        self.gate: dict[str, anyio.Event] = {}

    def steps(self) -> dict[str, object]:
        def make(name: str):  # type: ignore[no-untyped-def]
            async def step(call: StepCall) -> str:
                if name in self.gate:
                    await self.gate[name].wait()
                self.calls.append(name)
                if name in self.fail:
                    raise StepError(f"{name} failed", retriable=False)
                return f"{name}-ok"

            return step

        names = ["book_hotel", "cancel_hotel", "book_car", "cancel_car", "book_flight",
                 "cancel_flight"]
        return {n: make(n) for n in names}


async def test_a_trip_books_hotel_car_and_flight(tmp_path: Path) -> None:
    agency = Agency()
    async with Runtime("travel", wal_path=tmp_path / "wal.db") as rt:
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        outcome = await rt.run_saga("trip", {"who": "Ada"})
        assert outcome.state is SagaState.COMPLETED
        assert outcome.results == {"hotel": "book_hotel-ok", "car": "book_car-ok",
                                   "flight": "book_flight-ok"}
        assert agency.calls == ["book_hotel", "book_car", "book_flight"]
        assert rt.saga_status(outcome.saga_id).state is SagaState.COMPLETED


async def test_a_failed_flight_cancels_the_car_then_the_hotel(tmp_path: Path) -> None:
    agency = Agency()
    agency.fail.add("book_flight")
    async with Runtime("travel", wal_path=tmp_path / "wal.db") as rt:
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        outcome = await rt.run_saga("trip", None)
    assert outcome.state is SagaState.COMPENSATED
    assert agency.calls == ["book_hotel", "book_car", "book_flight", "cancel_car",
                            "cancel_hotel"]


async def test_an_orchestrator_crash_resumes_from_the_log_and_completes_the_saga(
    tmp_path: Path,
) -> None:
    agency = Agency()
    agency.gate["book_car"] = anyio.Event()

    def make() -> Runtime:
        rt = Runtime("travel", wal_path=tmp_path / "wal.db")
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        return rt

    async with anyio.create_task_group() as tg:
        node = Node(tg, make)
        rt = await node.start()
        crashed = anyio.Event()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            if what == "force" and isinstance(detail, StepStarted) and detail.step == "car":
                assert node.rt is not None
                # The car's start is being forced and the hotel's result (lazy)
                # waits in the same batch: the crash loses both before the fsync.
                node.rt.crash()
                crashed.set()

        rt.on_trace(on_trace)
        async with anyio.create_task_group() as client:
            client.start_soon(_run_until_cancelled, rt)
            await crashed.wait()
            client.cancel_scope.cancel()
        await node.crash()
        agency.gate["book_car"].set()
        restarted = await node.start()
        (saga_id,) = restarted.saga_ids()
        await eventually(lambda: restarted.saga_status(saga_id).state is SagaState.COMPLETED)
        # The lost lazy records are redone: steps run at least once (a real
        # step dedupes through the barrier), and the saga ends completed.
        assert agency.calls.count("book_hotel") == 2
        assert agency.calls[-1] == "book_flight"
        await node.stop()


async def _run_until_cancelled(rt: Runtime, saga_id: str | None = None) -> None:
    await rt.run_saga("trip", None, saga_id=saga_id)


async def test_a_failing_compensation_gets_stuck_and_an_operator_resumes_it(
    tmp_path: Path,
) -> None:
    agency = Agency()
    agency.fail.update({"book_flight", "cancel_hotel"})
    async with Runtime("travel", wal_path=tmp_path / "wal.db") as rt:
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        stuck = await rt.run_saga("trip", None)
        assert stuck.state is SagaState.STUCK
        assert "cancel_hotel failed" in stuck.reason
        assert rt.saga_status(stuck.saga_id).state is SagaState.STUCK
        assert rt.statistics().txn.stuck == 1
        agency.fail.discard("cancel_hotel")  # the operator fixed the hotel's API
        resumed = await rt.resume_saga(stuck.saga_id)
        assert resumed.state is SagaState.COMPENSATED
        assert agency.calls[-1] == "cancel_hotel"


async def test_bad_saga_input_gets_clear_errors(tmp_path: Path) -> None:
    agency = Agency()
    async with Runtime("travel") as rt:
        with pytest.raises(ConfigError, match="book_car"):
            rt.register_saga(TRIP, {"book_hotel": agency.steps()["book_hotel"]})  # type: ignore[dict-item]
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="nope"):
            await rt.run_saga("nope", None)
        done = await rt.run_saga("trip", None, saga_id="s-1")
        with pytest.raises(TransactionError, match="s-1"):
            await rt.run_saga("trip", None, saga_id="s-1")
        with pytest.raises(TransactionError, match="unknown"):
            rt.saga_status("unknown")
        assert done.completed


# -- participant actors as steps -------------------------------------------------------


class HotelDesk(Actor[StepCall]):
    """A participant actor that books and cancels rooms; scripted to fail."""

    log: ClassVar[list[tuple[str, str]]] = []
    sold_out: ClassVar[bool] = False

    async def receive(self, call: StepCall) -> str:
        HotelDesk.log.append((call.op.value, call.saga_id))
        if call.op is StepOp.ACTION and HotelDesk.sold_out:
            raise StepError("no rooms", retriable=False)
        return f"room for {call.payload}"


async def test_participant_actors_carry_out_steps_and_compensations(tmp_path: Path) -> None:
    agency = Agency()
    HotelDesk.log, HotelDesk.sold_out = [], False
    steps: dict[str, object] = dict(agency.steps())
    desk = ActorStep("desk@travel", timeout_s=5)
    steps.update({"book_hotel": desk, "cancel_hotel": "desk@travel"})
    rt = Runtime("travel", wal_path=tmp_path / "wal.db")
    rt.register_saga(TRIP, steps)  # before the actor exists: looked up per call
    async with rt:
        await rt.spawn(HotelDesk, name="desk")
        booked = await rt.run_saga("trip", "ada")
        assert booked.state is SagaState.COMPLETED
        assert booked.results["hotel"] == "room for ada"
        agency.fail.add("book_flight")
        undone = await rt.run_saga("trip", "bob")
        assert undone.state is SagaState.COMPENSATED
        HotelDesk.sold_out = True
        refused = await rt.run_saga("trip", "cy")
        assert refused.state is SagaState.COMPENSATED
        # A StepError is the step's answer, not the actor's failure: no restart.
        assert rt.statistics().actors.restarts == 0
    assert HotelDesk.log == [
        ("action", booked.saga_id),
        ("action", undone.saga_id),
        ("compensation", undone.saga_id),  # after the car's, the flight having failed
        ("action", refused.saga_id),  # not retriable: one attempt, nothing to undo
    ]


async def test_actor_steps_are_checked_when_registered(tmp_path: Path) -> None:
    agency = Agency()
    rt = Runtime("travel")
    for bad, match in [
        ("desk", "actor@node"),
        ("desk@a@b", "actor@node"),
        (42, "async callable"),
    ]:
        with pytest.raises(ConfigError, match=match):
            rt.register_saga(TRIP, {**agency.steps(), "book_hotel": bad})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="timeout_s"):
        ActorStep("desk@travel", timeout_s=0)
    with pytest.raises(ConfigError, match="cannot ask other nodes"):
        rt.register_saga(TRIP, {**agency.steps(), "book_hotel": "desk@elsewhere"})  # type: ignore[dict-item]
    assert TRIP.name not in {name for name, _ in rt.sagas.definitions}


# -- log compaction ------------------------------------------------------------------


def saga_records(wal: Path) -> dict[str, list[str]]:
    """The kinds of the records each saga has in the WAL file, in LSN order."""
    found: dict[str, list[str]] = {}
    for entry in read_wal(wal):
        found.setdefault(entry.txid, []).append(entry.kind)
    return found


async def test_a_finished_saga_leaves_only_the_record_of_how_it_ended(tmp_path: Path) -> None:
    agency = Agency()
    wal = tmp_path / "wal.db"
    async with Runtime("travel", wal_path=wal) as rt:
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        done = [await rt.run_saga("trip", None, saga_id=f"ok-{i}") for i in range(5)]
        agency.fail.add("book_flight")
        undone = [await rt.run_saga("trip", None, saga_id=f"undo-{i}") for i in range(5)]
        agency.fail.update({"cancel_hotel"})
        stuck = await rt.run_saga("trip", None, saga_id="stuck")
    assert {o.state for o in done} == {SagaState.COMPLETED}
    assert {o.state for o in undone} == {SagaState.COMPENSATED}
    records = saga_records(wal)
    for outcome in done + undone:
        assert records[outcome.saga_id] == ["saga-finished"]
    # An unfinished (stuck) saga keeps its whole history for the operator.
    assert records[stuck.saga_id][0] == "saga-started"
    assert records[stuck.saga_id][-1] == "saga-stuck"
    rt = Runtime("travel", wal_path=wal)
    rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
    async with rt:
        # The tombstone answers status queries and keeps the id used.
        assert rt.saga_status("ok-0").state is SagaState.COMPLETED
        assert rt.saga_status("undo-4").state is SagaState.COMPENSATED
        with pytest.raises(TransactionError, match="ok-3"):
            await rt.run_saga("trip", None, saga_id="ok-3")
        assert rt.saga_ids() == ["stuck"]


async def test_a_crash_just_after_the_end_is_forced_keeps_the_outcome(tmp_path: Path) -> None:
    agency = Agency()
    wal = tmp_path / "wal.db"

    def make() -> Runtime:
        rt = Runtime("travel", wal_path=wal)
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        return rt

    async with anyio.create_task_group() as tg:
        node = Node(tg, make)
        rt = await node.start()

        crashed = anyio.Event()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            if what == "forced" and isinstance(detail, SagaFinishedRecord):
                assert node.rt is not None
                node.rt.crash()  # before the caller hears the outcome
                crashed.set()

        rt.on_trace(on_trace)
        async with anyio.create_task_group() as client:
            client.start_soon(_run_until_cancelled, rt, "s")
            await crashed.wait()
            client.cancel_scope.cancel()
        await node.crash()
        restarted = await node.start()
        assert restarted.saga_status("s").state is SagaState.COMPLETED
        assert restarted.saga_ids() == []
        await node.stop()
    assert agency.calls == ["book_hotel", "book_car", "book_flight"]  # nothing ran again
    assert saga_records(wal) == {"s": ["saga-finished"]}


async def test_only_remember_ended_saga_tombstones_stay_in_the_log(tmp_path: Path) -> None:
    agency = Agency()
    wal = tmp_path / "wal.db"
    async with Runtime("travel", wal_path=wal, remember_ended=3) as rt:
        rt.register_saga(TRIP, agency.steps())  # type: ignore[arg-type]
        for i in range(8):
            await rt.run_saga("trip", None, saga_id=f"s-{i}")
        assert list(rt.sagas.ended) == ["s-5", "s-6", "s-7"]
        with pytest.raises(TransactionError, match="knows no saga"):
            rt.saga_status("s-0")
    assert saga_records(wal) == {f"s-{i}": ["saga-finished"] for i in (5, 6, 7)}
    with pytest.raises(ConfigError, match="remember_ended"):
        Runtime("travel", remember_ended=-1)


async def test_a_log_written_before_compaction_is_compacted_at_start(tmp_path: Path) -> None:
    wal = tmp_path / "wal.db"
    history = [
        SagaStarted("old", "trip", 1, None),
        StepStarted("old", "hotel", 1),
        StepSucceededRecord("old", "hotel", 1, "H"),
        SagaFinishedRecord("old", SagaState.COMPLETED),
    ]
    async with SqliteWal(wal) as store:
        for record in history:
            await store.force("old", kind_of(record), LOG_ENCODER.encode(LogEntry("sagas", record)))
    assert saga_records(wal) == {"old": ["saga-started", "step-started", "step-succeeded",
                                         "saga-finished"]}
    rt = Runtime("travel", wal_path=wal)
    rt.register_saga(TRIP, Agency().steps())  # type: ignore[arg-type]
    async with rt:
        assert rt.saga_status("old").state is SagaState.COMPLETED
    assert saga_records(wal) == {"old": ["saga-finished"]}


@pytest.mark.parametrize("example", ["travel_booking.py", "order_saga.py"])
def test_the_examples_run(example: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    if example == "order_saga.py":
        assert "reserved by an order in progress: order-1" in result.stdout
        assert "pending marks left: {}" in result.stdout
        assert "order-2: compensated" in result.stdout


FOREVER_USED = FOREVER  # the order example relies on it
