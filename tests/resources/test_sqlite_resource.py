"""SqliteResource over real SQLite files: 2PC across two files, crashes, kill -9, locks, undo."""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Timeouts, Vote
from dtxn.protocols.records import CoordCommitted
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.resources.sqlite import (
    RowLocked,
    SqliteBranch,
    SqliteResource,
    SqliteResourceError,
    UndoCorrupt,
    pending_txid,
)
from nodes import Ledger, Node, eventually

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
PATIENT = Timeouts(votes_s=30.0, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}


def _create(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL,"
            " note TEXT, rate REAL, data BLOB);"
            "INSERT INTO accounts VALUES (1, 100, 'first', 0.5, x'00ff'),"
            " (2, 50, NULL, NULL, NULL);"
            "CREATE TABLE holds (owner TEXT, item INTEGER, qty INTEGER,"
            " PRIMARY KEY (owner, item)) WITHOUT ROWID;"
            "INSERT INTO holds VALUES ('ann', 1, 3);"
        )
    db.close()


def _query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(row) for row in db.execute(sql, params)]
    finally:
        db.close()


def _dump(path: Path) -> list[tuple[tuple[str, Any], ...]]:
    """Every business row with each value's type: restoring 0.5 as '0.5' would show."""
    rows = _query(path, "SELECT * FROM accounts ORDER BY id") + _query(
        path, "SELECT * FROM holds ORDER BY owner, item"
    )
    return [tuple((type(v).__name__, v) for v in row) for row in rows]


def _balance(path: Path, account: int = 1) -> int:
    ((balance,),) = _query(path, "SELECT balance FROM accounts WHERE id = ?", (account,))
    return int(balance)


def _leftovers(path: Path) -> tuple[int, int, int]:
    """(markers, undo rows, locks) left in the file."""
    counts = [
        _query(path, f"SELECT count(*) FROM {table}")[0][0]
        for table in ("dtxn_prepared", "dtxn_undo", "dtxn_locks")
    ]
    return counts[0], counts[1], counts[2]


def move(tx: SqliteBranch, amount: Any) -> None:
    row = tx.read("accounts", 1)
    assert row is not None
    balance = row["balance"] + int(amount)
    if balance < 0:
        raise ValueError(f"insufficient funds: {row['balance']} < {-int(amount)}")
    tx.update("accounts", 1, {"balance": balance})


def look(tx: SqliteBranch, payload: Any) -> None:
    tx.read("accounts", 1)


def many(tx: SqliteBranch, payload: Any) -> None:
    """Every kind of write, on values of every storage class."""
    tx.update("accounts", 1, {"balance": 7, "note": None, "rate": 2.25, "data": b"\x01"})
    tx.update("accounts", 1, {"note": "twice"})  # the same row again: undo goes newest first
    tx.delete("accounts", 2)
    tx.insert("accounts", {"id": 9, "balance": 1, "note": "new"})
    tx.insert("accounts", {"balance": 2})  # a generated rowid
    tx.update("holds", ("ann", 1), {"qty": 0})
    tx.insert("holds", {"owner": "bob", "item": 2, "qty": 5})


async def _until_settled(*paths: Path) -> None:
    await eventually(lambda: all(_leftovers(p) == (0, 0, 0) for p in paths))


def _finished(node: Node, txid: str) -> bool:
    """Whether the ledger participant of `node` has applied its decision for `txid`."""
    assert node.rt is not None
    return txid in node.rt.participants["ledger"].finished


class Bank:
    """A coordinator and two participant nodes whose ledgers are SQLite files a.db and b.db."""

    def __init__(self, tmp: Path, tg: anyio.abc.TaskGroup) -> None:
        self.tmp = tmp
        self.transport = InProcessTransport(encode=True)
        self.path_a, self.path_b = tmp / "bank-a.sqlite", tmp / "bank-b.sqlite"
        _create(self.path_a)
        _create(self.path_b)
        self.a = SqliteResource(self.path_a, name="ledger-a", branch=move)
        self.b = SqliteResource(self.path_b, name="ledger-b", branch=move)
        self.gate = Ledger()
        self.coord = Node(tg, lambda: Runtime("coord", transport=self.transport,
                                              wal_path=tmp / "coord.db", timeouts=FAST))
        # The factories read self.a / self.b when called: a restart can bring a new object.
        self.node_a = Node(tg, lambda: Runtime("bank-a", transport=self.transport,
                                               wal_path=tmp / "a.db",
                                               resources={"ledger": self.a, "gate": self.gate}))
        self.node_b = Node(tg, lambda: Runtime("bank-b", transport=self.transport,
                                               wal_path=tmp / "b.db",
                                               resources={"ledger": self.b}))

    async def start(self) -> Runtime:
        await self.a.start()
        await self.b.start()
        await self.node_a.start()
        await self.node_b.start()
        return await self.coord.start()

    async def reopen_a(self) -> Runtime:
        """Restart bank-a with a NEW resource object on the same file, as a new process would."""
        old, self.a = self.a, SqliteResource(self.path_a, name="ledger-a", branch=move)
        await old.close()
        await self.a.start()
        return await self.node_a.start()

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()


@asynccontextmanager
async def running(tmp: Path) -> AsyncIterator[tuple[anyio.abc.TaskGroup, Bank, Runtime]]:
    async with anyio.create_task_group() as tg:
        bank = Bank(tmp, tg)
        try:
            coord = await bank.start()
            yield tg, bank, coord
            for node in (bank.coord, bank.node_a, bank.node_b):
                await node.stop()
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await bank.close()


async def test_a_transfer_between_two_sqlite_files_commits_at_both(tmp_path: Path) -> None:
    async with running(tmp_path) as (_tg, bank, coord):
        for _ in range(3):
            outcome = await coord.transact(TRANSFER)
            assert outcome.committed, outcome
        await _until_settled(bank.path_a, bank.path_b)
        assert (_balance(bank.path_a), _balance(bank.path_b)) == (70, 130)


async def test_a_branch_that_raises_votes_no_with_its_reason_and_leaves_nothing_prepared(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (_tg, bank, coord):
        before = _dump(bank.path_a)
        outcome = await coord.transact({"ledger@bank-a": -1000, "ledger@bank-b": 1000})
        assert outcome.outcome is Outcome.ABORTED
        assert "insufficient funds" in outcome.reason, outcome.reason
        # B may still be preparing when the outcome returns; its abort then follows.
        await eventually(lambda: _finished(bank.node_b, outcome.txid))
        await _until_settled(bank.path_a, bank.path_b)
        assert _dump(bank.path_a) == before
        assert _balance(bank.path_b) == 100


async def test_a_participant_crash_after_prepared_ends_aborted_after_a_restart(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (tg, bank, coord):
        crashed = anyio.Event()
        armed = [True]

        async def crash_a() -> None:
            await bank.node_a.crash()
            crashed.set()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # A's first forced record is PREPARED, written after prepare's local commit.
            if what == "forced" and armed[0]:
                armed[0] = False
                assert bank.node_a.rt is not None
                bank.node_a.rt.crash()  # the YES vote never leaves
                tg.start_soon(crash_a)

        assert bank.node_a.rt is not None
        bank.node_a.rt.on_trace(on_trace)
        outcome = await coord.transact(TRANSFER)
        await crashed.wait()
        assert await bank.a.in_doubt_txids() == [outcome.txid]
        assert _balance(bank.path_a) == 90  # the prepared value is in the file
        restarted = await bank.reopen_a()
        assert await bank.a.roll_back_orphans(restarted) == []  # recovery knows this txid
        await eventually(lambda: _finished(bank.node_b, outcome.txid))
        await _until_settled(bank.path_a, bank.path_b)
        assert outcome.outcome is Outcome.ABORTED  # the coordinator timed out on A's vote
        assert (_balance(bank.path_a), _balance(bank.path_b)) == (100, 100)


async def test_a_participant_crash_after_voting_yes_ends_committed_after_a_restart(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (tg, bank, coord):
        crashed = anyio.Event()

        async def crash_a() -> None:
            await bank.node_a.crash()
            crashed.set()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # The coordinator has every YES and forced COMMIT: A dies before hearing it.
            if what == "forced" and isinstance(detail, CoordCommitted) and not crashed.is_set():
                assert bank.node_a.rt is not None
                bank.node_a.rt.crash()
                tg.start_soon(crash_a)

        assert bank.coord.rt is not None
        bank.coord.rt.on_trace(on_trace)
        outcome = await coord.transact(TRANSFER)
        assert outcome.committed, outcome
        await crashed.wait()
        bank.coord.rt.off_trace(on_trace)
        assert await bank.a.in_doubt_txids() == [outcome.txid]
        await bank.reopen_a()
        await _until_settled(bank.path_a, bank.path_b)
        assert (_balance(bank.path_a), _balance(bank.path_b)) == (90, 110)


HERE = Path(__file__).resolve()

KILLED_PREPARE = """
import asyncio, sys
from dtxn.runtime.resources.sqlite import SqliteResource
from test_sqlite_resource import many

async def main() -> None:
    res = SqliteResource(sys.argv[1], name="ledger", branch=many)
    await res.start()
    vote = await res.prepare(sys.argv[2], None)
    print(vote.value, flush=True)
    sys.stdin.read()  # hold everything open until SIGKILL

asyncio.run(main())
"""


@pytest.mark.parametrize("decision", ["abort", "commit"])
async def test_a_prepare_outlives_kill_9_and_its_decision_is_applied_exactly(
    tmp_path: Path, decision: str
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    before = _dump(path)
    here = HERE
    tests_dir = os.pathsep.join([str(here.parent), str(here.parents[1])])
    async with await anyio.open_process(
        [sys.executable, "-c", KILLED_PREPARE, str(path), "killed-1"],
        env={**os.environ, "PYTHONPATH": tests_dir},
    ) as process:
        assert process.stdout is not None
        with anyio.fail_after(60):
            said = await process.stdout.receive()
        assert said.strip() == b"yes", said
        process.kill()
        assert await process.wait() == -9
    prepared = _dump(path)
    assert prepared != before
    async with SqliteResource(path, name="ledger", branch=many) as res:
        assert await res.in_doubt_txids() == ["killed-1"]
        assert await res.locked_by("accounts", 1) == "killed-1"
        if decision == "abort":
            await res.abort("killed-1")
            assert _dump(path) == before
        else:
            await res.commit("killed-1")
            assert _dump(path) == prepared
            assert _balance(path) == 7
        assert await res.in_doubt_txids() == []
        assert await res.locked_by("accounts", 1) is None
    assert _leftovers(path) == (0, 0, 0)


async def test_the_file_is_opened_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    async with SqliteResource(tmp_path / "new.sqlite", name="sync", branch=move) as res:
        assert await res.settings() == {"journal_mode": "wal", "synchronous": "FULL"}


async def test_duplicate_and_unknown_decisions_are_no_ops(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="dup", branch=move) as res:
        assert await res.prepare("t1", 5) is Vote.YES
        await res.commit("t1")
        await res.commit("t1")
        await res.abort("t1")  # a late abort for a committed txid finds no marker
        assert await res.prepare("t2", 7) is Vote.YES
        await res.abort("t2")
        await res.abort("t2")
        with pytest.raises(ValueError, match="insufficient funds"):
            await res.prepare("t3", -1000)
        await res.abort("t3")  # NO-voted: nothing to undo
        await res.commit("never-prepared")
        await res.abort("never-prepared")
        assert await res.in_doubt_txids() == []
    assert _balance(path) == 105
    assert _leftovers(path) == (0, 0, 0)


async def test_a_redelivered_prepare_does_not_run_the_branch_twice(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="redo", branch=move) as res:
        assert await res.prepare("t1", 5) is Vote.YES
        assert await res.prepare("t1", 5) is Vote.YES
        await res.abort("t1")
    assert _balance(path) == 100


async def test_a_branch_that_writes_nothing_is_read_only_and_leaves_no_marker(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="ro", branch=look) as res:
        assert await res.prepare("t1", None) is Vote.READ_ONLY
        assert await res.in_doubt_txids() == []
    assert _leftovers(path) == (0, 0, 0)


async def test_a_second_transaction_on_a_prepared_row_votes_no_naming_the_holder(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as (tg, bank, coord):
        bank.gate.gate = anyio.Event()  # holds the first transaction between its votes
        first: list[Any] = []

        async def hold() -> None:
            first.append(await coord.transact(
                {"ledger@bank-a": -10, "gate@bank-a": 0}, txid="first-txn", timeouts=PATIENT
            ))

        tg.start_soon(hold)
        await eventually(lambda: _leftovers(bank.path_a)[0] == 1)
        bank.a.lock_wait_s = 0  # refuse at once: the vote timeout here is shorter than LOCK_WAIT_S
        second = await coord.transact({"ledger@bank-a": -5})
        assert second.outcome is Outcome.ABORTED
        assert "first-txn" in second.reason and "locked" in second.reason, second.reason
        assert bank.a.lock_conflicts == 1
        bank.gate.gate.set()
        await eventually(lambda: bool(first))
        assert first[0].committed, first[0]
        await _until_settled(bank.path_a)
        third = await coord.transact({"ledger@bank-a": -5})  # the row is free again
        assert third.committed, third
        await _until_settled(bank.path_a)
        assert _balance(bank.path_a) == 85


async def test_readers_outside_dtxn_can_see_that_a_row_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="seen", branch=many) as res:
        await res.prepare("t1", None)
        db = sqlite3.connect(path)
        try:
            assert _balance(path) == 7  # outside dtxn, the prepared value is what one reads
            # Keys are compared as SQLite stores them: 1, 1.0 and '1' are one row.
            assert [pending_txid(db, "accounts", k) for k in (1, 1.0, "1")] == ["t1"] * 3
            assert pending_txid(db, "accounts", 2) == "t1"  # deleted, but not yet for good
            assert pending_txid(db, "holds", ["ann", 1]) == "t1"
            assert pending_txid(db, "holds", ["ann", 2]) is None
            # Another resource on the same file respects the same locks.
            async with SqliteResource(path, name="other", branch=move, lock_wait_s=0) as other:
                with pytest.raises(RowLocked, match="'t1'") as locked:
                    await other.prepare("t2", 1)
                assert locked.value.holder == "t1"
            await res.commit("t1")
            assert pending_txid(db, "accounts", 1) is None
        finally:
            db.close()


async def test_with_lock_wait_s_a_prepare_waits_for_the_holder_and_a_decision_waits_for_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="wait", branch=move, lock_wait_s=10.0) as res:
        assert await res.prepare("holder", -10) is Vote.YES
        votes: list[Vote] = []
        async with anyio.create_task_group() as tg:

            async def second() -> None:
                votes.append(await res.prepare("waiter", -5))

            tg.start_soon(second)
            await eventually(lambda: res.lock_conflicts >= 1)
            # An abort for the waiter arrives while its prepare is still waiting: it
            # must not find "no marker" and return, leaving the later prepare behind.
            aborted = anyio.Event()

            async def abort_waiter() -> None:
                await res.abort("waiter")
                aborted.set()

            tg.start_soon(abort_waiter)
            for _ in range(3):
                await res.in_doubt_txids()  # queued behind the abort's trip, if it made one
            assert not aborted.is_set()
            await res.commit("holder")
        assert votes == [Vote.YES]
        assert await res.in_doubt_txids() == []
    assert _balance(path) == 90


async def test_an_orphan_marker_is_rolled_back_when_the_runtime_starts(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="orphan", branch=move) as res:
        # As if the process died between prepare's local commit and forcing PREPARED.
        assert await res.prepare("lost-1", -50) is Vote.YES
        async with Runtime("bank", wal_path=tmp_path / "wal.db", resources={"ledger": res}) as rt:
            assert await res.in_doubt_txids() == []  # recover() ran at start
            assert res.orphans_rolled_back == 1
            assert await res.roll_back_orphans(rt) == []
    assert _balance(path) == 100
    assert _leftovers(path) == (0, 0, 0)


async def test_a_marker_its_participant_never_saw_is_an_orphan_even_if_the_node_knows_the_txid(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    gate = Ledger()
    res = SqliteResource(path, name="orphan", branch=move)
    wal = tmp_path / "wal.db"
    async with res, Runtime("bank", wal_path=wal, resources={"ledger": res, "gate": gate}) as rt:
        assert await res.prepare("shared-1", -50) is Vote.YES
        # The node's coordinator (and another participant) know "shared-1"; the
        # ledger's participant does not, so its marker never backed a YES vote.
        outcome = await rt.transact({"gate@bank": 0}, txid="shared-1")
        assert outcome.committed, outcome
        assert "ledger" not in rt.status("shared-1").roles
        assert await res.roll_back_orphans(rt) == ["shared-1"]
    assert _balance(path) == 100


@pytest.mark.parametrize(
    ("column", "garbage"),
    [("image", b"\xc1not msgpack"), ("op", "explode"), ("key", b"\x92\x01\x02"),
     ("tbl", "no_such_table")],
)
async def test_a_corrupt_undo_row_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, column: str, garbage: Any
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="bad", branch=many) as res:
        await res.prepare("t1", None)
        with sqlite3.connect(path) as db:
            db.execute(f"UPDATE dtxn_undo SET {column} = ? WHERE seq = 3", (garbage,))
        db.close()
        prepared, state = _dump(path), _leftovers(path)
        with pytest.raises(UndoCorrupt, match=r"'t1'.*seq=3"):
            await res.abort("t1")
        assert (_dump(path), _leftovers(path)) == (prepared, state)
        assert await res.in_doubt_txids() == ["t1"]
        await res.commit("t1")  # commit needs no undo image
    assert _leftovers(path) == (0, 0, 0)


def raw_update(tx: SqliteBranch, payload: Any) -> None:
    tx.conn.execute("UPDATE accounts SET balance = 0 WHERE id = 1")


def raw_commit(tx: SqliteBranch, payload: Any) -> None:
    tx.update("accounts", 1, {"balance": 1})
    tx.conn.commit()


def swallowed(tx: SqliteBranch, payload: Any) -> None:
    with suppress(sqlite3.DatabaseError):
        tx.conn.execute("DELETE FROM accounts")


def replays_internal_sql(tx: SqliteBranch, payload: Any) -> None:
    tx.update("accounts", 1, {"balance": 5})
    # The very text tx.update compiled is cached, so SQLite does not ask the
    # authorizer again: the count of changed rows still catches the write.
    tx.conn.execute('UPDATE "accounts" SET "balance" = ? WHERE "id" = ?', (0, 2))


def bad_table(tx: SqliteBranch, payload: Any) -> None:
    tx.update("accounts; DROP TABLE accounts", 1, {"balance": 1})


def bad_column(tx: SqliteBranch, payload: Any) -> None:
    tx.update("accounts", 1, {'balance" = 0 --': 1})


def moves_a_key(tx: SqliteBranch, payload: Any) -> None:
    tx.update("accounts", 1, {"id": 5})


@pytest.mark.parametrize(
    ("branch", "message"),
    [
        (raw_update, "tried UPDATE accounts through tx.conn"),
        (raw_commit, "tried transaction control COMMIT"),
        (swallowed, "tried DELETE from accounts"),
        (replays_internal_sql, "changed 1 row"),
        (bad_table, "is not an identifier"),
        (bad_column, "is not an identifier"),
        (moves_a_key, "changes primary key"),
    ],
)
async def test_a_branch_misusing_the_row_api_is_refused_and_changes_nothing(
    tmp_path: Path, branch: Any, message: str
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    before = _dump(path)
    async with SqliteResource(path, name="misuse", branch=branch) as res:
        with pytest.raises(SqliteResourceError, match=message):
            await res.prepare("t1", None)
    assert _dump(path) == before
    assert _leftovers(path) == (0, 0, 0)


async def test_an_unfit_txid_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    async with SqliteResource(path, name="txid", branch=move) as res:
        for txid in ("", "a\x00b", "x" * 300):
            with pytest.raises(SqliteResourceError, match="unfit"):
                await res.prepare(txid, 1)
    assert _balance(path) == 100


async def test_a_resource_that_is_not_started_says_so(tmp_path: Path) -> None:
    res = SqliteResource(tmp_path / "x.sqlite", name="cold", branch=move)
    with pytest.raises(SqliteResourceError, match="not started"):
        await res.commit("t1")


async def _async_branch(tx: SqliteBranch, payload: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "it's"}, "name"),
        ({"path": ":memory:"}, "database file"),
        ({"branch": _async_branch}, "not async"),
        ({"lock_wait_s": -1}, "lock_wait_s"),
    ],
)
def test_bad_configuration_is_a_config_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"path": tmp_path / "x.sqlite", "name": "ok", "branch": move, **kwargs}
    with pytest.raises(ConfigError, match=message):
        SqliteResource(args.pop("path"), **args)


async def test_the_branch_runs_on_the_connection_thread_not_the_event_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ledger.sqlite"
    _create(path)
    seen: list[int] = []

    def record(tx: SqliteBranch, payload: Any) -> None:
        seen.append(threading.get_ident())
        move(tx, payload)

    async with SqliteResource(path, name="thread", branch=record) as res:
        await res.prepare("t1", 1)
        await res.commit("t1")
    assert seen and seen[0] != threading.get_ident()
    assert _balance(path) == 101
