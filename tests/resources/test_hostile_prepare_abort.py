"""A participant that aborted on a peer's inquiry while its resource was still preparing.

Issue 14, finding 1: pa is slow to vote; pb's decision timer (2PC) or
termination protocol (3PC) asks pa, which is still PREPARING although its
`SqliteResource.prepare` has already committed the branch and its marker
locally; pa forces p-abort and answers abort; pb aborts. pa then crashes
before its vote is dispatched, so `resource.abort` never ran. Recovery must
reconcile the file with the log: a marker whose txid the log says aborted
(or does not know) is rolled back, one it says committed is committed, one
it holds in doubt is left to the protocol.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.messages import Decision, Protocol, Timeouts, Vote
from dtxn.protocols.records import PartAborted, PartCommitted, PartPrepared, kind_of
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.hosting import LOG_ENCODER, LogEntry
from dtxn.runtime.hosting.coordinator import TxnOutcome
from dtxn.runtime.resources.sqlite import SqliteBranch, SqliteResource
from dtxn.runtime.transport import Address
from dtxn.runtime.wal import SqliteWal
from nodes import Node, eventually
from sqlite_files import balance, create_ledger, leftovers, move, query

pytestmark = pytest.mark.anyio

TIMEOUTS = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)












class SlowToVote(SqliteResource):
    """A real SqliteResource whose prepare, once committed locally, waits on a gate.

    It stands for a participant whose vote is slow to leave after the branch and
    its marker are already in the file (a busy event loop, a slow worker).
    """

    def __init__(self, path: Path) -> None:
        super().__init__(path, name="ledger-a", branch=move)
        self.gate = anyio.Event()
        self.prepared_locally = anyio.Event()

    async def prepare(self, txid: str, payload: Any) -> Vote:
        vote = await super().prepare(txid, payload)
        self.prepared_locally.set()
        await self.gate.wait()
        return vote


def _no_coordinator_decisions(to: Address, message: object) -> bool:
    # The coordinator's own abort (on its vote timeout) never arrives, so pb
    # asks its peer pa, as in the finding (in 3PC it learns the outcome from it).
    return not (isinstance(message, Decision) and message.sender == "coordinator@coord")


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
async def test_a_branch_prepared_while_aborted_on_inquiry_is_rolled_back_after_a_crash(
    tmp_path: Path, protocol: str
) -> None:
    path_a, path_b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    create_ledger(path_a)
    create_ledger(path_b)
    transport = InProcessTransport()
    transport.fault = _no_coordinator_decisions
    slow = SlowToVote(path_a)
    b = SqliteResource(path_b, name="ledger-b", branch=move)
    resources: dict[str, SqliteResource] = {"a": slow}
    async with b, anyio.create_task_group() as tg:
        await slow.start()
        coord = Node(tg, lambda: Runtime("coord", transport=transport, wal_path=tmp_path / "c.db",
                                         timeouts=TIMEOUTS))
        node_a = Node(tg, lambda: Runtime("bank-a", transport=transport,
                                          wal_path=tmp_path / "a.db",
                                          resources={"ledger": resources["a"]}))
        node_b = Node(tg, lambda: Runtime("bank-b", transport=transport,
                                          wal_path=tmp_path / "b.db", resources={"ledger": b}))
        await node_a.start()
        await node_b.start()
        rt = await coord.start()
        # pb first: in 3PC it leads the termination round that asks pa.
        first: list[TxnOutcome] = []

        async def transfer() -> None:
            first.append(await rt.transact({"ledger@bank-b": 10, "ledger@bank-a": -10},
                                           protocol=protocol))

        tg.start_soon(transfer)
        await slow.prepared_locally.wait()
        ((txid,),) = query(path_a, "SELECT txid FROM dtxn_prepared")
        assert node_a.rt is not None and node_b.rt is not None
        pb = node_b.rt.participants["ledger"]
        if protocol == "3pc":
            await eventually(lambda: pb.finished.get(txid) is Outcome.ABORTED)
        else:
            # A 2PC participant applies only its coordinator's decision (finding 5):
            # pb stays in doubt, but its inquiry made pa abort from PREPARING.
            rt_a = node_a.rt
            await eventually(lambda: rt_a.status(txid).roles == {"ledger": "aborted"})
        # pa answered "abort" from PREPARING: its p-abort is forced, its vote not sent.
        assert node_a.rt.status(txid).roles == {"ledger": "aborted"}
        assert leftovers(path_a) == (1, 1, 1)
        await node_a.crash()  # before the vote (and so resource.abort) ever runs
        await slow.close()

        resources["a"] = SqliteResource(path_a, name="ledger-a", branch=move)
        await resources["a"].start()
        restarted = await node_a.start()
        try:
            # The recovered participant reapplies the abort the crash cut off.
            await eventually(lambda: restarted.status(txid).outcome == "aborted")
            await eventually(lambda: leftovers(path_a) == (0, 0, 0))
            if protocol == "2pc":
                # pb hears the coordinator's abort on its next inquiry.
                transport.fault = None
                await eventually(lambda: pb.finished.get(txid) is Outcome.ABORTED)
            assert balance(path_a) + balance(path_b) == 200
            transport.fault = None
            later = await rt.transact({"ledger@bank-a": -5, "ledger@bank-b": 5}, protocol=protocol)
            assert later.committed, later  # no RowLocked for ever
            await eventually(lambda: leftovers(path_a) == leftovers(path_b) == (0, 0, 0))
            assert (balance(path_a), balance(path_b)) == (95, 105)
        finally:
            await eventually(lambda: bool(first))  # the coordinator's vote timeout
            for node in (coord, node_a, node_b):
                await node.stop()
            await resources["a"].close()
        assert first[0].outcome is Outcome.ABORTED


async def test_a_participant_that_aborted_on_inquiry_aborts_its_branch_once_prepare_returns(
    tmp_path: Path,
) -> None:
    """The live path of the same race: no crash, the prepare returns late, abort follows it."""
    path_a, path_b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    create_ledger(path_a)
    create_ledger(path_b)
    transport = InProcessTransport()
    transport.fault = _no_coordinator_decisions
    slow = SlowToVote(path_a)
    b = SqliteResource(path_b, name="ledger-b", branch=move)
    async with slow, b, anyio.create_task_group() as tg:
        coord = Node(tg, lambda: Runtime("coord", transport=transport, wal_path=tmp_path / "c.db",
                                         timeouts=TIMEOUTS))
        node_a = Node(tg, lambda: Runtime("bank-a", transport=transport,
                                          wal_path=tmp_path / "a.db", resources={"ledger": slow}))
        node_b = Node(tg, lambda: Runtime("bank-b", transport=transport,
                                          wal_path=tmp_path / "b.db", resources={"ledger": b}))
        pa = (await node_a.start()).participants["ledger"]
        pb = (await node_b.start()).participants["ledger"]
        rt = await coord.start()
        first: list[TxnOutcome] = []

        async def transfer() -> None:
            first.append(await rt.transact({"ledger@bank-b": 10, "ledger@bank-a": -10}))

        tg.start_soon(transfer)
        await slow.prepared_locally.wait()
        ((txid,),) = query(path_a, "SELECT txid FROM dtxn_prepared")
        # pb's inquiry makes pa abort from PREPARING; pb itself waits for the
        # coordinator's word (a 2PC participant applies no peer's decision).
        rt_a = node_a.rt
        assert rt_a is not None
        await eventually(lambda: rt_a.status(txid).roles == {"ledger": "aborted"})
        slow.gate.set()
        await eventually(lambda: pa.finished.get(txid) is Outcome.ABORTED)
        assert leftovers(path_a) == (0, 0, 0)
        transport.fault = None
        await eventually(lambda: pb.finished.get(txid) is Outcome.ABORTED)
        assert (balance(path_a), balance(path_b)) == (100, 100)
        await eventually(lambda: bool(first))
        assert first[0].outcome is Outcome.ABORTED
        for node in (coord, node_a, node_b):
            await node.stop()


async def _write_log(path: Path, records: list[PartPrepared | PartCommitted | PartAborted]) -> None:
    async with SqliteWal(path) as store:
        for record in records:
            data = LOG_ENCODER.encode(LogEntry("ledger", record))
            await store.force(record.txid, kind_of(record), data)


def _prepared(txid: str) -> PartPrepared:
    return PartPrepared(txid, Protocol.TWO_PC, "coordinator@coord", ("ledger@bank",))


async def test_recovery_applies_to_each_marker_what_the_participants_log_says(
    tmp_path: Path,
) -> None:
    """Aborted in the log: rolled back. Committed: committed. Prepared: left in doubt.
    Unknown: rolled back (prepared before PREPARED was forced)."""
    path = tmp_path / "ledger.sqlite"
    create_ledger(path)
    with sqlite3.connect(path) as db:
        db.executescript("INSERT INTO accounts VALUES (2, 100), (3, 100), (4, 100);")
    db.close()

    def touch(tx: SqliteBranch, account: Any) -> None:
        row = tx.read("accounts", account)
        assert row is not None
        tx.update("accounts", account, {"balance": row["balance"] - 1})

    await _write_log(tmp_path / "wal.db", [
        _prepared("t-aborted"), PartAborted("t-aborted"),
        _prepared("t-committed"), PartCommitted("t-committed"),
        _prepared("t-in-doubt"),
    ])
    res = SqliteResource(path, name="ledger", branch=touch)
    async with res:
        for txid, account in (("t-aborted", 1), ("t-committed", 2), ("t-in-doubt", 3),
                              ("t-unknown", 4)):
            assert await res.prepare(txid, account) is Vote.YES
        async with Runtime("bank", wal_path=tmp_path / "wal.db", resources={"ledger": res}) as rt:
            assert await res.in_doubt_txids() == ["t-in-doubt"]
            assert rt.status("t-in-doubt").in_doubt
            assert res.orphans_rolled_back == 2
            assert await res.roll_back_orphans(rt) == []
    balances = {row[0]: row[1] for row in query(path, "SELECT id, balance FROM accounts")}
    assert balances == {1: 100, 2: 99, 3: 99, 4: 100}


async def test_a_row_locked_by_a_branch_the_log_never_voted_for_is_released_while_running(
    tmp_path: Path,
) -> None:
    """The log and the file disagree while the node runs (a branch prepared behind the
    protocol's back, or one whose abort was lost): the first transaction that finds the
    row locked past `lock_wait_s` reconciles the stale marker and goes on."""
    path = tmp_path / "ledger.sqlite"
    create_ledger(path)
    res = SqliteResource(path, name="ledger", branch=move, lock_wait_s=0.05)
    async with res, Runtime("bank", wal_path=tmp_path / "wal.db", resources={"ledger": res}) as rt:
        assert await res.prepare("t-stale", -30) is Vote.YES
        assert leftovers(path) == (1, 1, 1)
        outcome = await rt.transact({"ledger@bank": -10})
        assert outcome.committed, outcome
        assert res.stale_locks_released == 1
        await eventually(lambda: leftovers(path) == (0, 0, 0))  # its commit follows
        assert balance(path) == 90  # the stale branch's -30 was undone, not kept


async def test_a_row_locked_by_a_branch_the_protocol_still_holds_stays_locked(
    tmp_path: Path,
) -> None:
    """A lock whose txid is in doubt in the log is the protocol's: never released by a
    later transaction, which votes no with `RowLocked` as before."""
    path = tmp_path / "ledger.sqlite"
    create_ledger(path)
    await _write_log(tmp_path / "wal.db", [_prepared("t-in-doubt")])
    res = SqliteResource(path, name="ledger", branch=move, lock_wait_s=0.05)
    async with res:
        assert await res.prepare("t-in-doubt", -30) is Vote.YES
        async with Runtime(
            "bank", wal_path=tmp_path / "wal.db", resources={"ledger": res}
        ) as rt:
            outcome = await rt.transact({"ledger@bank": -10})
            assert not outcome.committed
            assert "RowLocked" in str(outcome.reason), outcome
            assert res.stale_locks_released == 0
            assert await res.in_doubt_txids() == ["t-in-doubt"]
    assert balance(path) == 70
