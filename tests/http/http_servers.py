"""Real HTTP servers for the HttpResource tests: an order and a stock service, and
a wrapper that makes one endpoint misbehave on purpose.

Each service is `participant_app` over a `SqliteResource` (the order service
debits money, the stock service takes items), so what a test checks is in
the services' own database files. Run as a script, it serves one of them
with uvicorn (the crash test kills that process):

    python http_servers.py stock DIR PORT
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
import uvicorn
from anyio.abc import TaskGroup
from dtxn.protocols.messages import Vote
from dtxn.runtime.clock import Clock
from dtxn.runtime.http_service import participant_app
from dtxn.runtime.resources import SqliteBranch, SqliteResource
from starlette.applications import Starlette

_clock = Clock()


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    """The HTTP tests run on plain asyncio only (each test module imports this fixture).

    With uvicorn serving inside the same uvloop loop, closing that loop at the
    end of the run hung in `shutdown_default_executor` (seen, not yet
    understood); until that is run down, these tests do not claim uvloop.
    """
    return ("asyncio", {"use_uvloop": False})

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

TABLE = {"order": "accounts", "stock": "items"}
START = {"order": 100, "stock": 10}


class Refused(Exception):
    """Raised by a branch that cannot go ahead (no money, no stock): a NO vote."""


def _order_branch(tx: SqliteBranch, payload: Any) -> None:
    row = tx.read("accounts", "alice")
    assert row is not None
    if row["amount"] < payload["price"]:
        raise Refused(f"alice has {row['amount']}, the order costs {payload['price']}")
    tx.update("accounts", "alice", {"amount": row["amount"] - payload["price"]})


def _stock_branch(tx: SqliteBranch, payload: Any) -> None:
    row = tx.read("items", "widget")
    assert row is not None
    if row["amount"] < payload["qty"]:
        raise Refused(f"{row['amount']} widgets left, {payload['qty']} asked")
    tx.update("items", "widget", {"amount": row["amount"] - payload["qty"]})


def create_db(kind: str, folder: Path) -> None:
    """The service's own table, with its starting row (idempotent)."""
    with contextlib.closing(sqlite3.connect(folder / f"{kind}.sqlite")) as db, db:
        db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE[kind]} (id TEXT PRIMARY KEY, amount INT)")
        key = "alice" if kind == "order" else "widget"
        db.execute(f"INSERT OR IGNORE INTO {TABLE[kind]} VALUES (?, ?)", (key, START[kind]))


def amount(kind: str, folder: Path) -> int:
    """alice's money at the order service, or the widgets left at the stock service."""
    with contextlib.closing(sqlite3.connect(folder / f"{kind}.sqlite")) as db:
        (value,) = db.execute(f"SELECT amount FROM {TABLE[kind]}").fetchone()
    return int(value)


def ledger_states(kind: str, folder: Path) -> dict[str, str]:
    """txid -> the state the service's branch ledger holds."""
    path = folder / f"{kind}-branches.sqlite"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT txid, state FROM dtxn_http_branches").fetchall()
    return {str(t): str(s) for t, s in rows}


def prepared_markers(kind: str, folder: Path) -> int:
    """How many branches the service's SqliteResource holds prepared."""
    with contextlib.closing(sqlite3.connect(folder / f"{kind}.sqlite")) as db:
        (count,) = db.execute("SELECT count(*) FROM dtxn_prepared").fetchone()
    return int(count)


def service_app(kind: str, folder: Path) -> Starlette:
    """The order or stock service: participant_app over a SqliteResource in `folder`."""
    create_db(kind, folder)
    branch = _order_branch if kind == "order" else _stock_branch
    resource = SqliteResource(folder / f"{kind}.sqlite", name=kind, branch=branch)

    async def prepare(txid: str, payload: Any) -> Vote:
        try:
            return await resource.prepare(txid, payload)
        except Refused:
            return Vote.NO  # the local transaction rolled back: nothing held

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with resource:
            yield

    return participant_app(
        branch=kind, prepare=prepare, commit=resource.commit, abort=resource.abort,
        ledger_path=folder / f"{kind}-branches.sqlite", lifespan=lifespan,
    )


class Misbehave:
    """ASGI middleware: the endpoint `/op` misbehaves the next `times` requests (None: all).

    Modes that pass the request on first (the service really does the work,
    only the answer is broken): garbage, error_result, huge, cut, slow, gate.
    Modes that answer without the service: status_500, status_404, redirect.
    """

    def __init__(self, app: App, op: str, mode: str, *, times: int | None = None,
                 delay_s: float = 0.0) -> None:
        self.app = app
        self.op = op
        self.mode = mode
        self.times = times
        self.delay_s = delay_s
        self.gate = anyio.Event()
        self.seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != f"/{self.op}" or self.times == 0:
            return await self.app(scope, receive, send)
        if self.times is not None:
            self.times -= 1
        self.seen += 1
        mode = self.mode
        if mode == "slow":
            await _clock.sleep(self.delay_s)
            return await self.app(scope, receive, send)
        if mode == "gate":
            await self.gate.wait()
            return await self.app(scope, receive, send)
        if mode == "status_500":
            return await _answer(send, 500, b"upstream busy, try again")
        if mode == "status_404":
            return await _answer(send, 404, b"no route for this path here")
        if mode == "redirect":
            return await _answer(send, 307, b"", [(b"location", b"http://127.0.0.1:9/prepare")])

        async def swallow_answer(message: Message) -> None:
            return None  # the real answer is replaced below

        await self.app(scope, receive, swallow_answer)
        if mode == "garbage":
            return await _answer(send, 200, b"<html>all good!</html>")
        if mode == "error_result":
            return await _answer(send, 200, msgspec.json.encode({"result": "error"}))
        if mode == "huge":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            chunk = b" " * 65536
            for _ in range(160):  # 10 MiB: far past the cap, yet bounded here too
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            return await send({"type": "http.response.body", "body": b"{}"})
        if mode == "cut":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", b"100")]})
            await send({"type": "http.response.body", "body": b'{"res', "more_body": True})
            raise ConnectionAbortedError("the service drops the connection mid-body")
        raise AssertionError(f"unknown mode {mode!r}")


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(app: Any, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                          lifespan="on", ws="none", http="h11", timeout_graceful_shutdown=5)


@contextlib.asynccontextmanager
async def serving(tg: TaskGroup, app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn in a task of `tg` on a free loopback port; yield its url."""
    port = free_port()
    server = uvicorn.Server(_config(app, port))
    tg.start_soon(server.serve)
    waited_s = 0.0
    while not server.started:
        if server.should_exit or waited_s > 10:
            raise AssertionError(f"uvicorn did not start on port {port}")
        await _clock.sleep(0.01)
        waited_s += 0.01
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True


@contextlib.asynccontextmanager
async def served(*apps: Any) -> AsyncIterator[list[str]]:
    """Serve each app on its own free port for the duration; yield their urls in order."""
    async with anyio.create_task_group() as tg, contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(serving(tg, app)) for app in apps]


async def wait_listening(port: int, within_s: float = 15.0) -> None:
    """Wait until something accepts connections on loopback `port`."""
    waited_s = 0.0
    while True:
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            if waited_s > within_s:
                raise
            await _clock.sleep(0.05)
            waited_s += 0.05
            continue
        await stream.aclose()
        return


if __name__ == "__main__":
    kind, folder, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    uvicorn.Server(_config(service_app(kind, folder), port)).run()
