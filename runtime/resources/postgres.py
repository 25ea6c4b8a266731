"""`PostgresResource`: a dtxn participant backed by PostgreSQL prepared transactions.

prepare runs the branch's SQL in a transaction and ends it with
`PREPARE TRANSACTION '<gid>'`, which makes the branch durable-but-undecided on
the server (it survives a crash of this process and of the server); commit is
`COMMIT PREPARED`, abort `ROLLBACK PREPARED`. A gid is
`dtxn:<resource name>:<txid>`, so a restarted participant can find its own
prepared branches with `in_doubt_gids()`.

commit and abort are idempotent: a gid that is no longer prepared was already
finished, and since dtxn's log never changes a decision, "already finished"
can only mean "finished the way we are asked to finish it now".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from dtxn.protocols.errors import ConfigError, DtxnError
from dtxn.protocols.messages import Vote
from dtxn.runtime.extras import missing
from dtxn.runtime.resources._reconcile import Fate, fate

try:
    import asyncpg  # type: ignore[import-untyped]
except ModuleNotFoundError as _error:
    raise missing(_error, package="asyncpg", extra="postgres",
                  feature="PostgresResource (dtxn.runtime.resources.postgres)") from None

if TYPE_CHECKING:
    from dtxn.runtime._runtime import Runtime

log = logging.getLogger("dtxn.postgres")

Branch = Callable[[Any, Any], Awaitable[None]]
"""`async def branch(conn, payload)`: runs the branch's SQL on an asyncpg connection."""

GID_PREFIX = "dtxn:"
# PostgreSQL keeps at most 199 bytes of a gid (GIDSIZE 200 with the NUL).
_GID_MAX_BYTES = 199
_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
# SQLSTATE 42704 (undefined_object): "prepared transaction with identifier ... does not exist".
_NO_SUCH_GID = "42704"


class PostgresError(DtxnError):
    """Raised when a PostgreSQL resource is misused (not started, a txid unfit for a gid)."""


class PostgresResource:
    """A `Resource` whose branch is a PostgreSQL transaction, prepared with two-phase commit.

    Give either `dsn` (the resource opens and owns a pool) or `pool` (yours to
    close). Call `await start()` (or use `async with`) before the runtime
    uses it: start checks that the server allows prepared transactions.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: Any = None,
        name: str,
        branch: Branch,
        pool_size_max: int = 10,
    ) -> None:
        if (dsn is None) == (pool is None):
            raise ConfigError("PostgresResource needs exactly one of dsn= or pool=")
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"PostgresResource name {name!r} must be 1-64 of letters, digits and _ . @ -"
                " (it is part of every gid)"
            )
        self.name = name
        self.prefix = f"{GID_PREFIX}{name}:"
        self._dsn = dsn
        self._pool: Any = pool
        self._owns_pool = pool is None
        self._pool_size_max = pool_size_max
        self._branch = branch
        # A decision can arrive while this process is still preparing the same
        # txid (the coordinator timed out); it must wait, or an abort would find
        # no gid, count as done, and the prepare would then leave one behind.
        self._preparing: dict[str, anyio.Event] = {}

    async def start(self) -> None:
        """Open the pool (if given a dsn) and check `max_prepared_transactions` > 0."""
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size_max
            )
        async with self._pool.acquire() as conn:
            setting = int(await conn.fetchval("SHOW max_prepared_transactions"))
        if setting <= 0:
            raise ConfigError(
                f"PostgresResource {self.name!r}: the server has max_prepared_transactions ="
                f" {setting}, so PREPARE TRANSACTION is disabled; set it (e.g. to"
                " max_connections) in postgresql.conf and restart the server"
            )

    async def close(self) -> None:
        """Close the pool if this resource opened it; prepared branches stay on the server."""
        if self._owns_pool and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> PostgresResource:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def gid(self, txid: str) -> str:
        """The prepared-transaction id of `txid` at this resource."""
        gid = f"{self.prefix}{txid}"
        if "\x00" in txid or len(gid.encode()) > _GID_MAX_BYTES:
            raise PostgresError(
                f"txid {txid!r} cannot be a gid at {self.name!r}: it has a NUL byte or the gid"
                f" is longer than {_GID_MAX_BYTES} bytes"
            )
        return gid

    def txid_of(self, gid: str) -> str:
        """The txid a gid of this resource was made from (the inverse of `gid`)."""
        if not gid.startswith(self.prefix):
            raise PostgresError(f"gid {gid!r} does not belong to resource {self.name!r}")
        return gid[len(self.prefix) :]

    async def prepare(self, txid: str, payload: Any) -> Vote:
        literal = _literal(self.gid(txid))
        done = self._preparing.setdefault(txid, anyio.Event())
        try:
            async with self._acquire() as conn:
                # Plain BEGIN, not asyncpg's Transaction: PREPARE TRANSACTION ends the
                # block itself, and a Transaction object would then try to close it.
                await conn.execute("BEGIN")
                try:
                    await self._branch(conn, payload)
                except Exception:
                    # Before PREPARE TRANSACTION a plain rollback undoes the branch;
                    # the runtime turns the exception into a NO vote with its reason.
                    await conn.execute("ROLLBACK")
                    raise
                await conn.execute(f"PREPARE TRANSACTION {literal}")
            return Vote.YES
        finally:
            del self._preparing[txid]
            done.set()

    async def commit(self, txid: str) -> None:
        await self._finish("COMMIT PREPARED", txid)

    async def abort(self, txid: str) -> None:
        await self._finish("ROLLBACK PREPARED", txid)

    async def in_doubt_gids(self) -> list[str]:
        """This resource's prepared gids in its database, oldest first."""
        async with self._acquire() as conn:
            rows = await conn.fetch(
                "SELECT gid FROM pg_prepared_xacts"
                " WHERE database = current_database() AND starts_with(gid, $1)"
                " ORDER BY prepared",
                self.prefix,
            )
        return [str(row["gid"]) for row in rows]

    async def roll_back_orphans(self, rt: Runtime) -> list[str]:
        """Make this resource's prepared gids agree with `rt`'s log; return those rolled back.

        Call it once the runtime hosting this resource has started (its
        recovery is done). A gid is rolled back when the participant's log does
        not know its txid (the process crashed before forcing PREPARED: it never
        voted YES, so presumed abort) or says it aborted (the participant
        answered an inquiry "abort" while this prepare ran, then crashed before
        `abort` did); it is committed when the log says committed; a txid the
        protocol still holds (in doubt, committing) is left to it.
        """
        orphans = []
        for gid in await self.in_doubt_gids():
            txid = self.txid_of(gid)
            verdict = fate(rt, self, txid)
            if verdict is Fate.ABORT:
                await self.abort(txid)
                orphans.append(gid)
            elif verdict is Fate.COMMIT:
                log.warning(
                    "resource %s: %s is committed in the log but still prepared here: "
                    "committing it", self.name, gid,
                )
                await self.commit(txid)
        return orphans

    async def recover(self, runtime: Runtime) -> None:
        """Called by the runtime at start: reconcile gids with its log (`roll_back_orphans`)."""
        orphans = await self.roll_back_orphans(runtime)
        if orphans:
            log.warning(
                "resource %s: rolled back %d gid(s) its participant's log says aborted or "
                "never voted YES for: %s", self.name, len(orphans), ", ".join(orphans),
            )

    async def _finish(self, statement: str, txid: str) -> None:
        preparing = self._preparing.get(txid)
        if preparing is not None:
            await preparing.wait()
        literal = _literal(self.gid(txid))
        async with self._acquire() as conn:
            try:
                await conn.execute(f"{statement} {literal}")
            except asyncpg.PostgresError as exc:
                if getattr(exc, "sqlstate", None) != _NO_SUCH_GID:
                    raise
                # Already finished (a redelivered decision, or a NO vote's rollback).

    def _acquire(self) -> Any:
        if self._pool is None:
            raise PostgresError(
                f"PostgresResource {self.name!r} is not started: await start() or use async with"
            )
        return self._pool.acquire()


def _literal(gid: str) -> str:
    """`gid` as an SQL string literal (PREPARE TRANSACTION takes no parameters)."""
    return "'" + gid.replace("'", "''") + "'"


__all__ = ["GID_PREFIX", "Branch", "PostgresError", "PostgresResource"]
