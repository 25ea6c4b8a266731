"""dtxn.runtime.wal: the node's write-ahead log.

`WalStore` is the port every store implements; `make_wal(path, durability)`
builds one. `GroupCommitWal` is the engine the stores share: it buffers
records and forces them in batches (group commit). Two backends:
`SqliteWal` (aiosqlite, WAL journal, `synchronous=FULL` by default) and
`MemoryWal` (no threads, no files; keeps exactly the committed prefix across
`crash()`, for the simulator). `read_wal` reads a log file without opening it
for writing (what `dtxn inspect` uses). `SqliteWal` scans its `-wal` sidecar
before SQLite opens it (`scan_sidecar`): a damaged one marks the log as
possibly short (`read_suspect`, `accept_loss`). `resolve_in_doubt` writes an
operator's decision for a branch left in doubt into a stopped node's log
(`dtxn resolve`, docs/operations.md). The format is in docs/wal.md.
"""

from dtxn.runtime.wal._group_commit import GroupCommitWal, Taken
from dtxn.runtime.wal._memory import MemoryWal
from dtxn.runtime.wal._resolve import (
    LogEnvelope,
    LogInUse,
    LogMayBeShort,
    Resolution,
    ResolveRefused,
    resolve_in_doubt,
)
from dtxn.runtime.wal._sidecar import SidecarScan, scan_sidecar
from dtxn.runtime.wal._sqlite import (
    SqliteWal,
    accept_loss,
    on_sqlite_thread,
    read_suspect,
    read_wal,
)
from dtxn.runtime.wal._store import (
    SCHEMA_VERSION,
    Durability,
    WalEntry,
    WalError,
    WalFormatError,
    WalFull,
    WalStatistics,
    WalStore,
    decode_row,
    make_wal,
    parse_durability,
    record_checksum,
)

__all__ = [
    "SCHEMA_VERSION",
    "Durability",
    "GroupCommitWal",
    "LogEnvelope",
    "LogInUse",
    "LogMayBeShort",
    "MemoryWal",
    "Resolution",
    "ResolveRefused",
    "SidecarScan",
    "SqliteWal",
    "Taken",
    "WalEntry",
    "WalError",
    "WalFormatError",
    "WalFull",
    "WalStatistics",
    "WalStore",
    "accept_loss",
    "decode_row",
    "make_wal",
    "on_sqlite_thread",
    "parse_durability",
    "read_suspect",
    "read_wal",
    "record_checksum",
    "resolve_in_doubt",
    "scan_sidecar",
]
