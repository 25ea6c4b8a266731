"""`MemoryWal`: a `WalStore` with no threads and no files, for tests and the simulator.

It runs the same group commit as `SqliteWal` (see `dtxn.runtime.wal._group_commit`); a
commit takes one scheduling round instead of an fsync. The object itself plays
the disk: it outlives `async with` blocks, so a test can close or `crash()` it
and open it again to recover. `crash()` keeps exactly the committed prefix,
which is every record some `force` has returned for, and loses the rest.

Faults for the simulator: `fail_next_commit()` (an fsync error),
`stall_commits()` / `resume_commits()` (a slow fsync, which also lets a test
crash in the middle of a commit) and `corrupt(lsn)` (a bit flip, caught by
the checksum on the next read) and `lose_tail()` (a damaged sidecar: the newer
half of the committed records is gone, and the store marks itself, as
`SqliteWal`'s sidecar scan does).
"""

from __future__ import annotations

import asyncio
import errno
import types
from collections.abc import Generator
from typing import ClassVar

from dtxn.protocols.errors import ConfigError
from dtxn.runtime.wal._group_commit import GroupCommitWal
from dtxn.runtime.wal._store import (
    LAZY_RECORDS_MAX,
    PENDING_RECORDS_MAX,
    Discard,
    Row,
    WalEntry,
    WalError,
    decode_row,
)

__all__ = ["MemoryWal"]


@types.coroutine
def _yield_to_loop() -> Generator[None, None, None]:
    """Let every other ready task run once: what `anyio.lowlevel.checkpoint` does
    on asyncio (a bare yield, as `sleep(0)`), without asking sniffio for the
    backend on every commit."""
    yield


class MemoryWal(GroupCommitWal):
    """An in-memory `WalStore` that models a disk: committed records survive `crash()`."""

    # Closing awaits nothing, so it needs no shielded cancel scope.
    _close_suspends: ClassVar[bool] = False

    def __init__(
        self,
        *,
        node: str | None = None,
        pending_records_max: int = PENDING_RECORDS_MAX,
        lazy_records_max: int = LAZY_RECORDS_MAX,
    ) -> None:
        if node is not None and (not isinstance(node, str) or not node):
            raise ConfigError(f"WAL node name must be a non-empty str, got {node!r}")
        super().__init__(
            f"memory:{node}" if node else "memory:",
            pending_records_max=pending_records_max,
            lazy_records_max=lazy_records_max,
        )
        self.node = node
        # Committed rows by LSN; dict order is LSN order because commits are.
        self._durable: dict[int, Row] = {}
        self._lsns_by_txid: dict[str, list[int]] = {}
        self._high_lsn = 0
        self._crashes = 0
        self._fault: OSError | None = None
        self._stall: asyncio.Event | None = None
        # Why this log may have lost forced records (set by `lose_tail`), or None.
        self.log_may_be_short: str | None = None

    # -- faults ----------------------------------------------------------------

    def crash(self) -> None:
        """Lose every record not yet committed, as a power cut would.

        Forces still waiting fail with `WalError` and the store refuses writes
        until it is opened again, which recovers the committed prefix.
        """
        self._crashes += 1
        if self._open:
            self._fail(WalError(f"WAL {self.where} crashed"), reported=True)
        self.resume_commits()

    def fail_next_commit(self, error: OSError | None = None) -> None:
        """Make the next commit fail with `error` (default: EIO), as a failing fsync would."""
        self._fault = error if error is not None else OSError(errno.EIO, "injected fsync error")

    def stall_commits(self) -> None:
        """Hold every commit (before it takes effect) until `resume_commits` or `crash`."""
        if self._stall is None:
            self._stall = asyncio.Event()

    def resume_commits(self) -> None:
        """Let held commits go on; see `stall_commits`."""
        stall, self._stall = self._stall, None
        if stall is not None:
            stall.set()

    def lose_tail(self, *, detected: bool = True) -> int:
        """Drop the newer half of the committed records (at least one), as SQLite does
        with the frames after a damaged one of its sidecar; return how many.

        With `detected` the store marks itself `log_may_be_short`, as
        `SqliteWal` does when its scan finds the damage; without, the loss is
        silent (a lost sidecar). Call it on a crashed store (which refuses
        writes until it is opened again).
        """
        lsns = list(self._durable)
        lost = lsns[len(lsns) // 2 :]
        for lsn in lost:
            txid = self._durable.pop(lsn)[1]
            kept = [x for x in self._lsns_by_txid.get(txid, []) if x != lsn]
            if kept:
                self._lsns_by_txid[txid] = kept
            else:
                self._lsns_by_txid.pop(txid, None)
        if lost and detected:
            self.log_may_be_short = (
                f"{len(lost)} committed record(s) from lsn {lost[0]} on were lost "
                "(a damaged sidecar, simulated)"
            )
        return len(lost)

    def corrupt(self, lsn: int, *, byte: int = 0) -> None:
        """Flip the bits of one byte of a committed record's data, as a bad sector would."""
        row = self._durable.get(lsn)
        if row is None:
            raise KeyError(f"no committed record with lsn={lsn} in WAL {self.where}")
        data = bytearray(row[3]) or bytearray(1)
        data[byte % len(data)] ^= 0xFF
        self._durable[lsn] = (row[0], row[1], row[2], bytes(data), row[4])

    # -- reading without a trip ------------------------------------------------

    def entries(self, *, pending: bool = False) -> list[WalEntry]:
        """The committed records now, open or not; with `pending=True` also the buffer's.

        A synchronous look for tests and checkers; committed records are
        checked against their checksums as `read_all` checks them.
        """
        found = [decode_row(row, self.where) for row in self._durable.values()]
        if pending and self._open:
            found.extend(WalEntry(lsn, txid, kind, data) for lsn, txid, kind, data, _ in self._rows)
        return found

    # -- backend -----------------------------------------------------------------

    async def _backend_open(self) -> int:
        return self._high_lsn

    async def _backend_commit(self, rows: list[Row], discards: list[Discard]) -> None:
        crashes = self._crashes
        # The fsync: other tasks run meanwhile, and their records join the next commit.
        await _yield_to_loop()
        while self._stall is not None:
            await self._stall.wait()
        if self._crashes != crashes:
            raise WalError(f"WAL {self.where} crashed during a commit; it was lost")
        fault, self._fault = self._fault, None
        if fault is not None:
            raise WalError(
                f"WAL {self.where}: committing {len(rows)} records failed: {fault}"
            ) from fault
        for row in rows:
            self._durable[row[0]] = row
            self._lsns_by_txid.setdefault(row[1], []).append(row[0])
            self._high_lsn = row[0]
        for txid, bound in discards:
            if txid is None:  # drop: the one record at LSN `bound`
                dropped = self._durable.get(bound)
                if dropped is not None:
                    del self._durable[bound]
                    owner = dropped[1]
                    left = [lsn for lsn in self._lsns_by_txid[owner] if lsn != bound]
                    if left:
                        self._lsns_by_txid[owner] = left
                    else:
                        del self._lsns_by_txid[owner]
                continue
            lsns = self._lsns_by_txid.get(txid)
            if not lsns:
                continue
            kept = [lsn for lsn in lsns if lsn >= bound]
            for lsn in lsns:
                if lsn < bound:
                    del self._durable[lsn]
            if kept:
                self._lsns_by_txid[txid] = kept
            else:
                del self._lsns_by_txid[txid]

    async def _backend_close(self) -> None:
        return None

    async def _backend_read(self) -> list[WalEntry]:
        await _yield_to_loop()
        return self.entries()
