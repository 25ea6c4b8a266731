"""Child process for tests/wal/test_hostile_sidecar.py: leaves SQLite sidecars behind.

`python sidecar_child.py records DIR N`: forces N (p-abort) records to DIR/coord.wal and dies
(os._exit) before any checkpoint, so they live only in `coord.wal-wal`.

`python sidecar_child.py bank DIR N K`: a coordinator and two banks (SqliteResource
files a.sqlite and b.sqlite, 10,000 each) in one process; N transfers of 1 from a
to b commit everywhere, then K more (each on an account of its own) commit while
every decision to bank-a is lost (bank-a stays in doubt); prints the K txids as
JSON and dies before a checkpoint.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import anyio
from dtxn.protocols.messages import Decision, Timeouts
from dtxn.protocols.records import PartAborted, kind_of
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.hosting import LOG_ENCODER, LogEntry
from dtxn.runtime.resources import SqliteBranch, SqliteResource
from dtxn.runtime.transport import Address
from dtxn.runtime.wal import SqliteWal

TIMEOUTS = Timeouts(votes_s=5.0, acks_s=0.2, decision_s=0.3, retry_max_s=0.6)


def move(tx: SqliteBranch, payload: Any) -> None:
    account, amount = payload
    row = tx.read("accounts", account)
    assert row is not None
    tx.update("accounts", account, {"balance": row["balance"] + int(amount)})


def create(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);"
            "INSERT INTO accounts VALUES (0, 10000);"
        )
    db.close()


def create_account(path: Path, account: int) -> None:
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO accounts VALUES (?, 0)", (account,))
    db.close()


async def records(where: Path, count: int) -> None:
    async with SqliteWal(where / "coord.wal") as wal:
        for i in range(count):
            record = PartAborted(f"t{i}")
            data = LOG_ENCODER.encode(LogEntry("ledger", record))
            await wal.force(record.txid, kind_of(record), data)
        os._exit(0)


async def bank(where: Path, settled: int, unacked: int) -> None:
    create(where / "a.sqlite")
    create(where / "b.sqlite")
    transport = InProcessTransport()
    a = SqliteResource(where / "a.sqlite", name="a", branch=move)
    b = SqliteResource(where / "b.sqlite", name="b", branch=move)
    async with (
        a,
        b,
        Runtime("bank-a", transport=transport, wal_path=where / "a.wal",
                resources={"ledger": a}),
        Runtime("bank-b", transport=transport, wal_path=where / "b.wal",
                resources={"ledger": b}),
        Runtime("coord", transport=transport, wal_path=where / "coord.wal",
                timeouts=TIMEOUTS) as coord,
    ):
        for _ in range(settled):
            transfer = {"ledger@bank-a": (0, -1), "ledger@bank-b": (0, 1)}
            assert (await coord.transact(transfer)).committed
        # Give the last acks time to land, so only the next K stay unacknowledged.
        await anyio.sleep(0.5)  # noqa: TID251 - a child test process, not the runtime

        def lose_decisions_to_a(to: Address, message: object) -> bool:
            return not (isinstance(message, Decision) and to.node == "bank-a")

        transport.fault = lose_decisions_to_a
        txids = []
        for i in range(1, unacked + 1):
            # Each on its own account: an in-doubt branch holds its row's lock.
            create_account(where / "a.sqlite", i)
            create_account(where / "b.sqlite", i)
            transfer = {"ledger@bank-a": (i, -1), "ledger@bank-b": (i, 1)}
            outcome = await coord.transact(transfer)
            assert outcome.committed
            txids.append(outcome.txid)
        await anyio.sleep(0.5)  # noqa: TID251 - let bank-b apply its commits
        print(json.dumps(txids), flush=True)
        os._exit(0)


if __name__ == "__main__":
    mode, where = sys.argv[1], Path(sys.argv[2])
    if mode == "records":
        anyio.run(records, where, int(sys.argv[3]))
    else:
        anyio.run(bank, where, int(sys.argv[3]), int(sys.argv[4]))
