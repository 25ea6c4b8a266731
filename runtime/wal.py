"""The node's write-ahead log: the `WalStore` port, its records and group commit.

Theory of operation
-------------------
The WAL stores opaque record bytes per transaction id; the runtime encodes its
protocol records with msgspec and names each with a short `kind` for
inspection. Every record gets a log sequence number (LSN) when it is handed
in, so LSN order is append order.

Records wait in one bounded buffer. A single writer task, owned by the store's
task group, takes *everything* in the buffer and makes it durable in one
backend commit (for SQLite: one trip to the connection's thread, one COMMIT,
one fsync), then wakes every `force` whose record rode in that commit. While a
commit is in flight new records pile up for the next one, so the number of
fsyncs follows the disk, not the number of transactions: group commit.

The writer starts a commit when a `force` waits, when the lazy records reach
`lazy_records_max`, or when the store closes; lazy `append`s and `discard`s
alone do not pay for an fsync. Commits happen in LSN order, so what is durable
is always a prefix of what was handed in: `force(...)` returning LSN n means
every record with an LSN up to n is durable (less the discarded ones).

If a commit fails, every waiting `force` gets a `WalError` and the store
refuses further writes: a log that may have a hole must not keep growing. A
failure that no caller has seen yet is raised when the block exits.

Backends: `dtxn.runtime.wal_sqlite.SqliteWal` (aiosqlite, WAL journal,
synchronous=FULL by default) and `dtxn.runtime.wal_memory.MemoryWal` (no
threads, no files; keeps exactly the committed prefix across `crash()`).
The format and schema are described in docs/wal.md.
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Protocol, Self

import anyio
import msgspec
from anyio.abc import TaskGroup
from dtxn.protocols.errors import ConfigError, DtxnError, LogCorruptError

__all__ = [
    "SCHEMA_VERSION",
    "Durability",
    "GroupCommitWal",
    "WalEntry",
    "WalError",
    "WalFormatError",
    "WalFull",
    "WalStatistics",
    "WalStore",
    "decode_row",
    "make_wal",
    "parse_durability",
    "record_checksum",
]

SCHEMA_VERSION = 1

PENDING_RECORDS_MAX = 65536
LAZY_RECORDS_MAX = 1024


class WalError(DtxnError):
    """Raised when the write-ahead log cannot write, or is used while closed or failed."""


class WalFull(WalError):
    """Raised by `append` and `discard` when the buffer has no room; `force` waits instead."""


class WalFormatError(WalError):
    """Raised when a file is not a dtxn WAL or has a schema version this dtxn cannot read."""


class Durability(enum.StrEnum):
    """How hard a commit tries to survive a crash."""

    #: journal_mode=WAL, synchronous=FULL: a commit survives power loss.
    FULL = "full"
    #: journal_mode=WAL, synchronous=NORMAL: survives a process crash, but the
    #: last commits can roll back on power loss. Not for forced records.
    NORMAL = "normal"
    #: No disk: `MemoryWal`, for tests and the simulator.
    MEMORY = "memory"


def parse_durability(value: Durability | str) -> Durability:
    """The `Durability` named by `value`, or `ConfigError` listing the valid names."""
    try:
        return Durability(value)
    except ValueError:
        names = ", ".join(repr(mode.value) for mode in Durability)
        raise ConfigError(f"unknown WAL durability {value!r}; choose one of {names}") from None


class WalEntry(msgspec.Struct, frozen=True):
    """One record read back from the log, for recovery and inspection."""

    lsn: int
    txid: str
    kind: str
    data: bytes


class WalStatistics(msgspec.Struct, frozen=True):
    """An immutable snapshot of one store's counters since it was built."""

    records_appended: int  # by append and force
    forces: int
    discards: int  # transaction ids handed to discard
    commits: int  # backend commits, one fsync each
    records_committed: int
    largest_batch: int  # most records in one commit
    mean_batch: float  # records_committed / commits
    bytes_written: int  # record data bytes committed


class WalStore(Protocol):
    """What the runtime (and the simulated disk) needs from a write-ahead log."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def append(self, txid: str, kind: str, data: bytes) -> None:
        """Add a lazy record to the next commit; does not wait."""
        ...

    async def force(self, txid: str, kind: str, data: bytes) -> int:
        """Add a record; return its LSN once it and every earlier record are durable."""
        ...

    def force_nowait(
        self, txid: str, kind: str, data: bytes, done: Callable[[WalError | None], None]
    ) -> int:
        """Add a record; call `done(None)` once durable, or `done(error)`."""
        ...

    def discard(self, txids: Iterable[str]) -> None:
        """Delete, in the next commit, the records these ended transactions wrote so far."""
        ...

    async def read_all(self) -> list[WalEntry]:
        """Every committed record in LSN order, each checked against its checksum."""
        ...

    def statistics(self) -> WalStatistics: ...


# -- records -------------------------------------------------------------------

# (lsn, txid, kind, data, checksum): the shape of a row in every backend.
Row = tuple[int, str, str, bytes, int]

_CHECKSUM_HEADER = struct.Struct(">QII")


def record_checksum(lsn: int, txid: str, kind: str, data: bytes) -> int:
    """CRC-32 over the LSN, txid, kind and data; lengths are included so fields cannot slide."""
    txid_bytes = txid.encode()
    kind_bytes = kind.encode()
    head = _CHECKSUM_HEADER.pack(lsn, len(txid_bytes), len(kind_bytes)) + txid_bytes + kind_bytes
    return zlib.crc32(data, zlib.crc32(head))


def decode_row(row: tuple[object, ...], where: str) -> WalEntry:
    """Check one stored row and turn it into a `WalEntry`, or raise `LogCorruptError`."""
    if len(row) != 5:
        raise LogCorruptError(f"WAL {where}: a record has {len(row)} columns, expected 5")
    lsn, txid, kind, data, checksum = row
    if not isinstance(lsn, int):
        raise LogCorruptError(f"WAL {where}: a record has lsn {lsn!r}, expected an integer")
    for name, value, wanted in (
        ("txid", txid, str),
        ("kind", kind, str),
        ("data", data, bytes),
        ("checksum", checksum, int),
    ):
        if not isinstance(value, wanted):
            raise LogCorruptError(
                f"WAL {where}: record lsn={lsn} has {name} of type {type(value).__name__},"
                f" expected {wanted.__name__}"
            )
    assert isinstance(txid, str) and isinstance(kind, str) and isinstance(data, bytes)
    try:
        expected = record_checksum(lsn, txid, kind, data)
    except (UnicodeEncodeError, struct.error) as exc:
        raise LogCorruptError(f"WAL {where}: record lsn={lsn} cannot be decoded: {exc}") from exc
    if checksum != expected:
        raise LogCorruptError(
            f"WAL {where}: record lsn={lsn} (txid {txid!r}, kind {kind!r}) fails its checksum"
            f" (stored {checksum!r}, computed {expected}); refusing to replay it"
        )
    return WalEntry(lsn, txid, kind, data)


# -- group commit ----------------------------------------------------------------


class _Failure:
    """Why the store stopped writing; raised afresh to each caller that meets it."""

    def __init__(self, error: WalError, *, reported: bool = False) -> None:
        self.message = str(error)
        self.cause = error.__cause__
        self.reported = reported

    def error(self) -> WalError:
        self.reported = True
        fresh = WalError(self.message)
        fresh.__cause__ = self.cause
        return fresh


class _Batch:
    """One future commit: the forces whose records ride in it wait on `done`."""

    __slots__ = ("callbacks", "done", "failure")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.failure: _Failure | None = None
        # Continuations of `force_nowait`, called in LSN order once durable.
        self.callbacks: list[Callable[[WalError | None], None]] = []

    def fail(self, failure: _Failure) -> None:
        if not self.done.is_set():
            self.failure = failure
            self.done.set()
            if self.callbacks:  # error() marks the failure as seen by a caller
                self._call(failure.error())

    def succeed(self) -> None:
        self.done.set()
        self._call(None)

    def _call(self, error: WalError | None) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback(error)


class GroupCommitWal:
    """The `WalStore` contract over a backend that can commit a batch atomically.

    A subclass provides the four `_backend_*` coroutines; everything about
    buffering, LSNs, waking forces and failing them lives here, so the SQLite
    store and the in-memory store behave alike.
    """

    def __init__(
        self,
        where: str,
        *,
        pending_records_max: int = PENDING_RECORDS_MAX,
        lazy_records_max: int = LAZY_RECORDS_MAX,
    ) -> None:
        for name, value in (
            ("pending_records_max", pending_records_max),
            ("lazy_records_max", lazy_records_max),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"WAL {where}: {name} must be an int >= 1, got {value!r}")
        if lazy_records_max > pending_records_max:
            raise ConfigError(
                f"WAL {where}: lazy_records_max ({lazy_records_max}) must not exceed"
                f" pending_records_max ({pending_records_max})"
            )
        self.where = where
        self._pending_records_max = pending_records_max
        self._lazy_records_max = lazy_records_max
        self._tg: TaskGroup | None = None
        self._open = False
        self._closing = False
        self._failure: _Failure | None = None
        self._next_lsn = 1
        self._rows: list[Row] = []
        self._discards: list[tuple[str, int]] = []
        # Events are bound to a running loop, so they are made in __aenter__.
        self._wake: anyio.Event
        self._room: anyio.Event
        self._writer_done: anyio.Event
        self._batch: _Batch
        self._in_flight: _Batch | None = None
        self._records_appended = 0
        self._forces = 0
        self._discarded = 0
        self._commits = 0
        self._records_committed = 0
        self._largest_batch = 0
        self._bytes_written = 0

    # -- backend hooks -------------------------------------------------------

    async def _backend_open(self) -> int:
        """Open the storage; return the highest LSN it ever committed (0 when new)."""
        raise NotImplementedError

    async def _backend_commit(self, rows: list[Row], discards: list[tuple[str, int]]) -> None:
        """Insert `rows`, then delete each (txid, lsn bound), atomically and durably.

        Raise `WalError` (chained to the cause) when the storage fails.
        """
        raise NotImplementedError

    async def _backend_close(self) -> None:
        raise NotImplementedError

    async def _backend_read(self) -> list[WalEntry]:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._open:
            raise WalError(f"WAL {self.where} is already open")
        high_lsn = await self._backend_open()
        self._next_lsn = high_lsn + 1
        self._rows, self._discards = [], []
        self._failure = None
        self._closing = False
        self._wake = anyio.Event()
        self._room = anyio.Event()
        self._writer_done = anyio.Event()
        self._batch = _Batch()
        self._in_flight = None
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._write_batches)
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        assert tg is not None, "__aexit__ without __aenter__"
        # Leaving drains the buffer: records appended before closing are kept.
        # A cancelled block cancels the writer instead (see _write_batches).
        self._closing = True
        self._wake.set()
        try:
            with anyio.CancelScope(shield=True):
                await self._writer_done.wait()
        finally:
            self._tg = None
            self._open = False
            try:
                result = await tg.__aexit__(exc_type, exc, tb)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._backend_close()
        failure = self._failure
        if exc is None and failure is not None and not failure.reported:
            raise failure.error()
        return result

    # -- writing ---------------------------------------------------------------

    def append(self, txid: str, kind: str, data: bytes) -> None:
        """Add a lazy record to the next commit; does not wait.

        Raises `WalFull` when the buffer holds `pending_records_max` records.
        """
        self._check_writable()
        if len(self._rows) >= self._pending_records_max:
            self._wake.set()
            raise WalFull(
                f"WAL {self.where}: {len(self._rows)} records wait for the disk;"
                " use force() to wait for room"
            )
        self._add(txid, kind, data)
        if len(self._rows) >= self._lazy_records_max:
            self._wake.set()

    async def force(self, txid: str, kind: str, data: bytes) -> int:
        """Add a record; return its LSN once it and every earlier record are durable."""
        self._check_writable()
        while len(self._rows) >= self._pending_records_max:
            self._wake.set()
            await self._room.wait()
            self._check_writable()
        lsn = self._add(txid, kind, data)
        self._forces += 1
        batch = self._batch
        self._wake.set()
        await batch.done.wait()
        if batch.failure is not None:
            raise batch.failure.error()
        return lsn

    def force_nowait(
        self, txid: str, kind: str, data: bytes, done: Callable[[WalError | None], None]
    ) -> int:
        """Add a record and call `done(None)` once it is durable (or `done(error)`).

        The cheap form of `force` for callers that continue in a callback rather
        than a task (the runtime's hosts). Raises `WalFull` when the buffer is full.
        """
        self._check_writable()
        if len(self._rows) >= self._pending_records_max:
            self._wake.set()
            raise WalFull(f"WAL {self.where}: {len(self._rows)} records wait for the disk")
        lsn = self._add(txid, kind, data)
        self._forces += 1
        self._batch.callbacks.append(done)
        self._wake.set()
        return lsn

    def discard(self, txids: Iterable[str]) -> None:
        """Delete, in the next commit, the records these transactions wrote so far.

        Records appended after this call (a reused txid) are kept.
        """
        if isinstance(txids, str):
            raise TypeError("discard() takes an iterable of transaction ids, not one str")
        self._check_writable()
        bound = self._next_lsn
        for txid in txids:
            if len(self._discards) >= self._pending_records_max:
                self._wake.set()
                raise WalFull(f"WAL {self.where}: {len(self._discards)} discards wait for the disk")
            self._discards.append((txid, bound))
            self._discarded += 1
        if len(self._discards) >= self._lazy_records_max:
            self._wake.set()

    async def read_all(self) -> list[WalEntry]:
        """Every committed record in LSN order, each checked against its checksum."""
        return await self._backend_read()

    def statistics(self) -> WalStatistics:
        return WalStatistics(
            records_appended=self._records_appended,
            forces=self._forces,
            discards=self._discarded,
            commits=self._commits,
            records_committed=self._records_committed,
            largest_batch=self._largest_batch,
            mean_batch=self._records_committed / self._commits if self._commits else 0.0,
            bytes_written=self._bytes_written,
        )

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure.error()
        if not self._open:
            raise WalError(f"WAL {self.where} is not open; use `async with`")
        if self._closing:
            raise WalError(f"WAL {self.where} is closing")

    def _add(self, txid: str, kind: str, data: bytes) -> int:
        lsn = self._next_lsn
        row = (lsn, txid, kind, data, record_checksum(lsn, txid, kind, data))
        self._next_lsn = lsn + 1
        self._rows.append(row)
        self._records_appended += 1
        return lsn

    def _fail(self, error: WalError, *, reported: bool = False) -> None:
        """Stop writing for good: fail every waiting force and drop the buffer."""
        if self._failure is None:
            self._failure = _Failure(error, reported=reported)
        failure = self._failure
        if self._in_flight is not None:
            self._in_flight.fail(failure)
        self._batch.fail(failure)
        self._rows, self._discards = [], []
        self._room.set()
        self._wake.set()

    async def _write_batches(self) -> None:
        """The writer: one backend commit per wake-up, covering all that is pending."""
        drained = False
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                if self._failure is not None:
                    return
                if self._rows or self._discards:
                    await self._commit_pending()
                    if self._failure is not None:
                        return
                if self._closing:
                    if not (self._rows or self._discards):
                        drained = True
                        return
                    self._wake.set()
        finally:
            # Cancelled mid-commit or before draining: nobody may wait forever.
            if self._failure is None and not drained:
                self._fail(WalError(f"WAL {self.where} stopped before its records were durable"))
            self._writer_done.set()

    async def _commit_pending(self) -> None:
        rows, self._rows = self._rows, []
        discards, self._discards = self._discards, []
        batch, self._batch = self._batch, _Batch()
        self._room.set()
        self._room = anyio.Event()
        # Left set if the commit is cancelled, so that _fail reaches its forces.
        self._in_flight = batch
        try:
            await self._backend_commit(rows, discards)
        except WalError as error:
            self._fail(error)
            self._in_flight = None
            return
        self._in_flight = None
        self._commits += 1
        self._records_committed += len(rows)
        self._largest_batch = max(self._largest_batch, len(rows))
        self._bytes_written += sum(len(row[3]) for row in rows)
        batch.succeed()


def make_wal(
    path: str | os.PathLike[str] | None,
    *,
    durability: Durability | str = Durability.FULL,
    node: str | None = None,
) -> WalStore:
    """The store a node's configuration asks for: `SqliteWal` at `path`, or `MemoryWal`."""
    # The backends import this module, so they are imported here, not at the top.
    mode = parse_durability(durability)
    if mode is Durability.MEMORY:
        from dtxn.runtime.wal_memory import MemoryWal

        return MemoryWal(node=node)
    if path is None:
        raise ConfigError(f"WAL durability {mode.value!r} writes a file: give the WAL a path")
    from dtxn.runtime.wal_sqlite import SqliteWal

    return SqliteWal(path, durability=mode, node=node)
