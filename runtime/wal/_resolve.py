"""`resolve_in_doubt`: an operator's heuristic decision for a branch left in doubt.

A 2PC participant applies only its coordinator's decision; when that
coordinator cannot give one (its log lost the record: a damaged sidecar,
docs/wal.md), the branch stays prepared for ever. An operator who has learnt
the outcome elsewhere (the peers' logs, `dtxn inspect`) writes it into the
*stopped* participant's log with this function (`dtxn resolve`); the node's
recovery then applies it to the resource as if the coordinator had decided.

Everything is checked before anything is written, and nothing is written
when a check fails (the file stays byte-identical):

1. the log is not marked as possibly short, and its sidecar is not damaged
   now (a lost record may be this branch's own decision);
2. a read-only pass finds the transaction, and a participant branch in doubt
   (p-prepared, maybe p-precommit, no decision), with no decision in the same
   log that contradicts the operator's;
3. the file is locked with SQLite's exclusive locking mode and an EXCLUSIVE
   transaction, which fails at once while any other connection (a running
   node, in this process or another) has the database open: SQLite's
   WAL-mode connections hold a shared lock for as long as they are open;
4. under that lock the records are read and checked again, and one
   p-resolved per branch in doubt is inserted and committed with
   synchronous=FULL, in one transaction.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable

import msgspec
from dtxn.protocols.errors import ConfigError, LogCorruptError
from dtxn.protocols.messages import Protocol
from dtxn.protocols.records import (
    AtomicRecord,
    CoordAborted,
    CoordCommitted,
    CoordEnded,
    PartAborted,
    PartCommitted,
    PartPreCommitted,
    PartPrepared,
    PartResolved,
    kind_of,
)
from dtxn.protocols.saga.records import SagaRecord
from dtxn.runtime.wal._sqlite import (
    SUSPECT_KEY,
    _check_format,
    _checked_path,
    _is_corruption,
    _read_sync,
    read_suspect,
    read_wal,
)
from dtxn.runtime.wal._store import WalEntry, WalError, record_checksum

__all__ = [
    "LogEnvelope",
    "LogInUse",
    "LogMayBeShort",
    "Resolution",
    "ResolveRefused",
    "resolve_in_doubt",
]

REASON_CHARS_MAX = 1000


class ResolveRefused(WalError):
    """Raised when `resolve_in_doubt` will not resolve the transaction; nothing was written."""


class LogInUse(ResolveRefused):
    """Raised when the log is open in another connection (its node is running)."""


class LogMayBeShort(ResolveRefused):
    """Raised when the log may have lost forced records: its own decision may be among them."""


class Resolution(msgspec.Struct, frozen=True):
    """What `resolve_in_doubt` wrote: one p-resolved per branch in doubt (actor, lsn)."""

    path: str
    txid: str
    commit: bool
    reason: str
    branches: tuple[tuple[str, int], ...]


def _outcome(outcome: str) -> bool:
    if outcome == "commit":
        return True
    if outcome == "abort":
        return False
    raise ConfigError(f"outcome must be 'commit' or 'abort', got {outcome!r}")


class LogEnvelope(msgspec.Struct, frozen=True, array_like=True):
    """The runtime's `hosting.LogEntry`, the same bytes: the actor that wrote a record.

    Declared again here because the WAL layer must not import the hosting
    layer above it; tests/wal/test_resolve.py checks that the two encode alike.
    """

    actor: str
    record: AtomicRecord | SagaRecord


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(LogEnvelope)


Logged = AtomicRecord | SagaRecord


def _decode(entries: Iterable[WalEntry], where: str) -> list[tuple[WalEntry, str, Logged]]:
    decoded: list[tuple[WalEntry, str, Logged]] = []
    for entry in entries:
        try:
            log_entry = _DECODER.decode(entry.data)
        except msgspec.DecodeError as exc:
            raise LogCorruptError(
                f"WAL {where}: record lsn={entry.lsn} (txid {entry.txid!r}, kind "
                f"{entry.kind!r}) is not a dtxn log entry: {exc}"
            ) from exc
        decoded.append((entry, log_entry.actor, log_entry.record))
    return decoded


def _said(commit: bool) -> str:
    return "commit" if commit else "abort"


def _plan(
    entries: list[WalEntry], txid: str, commit: bool, where: str
) -> list[tuple[str, Protocol]]:
    """The (actor, protocol) branches of `txid` to resolve, or `ResolveRefused` saying why not."""
    groups: dict[str, list[Logged]] = {}
    for _, actor, record in _decode((e for e in entries if e.txid == txid), where):
        groups.setdefault(actor, []).append(record)
    if not groups:
        raise ResolveRefused(
            f"WAL {where} holds no records of transaction {txid!r}: nothing to resolve"
        )
    in_doubt: list[tuple[str, Protocol]] = []
    states: list[str] = []
    for actor, records in groups.items():
        decided: bool | None = None
        prepared: PartPrepared | None = None
        for record in records:
            match record:
                case PartResolved(commit=earlier, reason=why):
                    raise ResolveRefused(
                        f"WAL {where}: {actor}'s branch of {txid!r} was already resolved "
                        f"by an operator ({_said(earlier)}: {why}); start the node to apply it"
                    )
                case PartPrepared():
                    prepared = record
                case CoordCommitted() | CoordEnded() | PartCommitted():
                    decided = True
                case CoordAborted() | PartAborted():
                    decided = False
                case _:
                    pass
        if decided is not None:
            states.append(f"{actor} {'committed' if decided else 'aborted'}")
            if decided != commit:
                raise ResolveRefused(
                    f"WAL {where}: {actor} already {'committed' if decided else 'aborted'} "
                    f"transaction {txid!r} here, so its outcome is {_said(decided)}, not "
                    f"{_said(commit)}: refusing to split it"
                )
        elif prepared is not None:
            precommitted = any(isinstance(r, PartPreCommitted) for r in records)
            states.append(f"{actor} {'pre-committed' if precommitted else 'prepared'}")
            in_doubt.append((actor, prepared.protocol))
        else:
            states.append(f"{actor} {type(records[-1]).__name__}")
    if not in_doubt:
        raise ResolveRefused(
            f"WAL {where}: transaction {txid!r} is not in doubt here ({', '.join(states)}): "
            "nothing to resolve"
        )
    return in_doubt


def _lock(db: sqlite3.Connection, where: str) -> None:
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            raise LogInUse(
                f"WAL {where} is in use (SQLite says {exc}): stop its node first; "
                "nothing resolved"
            ) from exc
        raise


def _write(
    db: sqlite3.Connection, where: str, txid: str, commit: bool, reason: str
) -> tuple[tuple[str, int], ...]:
    """Under the exclusive lock: check again, then insert and commit the p-resolved records."""
    if not _check_format(db, where, node=None):
        raise ResolveRefused(f"{where} is not a dtxn WAL: it is an empty database")
    if db.execute("SELECT 1 FROM meta WHERE key = ?", (SUSPECT_KEY,)).fetchone() is not None:
        raise LogMayBeShort(f"WAL {where} was marked as possibly short meanwhile")
    branches = _plan(_read_sync(db, where), txid, commit, where)
    (seq,) = db.execute(
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'records'"
    ).fetchone()
    (top,) = db.execute("SELECT coalesce(max(lsn), 0) FROM records").fetchone()
    lsn = max(int(seq), int(top))
    written = []
    for actor, protocol in branches:
        lsn += 1
        record = PartResolved(txid, protocol, commit, reason)
        kind = kind_of(record)
        data = _ENCODER.encode(LogEnvelope(actor, record))
        db.execute(
            "INSERT INTO records (lsn, txid, kind, data, checksum) VALUES (?, ?, ?, ?, ?)",
            (lsn, txid, kind, data, record_checksum(lsn, txid, kind, data)),
        )
        written.append((actor, lsn))
    db.execute("COMMIT")
    return tuple(written)


def resolve_in_doubt(
    path: str | os.PathLike[str], txid: str, outcome: str, reason: str
) -> Resolution:
    """Decide `outcome` ("commit" or "abort") for `txid`'s branches in doubt in the
    stopped node's WAL at `path`, for the reason an operator gives.

    Raises `ResolveRefused` (or `LogInUse`, `LogMayBeShort`), `LogCorruptError`,
    `WalFormatError` or `ConfigError`, having written nothing. A wrong outcome
    splits the transaction: find it first in the peers' logs (docs/operations.md).
    Blocks the calling thread.
    """
    commit = _outcome(outcome)
    if not isinstance(txid, str) or not txid:
        raise ConfigError(f"txid must be a non-empty str, got {txid!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("a resolution needs a reason (who found the outcome where)")
    if len(reason) > REASON_CHARS_MAX:
        raise ConfigError(f"the reason is {len(reason)} characters; at most {REASON_CHARS_MAX}")
    resolved = _checked_path(path)
    if not resolved.is_file():
        raise ConfigError(f"no WAL at {str(resolved)!r}")
    where = str(resolved)
    # Before any read-write connection: SQLite would rewrite a damaged sidecar.
    suspect = read_suspect(resolved)
    if suspect is not None:
        raise LogMayBeShort(
            f"WAL {where} may have lost forced records ({suspect}); {txid!r}'s own decision "
            "may be among them. Nothing resolved: establish what was lost, clear the mark "
            "(`dtxn inspect --accept-loss`), then resolve"
        )
    # Read-only first, so that a refusal leaves the files exactly as they were.
    _plan(read_wal(resolved), txid, commit, where)
    db = sqlite3.connect(resolved, timeout=0, isolation_level=None)
    try:
        try:
            _lock(db, where)
            branches = _write(db, where, txid, commit, reason)
        except sqlite3.DatabaseError as exc:
            if _is_corruption(exc):
                raise LogCorruptError(f"WAL {where}: SQLite reports {exc}") from exc
            raise WalError(f"WAL {where}: resolving {txid!r} failed: {exc}") from exc
        finally:
            if db.in_transaction:
                db.rollback()
    finally:
        db.close()
    return Resolution(where, txid, commit, reason, branches)
