"""Group commit for the write-ahead log: `GroupCommitWal`, the engine under every backend.

A backend (`SqliteWal`, `MemoryWal`) subclasses `GroupCommitWal` and supplies
its `_backend_*` coroutines; the records, their LSNs and the `WalStore`
contract it fulfils are in `dtxn.runtime.wal._store`.

Theory of operation
-------------------
Records wait in one bounded buffer. A single writer task, owned by the store
(see "Lifecycle" below), takes *everything* in the buffer and makes it durable in one
backend commit (for SQLite: one trip to the connection's thread, one COMMIT,
one fsync), then wakes every `force` whose record rode in that commit. While a
commit is in flight new records pile up for the next one, so the number of
fsyncs follows the disk, not the number of transactions: group commit.

A backend with a thread of its own (SQLite) takes the buffer on that thread,
just before BEGIN, not when the writer hands the commit over: records forced
while the commit waited for the thread ride in it. `_lock` guards the buffer
for that hand-over; the loop never waits on the thread while holding it.

The writer starts a commit when a `force` waits, when the lazy records reach
`lazy_records_max`, or when the store closes; lazy `append`s and `discard`s
alone do not pay for an fsync. Commits happen in LSN order, so what is durable
is always a prefix of what was handed in: `force(...)` returning LSN n means
every record with an LSN up to n is durable (less the discarded ones).

If a commit fails, every waiting `force` gets a `WalError` and the store
refuses further writes: a log that may have a hole must not keep growing. A
failure that no caller has seen yet is raised when the block exits.

Lifecycle
---------
The store is its writer's task group: the writer is a plain asyncio task that
the store starts, and `__aexit__` always joins it (and raises what it raised,
in an ExceptionGroup, as a task group would). Why not an anyio task group: a
node's incarnation in the simulator lasts a few dozen events, and anyio 4
wraps every task in a handle with its own cancel scope and event, so opening
and closing the store cost more than the commits in between. For the same
reason the writer starts lazily, on its first wake-up (a force, a full lazy
buffer, or closing with records buffered): a store that never writes never
starts one. The runtime runs on asyncio only, so the wake-ups are asyncio
futures and events, not anyio's.

Leaving the block normally drains the buffer. When the block is left because
an enclosing cancel scope was cancelled (a crash), the writer is cancelled, as
a task group's child would be: records not yet durable are lost and waiting
forces fail. A crashing runtime calls `lose_buffered` first: otherwise a
drain that reached the disk before the cancellation reached the writer could
keep lazy records a real crash would have lost. A plain asyncio cancellation
of the caller still drains, as with the task group (which cancelled its
writer only after the drain).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import ClassVar, Self

import anyio
from dtxn.protocols.errors import ConfigError
from dtxn.runtime.wal._store import (
    LAZY_RECORDS_MAX,
    PENDING_RECORDS_MAX,
    Discard,
    Row,
    WalEntry,
    WalError,
    WalFull,
    WalStatistics,
    _checksum,
)

__all__ = ["GroupCommitWal", "Taken"]


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
    """One future commit: the forces whose records ride in it wait on `done`.

    Built wherever the batch before it is taken, which may be the backend's
    thread; so `done` (bound to the event loop) is made on the loop, by the
    first `force` that waits on it. An event rather than one shared future:
    cancelling one waiting force must not cancel the others.
    """

    __slots__ = ("callbacks", "done", "failure", "finished")

    def __init__(self) -> None:
        self.done: asyncio.Event | None = None
        self.finished = False
        self.failure: _Failure | None = None
        # Continuations of `force_nowait`, called in LSN order once durable.
        self.callbacks: list[Callable[[WalError | None], None]] = []

    def fail(self, failure: _Failure) -> None:
        if not self.finished:
            self.finished = True
            self.failure = failure
            if self.done is not None:
                self.done.set()
            if self.callbacks:  # error() marks the failure as seen by a caller
                self._call(failure.error())

    def succeed(self) -> None:
        self.finished = True
        if self.done is not None:
            self.done.set()
        self._call(None)

    def _call(self, error: WalError | None) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback(error)


# What one commit takes from the buffer: its rows, its discards, and the batch
# of forces waiting for them.
Taken = tuple[list[Row], list[Discard], _Batch]


class GroupCommitWal:
    """The `WalStore` contract over a backend that can commit a batch atomically.

    A subclass provides the four `_backend_*` coroutines; everything about
    buffering, LSNs, waking forces and failing them lives here, so the SQLite
    store and the in-memory store behave alike.

    A backend with a thread of its own may take the buffer *on that thread*,
    when the commit really starts (`_backend_commit_taken`): records handed in
    while the commit waited for the thread then ride in it instead of paying
    for one more fsync. `_lock` guards the buffer for that hand-over.
    """

    #: Whether `_backend_close` may suspend, and so needs a shield against a
    #: cancelled scope; the in-memory store closes without awaiting and is
    #: spared the cancel scope (see "Lifecycle" in the module docstring).
    _close_suspends: ClassVar[bool] = True

    def __init__(
        self,
        where: str,
        *,
        pending_records_max: int = PENDING_RECORDS_MAX,
        lazy_records_max: int = LAZY_RECORDS_MAX,
        discard_batch: int = 1,
    ) -> None:
        for name, value in (
            ("pending_records_max", pending_records_max),
            ("lazy_records_max", lazy_records_max),
            ("discard_batch", discard_batch),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"WAL {where}: {name} must be an int >= 1, got {value!r}")
        if lazy_records_max > pending_records_max:
            raise ConfigError(
                f"WAL {where}: lazy_records_max ({lazy_records_max}) must not exceed"
                f" pending_records_max ({pending_records_max})"
            )
        if discard_batch > lazy_records_max:
            raise ConfigError(
                f"WAL {where}: discard_batch ({discard_batch}) must not exceed"
                f" lazy_records_max ({lazy_records_max})"
            )
        self.where = where
        # A commit carries the pending discards only once there are this many
        # (or the store closes). Deletes are never urgent (recovery compacts
        # what a crash left), and a commit with deletes costs SQLite three
        # more statements (BEGIN, DELETE, COMMIT) than a lone INSERT, each a
        # trip back to the GIL for its thread.
        self._discard_batch = discard_batch
        self._pending_records_max = pending_records_max
        self._lazy_records_max = lazy_records_max
        # The writer task (see "Lifecycle"); None until its first wake-up.
        self._writer: asyncio.Task[None] | None = None
        self._open = False
        self._closing = False
        self._failure: _Failure | None = None
        self._next_lsn = 1
        self._rows: list[Row] = []
        self._discards: list[Discard] = []
        # A forced record waits in `_rows` (cleared when the buffer is taken).
        self._force_waiting = False
        # Held only for the few statements that move records into or out of
        # the buffer (see `_take`), never across an await or a backend call.
        self._lock = threading.Lock()
        # The writer has been woken since it last looked (saves force_nowait
        # waking it again); other callers just call `_wake`.
        self._wake_pending = False
        # Set by `_wake`, cleared by the writer when it looks at the buffer.
        self._woken = False
        # What the sleeping writer awaits. Only the writer awaits it, so one
        # future is enough (cancelling the writer cancels it).
        self._wake_waiter: asyncio.Future[None] | None = None
        # Forces waiting for room in a full buffer wait on this; made by the
        # first of them, set and dropped by the next commit.
        self._room: asyncio.Event | None = None
        self._batch = _Batch()
        self._in_flight: _Batch | None = None
        self._records_appended = 0
        self._forces = 0
        self._discarded = 0
        self._dropped = 0
        self._commits = 0
        self._records_committed = 0
        self._largest_batch = 0
        self._bytes_written = 0

    # -- backend hooks -------------------------------------------------------

    async def _backend_open(self) -> int:
        """Open the storage; return the highest LSN it ever committed (0 when new)."""
        raise NotImplementedError

    async def _backend_commit(self, rows: list[Row], discards: list[Discard]) -> None:
        """Insert `rows`, then delete each (txid, lsn bound), atomically and durably.

        Raise `WalError` (chained to the cause) when the storage fails.
        """
        raise NotImplementedError

    async def _backend_commit_taken(self, take: Callable[[], Taken | None]) -> Taken | None:
        """Commit what `take()` returns (None: nothing, the store failed); return it.

        This default takes at once, on the event loop. A backend that commits on
        its own thread overrides it to call `take` there, just before BEGIN.
        """
        taken = take()
        if taken is not None:
            await self._backend_commit(taken[0], taken[1])
        return taken

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
        self._force_waiting = False
        self._failure = None
        self._closing = False
        self._wake_pending = False
        self._woken = False
        self._wake_waiter = None
        self._room = None
        self._batch = _Batch()
        self._in_flight = None
        self._writer = None  # started by the first `_wake` (see "Lifecycle")
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._open, "__aexit__ without __aenter__"
        # Leaving drains the buffer: records appended before closing are kept.
        # A cancelled scope cancels the writer instead (see "Lifecycle").
        self._closing = True
        writer_error: BaseException | None = None
        cancelled: asyncio.CancelledError | None = None
        try:
            if self._writer is not None or self._rows or self._discards:
                self._wake()  # starts the writer if none ran yet, to drain
            writer = self._writer
            if writer is not None:
                cancelled = await self._join_writer(writer)
                if not writer.cancelled():
                    writer_error = writer.exception()
        finally:
            self._writer = None
            self._open = False
            if self._close_suspends:
                with anyio.CancelScope(shield=True):
                    await self._backend_close()
            else:
                await self._backend_close()
        if writer_error is not None:
            # As the task group did: a bug in the writer leaves the block as a group.
            errors = [writer_error]
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                errors.insert(0, exc)
            raise BaseExceptionGroup("unhandled errors in a TaskGroup", errors)
        if cancelled is not None and exc is None:
            # The caller was cancelled while the writer drained; pass it on.
            raise cancelled
        failure = self._failure
        if exc is None and failure is not None and not failure.reported:
            raise failure.error()
        return None

    async def _join_writer(self, writer: asyncio.Task[None]) -> asyncio.CancelledError | None:
        """Wait until the writer is done; return the cancellation that arrived meanwhile.

        Not shielded: a cancelled enclosing scope reaches this wait (anyio
        delivers it again until the task leaves the scope), and that is what
        cancels the writer, as it would a task group's child. The wait goes on
        until the writer is done, so it never outlives the block.
        """
        cancelled: asyncio.CancelledError | None = None
        while not writer.done():
            try:
                await asyncio.wait((writer,))
            except asyncio.CancelledError as exc:
                cancelled = exc
                writer.cancel()
        return cancelled

    # -- writing ---------------------------------------------------------------

    def append(self, txid: str, kind: str, data: bytes) -> int:
        """Add a lazy record to the next commit and return its LSN; does not wait.

        Raises `WalFull` when the buffer holds `pending_records_max` records.
        """
        self._check_writable()
        if len(self._rows) >= self._pending_records_max:
            self._wake()
            raise WalFull(
                f"WAL {self.where}: {len(self._rows)} records wait for the disk;"
                " use force() to wait for room"
            )
        with self._lock:
            lsn = self._add(txid, kind, data)
        if len(self._rows) >= self._lazy_records_max:
            self._wake()
        return lsn

    async def force(self, txid: str, kind: str, data: bytes) -> int:
        """Add a record; return its LSN once it and every earlier record are durable."""
        self._check_writable()
        while len(self._rows) >= self._pending_records_max:
            room = self._room
            if room is None:
                room = self._room = asyncio.Event()
            self._wake()
            await room.wait()
            self._check_writable()
        with self._lock:
            lsn = self._add(txid, kind, data)
            batch = self._batch
            self._force_waiting = True
        self._forces += 1
        # Only the loop finishes batches, so `finished` cannot change between
        # this check and the wait below.
        if not batch.finished:
            done = batch.done
            if done is None:
                done = batch.done = asyncio.Event()
            self._wake()
            await done.wait()
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
        # `_add` and `_check_writable` written out: this runs for every forced
        # record of every transaction.
        if self._failure is not None or not self._open or self._closing:
            self._check_writable()
        if len(self._rows) >= self._pending_records_max:
            self._wake()
            raise WalFull(f"WAL {self.where}: {len(self._rows)} records wait for the disk")
        # LSNs are given out on the loop only, so outside the lock.
        lsn = self._next_lsn
        self._next_lsn = lsn + 1
        row = (lsn, txid, kind, data, _checksum(lsn, txid, kind, data))
        with self._lock:
            self._rows.append(row)
            self._batch.callbacks.append(done)
            self._force_waiting = True
        self._records_appended += 1
        self._forces += 1
        if not self._wake_pending:
            self._wake_pending = True
            self._wake()
        return lsn

    def discard(self, txids: Iterable[str], *, before: int | None = None) -> None:
        """Delete, in the next commit, the records these transactions wrote so far.

        Records appended after this call (a reused txid) are kept; with
        `before`, so are those from LSN `before` on (a tombstone to keep).
        """
        if isinstance(txids, str):
            raise TypeError("discard() takes an iterable of transaction ids, not one str")
        self._check_writable()
        bound = self._next_lsn
        if before is not None:
            if isinstance(before, bool) or not isinstance(before, int) or before < 1:
                raise TypeError(f"discard(before=...) takes a positive LSN, got {before!r}")
            bound = min(bound, before)
        for txid in txids:
            if len(self._discards) >= self._pending_records_max:
                self._wake()
                raise WalFull(f"WAL {self.where}: {len(self._discards)} discards wait for the disk")
            with self._lock:
                self._discards.append((txid, bound))
            self._discarded += 1
        if len(self._discards) >= self._lazy_records_max:
            self._wake()

    def drop(self, lsns: Iterable[int]) -> None:
        """Delete, in the next commit, the records at these LSNs.

        Precise where `discard` is not: a node's coordinator, participants and
        saga host share one log and write under the same txid, so each drops
        exactly the records it wrote. LSNs not (or no longer) in the log are
        ignored; one handed in later than this call cannot be named here.
        """
        self._check_writable()
        batch = [(None, lsn) for lsn in lsns]
        for _, lsn in batch:
            if type(lsn) is not int or lsn < 1:  # bool is an int subclass: refused too
                raise TypeError(f"drop() takes positive LSNs, got {lsn!r}")
        if len(self._discards) + len(batch) > self._pending_records_max:
            self._wake()
            raise WalFull(f"WAL {self.where}: {len(self._discards)} discards wait for the disk")
        # One hand-over for the lot: a saga drops 7 records at its end.
        with self._lock:
            self._discards.extend(batch)
        self._dropped += len(batch)
        if len(self._discards) >= self._lazy_records_max:
            self._wake()

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
            drops=self._dropped,
        )

    def lose_buffered(self) -> None:
        """Stop as a process crash stops the store: records no commit has taken are lost.

        A commit already on its way to the disk may still land (so may a real
        one when the process dies mid-fsync); nothing buffered after it does,
        and leaving the block no longer drains. Forces still waiting fail (the
        failure counts as reported: the crash is the caller's own doing), and
        the store refuses writes until it is opened again.
        """
        if self._open and self._failure is None:
            self._fail(WalError(f"WAL {self.where}: the node crashed"), reported=True)

    def _check_writable(self) -> None:
        if self._failure is not None:
            raise self._failure.error()
        if not self._open:
            raise WalError(f"WAL {self.where} is not open; use `async with`")
        if self._closing:
            raise WalError(f"WAL {self.where} is closing")

    def _add(self, txid: str, kind: str, data: bytes) -> int:
        """Buffer one record; the caller holds `_lock` (see also `force_nowait`)."""
        lsn = self._next_lsn
        row = (lsn, txid, kind, data, _checksum(lsn, txid, kind, data))
        self._next_lsn = lsn + 1
        self._rows.append(row)
        self._records_appended += 1
        return lsn

    def _fail(self, error: WalError, *, reported: bool = False) -> None:
        """Stop writing for good: fail every waiting force and drop the buffer."""
        if self._failure is None:
            self._failure = _Failure(error, reported=reported)
        failure = self._failure
        with self._lock:
            in_flight, batch = self._in_flight, self._batch
            self._rows, self._discards = [], []
        if in_flight is not None:
            in_flight.fail(failure)
        batch.fail(failure)
        self._release_room()
        # A running writer sees the failure and returns; none is started for it.
        if self._writer is not None:
            self._wake()

    def _wake(self) -> None:
        """Wake the writer, starting it if it has not run yet in this block."""
        self._woken = True
        waiter = self._wake_waiter
        if waiter is not None:
            self._wake_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        elif self._writer is None and self._open and self._failure is None:
            # The store owns this task and joins it in __aexit__ ("Lifecycle").
            self._writer = asyncio.get_running_loop().create_task(
                self._write_batches(), name=f"WAL writer {self.where}"
            )

    def _release_room(self) -> None:
        """Let every force that waits for room look again."""
        room, self._room = self._room, None
        if room is not None:
            room.set()

    async def _write_batches(self) -> None:
        """The writer: one backend commit per wake-up, covering all that is pending."""
        drained = False
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._woken:
                    waiter = self._wake_waiter = loop.create_future()
                    try:
                        await waiter
                    finally:
                        self._wake_waiter = None
                self._woken = False
                self._wake_pending = False
                if self._failure is not None:
                    return
                if self._commit_due():
                    await self._commit_pending()
                    if self._failure is not None:
                        return
                if self._closing:
                    if not (self._rows or self._discards):
                        drained = True
                        return
                    self._woken = True
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A bug: fail every waiting force with it now (it is raised again
            # when the block exits, see "Lifecycle"), rather than leave them.
            if self._failure is None:
                error = WalError(f"WAL {self.where} writer failed: {exc!r}")
                error.__cause__ = exc
                self._fail(error)
            raise
        finally:
            # Cancelled mid-commit or before draining: nobody may wait forever.
            if self._failure is None and not drained:
                self._fail(WalError(f"WAL {self.where} stopped before its records were durable"))

    def _commit_due(self) -> bool:
        """Whether what is buffered should be committed now (see the module docstring).

        Checked rather than trusting `_wake` alone: a wake-up can be stale when
        the forced record that caused it already rode in a commit taken late.
        """
        if not (self._rows or self._discards):
            return False
        return (
            self._force_waiting
            or self._closing
            or len(self._rows) >= self._lazy_records_max
            or len(self._discards) >= self._lazy_records_max
        )

    def _take(self) -> Taken | None:
        """Take the whole buffer for one commit; None once the store failed.

        May run on the backend's thread. The batch taken stays `_in_flight`
        (left set if the commit is cancelled, so that `_fail` reaches its forces).
        """
        with self._lock:
            if self._failure is not None:
                return None
            discards = self._discards
            if len(discards) >= self._discard_batch or self._closing:
                self._discards = []
            else:
                discards = []  # not yet: see `discard_batch`
            taken = (self._rows, discards, self._batch)
            self._rows, self._batch = [], _Batch()
            self._force_waiting = False
            self._in_flight = taken[2]
            return taken

    async def _commit_pending(self) -> None:
        try:
            taken = await self._backend_commit_taken(self._take)
        except WalError as error:
            self._fail(error)
            self._in_flight = None
            return
        finally:
            # Room was made when the buffer was taken (on whichever thread).
            self._release_room()
        self._in_flight = None
        if taken is None:
            return
        rows, _, batch = taken
        self._commits += 1
        self._records_committed += len(rows)
        self._largest_batch = max(self._largest_batch, len(rows))
        self._bytes_written += sum(len(row[3]) for row in rows)
        if not batch.finished:  # a `crash()` may have failed it meanwhile
            batch.succeed()
