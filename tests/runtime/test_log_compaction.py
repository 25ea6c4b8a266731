"""Ended transactions compact their log to one tombstone record at each process,
the tombstones are bounded by `remember_ended`, and nothing a live transaction
still needs is ever deleted (real runtimes, SQLite WALs, crashes)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Protocol, Timeouts, Vote
from dtxn.protocols.records import (
    CoordCommitted,
    CoordEnded,
    PartCommitted,
    PartPrepared,
    kind_of,
)
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.hosting import LOG_ENCODER, LogEntry
from dtxn.runtime.wal import SqliteWal, read_wal
from nodes import Ledger, Node, eventually

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
PAIR = {"ledger@bank-a": -10, "ledger@bank-b": 10}


def kinds(wal: Path) -> dict[str, list[str]]:
    """Each transaction's record kinds in the WAL file, in LSN order."""
    found: dict[str, list[str]] = {}
    for entry in read_wal(wal):
        found.setdefault(entry.txid, []).append(entry.kind)
    return found


class Banks:
    """A coordinator and two banks on one in-process transport, each with its WAL."""

    def __init__(self, tmp: Path, tg: anyio.abc.TaskGroup, remember: int = 100_000) -> None:
        transport = InProcessTransport()
        self.tmp = tmp
        self.ledgers = {"bank-a": Ledger(), "bank-b": Ledger()}
        self.nodes = {
            "coord": Node(tg, lambda: Runtime(
                "coord", transport=transport, wal_path=tmp / "coord.db", timeouts=FAST,
                remember_ended=remember,
            )),
        }
        for name, ledger in self.ledgers.items():
            self.nodes[name] = Node(tg, lambda name=name, ledger=ledger: Runtime(  # type: ignore[misc]
                name, transport=transport, wal_path=tmp / f"{name}.db", timeouts=FAST,
                resources={"ledger": ledger}, remember_ended=remember,
            ))

    async def start(self) -> Runtime:
        await self.nodes["bank-a"].start()
        await self.nodes["bank-b"].start()
        return await self.nodes["coord"].start()

    async def stop(self) -> None:
        for node in self.nodes.values():
            await node.stop()


async def test_ended_transactions_keep_one_record_at_each_process(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg)
        coord = await banks.start()
        ended = []
        for protocol in ("2pc", "3pc"):
            for _ in range(3):
                ended.append(await coord.transact(PAIR, protocol=protocol))
        banks.ledgers["bank-b"].vote = Vote.NO
        ended.append(await coord.transact(PAIR, protocol="3pc"))
        ended.append(await coord.transact(PAIR, protocol="2pc"))
        await eventually(lambda: coord.statistics().txn.active == 0)
        await banks.stop()
        assert [o.committed for o in ended] == [True] * 6 + [False] * 2

        coord_log, a_log = kinds(tmp_path / "coord.db"), kinds(tmp_path / "bank-a.db")
        for outcome in ended[:6]:
            assert coord_log[outcome.txid] == ["c-end"]
            assert a_log[outcome.txid] == ["p-commit"]
        assert coord_log[ended[6].txid] == ["c-abort"]  # 3PC logs its abort
        assert ended[7].txid not in coord_log  # 2PC presumes it: nothing at all
        assert a_log[ended[6].txid] == a_log[ended[7].txid] == ["p-abort"]

        # After a restart the tombstones answer: the ids stay used, and an
        # in-doubt style inquiry would get the outcome, not a presumption.
        coord = await banks.start()
        for outcome in ended[:7]:
            assert coord.coordinator.finished[outcome.txid] is outcome.outcome
            with pytest.raises(TransactionError, match="already used"):
                await coord.transact(PAIR, txid=outcome.txid)
        assert coord.statistics().txn.active == 0
        await banks.stop()


async def test_remember_ended_bounds_the_tombstones(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg, remember=3)
        coord = await banks.start()
        txids = [(await coord.transact(PAIR)).txid for _ in range(8)]
        await eventually(lambda: coord.statistics().txn.active == 0)
        await banks.stop()
    for wal in ("coord.db", "bank-a.db", "bank-b.db"):
        assert sorted(kinds(tmp_path / wal)) == sorted(txids[-3:]), wal
    with pytest.raises(ConfigError, match="remember_ended"):
        Runtime("x", remember_ended=-1)


async def test_a_window_of_zero_leaves_no_tombstones(tmp_path: Path) -> None:
    """Outcomes are recorded before the end record is compacted; with nothing
    remembered the tombstone must go at once (found by review: it leaked)."""
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg, remember=0)
        coord = await banks.start()
        for _ in range(5):
            assert (await coord.transact(PAIR)).committed
        await eventually(lambda: coord.statistics().txn.active == 0)
        await banks.stop()
    for wal in ("coord.db", "bank-a.db", "bank-b.db"):
        assert kinds(tmp_path / wal) == {}, wal


async def test_a_transaction_waiting_for_acks_outlives_the_window(tmp_path: Path) -> None:
    """The coordinator decides before its acks are in: when the window forgets
    the outcome, the records of the still-live transaction must stay, or a
    restart would presume abort for what a participant was told to commit."""
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg, remember=1)
        coord = await banks.start()
        # bank-b commits only when let through: the coordinator waits for its ack.
        gate = anyio.Event()
        b = banks.ledgers["bank-b"]
        commit = b.commit

        async def held_commit(txid: str) -> None:
            await gate.wait()
            await commit(txid)

        b.commit = held_commit  # type: ignore[method-assign]
        first = await coord.transact(PAIR)
        assert first.committed
        for _ in range(3):  # push `first` out of the coordinator's window
            assert (await coord.transact({"ledger@bank-a": 1})).committed
        assert first.txid not in coord.coordinator.finished
        assert kinds(tmp_path / "coord.db")[first.txid] == ["c-commit"]
        await banks.nodes["coord"].crash()
        coord = await banks.nodes["coord"].start()
        # Recovered as committed, still waiting for bank-b's ack.
        assert first.txid in coord.coordinator.txns
        gate.set()
        await eventually(lambda: first.txid in b.committed)
        await eventually(lambda: coord.statistics().txn.active == 0)
        await banks.stop()
    # Ended outside the window (the later transactions' outcomes fill it): the
    # log forgets it as the memory did, rather than keep a tombstone forever.
    assert first.txid not in kinds(tmp_path / "coord.db")


async def test_a_log_with_ended_histories_is_compacted_at_start(tmp_path: Path) -> None:
    """A crash between a transaction's end and the commit of its compaction (or a
    log written before compaction existed) leaves whole histories: recovery
    replays them to the same outcome and compacts them."""
    histories = {
        "coord.db": [
            ("coordinator", CoordCommitted("t-old", Protocol.TWO_PC, tuple(PAIR))),
            ("coordinator", CoordEnded("t-old")),
        ],
        "bank-a.db": [
            ("ledger", PartPrepared("t-old", Protocol.TWO_PC, "coordinator@coord", tuple(PAIR))),
            ("ledger", PartCommitted("t-old")),
            ("ledger", PartPrepared("t-live", Protocol.TWO_PC, "coordinator@coord", tuple(PAIR))),
        ],
    }
    for name, history in histories.items():
        async with SqliteWal(tmp_path / name) as store:
            for actor, record in history:
                data = LOG_ENCODER.encode(LogEntry(actor, record))
                await store.force(record.txid, kind_of(record), data)
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg)
        a = await banks.nodes["bank-a"].start()
        assert a.participants["ledger"].finished["t-old"] is Outcome.COMMITTED
        assert a.participants["ledger"].in_doubt() == 1  # t-live: untouched, still asking
        assert banks.ledgers["bank-a"].committed == []  # p-commit means it was applied
        coord = await banks.nodes["coord"].start()
        assert coord.coordinator.finished["t-old"] is Outcome.COMMITTED
        # The coordinator never heard of t-live: presumed abort ends it at bank-a.
        await eventually(lambda: a.participants["ledger"].in_doubt() == 0)
        await banks.nodes["coord"].stop()
        await banks.nodes["bank-a"].stop()
    assert kinds(tmp_path / "coord.db") == {"t-old": ["c-end"]}
    assert kinds(tmp_path / "bank-a.db") == {"t-old": ["p-commit"], "t-live": ["p-abort"]}


# -- one log, many writers: a node's hosts share its WAL and its txids ------------------


def eager_wal(path: Path) -> SqliteWal:
    """A WAL whose every commit carries the pending deletes (a node's own WAL
    gathers 256 first), so that a test can crash right after them."""
    return SqliteWal(path, discard_batch=1)


async def _held(ledger: Ledger) -> anyio.Event:
    """Make `ledger` commit only once the returned event is set."""
    gate = anyio.Event()
    commit = ledger.commit

    async def held_commit(txid: str) -> None:
        await gate.wait()
        await commit(txid)

    ledger.commit = held_commit  # type: ignore[method-assign]
    return gate


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
async def test_a_participant_compacting_keeps_its_nodes_coordinator_records(
    tmp_path: Path, protocol: str
) -> None:
    """The coordinator runs on bank-a, beside bank-a's ledger. The ledger ends
    first and compacts; the coordinator still waits for bank-b's ack, and its
    c-commit must survive a crash of both nodes (found by review: compaction by
    txid deleted it, and bank-b was then told to abort what bank-a committed)."""
    transport = InProcessTransport()
    la, lb = Ledger(), Ledger()
    async with anyio.create_task_group() as tg:
        a_node = Node(tg, lambda: Runtime("bank-a", transport=transport,
                                          wal=eager_wal(tmp_path / "a.db"), timeouts=FAST,
                                          resources={"ledger": la}))
        b_node = Node(tg, lambda: Runtime("bank-b", transport=transport,
                                          wal=eager_wal(tmp_path / "b.db"), timeouts=FAST,
                                          resources={"ledger": lb}))
        a = await a_node.start()
        await b_node.start()
        await _held(lb)
        done = await a.transact(PAIR, protocol=protocol)
        assert done.committed
        await eventually(lambda: done.txid in la.committed)
        await a.transact({"ledger@bank-a": 0}, protocol=protocol)  # commits the drops
        await b_node.crash()
        await a_node.crash()
        assert "c-commit" in kinds(tmp_path / "a.db")[done.txid]
        lb.commit = Ledger.commit.__get__(lb)  # type: ignore[method-assign]
        a = await a_node.start()
        assert done.txid in a.coordinator.txns  # still waiting for bank-b's ack
        await b_node.start()
        await eventually(lambda: done.txid in lb.committed or done.txid in lb.aborted)
        assert done.txid in lb.committed and done.txid not in lb.aborted
        await eventually(lambda: a.statistics().txn.active == 0)
        await a_node.stop()
        await b_node.stop()
    assert kinds(tmp_path / "a.db")[done.txid] == ["p-commit", "c-end"]


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
async def test_two_resources_on_one_node_compact_only_their_own_records(
    tmp_path: Path, protocol: str
) -> None:
    """ledger and ledger2 on bank-b: ledger ends first and compacts while
    ledger2's commit is still running; after a crash ledger2 must still know
    it is prepared (found by review: it forgot, acked the re-sent COMMIT
    without committing, and stayed prepared forever)."""
    transport = InProcessTransport()
    l1, l2 = Ledger(), Ledger()
    async with anyio.create_task_group() as tg:
        coord_node = Node(tg, lambda: Runtime("coord", transport=transport,
                                              wal=eager_wal(tmp_path / "c.db"), timeouts=FAST))
        b_node = Node(tg, lambda: Runtime("bank-b", transport=transport,
                                          wal=eager_wal(tmp_path / "b.db"), timeouts=FAST,
                                          resources={"ledger": l1, "ledger2": l2}))
        b = await b_node.start()
        coord = await coord_node.start()
        await _held(l2)
        done = await coord.transact({"ledger@bank-b": -10, "ledger2@bank-b": 10},
                                    protocol=protocol)
        await eventually(lambda: done.txid in l1.committed)
        await b.transact({"ledger@bank-b": 0}, protocol=protocol)  # commits the drops
        await b_node.crash()
        l2.commit = Ledger.commit.__get__(l2)  # type: ignore[method-assign]
        await b_node.start()
        await eventually(lambda: coord.statistics().txn.active == 0)
        assert done.txid in l2.committed and done.txid not in l2.prepared
        await coord_node.stop()
        await b_node.stop()
    assert sorted(kinds(tmp_path / "b.db")[done.txid]) == ["p-commit", "p-commit"]
