"""PostgresResource against a real private PostgreSQL server: 2PC across two databases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg  # type: ignore[import-untyped]
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Timeouts, Vote
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.clock import Clock
from dtxn.runtime.resources.postgres import PostgresResource
from nodes import Node
from pg_cluster import PgCluster, pg_cluster

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}
_clock = Clock()


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    with pg_cluster() as pg:
        pg.createdb("bank_a")
        pg.createdb("bank_b")
        yield pg


async def _reset(dsn: str, balance: int = 100) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS accounts;"
            " CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0))"
        )
        await conn.execute("INSERT INTO accounts VALUES (1, $1)", balance)
    finally:
        await conn.close()


async def _balance(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT balance FROM accounts WHERE id = 1"))
    finally:
        await conn.close()


async def _prepared(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return [str(r["gid"]) for r in await conn.fetch("SELECT gid FROM pg_prepared_xacts")]
    finally:
        await conn.close()


async def move(conn: Any, amount: Any) -> None:
    await conn.execute("UPDATE accounts SET balance = balance + $1 WHERE id = 1", int(amount))


async def _until_empty(resource: PostgresResource, within_s: float = 10.0) -> None:
    waited = 0.0
    while await resource.in_doubt_gids():
        if waited >= within_s:
            raise AssertionError(f"{resource.name}: still prepared after {within_s}s")
        await _clock.sleep(0.02)
        waited += 0.02


class PgBank:
    """Coordinator plus two participant nodes whose resources are databases bank_a and bank_b."""

    def __init__(self, tmp: Path, tg: anyio.abc.TaskGroup, pg: PgCluster) -> None:
        self.pg = pg
        self.transport = InProcessTransport(encode=True)
        self.a = PostgresResource(pg.dsn("bank_a"), name="ledger@bank-a", branch=move)
        self.b = PostgresResource(pg.dsn("bank_b"), name="ledger@bank-b", branch=move)
        self.coord = Node(tg, lambda: Runtime("coord", transport=self.transport,
                                              wal_path=tmp / "coord.db", timeouts=FAST))
        self.node_a = Node(tg, lambda: Runtime("bank-a", transport=self.transport,
                                               wal_path=tmp / "a.db",
                                               resources={"ledger": self.a}))
        self.node_b = Node(tg, lambda: Runtime("bank-b", transport=self.transport,
                                               wal_path=tmp / "b.db",
                                               resources={"ledger": self.b}))

    async def start(self) -> Runtime:
        await _reset(self.pg.dsn("bank_a"))
        await _reset(self.pg.dsn("bank_b"))
        await self.a.start()
        await self.b.start()
        await self.node_a.start()
        await self.node_b.start()
        return await self.coord.start()

    async def stop(self) -> None:
        for node in (self.coord, self.node_a, self.node_b):
            await node.stop()
        await self.a.close()
        await self.b.close()

    async def balances(self) -> tuple[int, int]:
        return await _balance(self.pg.dsn("bank_a")), await _balance(self.pg.dsn("bank_b"))


@asynccontextmanager
async def running(
    tmp: Path, pg: PgCluster
) -> AsyncIterator[tuple[anyio.abc.TaskGroup, PgBank, Runtime]]:
    """Start the bank; stop it on the way out, and on a failure cancel whatever still runs."""
    async with anyio.create_task_group() as tg:
        bank = PgBank(tmp, tg, pg)
        try:
            coord = await bank.start()
            yield tg, bank, coord
            await bank.stop()
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True):
                await bank.a.close()
                await bank.b.close()


async def test_a_transfer_between_two_databases_commits_at_both(
    tmp_path: Path, cluster: PgCluster
) -> None:
    async with running(tmp_path, cluster) as (_tg, bank, coord):
        for _ in range(3):
            outcome = await coord.transact(TRANSFER)
            assert outcome.committed, outcome
        await _until_empty(bank.a)
        await _until_empty(bank.b)
        assert await bank.balances() == (70, 130)


async def test_a_branch_that_breaks_a_check_constraint_votes_no_and_leaves_nothing_prepared(
    tmp_path: Path, cluster: PgCluster
) -> None:
    async with running(tmp_path, cluster) as (_tg, bank, coord):
        outcome = await coord.transact({"ledger@bank-a": -1000, "ledger@bank-b": 1000})
        assert outcome.outcome is Outcome.ABORTED
        assert "bank-a" in outcome.reason, outcome.reason
        await _until_empty(bank.b)
        assert await bank.a.in_doubt_gids() == []
        assert await bank.balances() == (100, 100)


async def test_a_participant_crash_after_prepare_transaction_is_resolved_after_restart(
    tmp_path: Path, cluster: PgCluster
) -> None:
    async with running(tmp_path, cluster) as (tg, bank, coord):
        crashed = anyio.Event()
        armed = [True]

        async def crash_a() -> None:
            await bank.node_a.crash()
            crashed.set()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # The first forced record at A is PREPARED, written after PREPARE TRANSACTION.
            if what == "forced" and armed[0]:
                armed[0] = False
                assert bank.node_a.rt is not None
                bank.node_a.rt.crash()  # the yes vote never leaves
                tg.start_soon(crash_a)

        assert bank.node_a.rt is not None
        bank.node_a.rt.on_trace(on_trace)
        outcome = await coord.transact(TRANSFER)
        await crashed.wait()
        # The branch outlived the crash on the server, waiting for a decision.
        assert await bank.a.in_doubt_gids() == [bank.a.gid(outcome.txid)]
        restarted = await bank.node_a.start()
        assert await bank.a.roll_back_orphans(restarted) == []  # recovery knows this txid
        await _until_empty(bank.a)
        await _until_empty(bank.b)
        assert outcome.outcome is Outcome.ABORTED  # the coordinator timed out on A's vote
        assert await bank.balances() == (100, 100)
        assert await _prepared(cluster.dsn()) == []


async def test_a_gid_prepared_just_before_a_crash_that_the_wal_never_saw_is_rolled_back(
    tmp_path: Path, cluster: PgCluster
) -> None:
    async with running(tmp_path, cluster) as (_tg, bank, _coord):
        # As if the process died between PREPARE TRANSACTION and forcing PREPARED.
        assert await bank.a.prepare("coord-lost-1", -50) is Vote.YES
        assert bank.node_a.rt is not None
        gid = bank.a.gid("coord-lost-1")
        assert await bank.a.roll_back_orphans(bank.node_a.rt) == [gid]
        assert await bank.a.in_doubt_gids() == []
        assert await bank.balances() == (100, 100)


async def test_a_restart_rolls_back_an_orphaned_gid_by_itself(
    tmp_path: Path, cluster: PgCluster
) -> None:
    async with running(tmp_path, cluster) as (_tg, bank, _coord):
        # Prepared, then the process dies before PREPARED reaches the WAL.
        assert await bank.a.prepare("coord-lost-2", -50) is Vote.YES
        await bank.node_a.crash()
        assert await bank.a.in_doubt_gids() == [bank.a.gid("coord-lost-2")]
        await bank.node_a.start()  # Runtime start calls bank.a.recover(runtime)
        assert await bank.a.in_doubt_gids() == []
        assert await bank.balances() == (100, 100)


async def test_duplicate_commits_and_aborts_are_harmless(cluster: PgCluster) -> None:
    dsn = cluster.dsn("bank_a")
    await _reset(dsn)
    async with PostgresResource(dsn, name="dup", branch=move) as res:
        assert await res.prepare("t1", 5) is Vote.YES
        assert await res.in_doubt_gids() == ["dtxn:dup:t1"]
        await res.commit("t1")
        await res.commit("t1")
        assert await res.prepare("t2", 7) is Vote.YES
        await res.abort("t2")
        await res.abort("t2")
        await res.abort("never-prepared")
        assert await res.in_doubt_gids() == []
    assert await _balance(dsn) == 105


async def test_a_txid_with_a_quote_is_a_safe_gid_literal(cluster: PgCluster) -> None:
    dsn = cluster.dsn("bank_a")
    await _reset(dsn)
    async with PostgresResource(dsn, name="quote", branch=move) as res:
        txid = "o'brien'; ROLLBACK PREPARED 'x"
        assert await res.prepare(txid, 1) is Vote.YES
        (gid,) = await res.in_doubt_gids()
        assert res.txid_of(gid) == txid
        await res.commit(txid)
        assert await res.in_doubt_gids() == []
    assert await _balance(dsn) == 101


def test_a_bad_resource_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="name"):
        PostgresResource("postgresql://x", name="it's", branch=move)


@pytest.fixture(scope="module")
def cluster_without_2pc() -> Iterator[PgCluster]:
    with pg_cluster(max_prepared_transactions=0) as pg:
        yield pg


async def test_a_server_without_prepared_transactions_is_a_clear_error_at_start(
    cluster_without_2pc: PgCluster,
) -> None:
    res = PostgresResource(cluster_without_2pc.dsn(), name="off", branch=move)
    with pytest.raises(ConfigError, match="max_prepared_transactions = 0"):
        async with res:
            pass
