"""Log records of atomic commit: what each process writes to its WAL.

Schema version 1. Which records are forced (fsync before anything that
depends on them) follows PROTOCOLS.md section 2, presumed abort:

coordinator, 2PC:  COMMIT forced before sending COMMIT; END lazy; abort writes nothing.
coordinator, 3PC:  PRECOMMIT forced before sending PRE-COMMIT; COMMIT forced
                   before sending COMMIT; END lazy; abort writes a lazy ABORT.
participant:       PREPARED forced before voting yes; PRECOMMIT forced before
                   acking (3PC); COMMITTED forced before acking the commit;
                   ABORTED lazy in 2PC (forced when it answers "abort" for a
                   transaction it never voted on, which then must stay
                   aborted), always forced in 3PC (a lost abort would bring
                   the participant back uncertain, free to join a TR4 commit).
read-only votes write nothing.
operator:          RESOLVED, written by `dtxn resolve` into a stopped participant's
                   log (never by a machine): a heuristic decision for a branch
                   left in doubt. Recovery applies it as the coordinator's; once
                   applied it is the branch's tombstone (no COMMITTED/ABORTED
                   follows it), so the operator's reason stays in the log.
"""

from __future__ import annotations

import msgspec
from dtxn.protocols.messages import Protocol, Timeouts

SCHEMA_VERSION = 1


class Record(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    txid: str


class CoordPreCommitted(Record, frozen=True, tag="c-precommit"):
    protocol: Protocol
    participants: tuple[str, ...]


class CoordCommitted(Record, frozen=True, tag="c-commit"):
    protocol: Protocol
    participants: tuple[str, ...]


class CoordAborted(Record, frozen=True, tag="c-abort"):
    reason: str = ""


class CoordEnded(Record, frozen=True, tag="c-end"):
    pass


class PartPrepared(Record, frozen=True, tag="p-prepared"):
    protocol: Protocol
    coordinator: str
    participants: tuple[str, ...]
    timeouts: Timeouts = Timeouts()
    cooperative: bool = True


class PartPreCommitted(Record, frozen=True, tag="p-precommit"):
    pass


class PartCommitted(Record, frozen=True, tag="p-commit"):
    pass


class PartAborted(Record, frozen=True, tag="p-abort"):
    pass


class PartResolved(Record, frozen=True, tag="p-resolved"):
    """An operator's heuristic decision for a participant branch left in doubt.

    Written only by `dtxn resolve` (`dtxn.runtime.wal.resolve_in_doubt`) with
    the node stopped, after a p-prepared (and, in 3PC, maybe a p-precommit).
    `protocol` is copied from that p-prepared, so a lone p-resolved (the
    tombstone once applied) is rebuilt by the right machine.
    """

    protocol: Protocol
    commit: bool
    reason: str
    by: str = "operator"


class CoordChose(Record, frozen=True, tag="c-chose"):
    """Lazy, written when a `protocol="auto"` transaction starts: what was chosen and why.

    Informational only: recovery skips it (a coordinator with nothing but
    this record never decided, so the transaction is presumed aborted).
    """

    protocol: Protocol
    rule: int
    reason: str


AtomicRecord = (
    CoordPreCommitted
    | CoordCommitted
    | CoordAborted
    | CoordEnded
    | PartPrepared
    | PartPreCommitted
    | PartCommitted
    | PartAborted
    | CoordChose
    | PartResolved
)

RECORD_TYPES: tuple[type[Record], ...] = (
    CoordPreCommitted,
    CoordCommitted,
    CoordAborted,
    CoordEnded,
    PartPrepared,
    PartPreCommitted,
    PartCommitted,
    PartAborted,
    CoordChose,
    PartResolved,
)


def kind_of(record: Record) -> str:
    """The record's stable tag, stored beside it in the WAL for inspection."""
    return record.__struct_config__.tag  # type: ignore[return-value]
