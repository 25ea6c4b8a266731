"""Wire messages of Paxos Commit (Gray & Lamport, "Consensus on Transaction Commit").

One Paxos consensus instance per participant decides that participant's
value, PREPARED or ABORTED; the transaction commits iff every instance chose
PREPARED. The messages name the instance (the participant's process id) and a
ballot. Tags are explicit and stable (prefix `px-`), never the class name.
The outcome itself travels in the 2PC `Decision` message
(`dtxn.protocols.messages`); it is asked for with `PaxosDecisionRequest`,
which carries what a backup leader needs to take the transaction over.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
from dtxn.protocols.messages import Message, Timeouts


class InstanceValue(enum.Enum):
    """What one participant's consensus instance can choose."""

    PREPARED = "prepared"
    ABORTED = "aborted"


class Ballot(msgspec.Struct, frozen=True, array_like=True, order=True, gc=False):
    """A ballot number: (round, node id), unique per node and totally ordered.

    Round 0 belongs to the participant that owns the instance (node = its
    own id): it is the ballot-0 leader of its own instance and proposes its
    vote without phase 1. Leaders use rounds >= 1 with their own id, so two
    leaders never use the same ballot.
    """

    round: int
    node: str


class PaxosPrepare(Message, frozen=True, tag="px-prepare"):
    """Leader -> participant: vote, and propose your vote to the acceptors at ballot 0.

    `leaders` lists every process that may lead this transaction (the
    sender first): a participant trusts a `Decision` from any of them and
    asks all of them when in doubt. `faster`: acceptors send their phase 2b
    to the participants as well, who then learn the outcome without the
    leader's `Decision`.
    """

    participants: tuple[str, ...]
    acceptors: tuple[str, ...]
    leaders: tuple[str, ...]
    payload: Any = None
    timeouts: Timeouts = Timeouts()
    faster: bool = False


class Phase1a(Message, frozen=True, tag="px-1a"):
    """Leader -> acceptor: promise to ignore ballots below `ballot` for `instance`."""

    instance: str
    ballot: Ballot


class Phase1b(Message, frozen=True, tag="px-1b"):
    """Acceptor -> leader: the promise, with the highest ballot accepted so far (if any)."""

    instance: str
    ballot: Ballot
    accepted_ballot: Ballot | None = None
    accepted_value: InstanceValue | None = None


class Phase2a(Message, frozen=True, tag="px-2a"):
    """Proposer -> acceptor: accept `value` at `ballot`; tell `learners` (phase 2b)."""

    instance: str
    ballot: Ballot
    value: InstanceValue
    learners: tuple[str, ...]


class Phase2b(Message, frozen=True, tag="px-2b"):
    """Acceptor -> learner: accepted `value` at `ballot` for `instance` (forced first)."""

    instance: str
    ballot: Ballot
    value: InstanceValue


class Nack(Message, frozen=True, tag="px-nack"):
    """Acceptor -> proposer: `ballot` is stale; this acceptor has promised `promised`."""

    instance: str
    ballot: Ballot
    promised: Ballot


class PaxosDecisionRequest(Message, frozen=True, tag="px-decision-request"):
    """In-doubt participant -> every leader: the outcome, please (the `attempt`-th time).

    Not the 2PC `DecisionRequest`: a coordinator that knows nothing of a
    2PC transaction presumes abort, which no Paxos leader may do (the
    outcome lives at the acceptors, not in the leader's log). It carries the
    transaction's membership, so that a leader that holds nothing (a backup,
    or a coordinator restarted without records) can take it over.
    """

    participants: tuple[str, ...]
    acceptors: tuple[str, ...]
    leaders: tuple[str, ...]
    timeouts: Timeouts = Timeouts()
    attempt: int = 1


class PaxosApplied(Message, frozen=True, tag="px-applied"):
    """Participant -> every acceptor: the outcome is applied here (forced) for good.

    An acceptor that has heard it from every participant drops its records
    (no participant can be in doubt any more) and remembers the outcome,
    `committed` (None from a read-only participant, which never learns it),
    to tell a leader that still runs a ballot.
    """

    participants: tuple[str, ...]
    committed: bool | None = None


PaxosMessage = (
    PaxosPrepare
    | Phase1a
    | Phase1b
    | Phase2a
    | Phase2b
    | Nack
    | PaxosDecisionRequest
    | PaxosApplied
)

PAXOS_MESSAGE_TYPES: tuple[type[Message], ...] = (
    PaxosPrepare,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
    Nack,
    PaxosDecisionRequest,
    PaxosApplied,
)
