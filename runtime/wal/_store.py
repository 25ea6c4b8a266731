"""The node's write-ahead log: the `WalStore` port, its records and `make_wal`.

Theory of operation
-------------------
The WAL stores opaque record bytes per transaction id; the runtime encodes its
protocol records with msgspec and names each with a short `kind` for
inspection. Every record gets a log sequence number (LSN) when it is handed
in, so LSN order is append order.

This module is the vocabulary every store and its callers share: the errors,
the `WalStore` protocol, the stored row and its checksum, and `make_wal`. How a
store buffers records and group-commits them is
`dtxn.runtime.wal._group_commit.GroupCommitWal`; the package re-exports both.

Backends: `dtxn.runtime.wal._sqlite.SqliteWal` (aiosqlite, WAL journal,
synchronous=FULL by default) and `dtxn.runtime.wal._memory.MemoryWal` (no
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

import msgspec
from dtxn.protocols.errors import ConfigError, DtxnError, LogCorruptError

__all__ = [
    "SCHEMA_VERSION",
    "Durability",
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
# Discards a node's SQLite WAL gathers before a commit carries them (see
# `GroupCommitWal.__init__`); a store built directly carries them at once.
DISCARD_BATCH = 256


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
    drops: int = 0  # LSNs handed to drop


class WalStore(Protocol):
    """What the runtime (and the simulated disk) needs from a write-ahead log."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...

    def append(self, txid: str, kind: str, data: bytes) -> int:
        """Add a lazy record to the next commit and return its LSN; does not wait."""
        ...

    async def force(self, txid: str, kind: str, data: bytes) -> int:
        """Add a record; return its LSN once it and every earlier record are durable."""
        ...

    def force_nowait(
        self, txid: str, kind: str, data: bytes, done: Callable[[WalError | None], None]
    ) -> int:
        """Add a record; call `done(None)` once durable, or `done(error)`."""
        ...

    def discard(self, txids: Iterable[str], *, before: int | None = None) -> None:
        """Delete, in the next commit, the records these ended transactions wrote so far.

        With `before`, only their records with a lower LSN (those written
        before the record at `before`, which is kept).
        """
        ...

    async def read_all(self) -> list[WalEntry]:
        """Every committed record in LSN order, each checked against its checksum."""
        ...

    def drop(self, lsns: Iterable[int]) -> None:
        """Delete, in the next commit, the records at these LSNs (those of one writer)."""
        ...

    def lose_buffered(self) -> None:
        """The process crashed: drop what no commit has taken yet and refuse more writes."""
        ...

    def statistics(self) -> WalStatistics: ...


# -- records -------------------------------------------------------------------

# (lsn, txid, kind, data, checksum): the shape of a row in every backend.
Row = tuple[int, str, str, bytes, int]

# A deletion waiting for the next commit: (txid, bound) deletes that txid's
# records below LSN `bound` (`discard`); (None, lsn) the one record at `lsn`
# (`drop`).
Discard = tuple[str | None, int]

_CHECKSUM_HEADER = struct.Struct(">QII")


def record_checksum(lsn: int, txid: str, kind: str, data: bytes) -> int:
    """CRC-32 over the LSN, txid, kind and data; lengths are included so fields cannot slide."""
    txid_bytes = txid.encode()
    kind_bytes = kind.encode()
    head = _CHECKSUM_HEADER.pack(lsn, len(txid_bytes), len(kind_bytes)) + txid_bytes + kind_bytes
    return zlib.crc32(data, zlib.crc32(head))


# Encoded kinds, for `_checksum`: a handful of record tags in practice; bounded
# all the same, since `append` takes any kind.
_KIND_BYTES: dict[str, bytes] = {}
_KIND_BYTES_MAX = 256


def _checksum(lsn: int, txid: str, kind: str, data: bytes) -> int:
    """`record_checksum`, the same value, with the kind's encoding cached (the write path)."""
    kind_bytes = _KIND_BYTES.get(kind)
    if kind_bytes is None:
        kind_bytes = kind.encode()
        if len(_KIND_BYTES) < _KIND_BYTES_MAX:
            _KIND_BYTES[kind] = kind_bytes
    txid_bytes = txid.encode()
    head = _CHECKSUM_HEADER.pack(lsn, len(txid_bytes), len(kind_bytes)) + txid_bytes + kind_bytes
    return _crc32(data, _crc32(head))


_crc32 = zlib.crc32


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
        from dtxn.runtime.wal._memory import MemoryWal

        return MemoryWal(node=node)
    if path is None:
        raise ConfigError(f"WAL durability {mode.value!r} writes a file: give the WAL a path")
    from dtxn.runtime.wal._sqlite import SqliteWal

    return SqliteWal(path, durability=mode, node=node, discard_batch=DISCARD_BATCH)
