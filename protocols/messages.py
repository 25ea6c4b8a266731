"""Wire messages of atomic commit (2PC and 3PC): one tagged msgspec union.

Every message names its transaction and its sender (a process id, the string
form of an address, `actor@node`). Tags are explicit and stable, never the
class name, so a rename cannot break a peer or an old log. New fields are
appended with defaults (msgspec schema evolution).
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class Vote(enum.Enum):
    """A participant's answer to PREPARE."""

    YES = "yes"
    NO = "no"
    READ_ONLY = "read_only"


class Protocol(enum.Enum):
    """Which atomic commitment protocol a transaction runs."""

    TWO_PC = "2pc"
    THREE_PC = "3pc"
    PAXOS = "paxos"  # Paxos Commit; its messages are in dtxn.protocols.paxos_messages


class PeerState(enum.Enum):
    """What a participant reports about itself in termination and inquiries."""

    UNKNOWN = "unknown"
    UNCERTAIN = "uncertain"
    COMMITTABLE = "committable"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Timeouts(msgspec.Struct, frozen=True, array_like=True):
    """Per-phase timeouts in seconds, chosen by the caller of a transaction.

    votes_s: coordinator waits this long for every vote, then aborts.
    acks_s: 3PC coordinator waits this long for pre-commit acks, then treats
        the silent ones as failed and commits; also the first re-send interval
        of a decision that is not acknowledged.
    decision_s: a prepared participant waits this long for the decision, then
        asks (2PC) or starts the termination protocol (3PC).
    retry_max_s: re-sends and inquiries back off exponentially up to this.
    """

    votes_s: float = 5.0
    acks_s: float = 1.0
    decision_s: float = 2.0
    retry_max_s: float = 10.0


class Message(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    """Base of every atomic-commit message."""

    txid: str
    sender: str


class Prepare(Message, frozen=True, tag="prepare"):
    """Phase 1 (VOTE-REQ): carries the participant list for cooperative termination."""

    protocol: Protocol
    participants: tuple[str, ...]
    payload: Any = None
    timeouts: Timeouts = Timeouts()
    cooperative: bool = True


class VoteCast(Message, frozen=True, tag="vote"):
    vote: Vote
    # Why a participant voted no (appended with a default: older peers omit it).
    reason: str = ""


class PreCommit(Message, frozen=True, tag="precommit"):
    """3PC: everyone voted yes; become committable."""


class PreCommitAck(Message, frozen=True, tag="precommit-ack"):
    pass


class Decision(Message, frozen=True, tag="decision"):
    """The outcome: COMMIT (commit=True) or ABORT."""

    commit: bool


class Ack(Message, frozen=True, tag="ack"):
    """A participant has applied and forced a commit decision."""


class DecisionRequest(Message, frozen=True, tag="decision-request"):
    """An in-doubt process asks for the outcome (the coordinator or, cooperatively, a peer)."""


class StatusReply(Message, frozen=True, tag="status"):
    """Answer to a DecisionRequest from a peer that has not decided either."""

    state: PeerState


class StateRequest(Message, frozen=True, tag="state-request"):
    """3PC termination: the elected backup coordinator of `round` asks for states."""

    round: int


class StateReport(Message, frozen=True, tag="state-report"):
    round: int
    state: PeerState


AtomicMessage = (
    Prepare
    | VoteCast
    | PreCommit
    | PreCommitAck
    | Decision
    | Ack
    | DecisionRequest
    | StatusReply
    | StateRequest
    | StateReport
)

MESSAGE_TYPES: tuple[type[Message], ...] = (
    Prepare,
    VoteCast,
    PreCommit,
    PreCommitAck,
    Decision,
    Ack,
    DecisionRequest,
    StatusReply,
    StateRequest,
    StateReport,
)
