"""`SqliteResource`: a dtxn participant over a user's own SQLite database file.

SQLite cannot keep a transaction open across a restart, so a prepared branch
is not an open transaction but committed data plus what it takes to undo it.
prepare runs the branch in ONE local transaction (BEGIN IMMEDIATE ... COMMIT,
WAL mode, synchronous=FULL) that applies its writes, stores each row's
before-image in `dtxn_undo`, locks each written row in `dtxn_locks` and adds a
`dtxn_prepared` marker: all of it is on disk, or none of it, when prepare
answers YES. commit deletes the undo images, locks and marker in one local
transaction; abort restores the before-images (newest first) and deletes the
same rows in one local transaction. Without a marker there is nothing left to
do, which makes both idempotent; a restarted process finds its prepared
branches by their markers (`in_doubt_txids`).

Until the decision, another dtxn branch that touches a locked row fails with
`RowLocked`, naming the holder (the runtime turns that into a NO vote), after
waiting up to `lock_wait_s` on the runtime's clock. Readers outside dtxn see
the prepared value; `pending_txid` / `locked_by` tell them it is undecided.
The row API the branch writes through lives in `resources._sqlite_rows`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aiosqlite
import anyio
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Vote
from dtxn.runtime.clock import Clock
from dtxn.runtime.resources._reconcile import Fate, fate
from dtxn.runtime.resources._sqlite_rows import (
    SCHEMA,
    RowLocked,
    SqliteBranch,
    SqliteResourceError,
    UndoCorrupt,
    apply_undo,
    pending_txid,
)
from dtxn.runtime.wal import on_sqlite_thread

if TYPE_CHECKING:
    from dtxn.runtime._runtime import Runtime

T = TypeVar("T")
log = logging.getLogger("dtxn.runtime.resources.sqlite")

Branch = Callable[[SqliteBranch, Any], object]
"""`def branch(tx, payload)`: the branch's reads and writes, run on the SQLite thread."""

_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_TXID_CHARS_MAX = 256


# How long a prepare waits for a row another branch holds, by default. Long
# enough for a few queued transactions on one hot row to take their turn
# (10 orders for 2 lamps: 2 placed, 8 "out of stock", not 9 RowLocked), and
# well below the coordinator's default vote timeout (Timeouts.votes_s, 5 s).
LOCK_WAIT_S = 1.0


class SqliteResource:
    """A `Resource` over the SQLite database at `path`, prepared with undo images.

    `branch(tx, payload)` is a plain (not async) function; it runs on the
    connection's thread inside prepare's local transaction and writes only
    through `tx.insert`, `tx.update` and `tx.delete` (reads: `tx.read`, or
    SELECT on `tx.conn`). Call `await start()` (or use `async with`) before the
    runtime uses it. Several resources may share one file if their names differ.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        branch: Branch,
        lock_wait_s: float = LOCK_WAIT_S,
        clock: Clock | None = None,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"SqliteResource name {name!r} must be 1-64 of letters, digits and _ . @ -"
            )
        where = os.fspath(path)
        if not where or where == ":memory:" or where.startswith("file::memory:"):
            raise ConfigError(
                f"SqliteResource {name!r} needs a database file, not {where!r}: a prepared"
                " branch must survive a crash"
            )
        if not callable(branch) or inspect.iscoroutinefunction(branch):
            raise ConfigError(
                f"SqliteResource {name!r}: branch must be a plain function (tx, payload),"
                " not async: it runs on the SQLite connection's thread"
            )
        for label, value in (("lock_wait_s", lock_wait_s), ("busy_timeout_s", busy_timeout_s)):
            if not isinstance(value, int | float) or not value >= 0:
                raise ConfigError(f"SqliteResource {name!r}: {label} must be >= 0, got {value!r}")
        self.name = name
        self.path = where
        self.lock_wait_s = float(lock_wait_s)
        self._branch = branch
        self._clock = clock if clock is not None else Clock()
        self._busy_timeout_s = float(busy_timeout_s)
        self._conn: aiosqlite.Connection | None = None
        # A decision can arrive while this process still prepares the same txid
        # (the coordinator timed out on the vote): it waits, or an abort would find
        # no marker, count as done, and the prepare would then leave one behind.
        self._preparing: dict[str, anyio.Event] = {}
        self.lock_conflicts = 0
        self.orphans_rolled_back = 0
        self.reconciled_commits = 0  # markers the log said committed (see roll_back_orphans)
        self.stale_locks_released = 0  # markers found blocking a row after their txid ended
        self._runtime: Runtime | None = None  # the hosting runtime, once it recovered us

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Open the file (WAL mode, synchronous=FULL) and create the dtxn tables if missing."""
        if self._conn is not None:
            return
        conn = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self._busy_timeout_s
        )
        try:
            await on_sqlite_thread(conn, partial(_open_sync, conn._conn, self.name))
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise SqliteResourceError(f"cannot open {self.path!r}: {exc}") from exc
            raise
        self._conn = conn

    async def close(self) -> None:
        """Close the connection; prepared branches stay in the file."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> SqliteResource:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the Resource protocol -------------------------------------------------------

    async def prepare(self, txid: str, payload: Any) -> Vote:
        _check_txid(txid)
        while (running := self._preparing.get(txid)) is not None:
            await running.wait()
        done = self._preparing[txid] = anyio.Event()
        try:
            waited_s, delay_s = 0.0, 0.01
            while True:
                try:
                    return await self._run(
                        partial(_prepare_sync, self.name, txid, self._branch, payload)
                    )
                except RowLocked as locked:
                    self.lock_conflicts += 1
                    if waited_s >= self.lock_wait_s:
                        if await self._release_if_stale(locked.holder):
                            continue
                        raise
                    # Counted, not read off a clock: the wait is bounded either way.
                    step_s = min(delay_s, self.lock_wait_s - waited_s)
                    await self._clock.sleep(step_s)
                    waited_s += step_s
                    delay_s *= 2
        finally:
            del self._preparing[txid]
            done.set()

    async def commit(self, txid: str) -> None:
        await self._finish(txid, commit=True)

    async def abort(self, txid: str) -> None:
        await self._finish(txid, commit=False)

    # -- recovery and inspection ------------------------------------------------------

    async def in_doubt_txids(self) -> list[str]:
        """The txids this resource has prepared and not yet committed or aborted, oldest first."""
        name = self.name

        def read(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT txid FROM dtxn_prepared WHERE resource = ? ORDER BY rowid", (name,)
            )
            return [str(txid) for (txid,) in rows]

        return await self._run(read)

    async def roll_back_orphans(self, rt: Runtime) -> list[str]:
        """Make this resource's prepared branches agree with `rt`'s log; return those rolled back.

        Call it once the runtime hosting this resource has recovered (the runtime
        does, through `recover`). A marker is rolled back when the participant's
        log does not know its txid (the process crashed before forcing PREPARED:
        it never voted YES, so presumed abort) or says it aborted (the
        participant answered an inquiry "abort" while this prepare ran, then
        crashed before `abort` did); it is committed when the log says committed;
        a txid the protocol still holds (in doubt, committing) is left to it.
        """
        orphans = []
        for txid in await self.in_doubt_txids():
            verdict = fate(rt, self, txid)
            if verdict is Fate.ABORT:
                await self.abort(txid)
                orphans.append(txid)
            elif verdict is Fate.COMMIT:
                log.warning(
                    "resource %s: %s is committed in the log but still prepared here: "
                    "committing it", self.name, txid,
                )
                await self.commit(txid)
                self.reconciled_commits += 1
        self.orphans_rolled_back += len(orphans)
        return orphans

    async def recover(self, runtime: Runtime) -> None:
        """Called by the runtime at start: reconcile markers with its log (`roll_back_orphans`).

        The runtime is kept, so that a row found locked for longer than
        `lock_wait_s` by a branch the log says ended is reconciled then too.
        """
        self._runtime = runtime
        orphans = await self.roll_back_orphans(runtime)
        if orphans:
            log.warning(
                "resource %s: rolled back %d branch(es) its participant's log says aborted"
                " or never voted YES for: %s", self.name, len(orphans), ", ".join(orphans),
            )

    async def settings(self) -> dict[str, str]:
        """journal_mode and synchronous as SQLite reports them for this connection."""

        def read(db: sqlite3.Connection) -> dict[str, str]:
            (journal,) = db.execute("PRAGMA journal_mode").fetchone()
            (sync,) = db.execute("PRAGMA synchronous").fetchone()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            return {"journal_mode": str(journal), "synchronous": names.get(sync, str(sync))}

        return await self._run(read)

    async def locked_by(self, table: str, key: Any) -> str | None:
        """The txid whose prepared change holds row `key` of `table` until its decision, or None."""
        return await self._run(lambda db: pending_txid(db, table, key))

    # -- internals ---------------------------------------------------------------------

    async def _release_if_stale(self, holder: str) -> bool:
        """Reconcile `holder`'s marker with the log if it is stale; whether it was.

        A lock held past `lock_wait_s` by a txid the hosting runtime's log says
        aborted (or does not know) is a branch whose abort was lost; one it
        says committed lost its commit. Either is applied now, so the row does
        not stay locked for ever. A txid being prepared right now, or one the
        protocol still holds, is left alone.
        """
        rt = self._runtime
        if rt is None or holder in self._preparing:
            return False
        verdict = fate(rt, self, holder)
        if verdict is Fate.PROTOCOL or holder not in await self.in_doubt_txids():
            return False
        log.warning(
            "resource %s: %s still held a row lock after its participant's log says it %s: "
            "applying that now", self.name, holder,
            "committed" if verdict is Fate.COMMIT else "aborted (or never voted YES)",
        )
        await (self.commit(holder) if verdict is Fate.COMMIT else self.abort(holder))
        self.stale_locks_released += 1
        return True

    async def _finish(self, txid: str, *, commit: bool) -> None:
        _check_txid(txid)
        preparing = self._preparing.get(txid)
        if preparing is not None:
            await preparing.wait()
        await self._run(partial(_finish_sync, self.name, txid, commit))

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the connection's thread: one trip, however many statements."""
        conn = self._conn
        if conn is None:
            raise SqliteResourceError(
                f"SqliteResource {self.name!r} is not started: await start() or use async with"
            )
        db: sqlite3.Connection = conn._conn
        return await on_sqlite_thread(conn, partial(fn, db))


def _check_txid(txid: object) -> None:
    if not isinstance(txid, str) or not txid or "\x00" in txid or len(txid) > _TXID_CHARS_MAX:
        raise SqliteResourceError(
            f"txid {txid!r} is unfit for a SqliteResource marker: it must be a non-empty str"
            f" of at most {_TXID_CHARS_MAX} characters without NUL"
        )


def _open_sync(db: sqlite3.Connection, name: str) -> None:
    (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise ConfigError(f"SqliteResource {name!r}: SQLite refused journal_mode=WAL ({mode})")
    db.execute("PRAGMA synchronous = FULL")
    with _local_transaction(db):
        for statement in SCHEMA:
            db.execute(statement)


def _prepare_sync(
    name: str, txid: str, branch: Branch, payload: Any, db: sqlite3.Connection
) -> Vote:
    with _local_transaction(db):
        marked = db.execute(
            "SELECT 1 FROM dtxn_prepared WHERE resource = ? AND txid = ?", (name, txid)
        ).fetchone()
        if marked is not None:
            return Vote.YES  # a redelivered prepare: the branch is already durable
        tx = SqliteBranch(db, name, txid)
        tx.run(branch, payload)
        if tx.writes == 0 and tx.locks == 0:
            db.execute("ROLLBACK")
            return Vote.READ_ONLY
        db.execute(
            "INSERT INTO dtxn_prepared (resource, txid, writes) VALUES (?, ?, ?)",
            (name, txid, tx.writes),
        )
    return Vote.YES


def _finish_sync(name: str, txid: str, commit: bool, db: sqlite3.Connection) -> bool:
    """Commit or abort `txid`'s prepared branch; False if there was none (already finished)."""
    key = (name, txid)
    with _local_transaction(db):
        marked = db.execute(
            "SELECT 1 FROM dtxn_prepared WHERE resource = ? AND txid = ?", key
        ).fetchone()
        if marked is None:
            return False
        if not commit:
            apply_undo(db, name, txid)
        db.execute("DELETE FROM dtxn_undo WHERE resource = ? AND txid = ?", key)
        db.execute("DELETE FROM dtxn_locks WHERE resource = ? AND txid = ?", key)
        db.execute("DELETE FROM dtxn_prepared WHERE resource = ? AND txid = ?", key)
    return True


@contextlib.contextmanager
def _local_transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE; COMMIT at the end (unless the body ended it), ROLLBACK on an error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        if db.in_transaction:
            db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


__all__ = [
    "LOCK_WAIT_S",
    "Branch",
    "RowLocked",
    "SqliteBranch",
    "SqliteResource",
    "SqliteResourceError",
    "UndoCorrupt",
    "pending_txid",
]
