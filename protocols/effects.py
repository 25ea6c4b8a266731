"""Events in and effects out of the atomic-commit machines.

Events are past-tense facts handed to `machine.handle(event)`; effects are
imperatives the runtime carries out *in order*. A `ForceLog` must be durable
before any effect after it runs (log before send, S4); a `Log` is lazy.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
from dtxn.protocols.messages import Message, Vote
from dtxn.protocols.records import Record


class Outcome(enum.Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"


class ResourceOp(enum.Enum):
    PREPARE = "prepare"
    COMMIT = "commit"
    ABORT = "abort"


# -- events --------------------------------------------------------------------


class Event(msgspec.Struct, frozen=True, gc=False):
    pass


class Begin(Event, frozen=True):
    """The coordinator is asked to run a transaction over these participants."""

    participants: tuple[str, ...]
    payloads: tuple[Any, ...]


class Received(Event, frozen=True):
    message: Message


class TimerFired(Event, frozen=True):
    name: str


class LocalVoteCast(Event, frozen=True):
    """The participant's resource answered prepare."""

    vote: Vote
    reason: str = ""


class ResourceApplied(Event, frozen=True):
    """The participant's resource finished commit or abort."""

    op: ResourceOp


class RecordRecovered(Event, frozen=True):
    record: Record


class RecoveryDone(Event, frozen=True):
    """Every record of this transaction has been replayed; resume."""


# -- effects -------------------------------------------------------------------


class Effect(msgspec.Struct, frozen=True, gc=False):
    pass


class Send(Effect, frozen=True):
    to: str
    message: Message


class ForceLog(Effect, frozen=True):
    record: Record


class Log(Effect, frozen=True):
    record: Record


class SetTimer(Effect, frozen=True):
    name: str
    delay_s: float


class CancelTimer(Effect, frozen=True):
    name: str


class Decide(Effect, frozen=True):
    """The outcome is final at this process (reported to the caller on a coordinator)."""

    outcome: Outcome
    reason: str = ""


class InvokeResource(Effect, frozen=True):
    op: ResourceOp
    payload: Any = None


class Compact(Effect, frozen=True):
    """The transaction ended: recovery needs none of its records but the last one.

    Follows the record that says how it ended (forced or lazy): the runtime
    may delete the transaction's earlier records, keeping that one as its
    tombstone (the outcome, and that the id was used). The deletion is
    logged after the record, so it can never outlive it in a crash.
    """


class Forget(Effect, frozen=True):
    """The machine is finished; the runtime may drop it (its outcome is remembered)."""


class Ignored(Effect, frozen=True):
    """A message that was late, duplicated or out of place; counted, not an error.

    `violation` marks input that breaks the protocol (e.g. COMMIT for a
    transaction this participant voted no on), logged as a warning.
    """

    reason: str
    violation: bool = False
