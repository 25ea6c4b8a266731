"""Transactions through real runtimes: SQLite WALs, real restarts, injected faults."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import ConfigError, LogCorruptError, TransactionError
from dtxn.protocols.messages import Decision, Timeouts, Vote
from dtxn.protocols.records import PartPreCommitted
from dtxn.runtime import Address, InProcessTransport, Runtime, UnknownTransaction
from dtxn.runtime.hosting import Timer, TimerWheel
from dtxn.runtime.wal import read_wal
from nodes import Ledger, Node, eventually

pytestmark = pytest.mark.anyio

# Through the msgpack codec, or straight to the mailboxes (the runtimes' cached
# direct routes, which must honour crashes, detaches and fault hooks alike).
CODEC = pytest.mark.parametrize("encode", [True, False], ids=["codec", "direct"])

FAST = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)


class Bank:
    """Three nodes (coordinator, bank A, bank B) on SQLite WALs in `tmp`."""

    def __init__(self, tmp: Path, tg: anyio.abc.TaskGroup, *, encode: bool = True) -> None:
        self.transport = InProcessTransport(encode=encode)
        self.a, self.b = Ledger(), Ledger()
        self.coord = Node(
            tg,
            lambda: Runtime("coord", transport=self.transport, wal_path=tmp / "coord.db",
                            timeouts=FAST),
        )
        self.node_a = Node(
            tg,
            lambda: Runtime("bank-a", transport=self.transport, wal_path=tmp / "a.db",
                            resources={"ledger": self.a}),
        )
        self.node_b = Node(
            tg,
            lambda: Runtime("bank-b", transport=self.transport, wal_path=tmp / "b.db",
                            resources={"ledger": self.b}),
        )

    async def start(self) -> Runtime:
        await self.node_a.start()
        await self.node_b.start()
        return await self.coord.start()

    async def stop(self) -> None:
        for node in (self.coord, self.node_a, self.node_b):
            await node.stop()

    def committed_at_both(self, txid: str) -> bool:
        return txid in self.a.committed and txid in self.b.committed

    def atomic(self, txid: str) -> bool:
        a_done = txid in self.a.committed, txid in self.a.aborted
        b_done = txid in self.b.committed, txid in self.b.aborted
        return a_done[0] == b_done[0] and not (a_done[0] and b_done[1]) and not (
            b_done[0] and a_done[1]
        )


TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
async def test_a_transfer_commits_at_both_banks(tmp_path: Path, protocol: str) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg)
        coord = await bank.start()
        outcome = await coord.transact(TRANSFER, protocol=protocol)
        assert outcome.committed, outcome
        await eventually(lambda: bank.committed_at_both(outcome.txid))
        assert (bank.a.balance, bank.b.balance) == (-10, 10)
        assert coord.status(outcome.txid).outcome == "committed"
        await bank.stop()


async def test_a_transfer_aborts_at_both_banks_when_b_votes_no(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg)
        bank.b.vote = Vote.NO
        coord = await bank.start()
        outcome = await coord.transact(TRANSFER)
        assert outcome.outcome is Outcome.ABORTED
        assert "bank-b" in outcome.reason
        await eventually(lambda: outcome.txid in bank.a.aborted)
        assert bank.a.committed == bank.b.committed == []
        assert (bank.a.balance, bank.b.balance) == (0, 0)
        await bank.stop()


@CODEC
async def test_coordinator_crash_before_the_decision_ends_in_presumed_abort(
    tmp_path: Path, encode: bool
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg, encode=encode)
        bank.b.gate = anyio.Event()  # B's prepare hangs: no decision can be made
        coord = await bank.start()

        async with anyio.create_task_group() as client:
            client.start_soon(_transact_until_cancelled, coord, TRANSFER)
            await eventually(lambda: bool(bank.a.prepared))
            (txid,) = bank.a.prepared
            await bank.coord.crash()
            client.cancel_scope.cancel()
        await bank.coord.start()
        bank.b.gate.set()
        await eventually(lambda: txid in bank.a.aborted and txid in bank.b.aborted)
        assert bank.a.committed == bank.b.committed == []
        await bank.stop()


async def _transact_until_cancelled(
    rt: Runtime, participants: dict[str, int], protocol: str = "2pc"
) -> None:
    """Run a transaction whose caller is cancelled (its coordinator is about to crash)."""
    await rt.transact(participants, protocol=protocol)


@CODEC
async def test_coordinator_crash_after_forcing_commit_resends_it_after_restart(
    tmp_path: Path, encode: bool
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg, encode=encode)
        coord = await bank.start()
        # Lose every COMMIT the first coordinator sends, then crash it once the
        # commit record is durable: only recovery can deliver the decision.
        bank.transport.fault = lambda to, msg: not (isinstance(msg, Decision) and msg.commit)
        crashed = anyio.Event()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            if what == "forced" and actor.startswith("coordinator@") and not crashed.is_set():
                assert bank.coord.rt is not None
                bank.coord.rt.crash()
                tg.start_soon(_crash_then_set, bank.coord, crashed)

        coord.on_trace(on_trace)
        outcome = await coord.transact(TRANSFER)
        assert outcome.committed  # reported to the caller: must survive the crash
        await crashed.wait()
        assert bank.a.committed == bank.b.committed == []
        bank.transport.fault = None
        restarted = await bank.coord.start()
        await eventually(lambda: bank.committed_at_both(outcome.txid))
        await eventually(lambda: restarted.statistics().txn.active == 0)
        await bank.stop()


async def _crash_then_set(node: Node, done: anyio.Event) -> None:
    await node.crash()
    done.set()


@CODEC
async def test_participant_crash_after_prepared_asks_and_finishes_atomically(
    tmp_path: Path, encode: bool
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg, encode=encode)
        coord = await bank.start()
        crashed = anyio.Event()
        armed = [True]

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            if what == "forced" and armed[0]:
                armed[0] = False
                assert bank.node_a.rt is not None
                bank.node_a.rt.crash()  # at once: the yes vote never leaves
                tg.start_soon(_crash_then_set, bank.node_a, crashed)

        assert bank.node_a.rt is not None
        bank.node_a.rt.on_trace(on_trace)
        outcome = await coord.transact(TRANSFER)
        await crashed.wait()
        await bank.node_a.start()
        # A crashed after forcing PREPARED and before its vote left: the
        # coordinator timed out and aborted; A, in doubt after restart, asks.
        assert outcome.outcome is Outcome.ABORTED
        await eventually(lambda: bank.atomic(outcome.txid) and outcome.txid in bank.a.aborted)
        assert bank.a.committed == bank.b.committed == []
        await bank.stop()


@CODEC
async def test_lost_and_duplicated_messages_still_end_atomically(
    tmp_path: Path, encode: bool
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg, encode=encode)
        coord = await bank.start()
        seen: dict[str, int] = {}

        def fault(to: Address, msg: object) -> bool | int:
            key = f"{type(msg).__name__}->{to}"
            seen[key] = seen.get(key, 0) + 1
            if key == "Decision->ledger@bank-a" and seen[key] == 1:
                return False  # the first COMMIT to A is lost
            return 2  # everything else arrives twice

        bank.transport.fault = fault
        outcomes = [await coord.transact(TRANSFER) for _ in range(5)]
        assert all(o.committed for o in outcomes)
        await eventually(lambda: len(bank.a.committed) == 5 and len(bank.b.committed) == 5)
        assert (bank.a.balance, bank.b.balance) == (-50, 50)
        assert coord.statistics().txn.ignored > 0  # duplicates were counted, not errors
        await bank.stop()


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
@CODEC
async def test_2pc_participants_block_but_3pc_participants_finish_when_the_coordinator_dies(
    tmp_path: Path, protocol: str, encode: bool
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg, encode=encode)
        coord = await bank.start()
        crashed = anyio.Event()
        assert bank.node_a.rt is not None and bank.node_b.rt is not None

        def crash_coordinator() -> None:
            if not crashed.is_set():
                crashed.set()
                assert bank.coord.rt is not None
                bank.coord.rt.crash()

        def on_coord_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # 2PC: the coordinator dies right after forcing COMMIT, before sending it.
            if protocol == "2pc" and what == "forced":
                crash_coordinator()

        def on_a_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # 3PC: the coordinator dies after PRE-COMMIT went out (A has just
            # forced it), before it could collect the acks and commit.
            if isinstance(detail, PartPreCommitted) and what == "forced":
                crash_coordinator()

        coord.on_trace(on_coord_trace)
        bank.node_a.rt.on_trace(on_a_trace)
        async with anyio.create_task_group() as client:
            client.start_soon(_transact_until_cancelled, coord, TRANSFER, protocol)
            await crashed.wait()
            await eventually(lambda: bool(bank.a.prepared) and bool(bank.b.prepared))
            (txid,) = bank.a.prepared
            client.cancel_scope.cancel()
        if protocol == "3pc":
            # Termination protocol: a backup is elected and commits (TR4).
            await eventually(lambda: txid in bank.a.committed and txid in bank.b.committed)
        else:
            # Blocked: in doubt at both banks, for as long as the coordinator is down.
            await Node_wait(1.0)
            assert bank.node_a.rt.status(txid).in_doubt
            assert bank.node_b.rt.status(txid).in_doubt
            assert bank.a.committed == bank.b.committed == []
            await bank.coord.start()
            await eventually(lambda: txid in bank.a.committed and txid in bank.b.committed)
        await bank.stop()


async def Node_wait(seconds: float) -> None:
    from dtxn.runtime.clock import Clock

    await Clock().sleep(seconds)


async def test_bad_input_gets_clear_errors_and_leaves_durable_state_intact(
    tmp_path: Path,
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg)
        bank.b.vote = Vote.NO
        coord = await bank.start()
        aborted = await coord.transact(TRANSFER)
        assert not aborted.committed
        assert bank.node_b.rt is not None
        b = bank.node_b.rt
        before = read_wal(tmp_path / "b.db")
        # Malformed bytes on the transport: reported, the node keeps running.
        await bank.transport.deliver_bytes(Address("bank-b", "ledger"), b"\xc1\xff not msgpack")
        assert b.statistics().undeliverable == 1
        # COMMIT for a transaction B voted no on: a counted violation, nothing applied.
        bank.transport.send_nowait(
            Address("bank-b", "ledger"), Decision(aborted.txid, "coordinator@coord", True)
        )
        await eventually(lambda: b.statistics().txn.violations == 1)
        assert bank.b.committed == []
        # A COMMIT for an unknown transaction is acknowledged, never applied.
        bank.transport.send_nowait(Address("bank-b", "ledger"), Decision("nope", "x@coord", True))
        assert read_wal(tmp_path / "b.db") == before
        with pytest.raises(UnknownTransaction, match="nope"):
            coord.status("nope")
        with pytest.raises(ConfigError, match="4pc"):
            await coord.transact(TRANSFER, protocol="4pc")
        with pytest.raises(TransactionError, match="actor@node"):
            await coord.transact({"ledger": 1})
        with pytest.raises(TransactionError, match="at least one"):
            await coord.transact({})
        with pytest.raises(ConfigError, match="votes_s"):
            await coord.transact(TRANSFER, timeouts=Timeouts(votes_s=-1))
        bank.b.vote = Vote.YES
        assert (await coord.transact(TRANSFER)).committed  # still working
        await bank.stop()


async def test_a_flipped_byte_in_the_log_is_reported_and_the_log_left_as_it_was(
    tmp_path: Path,
) -> None:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg)
        coord = await bank.start()
        assert (await coord.transact(TRANSFER)).committed
        await bank.stop()
    path = tmp_path / "coord.db"
    with sqlite3.connect(path) as db:
        (lsn, data) = db.execute("SELECT lsn, data FROM records ORDER BY lsn LIMIT 1").fetchone()
        flipped = bytes([data[0] ^ 0x01]) + data[1:]
        db.execute("UPDATE records SET data = ? WHERE lsn = ?", (flipped, lsn))
    snapshot = path.read_bytes()
    with pytest.raises(LogCorruptError, match=f"lsn={lsn}"):
        async with Runtime("coord", wal_path=path):
            pass  # pragma: no cover
    assert path.read_bytes() == snapshot


async def test_the_reason_a_participant_refused_reaches_the_caller(tmp_path: Path) -> None:
    class Strict(Ledger):
        async def prepare(self, txid: str, payload: object) -> Vote:
            raise ValueError("insufficient funds: balance 20 < 30")

    async with anyio.create_task_group() as tg:
        bank = Bank(tmp_path, tg)
        bank.b.__class__ = Strict
        coord = await bank.start()
        outcome = await coord.transact(TRANSFER)
        assert outcome.outcome is Outcome.ABORTED
        assert "ledger@bank-b" in outcome.reason
        assert "insufficient funds: balance 20 < 30" in outcome.reason
        await bank.stop()


# -- the hosts' timer wheel (no event loop: a fake clock and loop timer) ---------------


class _FakeAlarm:
    def __init__(self, loop: _FakeLoop, due_s: float, callback: object) -> None:
        self.loop = loop
        self.due_s = due_s
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _FakeLoop:
    """The `HostServices` a `TimerWheel` uses: a clock that moves only when told, loop timers."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self.alarms: list[_FakeAlarm] = []
        self.clock = self

    def now(self) -> float:
        return self.now_s

    def call_later(self, delay_s: float, callback: object) -> _FakeAlarm:
        alarm = _FakeAlarm(self, self.now_s + delay_s, callback)
        self.alarms.append(alarm)
        return alarm

    def pending(self) -> list[_FakeAlarm]:
        return [alarm for alarm in self.alarms if not alarm.cancelled]

    def advance(self, to_s: float) -> None:
        """Move the clock to `to_s`, ringing every loop timer due on the way, in order."""
        while True:
            due = [a for a in self.pending() if a.due_s <= to_s]
            if not due:
                break
            alarm = min(due, key=lambda a: a.due_s)
            self.now_s = max(self.now_s, alarm.due_s)
            alarm.cancelled = True  # rung once, as a loop timer is
            alarm.callback()  # type: ignore[operator]
        self.now_s = to_s


def _wheel() -> tuple[_FakeLoop, list[tuple[str, str]], TimerWheel]:
    loop = _FakeLoop()
    fired: list[tuple[str, str]] = []
    timers = TimerWheel(loop, lambda timer: fired.append((timer.txid, timer.name)))  # type: ignore[arg-type]
    return loop, fired, timers


async def test_direct_routes_count_every_message_and_stop_at_a_crashed_node() -> None:
    transport = InProcessTransport()
    ledger = Ledger()
    async with anyio.create_task_group() as tg:
        node = Node(tg, lambda: Runtime("bank", transport=transport,
                                        resources={"ledger": ledger}))
        bank = await node.start()
        async with Runtime("coord", transport=transport, timeouts=FAST) as coord:
            first = await coord.transact({"ledger@bank": 1})
            assert first.committed
            await eventually(lambda: bank.statistics().txn.active == 0)
            await eventually(lambda: coord.statistics().txn.active == 0)
            sent = coord.statistics().txn.messages_sent + bank.statistics().txn.messages_sent
            received = (
                coord.statistics().txn.messages_received
                + bank.statistics().txn.messages_received
            )
            assert sent == received == transport.statistics().messages == 4
            assert coord._routes and bank._routes  # both sides took their direct routes
            # Routes are cached now; a crashed node must receive nothing on them.
            before = bank.statistics().txn.messages_received
            await node.crash()
            assert not coord._routes
            second = await coord.transact({"ledger@bank": 1})
            assert second.outcome is Outcome.ABORTED  # no vote: the votes timer aborted
            assert bank.statistics().txn.messages_received == before
            assert transport.statistics().undeliverable >= 1
    assert ledger.committed == [first.txid]


async def test_a_fault_hook_set_after_routes_were_cached_sees_every_message() -> None:
    transport = InProcessTransport()
    async with (
        Runtime("bank", transport=transport, resources={"ledger": Ledger()}) as bank,
        Runtime("coord", transport=transport, timeouts=FAST) as coord,
    ):
        assert (await coord.transact({"ledger@bank": 1})).committed
        await eventually(lambda: bank.statistics().txn.active == 0)
        await eventually(lambda: coord.statistics().txn.active == 0)
        seen: list[str] = []

        def fault(to: Address, message: object) -> bool:
            seen.append(type(message).__name__)
            return not isinstance(message, Decision)  # every decision is lost

        transport.fault = fault
        outcome = await coord.transact({"ledger@bank": 1})
        assert outcome.committed  # durable at the coordinator; the COMMIT is re-sent
        await eventually(lambda: seen.count("Decision") >= 2)
        assert seen[:2] == ["Prepare", "VoteCast"]
        transport.fault = None


def test_host_timers_fire_once_due_in_deadline_order_with_one_loop_timer() -> None:
    loop, fired, timers = _wheel()
    timers.arm(30.0, "t1", "votes")
    timers.arm(5.0, "t2", "acks")  # earlier: re-sets the alarm
    timers.arm(30.0, "t3", "votes")
    timers.arm(5.0, "t4", "acks")
    assert len(loop.pending()) == 1 and loop.pending()[0].due_s == pytest.approx(105.0)
    loop.advance(104.9)
    assert fired == []
    loop.advance(105.0)
    assert fired == [("t2", "acks"), ("t4", "acks")]
    loop.advance(129.0)
    assert fired == [("t2", "acks"), ("t4", "acks")]
    loop.advance(131.0)
    assert fired == [("t2", "acks"), ("t4", "acks"), ("t1", "votes"), ("t3", "votes")]
    assert loop.pending() == []


def test_cancelled_host_timers_never_fire_and_leave_no_loop_timer_behind() -> None:
    loop, fired, timers = _wheel()
    first = timers.arm(30.0, "t1", "votes")
    second = timers.arm(30.0, "t2", "votes")
    first.cancel()
    first.cancel()  # idempotent
    loop.advance(140.0)
    assert fired == [("t2", "votes")]
    third = timers.arm(30.0, "t3", "votes")
    third.cancel()
    second.cancel()  # already fired: nothing happens
    assert loop.pending() == []
    loop.advance(1000.0)
    assert fired == [("t2", "votes")]


def test_host_timers_cancelled_out_of_order_do_not_pile_up() -> None:
    loop, fired, timers = _wheel()
    keep = timers.arm(30.0, "oldest", "decision")
    for i in range(10_000):
        timers.arm(30.0, f"t{i}", "decision").cancel()
    lane = timers._lanes[30.0]
    assert lane.live == 1 and len(lane.entries) < 200
    loop.advance(131.0)
    assert fired == [("oldest", "decision")]
    assert keep.live is False


def test_closing_host_timers_calls_everything_off() -> None:
    loop, fired, timers = _wheel()
    timers.arm(1.0, "t1", "acks")
    timers.arm(2.0, "t2", "acks")
    timers.close()
    assert loop.pending() == []
    loop.advance(200.0)
    assert fired == []
    timers.arm(1.0, "t3", "acks")  # usable again (a restart)
    loop.advance(201.5)
    assert fired == [("t3", "acks")]


def test_a_timer_armed_while_timers_fire_is_kept_and_fires_later() -> None:
    loop = _FakeLoop()
    fired: list[tuple[str, float]] = []
    def fire(timer: Timer) -> None:
        fired.append((timer.txid, loop.now_s))
        if timer.txid == "retry" and len(fired) < 3:
            wheel.arm(2.0, "retry", "acks")  # a retry re-arms, as the protocols do

    wheel = TimerWheel(loop, fire)  # type: ignore[arg-type]
    wheel.arm(1.0, "retry", "acks")
    loop.advance(110.0)
    assert fired == [("retry", 101.0), ("retry", 103.0), ("retry", 105.0)]
    assert loop.pending() == []
