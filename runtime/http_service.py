"""The service side of the HTTP participant contract (docs/http.md) as a Starlette app.

    app = participant_app(branch="stock", prepare=reserve, commit=keep, abort=release,
                          ledger_path="stock-branches.sqlite")

turns three user async functions into `POST /prepare`, `/commit` and
`/abort` with the contract's result rules. A durable branch ledger (a SQLite
table keyed by branch and txid) makes every endpoint idempotent and holds the
barrier rule: an abort that arrives before its prepare is recorded, and the
late prepare is refused, so a branch can never be prepared after its abort.

The ledger is written around the user's calls in this order, so a crash at
any point leaves something the next request finishes:

- prepare: `preparing` is forced before `prepare(txid, payload)` runs, the
  vote after it. A retried prepare that finds `preparing` (the earlier one
  crashed or raised) cannot know what of it is done: it calls `abort(txid)`,
  records `aborted` and refuses.
- commit: `commit(txid)` runs, then `committed` is recorded; a crash between
  leaves `prepared`, and the retried commit calls `commit(txid)` again.
- abort: `aborted` is recorded first (the barrier), then `abort(txid)` runs.

So the user's functions follow dtxn's Resource contract: commit and abort are
idempotent, and abort undoes whatever part of a prepare is there, or nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosqlite
import anyio
import msgspec
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Vote

try:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "dtxn.runtime.http_service needs starlette: pip install 'dtxn[http]'"
    ) from exc

log = logging.getLogger("dtxn.runtime.http_service")

Prepare = Callable[[str, Any], Awaitable[bool | Vote]]
"""`async def prepare(txid, payload) -> bool | Vote`: True/YES keeps the branch prepared."""
Apply = Callable[[str], Awaitable[None]]
"""`async def commit(txid)` / `async def abort(txid)`: idempotent, as in dtxn's Resource."""

REQUEST_BYTES_MAX = 1024 * 1024
_TXID_CHARS_MAX = 256

PREPARING = "preparing"
PREPARED = "prepared"
READ_ONLY = "read_only"
REFUSED = "refused"
COMMITTED = "committed"
ABORTED = "aborted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dtxn_http_branches (
    branch TEXT NOT NULL,
    txid TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (branch, txid)
)
"""


class BranchLedger:
    """The durable state of each (branch, txid) a service has heard of, in a SQLite file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        if not self.path or self.path == ":memory:":
            raise ConfigError(f"BranchLedger needs a database file, not {self.path!r}")
        self._conn: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """Open the file in WAL mode with synchronous=FULL; create the table if missing."""
        if self._conn is not None:
            return
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=FULL")
            await conn.execute(_SCHEMA)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        self._conn = conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise ConfigError(f"BranchLedger {self.path!r} is not open")
        return self._conn

    async def state(self, branch: str, txid: str) -> str | None:
        """The recorded state of the branch, or None if this service never heard of it."""
        async with self._db().execute(
            "SELECT state FROM dtxn_http_branches WHERE branch = ? AND txid = ?", (branch, txid)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def record(self, branch: str, txid: str, state: str) -> None:
        """Make `state` the branch's durable state (on disk when this returns)."""
        await self._db().execute(
            "INSERT INTO dtxn_http_branches (branch, txid, state) VALUES (?, ?, ?)"
            " ON CONFLICT (branch, txid) DO UPDATE SET state = excluded.state",
            (branch, txid, state),
        )

    async def txids(self, branch: str, state: str) -> list[str]:
        """The txids of `branch` in `state`, oldest first (for operators and tests)."""
        async with self._db().execute(
            "SELECT txid FROM dtxn_http_branches WHERE branch = ? AND state = ? ORDER BY rowid",
            (branch, state),
        ) as cursor:
            rows = await cursor.fetchall()
        return [str(row[0]) for row in rows]


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


class _BadRequest(Exception):
    """A request outside the contract; answered 4xx with the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class HttpParticipant:
    """The endpoints of one branch; `app` is the Starlette application serving them."""

    def __init__(
        self,
        *,
        branch: str,
        prepare: Prepare,
        commit: Apply,
        abort: Apply,
        ledger: BranchLedger,
        lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.branch = branch
        self.ledger = ledger
        self._prepare = prepare
        self._commit = commit
        self._abort = abort
        self._user_lifespan = lifespan
        # One request per (txid) at a time: a retried prepare waits for the first.
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        routes = [Route(f"/{op}", self._endpoint(op), methods=["POST"])
                  for op in ("prepare", "commit", "abort")]
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.ledger.open()
        try:
            if self._user_lifespan is None:
                yield
            else:
                async with self._user_lifespan(app):
                    yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.ledger.close()

    @contextlib.asynccontextmanager
    async def _locked(self, txid: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(txid, (anyio.Lock(), 0))
        self._locks[txid] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[txid]
            if users == 1:
                del self._locks[txid]
            else:
                self._locks[txid] = (lock, users - 1)

    def _endpoint(self, op: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                txid, payload = await self._parse(request, op)
            except _BadRequest as bad:
                return _json(bad.status, {"result": "error", "error": str(bad)})
            async with self._locked(txid):
                if op == "prepare":
                    return await self._on_prepare(txid, payload)
                if op == "commit":
                    return await self._on_commit(txid)
                return await self._on_abort(txid)

        return endpoint

    async def _parse(self, request: Request, op: str) -> tuple[str, Any]:
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > REQUEST_BYTES_MAX:
                raise _BadRequest(413, f"request body over {REQUEST_BYTES_MAX} bytes")
            chunks.append(chunk)
        try:
            body = msgspec.json.decode(b"".join(chunks))
        except msgspec.DecodeError as exc:
            raise _BadRequest(400, f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, "request body must be a JSON object")
        txid = body.get("txid")
        if not isinstance(txid, str) or not 0 < len(txid) <= _TXID_CHARS_MAX:
            raise _BadRequest(400, f"txid must be a string of 1-{_TXID_CHARS_MAX} characters")
        if body.get("branch") != self.branch:
            raise _BadRequest(
                400, f"this service serves branch {self.branch!r}, not {body.get('branch')!r}"
            )
        if body.get("op") != op:
            raise _BadRequest(400, f"op {body.get('op')!r} posted to /{op}")
        key = request.headers.get("idempotency-key")
        if key != f"{txid}:{self.branch}:{op}":
            raise _BadRequest(400, f"Idempotency-Key {key!r} must be {txid}:{self.branch}:{op}")
        return txid, body.get("payload")

    async def _on_prepare(self, txid: str, payload: Any) -> Response:
        state = await self.ledger.state(self.branch, txid)
        if state == PREPARING:
            # An earlier prepare crashed or raised half-way: undo it, then refuse.
            await self._abort(txid)
            await self.ledger.record(self.branch, txid, ABORTED)
            return _json(409, {"result": "failure", "error": "an earlier prepare did not finish"})
        if state is None:
            await self.ledger.record(self.branch, txid, PREPARING)
            vote = _as_vote(await self._prepare(txid, payload))
            state = {Vote.YES: PREPARED, Vote.READ_ONLY: READ_ONLY, Vote.NO: REFUSED}[vote]
            await self.ledger.record(self.branch, txid, state)
        if state in (PREPARED, COMMITTED):
            return _json(200, {"result": "ok"})
        if state == READ_ONLY:
            return _json(200, {"result": "ok", "vote": "read_only"})
        return _json(409, {"result": "failure", "error": f"branch {state}"})

    async def _on_commit(self, txid: str) -> Response:
        state = await self.ledger.state(self.branch, txid)
        if state == PREPARED:
            await self._commit(txid)
            await self.ledger.record(self.branch, txid, COMMITTED)
            state = COMMITTED
        if state in (COMMITTED, READ_ONLY):
            return _json(200, {"result": "ok"})
        # A commit for a branch that is not prepared: the caller broke the protocol.
        return _json(409, {"result": "failure", "error": f"cannot commit: branch is {state}"})

    async def _on_abort(self, txid: str) -> Response:
        state = await self.ledger.state(self.branch, txid)
        if state == COMMITTED:
            return _json(409, {"result": "failure", "error": "cannot abort: branch committed"})
        if state in (None, PREPARING, PREPARED):
            await self.ledger.record(self.branch, txid, ABORTED)  # the barrier, first
            if state is not None:
                await self._abort(txid)
        return _json(200, {"result": "ok"})


def _as_vote(answer: object) -> Vote:
    if answer is True:
        return Vote.YES
    if answer is False:
        return Vote.NO
    if isinstance(answer, Vote):
        return answer
    raise TypeError(f"prepare returned {answer!r}; it must return a bool or a Vote")


def participant_app(
    *,
    branch: str,
    prepare: Prepare,
    commit: Apply,
    abort: Apply,
    ledger_path: str | os.PathLike[str],
    lifespan: Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    """A Starlette app serving `branch` over the contract, its ledger at `ledger_path`.

    `lifespan`, when given, runs inside the app's own (after the ledger opens).
    """
    return HttpParticipant(
        branch=branch, prepare=prepare, commit=commit, abort=abort,
        ledger=BranchLedger(ledger_path), lifespan=lifespan,
    ).app


__all__ = [
    "ABORTED",
    "COMMITTED",
    "PREPARED",
    "PREPARING",
    "READ_ONLY",
    "REFUSED",
    "REQUEST_BYTES_MAX",
    "Apply",
    "BranchLedger",
    "HttpParticipant",
    "Prepare",
    "participant_app",
]
