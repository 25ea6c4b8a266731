"""`SqliteWal`: the write-ahead log in a SQLite file, and `read_wal` to inspect one.

The store keeps one aiosqlite connection, whose single thread does all the
SQLite work. Each group commit is *one* trip to that thread: take the buffer
(as late as possible, so records handed in while the trip waited for the
thread ride along), then a multi-row INSERT alone (autocommit), or BEGIN,
the INSERTs, one DELETE for the discards, COMMIT. An
aiosqlite call costs about as much as an fsync, so one call per record would
halve the throughput the batching buys.

Schema version 1 (see docs/wal.md):

    meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)
        format = 'dtxn-wal', schema_version = '1', node = <name, if given>
    records(lsn INTEGER PRIMARY KEY AUTOINCREMENT, txid TEXT NOT NULL,
            kind TEXT NOT NULL, data BLOB NOT NULL, checksum INTEGER NOT NULL)
    records_txid ON records(txid)

AUTOINCREMENT makes SQLite remember the highest LSN ever used, so LSNs keep
rising after every record has been discarded.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import sqlite3
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

import aiosqlite
import anyio
from dtxn.protocols.errors import ConfigError, LogCorruptError
from dtxn.runtime.wal._group_commit import GroupCommitWal, Taken
from dtxn.runtime.wal._sidecar import scan_sidecar
from dtxn.runtime.wal._store import (
    LAZY_RECORDS_MAX,
    PENDING_RECORDS_MAX,
    SCHEMA_VERSION,
    Discard,
    Durability,
    Row,
    WalEntry,
    WalError,
    WalFormatError,
    decode_row,
    parse_durability,
)

__all__ = [
    "SUSPECT_KEY",
    "SqliteWal",
    "accept_loss",
    "on_sqlite_thread",
    "read_suspect",
    "read_wal",
]

log = logging.getLogger("dtxn.wal")
# The meta row a damaged sidecar leaves: why the log may be short.
SUSPECT_KEY = "log_may_be_short"

T = TypeVar("T")

FORMAT = "dtxn-wal"
RECORD_COLUMNS = ["lsn", "txid", "kind", "data", "checksum"]

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE records ("
    " lsn INTEGER PRIMARY KEY AUTOINCREMENT,"
    " txid TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " data BLOB NOT NULL,"
    " checksum INTEGER NOT NULL)",
    "CREATE INDEX records_txid ON records (txid)",
)
_INSERT = "INSERT INTO records (lsn, txid, kind, data, checksum) VALUES "
# Rows per INSERT statement (5 parameters each, well under SQLite's 32766).
_INSERT_ROWS_MAX = 256
# One DELETE for many (txid, bound) pairs: each statement is a GIL round trip
# (see `_commit_sync`), and a busy node discards for every transaction it ends.
_DISCARD_ROWS_MAX = 256
_SELECT = "SELECT lsn, txid, kind, data, checksum FROM records ORDER BY lsn"
_SYNCHRONOUS = {Durability.FULL: "FULL", Durability.NORMAL: "NORMAL"}


def _checked_path(path: object) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"WAL path must be a str or os.PathLike, got {path!r}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise ConfigError(f"WAL path must be a non-empty file name, got {path!r}")
    if text == ":memory:" or text.startswith("file:"):
        raise ConfigError(
            f"WAL path {text!r} is not a file name;"
            " for a WAL without a disk use durability='memory'"
        )
    resolved = Path(text)
    if resolved.is_dir():
        raise ConfigError(f"WAL path {text!r} is a directory; name a file inside it")
    if not resolved.parent.is_dir():
        raise ConfigError(f"WAL path {text!r}: directory {str(resolved.parent)!r} does not exist")
    return resolved


async def on_sqlite_thread(conn: aiosqlite.Connection, fn: Callable[[], T]) -> T:
    """Run `fn` on the connection's own thread: one trip, however many statements it runs.

    Each public aiosqlite method is one trip. `Connection._execute` is the queue
    they all go through (aiosqlite's own `create_function` and `backup` use it),
    and the only way to run BEGIN, the inserts and COMMIT as a single trip.
    """
    execute = cast(Callable[[Callable[[], T]], Awaitable[T]], conn._execute)
    return await execute(fn)


def _is_corruption(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


def _check_format(db: sqlite3.Connection, where: str, node: str | None) -> bool:
    """Check that `db` is a dtxn WAL of this schema version; False if it is empty (new)."""
    try:
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    except sqlite3.DatabaseError as exc:
        if _is_corruption(exc):
            raise WalFormatError(f"{where} is not a dtxn WAL: SQLite says {exc}") from exc
        raise
    if not tables:
        return False
    if "meta" not in tables or "records" not in tables:
        raise WalFormatError(
            f"{where} is not a dtxn WAL: it holds tables {sorted(tables)}, not 'meta' and 'records'"
        )
    try:
        meta = {str(key): str(value) for key, value in db.execute("SELECT key, value FROM meta")}
    except sqlite3.DatabaseError as exc:
        raise WalFormatError(f"{where} is not a dtxn WAL: its meta table: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise WalFormatError(
            f"{where} is not a dtxn WAL: meta format is {meta.get('format')!r}, not {FORMAT!r}"
        )
    version = meta.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise WalFormatError(
            f"{where} has WAL schema version {version!r}; this dtxn reads version"
            f" {SCHEMA_VERSION} only"
        )
    columns = [row[1] for row in db.execute("PRAGMA table_info(records)")]
    if columns != RECORD_COLUMNS:
        raise WalFormatError(
            f"{where} claims WAL schema version {SCHEMA_VERSION} but its records table has"
            f" columns {columns}, not {RECORD_COLUMNS}"
        )
    stored_node = meta.get("node")
    if node is not None and stored_node is not None and stored_node != node:
        raise ConfigError(f"{where} is the WAL of node {stored_node!r}, not of {node!r}")
    return True


def _open_sync(
    db: sqlite3.Connection, where: str, node: str | None, synchronous: str, damage: str | None
) -> tuple[int, str | None]:
    """Runs on the connection's thread: check or create the schema; return the highest
    LSN and why the log may be short (`damage` found now, or kept from an earlier open)."""
    exists = _check_format(db, where, node)
    # Set before creating the schema, so that the schema itself is durable.
    (mode,) = db.execute("PRAGMA journal_mode=WAL").fetchone()
    if str(mode).lower() != "wal":
        raise WalError(f"WAL {where}: SQLite refused journal_mode=WAL (it kept {mode!r})")
    db.execute(f"PRAGMA synchronous={synchronous}")
    if not exists:
        meta = [("format", FORMAT), ("schema_version", str(SCHEMA_VERSION))]
        if node is not None:
            meta.append(("node", node))
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                db.execute(statement)
            db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta)
            db.execute("COMMIT")
        except BaseException:
            db.rollback()
            raise
    if damage is not None:
        # Durable before anything else runs: a crash now must not forget it.
        db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (SUSPECT_KEY, damage)
        )
    row = db.execute("SELECT value FROM meta WHERE key = ?", (SUSPECT_KEY,)).fetchone()
    (seq,) = db.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'records'"
    ).fetchone()
    (top,) = db.execute("SELECT coalesce(max(lsn), 0) FROM records").fetchone()
    return max(int(seq), int(top)), None if row is None else str(row[0])


def _keep_damaged(sidecar: Path) -> Path:
    """Copy a damaged sidecar aside (SQLite rewrites it once open); return the copy."""
    for n in itertools.count(1):
        copy = sidecar.with_name(f"{sidecar.name}.damaged-{n}")
        if not copy.exists():
            shutil.copyfile(sidecar, copy)
            return copy
    raise AssertionError("unreachable")


def _check_sidecar(path: Path, where: str) -> str | None:
    """Scan the sidecar before SQLite opens it: the reason the log may be short, or None."""
    scan = scan_sidecar(path)
    if scan is None or scan.damage is None:
        return None
    copy = _keep_damaged(Path(scan.path))
    reason = (
        f"the -wal sidecar was damaged when opened: {scan.damage}; SQLite keeps only the "
        f"{scan.frames} frame(s) before it, so forced records may be lost (copy kept at {copy})"
    )
    log.critical(
        "WAL %s: %s. This node's coordinator presumes no abort until an operator clears "
        "it (`dtxn inspect %s --accept-loss`, docs/wal.md)", where, reason, where,
    )
    return reason


def accept_loss(path: str | os.PathLike[str]) -> str | None:
    """Clear the mark a damaged sidecar left on the WAL at `path`; return what it said.

    For an operator who has resolved (or accepted) every transaction the lost
    records may have decided; restart the node afterwards, since a running
    node keeps the mark it opened with.
    """
    resolved = _checked_path(path)
    if not resolved.is_file():
        raise ConfigError(f"no WAL at {str(resolved)!r}")
    db = sqlite3.connect(resolved, isolation_level=None)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (SUSPECT_KEY,)).fetchone()
        db.execute("DELETE FROM meta WHERE key = ?", (SUSPECT_KEY,))
    except sqlite3.Error as exc:
        raise WalError(f"WAL {resolved}: clearing the damage mark failed: {exc}") from exc
    finally:
        db.close()
    return None if row is None else str(row[0])


@functools.lru_cache(maxsize=_INSERT_ROWS_MAX)
def _insert_sql(count: int) -> str:
    return _INSERT + ", ".join(["(?, ?, ?, ?, ?)"] * count)


def _insert(db: sqlite3.Connection, rows: list[Row]) -> None:
    for start in range(0, len(rows), _INSERT_ROWS_MAX):
        chunk = rows[start : start + _INSERT_ROWS_MAX]
        db.execute(_insert_sql(len(chunk)), list(itertools.chain.from_iterable(chunk)))


@functools.lru_cache(maxsize=_DISCARD_ROWS_MAX)
def _discard_sql(count: int) -> str:
    pairs = ", ".join(["(?, ?)"] * count)
    return (
        "DELETE FROM records WHERE lsn IN (SELECT r.lsn FROM (VALUES "
        + pairs
        + ") AS d JOIN records AS r ON r.txid = d.column1 AND r.lsn < d.column2)"
    )


@functools.lru_cache(maxsize=_DISCARD_ROWS_MAX)
def _drop_sql(count: int) -> str:
    return "DELETE FROM records WHERE lsn IN (" + ", ".join(["?"] * count) + ")"


def _discard(db: sqlite3.Connection, discards: list[Discard]) -> None:
    pairs = [(txid, bound) for txid, bound in discards if txid is not None]
    lsns = [lsn for txid, lsn in discards if txid is None]
    for start in range(0, len(pairs), _DISCARD_ROWS_MAX):
        chunk = pairs[start : start + _DISCARD_ROWS_MAX]
        db.execute(_discard_sql(len(chunk)), list(itertools.chain.from_iterable(chunk)))
    for start in range(0, len(lsns), _DISCARD_ROWS_MAX):
        batch = lsns[start : start + _DISCARD_ROWS_MAX]
        db.execute(_drop_sql(len(batch)), batch)


def _commit_sync(db: sqlite3.Connection, rows: list[Row], discards: list[Discard]) -> None:
    """Runs on the connection's thread: one transaction, one COMMIT, one fsync.

    Few statements, because the sqlite3 module lets go of the GIL around each
    step and must take it back after; while the event loop is busy, taking it
    back waits up to the interpreter's switch interval (5 ms). So the rows go
    in multi-row INSERTs rather than an executemany (one step per row), the
    discards in one DELETE per 256, and a batch that fits one INSERT is
    committed by that statement alone (autocommit: the statement is its own
    transaction) without BEGIN and COMMIT.
    """
    if not discards and 0 < len(rows) <= _INSERT_ROWS_MAX:
        _insert(db, rows)
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if rows:
            _insert(db, rows)
        if discards:
            _discard(db, discards)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise


def _commit_taken_sync(
    db: sqlite3.Connection, where: str, take: Callable[[], Taken | None]
) -> Taken | None:
    """Runs on the connection's thread: take the buffer now, as late as can be, and commit it."""
    taken = take()
    if taken is None:
        return None
    rows, discards, _ = taken
    if rows or discards:
        try:
            _commit_sync(db, rows, discards)
        except sqlite3.Error as exc:
            raise WalError(
                f"WAL {where}: committing {len(rows)} records and {len(discards)} discards"
                f" failed: {exc}"
            ) from exc
    return taken


def _read_sync(db: sqlite3.Connection, where: str) -> list[WalEntry]:
    """Read and check every record in one read transaction (one consistent snapshot)."""
    entries: list[WalEntry] = []
    try:
        for row in db.execute(_SELECT):
            entries.append(decode_row(tuple(row), where))
    except sqlite3.DatabaseError as exc:
        after = f" after lsn={entries[-1].lsn}" if entries else " before the first record"
        if _is_corruption(exc):
            raise LogCorruptError(f"WAL {where}: SQLite reports {exc!s}{after}") from exc
        raise WalError(f"WAL {where}: reading failed{after}: {exc}") from exc
    return entries


class SqliteWal(GroupCommitWal):
    """A `WalStore` in a SQLite file with group commit; see the module docstring.

    `busy_timeout_ms` is how long a commit waits for a lock held by another
    connection (only a misconfiguration causes one: readers never block it).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability | str = Durability.FULL,
        node: str | None = None,
        busy_timeout_ms: int = 5000,
        pending_records_max: int = PENDING_RECORDS_MAX,
        lazy_records_max: int = LAZY_RECORDS_MAX,
        discard_batch: int = 1,
    ) -> None:
        mode = parse_durability(durability)
        if mode is Durability.MEMORY:
            raise ConfigError(
                "durability 'memory' keeps nothing on disk: use MemoryWal (or make_wal)"
            )
        self.path = _checked_path(path)
        if node is not None and (not isinstance(node, str) or not node):
            raise ConfigError(f"WAL node name must be a non-empty str, got {node!r}")
        if not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise ConfigError(f"WAL busy_timeout_ms must be an int >= 0, got {busy_timeout_ms!r}")
        super().__init__(
            str(self.path),
            pending_records_max=pending_records_max,
            lazy_records_max=lazy_records_max,
            discard_batch=discard_batch,
        )
        self.durability = mode
        self.node = node
        self._busy_timeout_s = busy_timeout_ms / 1000
        self._conn: aiosqlite.Connection | None = None
        # Why this log may have lost forced records (a damaged sidecar), or None.
        self.log_may_be_short: str | None = None
        # Lives on the aiosqlite thread; only functions run there touch it.
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the module issues no hidden BEGIN; we write our own.
        self._db = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        return self._db

    def _connection(self) -> tuple[aiosqlite.Connection, sqlite3.Connection]:
        if self._conn is None or self._db is None:
            raise WalError(f"WAL {self.where} is not open; use `async with`")
        return self._conn, self._db

    async def _backend_open(self) -> int:
        if not hasattr(aiosqlite.Connection, "_execute"):
            raise WalError(f"this aiosqlite ({aiosqlite.__version__}) lacks Connection._execute")
        damage = await anyio.to_thread.run_sync(_check_sidecar, self.path, self.where)
        conn = aiosqlite.Connection(self._connect, 64)
        try:
            await conn
        except sqlite3.Error as exc:
            raise WalError(f"cannot open WAL {self.where}: {exc}") from exc
        self._conn = conn
        open_sync = partial(
            _open_sync,
            self._connection()[1],
            self.where,
            self.node,
            _SYNCHRONOUS[self.durability],
            damage,
        )
        try:
            lsn, self.log_may_be_short = await on_sqlite_thread(conn, open_sync)
            return lsn
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._backend_close()
            if isinstance(exc, sqlite3.Error):
                raise WalError(f"cannot open WAL {self.where}: {exc}") from exc
            raise

    async def _backend_commit(self, rows: list[Row], discards: list[Discard]) -> None:
        conn, db = self._connection()
        try:
            await on_sqlite_thread(conn, partial(_commit_sync, db, rows, discards))
        except sqlite3.Error as exc:
            raise WalError(
                f"WAL {self.where}: committing {len(rows)} records and {len(discards)} discards"
                f" failed: {exc}"
            ) from exc

    async def _backend_commit_taken(self, take: Callable[[], Taken | None]) -> Taken | None:
        # The buffer is taken on the connection's thread when the commit starts:
        # the hand-over to that thread can take as long as an fsync, and records
        # forced meanwhile ride in this commit rather than wait for the next.
        conn, db = self._connection()
        return await on_sqlite_thread(conn, partial(_commit_taken_sync, db, self.where, take))

    async def _backend_close(self) -> None:
        conn, self._conn, self._db = self._conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except sqlite3.Error as exc:
                raise WalError(f"closing WAL {self.where} failed: {exc}") from exc

    async def _backend_read(self) -> list[WalEntry]:
        conn, db = self._connection()
        return await on_sqlite_thread(conn, partial(_read_sync, db, self.where))

    async def settings(self) -> dict[str, str]:
        """journal_mode and synchronous as SQLite reports them for this connection."""
        conn, db = self._connection()

        def read() -> dict[str, str]:
            (journal,) = db.execute("PRAGMA journal_mode").fetchone()
            (sync,) = db.execute("PRAGMA synchronous").fetchone()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            return {"journal_mode": str(journal), "synchronous": names.get(sync, str(sync))}

        return await on_sqlite_thread(conn, read)


def read_wal(path: str | os.PathLike[str]) -> list[WalEntry]:
    """Every record of the WAL at `path`, read through a separate read-only connection.

    Safe on the WAL of a running node: a WAL-journal reader never blocks its
    writer. Blocks the calling thread; meant for `dtxn inspect` and tests.
    """
    resolved = _checked_path(path)
    if not resolved.is_file():
        raise ConfigError(f"no WAL at {str(resolved)!r}")
    where = str(resolved)
    db = sqlite3.connect(resolved.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    try:
        try:
            db.execute("BEGIN")
            if not _check_format(db, where, node=None):
                raise WalFormatError(f"{where} is not a dtxn WAL: it is an empty database")
            return _read_sync(db, where)
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise LogCorruptError(f"WAL {where}: SQLite reports {exc}") from exc
            raise WalError(f"reading WAL {where} failed: {exc}") from exc
        finally:
            if db.in_transaction:
                db.rollback()
    finally:
        db.close()


def read_suspect(path: str | os.PathLike[str]) -> str | None:
    """Why the WAL at `path` may have lost forced records, or None.

    Either the mark an earlier open left (its sidecar was damaged then) or,
    for a log no node has opened since, damage in its sidecar now. Reads
    only (a read-only connection; the sidecar is scanned, not touched).
    """
    resolved = _checked_path(path)
    if not resolved.is_file():
        raise ConfigError(f"no WAL at {str(resolved)!r}")
    scan = scan_sidecar(resolved)
    if scan is not None and scan.damage is not None:
        return (
            f"the -wal sidecar is damaged: {scan.damage}; a node opening this log keeps only "
            f"the {scan.frames} frame(s) before it"
        )
    db = sqlite3.connect(resolved.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (SUSPECT_KEY,)).fetchone()
    except sqlite3.Error as exc:
        raise WalError(f"reading WAL {resolved} failed: {exc}") from exc
    finally:
        db.close()
    return None if row is None else str(row[0])
