"""A WAL that cannot be written: callers get `WalError`, the node stops, siblings go on.

Finding 3 of issue 14. Every failure here is SQLite's own: "database or disk
is full" (`PRAGMA max_page_count` on the store's connection) or "database is
locked" (another connection holds the write lock on the WAL file), never a mock.
"""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from dtxn.runtime import Runtime
from dtxn.runtime.cli.node import start_process, submit
from dtxn.runtime.servers import nats_available, nats_server
from dtxn.runtime.transport import InProcessTransport
from dtxn.runtime.transport.nats import NatsTransport
from dtxn.runtime.wal import SqliteWal, WalError, on_sqlite_thread
from nodes import Ledger, eventually

pytestmark = pytest.mark.anyio

BOUND_S = 20.0


async def fill_disk(wal: SqliteWal) -> None:
    """Let the WAL file grow by no page more: SQLite then reports "database or disk is full"."""
    conn, db = wal._connection()

    def cap() -> None:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        db.execute(f"PRAGMA max_page_count = {pages}")

    await on_sqlite_thread(conn, cap)


@contextmanager
def foreign_write_lock(path: Path) -> Iterator[None]:
    """Another connection holds the write lock on `path` (a misconfigured second writer)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def sqlite_wal(path: Path) -> SqliteWal:
    return SqliteWal(path, busy_timeout_ms=50)


async def transfer_until_the_wal_fails(coord: Runtime, pid: str) -> WalError:
    """Run transactions until one raises; it must be a WalError, and none may hang."""
    while True:
        with anyio.fail_after(BOUND_S):
            try:
                outcome = await coord.transact({pid: 1})
            except WalError as exc:
                return exc
        assert outcome.committed, outcome


@pytest.mark.parametrize("failing", ["outer", "inner"])
async def test_a_runtime_whose_wal_fills_up_ends_the_block_with_wal_error_not_a_hang(
    tmp_path: Path, failing: str
) -> None:
    transport = InProcessTransport()
    ledger = Ledger()
    outer_wal, inner_wal = sqlite_wal(tmp_path / "outer.wal"), sqlite_wal(tmp_path / "inner.wal")
    # The coordinator is the runtime whose WAL fails: its decisions are forced.
    coord_is_outer = failing == "outer"
    outer_kwargs = {} if coord_is_outer else {"resources": {"ledger": ledger}}
    inner_kwargs = {"resources": {"ledger": ledger}} if coord_is_outer else {}
    raised: list[BaseException] = []
    with anyio.fail_after(BOUND_S):
        try:
            async with (
                Runtime("outer", transport=transport, wal=outer_wal, **outer_kwargs) as outer,
                Runtime("inner", transport=transport, wal=inner_wal, **inner_kwargs) as inner,
            ):
                coord, bank, failing_wal = (
                    (outer, "inner", outer_wal) if coord_is_outer else (inner, "outer", inner_wal)
                )
                assert (await coord.transact({f"ledger@{bank}": 1})).committed
                await fill_disk(failing_wal)
                error = await transfer_until_the_wal_fails(coord, f"ledger@{bank}")
                assert str(failing_wal.path) in str(error)
                assert "full" in str(error)
                raise error
        except BaseException as exc:  # noqa: BLE001 - inspected below
            raised.append(exc)
    [exc] = raised
    assert isinstance(exc, WalError), repr(exc)
    assert str(failing_wal.path) in str(exc) and "full" in str(exc)


async def test_a_sibling_runtime_keeps_working_after_the_other_one_stopped_on_its_wal(
    tmp_path: Path,
) -> None:
    transport = InProcessTransport()
    ledger = Ledger()
    coord_wal = sqlite_wal(tmp_path / "coord.wal")
    with anyio.fail_after(BOUND_S):
        async with Runtime("bank", transport=transport, resources={"ledger": ledger}):
            with pytest.raises(WalError, match="full"):
                async with Runtime("coord", transport=transport, wal=coord_wal) as coord:
                    assert (await coord.transact({"ledger@bank": 1})).committed
                    await fill_disk(coord_wal)
                    await transfer_until_the_wal_fails(coord, "ledger@bank")
                    # The stopped runtime refuses new work with the same cause.
                    with pytest.raises(WalError, match="full"):
                        await coord.transact({"ledger@bank": 1})
            # The sibling still runs transactions of its own.
            async with Runtime("coord2", transport=transport) as coord2:
                assert (await coord2.transact({"ledger@bank": 1})).committed


async def test_a_coordinator_whose_wal_is_locked_from_the_start_raises_wal_error_commits_nothing(
    tmp_path: Path,
) -> None:
    transport = InProcessTransport()
    ledger = Ledger()
    path = tmp_path / "coord.wal"
    async with sqlite_wal(path):
        pass  # the file exists, with its schema
    raised: list[BaseException] = []
    with anyio.fail_after(BOUND_S):
        async with Runtime("bank", transport=transport, resources={"ledger": ledger}):
            with foreign_write_lock(path):
                try:
                    async with Runtime("coord", transport=transport, wal=sqlite_wal(path)) as coord:
                        try:
                            await coord.transact({"ledger@bank": 1})
                        except BaseException as exc:
                            raised.append(exc)
                            raise
                except WalError as exc:
                    raised.append(exc)
    assert len(raised) == 2, raised
    for exc in raised:
        assert isinstance(exc, WalError), repr(exc)
        assert str(path) in str(exc) and "locked" in str(exc)
    assert ledger.committed == []


async def test_an_in_flight_transaction_whose_decision_cannot_be_forced_gets_wal_error(
    tmp_path: Path,
) -> None:
    transport = InProcessTransport()
    ledger = Ledger()
    ledger.gate = anyio.Event()
    path = tmp_path / "coord.wal"
    outcomes: list[object] = []
    with anyio.fail_after(BOUND_S):
        async with Runtime("bank", transport=transport, resources={"ledger": ledger}):
            with pytest.raises(WalError, match="locked"):
                async with (
                    Runtime("coord", transport=transport, wal=sqlite_wal(path)) as coord,
                    anyio.create_task_group() as tg,
                ):

                    async def run() -> None:
                        try:
                            outcomes.append(await coord.transact({"ledger@bank": 1}))
                        except BaseException as exc:
                            outcomes.append(exc)
                            raise

                    tg.start_soon(run)
                    with foreign_write_lock(path):
                        # The vote comes only now: the decision's force meets the lock.
                        ledger.gate.set()
                        await eventually(lambda: bool(outcomes), within_s=BOUND_S)
    [got] = outcomes
    assert isinstance(got, WalError), repr(got)
    assert str(path) in str(got)
    assert ledger.committed == []


NODE_CONFIG = """
[node]
name = "shop"
wal = "shop.wal"

[nats]
servers = ["{url}"]

[timeouts]
votes_s = 2.0

[gateway]
enabled = true

[[resources]]
name = "stock"
kind = "python"
factory = "shopres:make"
"""

RESOURCE_MODULE = '''
from dtxn.protocols.messages import Vote


class Stock:
    async def prepare(self, txid, payload):
        return Vote.YES

    async def commit(self, txid):
        pass

    async def abort(self, txid):
        pass


def make():
    return Stock()
'''


@pytest.mark.skipif(not nats_available(), reason="needs nats-server")
async def test_dtxn_node_exits_non_zero_when_its_wal_cannot_be_written(tmp_path: Path) -> None:
    async with nats_server() as server:
        config = tmp_path / "node.toml"
        config.write_text(NODE_CONFIG.format(url=server.url))
        (tmp_path / "shopres.py").write_text(RESOURCE_MODULE)
        log = tmp_path / "node.log"
        process = await start_process(config, log)
        try:
            async with NatsTransport(server.url) as client:
                first = await submit(client, "shop", {"stock@shop": 1}, client="web")
                assert first.outcome == "committed"
                with foreign_write_lock(tmp_path / "shop.wal"):
                    with anyio.fail_after(60):
                        # The node stops on the failed force; the gateway then no
                        # longer answers, so the submit may time out or fail.
                        try:
                            reply = await submit(client, "shop", {"stock@shop": 1}, client="web")
                        except Exception:  # noqa: BLE001 - the node went away meanwhile
                            reply = None
                        assert reply is None or reply.outcome != "committed", reply
                        code = await process.wait()
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()
            await process.aclose()
        text = log.read_text()
        assert code == 3, text
        assert "shop.wal" in text and "locked" in text, text
