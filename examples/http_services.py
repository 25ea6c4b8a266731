"""Two services over HTTP as 2PC participants: a payments service and a stock service.

Each service is `participant_app` over its own SQLite file (a `SqliteResource`
holds the prepared change); each participant node's resource is an
`HttpResource` pointing at it. Both are served with uvicorn on loopback
ports in this process, so the example runs by itself and exits: one order
commits, one is refused by the stock service and aborts at both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from dtxn.protocols.messages import Vote
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.clock import Clock
from dtxn.runtime.http_service import participant_app
from dtxn.runtime.resources import SqliteResource
from dtxn.runtime.resources.http import HttpResource
from starlette.applications import Starlette

CLOCK = Clock()


class Refused(Exception):
    """A branch that cannot go ahead: the service votes NO."""


def take(tx: Any, amount: int) -> None:
    row = tx.read("stock", 1)
    if row["amount"] < amount:
        raise Refused(f"only {row['amount']} left")
    tx.update("stock", 1, {"amount": row["amount"] - amount})


def service(folder: Path, name: str, start: int) -> Starlette:
    path = folder / f"{name}.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE stock (id INTEGER PRIMARY KEY, amount INTEGER)")
        db.execute("INSERT INTO stock VALUES (1, ?)", (start,))
    resource = SqliteResource(path, name=name, branch=take)

    async def prepare(txid: str, payload: Any) -> Vote:
        try:
            return await resource.prepare(txid, payload)
        except Refused:
            return Vote.NO

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with resource:
            yield

    return participant_app(branch=name, prepare=prepare, commit=resource.commit,
                           abort=resource.abort, ledger_path=folder / f"{name}-ledger.sqlite",
                           lifespan=lifespan)


def left(folder: Path, name: str) -> int:
    with contextlib.closing(sqlite3.connect(folder / f"{name}.sqlite")) as db:
        return int(db.execute("SELECT amount FROM stock").fetchone()[0])


def state(folder: Path, name: str, txid: str) -> str | None:
    with contextlib.closing(sqlite3.connect(folder / f"{name}-ledger.sqlite")) as db:
        row = db.execute("SELECT state FROM dtxn_http_branches WHERE txid = ?", (txid,)).fetchone()
    return None if row is None else str(row[0])


@contextlib.asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await CLOCK.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def main(folder: Path) -> None:
    transport = InProcessTransport()
    async with (
        serve(service(folder, "payments", 100)) as payments_url,
        serve(service(folder, "stock", 3)) as stock_url,
        HttpResource(payments_url, name="payments") as payments,
        HttpResource(stock_url, name="stock") as stock,
        Runtime("payments-node", transport=transport, wal_path=folder / "p.db",
                resources={"payments": payments}),
        Runtime("stock-node", transport=transport, wal_path=folder / "s.db",
                resources={"stock": stock}),
        Runtime("shop", transport=transport, wal_path=folder / "shop.db") as rt,
    ):
        ok = await rt.transact({"payments@payments-node": 30, "stock@stock-node": 1})
        print("order 1:", ok.outcome.value)
        refused = await rt.transact({"payments@payments-node": 30, "stock@stock-node": 10})
        print("order 2:", refused.outcome.value, "-", refused.reason[:80], "...")
        for _ in range(500):  # the abort reaches the payments service after the outcome
            if state(folder, "payments", refused.txid) == "aborted":
                break
            await CLOCK.sleep(0.01)
    print("payments:", left(folder, "payments"), "stock:", left(folder, "stock"))
    assert ok.committed and not refused.committed
    assert (left(folder, "payments"), left(folder, "stock")) == (70, 2)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
