"""A Starlette service that moves money between two banks with 2PC, through dtxn.

The service's node coordinates; bank A and bank B are participant nodes (in
this process here, on an in-process transport; on a network they would be
other processes). The app is started in-process and called with httpx, so
the example runs by itself and exits: one transfer commits, one aborts.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from dtxn.protocols.messages import Vote
from dtxn.runtime import InProcessTransport, Runtime
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class Bank:
    """A participant's resource: holds a debit or credit until the decision.

    A real one keeps its prepared state durable (a database transaction
    prepared with XA, or a row marked pending), so it survives a crash.
    """

    def __init__(self, balances: dict[str, int]) -> None:
        self.balances = balances
        self.held: dict[str, tuple[str, int]] = {}

    async def prepare(self, txid: str, payload: Any) -> Vote:
        account, delta = payload
        if self.balances.get(account, 0) + delta < 0:
            return Vote.NO  # insufficient funds: nothing held, nothing to undo
        self.held[txid] = (account, delta)
        return Vote.YES

    async def commit(self, txid: str) -> None:
        held = self.held.pop(txid, None)
        if held is not None:
            account, delta = held
            self.balances[account] = self.balances.get(account, 0) + delta

    async def abort(self, txid: str) -> None:
        self.held.pop(txid, None)


BANK_A = Bank({"alice": 100})
BANK_B = Bank({"bob": 0})


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """Run the three nodes for as long as the app runs, each on its own SQLite WAL."""
    transport = InProcessTransport()
    with tempfile.TemporaryDirectory() as tmp:
        wal = Path(tmp)
        async with (
            Runtime("bank-a", transport=transport, wal_path=wal / "a.db",
                    resources={"ledger": BANK_A}),
            Runtime("bank-b", transport=transport, wal_path=wal / "b.db",
                    resources={"ledger": BANK_B}),
            Runtime("service", transport=transport, wal_path=wal / "service.db") as rt,
        ):
            app.state.dtxn = rt
            yield


async def transfer(request: Request) -> JSONResponse:
    body = await request.json()
    rt: Runtime = request.app.state.dtxn
    amount = int(body["amount"])
    outcome = await rt.transact(
        {
            "ledger@bank-a": (body["from"], -amount),
            "ledger@bank-b": (body["to"], amount),
        },
        protocol="2pc",
    )
    return JSONResponse(
        {"txid": outcome.txid, "outcome": outcome.outcome.value, "reason": outcome.reason},
        status_code=200 if outcome.committed else 409,
    )


app = Starlette(routes=[Route("/transfer", transfer, methods=["POST"])], lifespan=lifespan)


async def main() -> None:
    # httpx's ASGITransport does not send lifespan events: run the lifespan here.
    async with lifespan(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bank")
        async with client:
            for amount in (30, 1000):
                response = await client.post(
                    "/transfer", json={"from": "alice", "to": "bob", "amount": amount}
                )
                print(response.status_code, response.json())
    print("balances:", BANK_A.balances, BANK_B.balances)
    assert BANK_A.balances == {"alice": 70} and BANK_B.balances == {"bob": 30}


if __name__ == "__main__":
    asyncio.run(main())
