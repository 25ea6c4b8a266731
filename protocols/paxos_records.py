"""Log records of Paxos Commit: what each role forces to its WAL.

participant: PX-PREPARED forced before its ballot-0 phase 2a "prepared";
             PX-ENDED forced once the resource applied the outcome, before
             it tells the acceptors (`PaxosApplied`), who may then forget
             the transaction (a crash before it brings the participant back
             in doubt: it asks again and re-applies, which resources must
             tolerate as in 2PC).
acceptor:    PX-ACCEPTOR, its whole state for one (txid, instance), forced
             before every phase 1b and phase 2b it sends; the last one wins.
leader:      PX-BALLOT forced before the phase 1a of a ballot above 0, so a
             restarted leader never reuses a ballot (it carries the
             membership, so a restarted leader can run phase 1 again);
             PX-LEADER-ENDED lazy once such a leader learned the outcome,
             kept as its tombstone. The normal case (ballot 0 only) writes
             nothing at the leader.
"""

from __future__ import annotations

from dtxn.protocols.messages import Timeouts
from dtxn.protocols.paxos_messages import Ballot, InstanceValue
from dtxn.protocols.records import Record


class PaxosPartPrepared(Record, frozen=True, tag="px-p-prepared"):
    participants: tuple[str, ...]
    acceptors: tuple[str, ...]
    leaders: tuple[str, ...]
    timeouts: Timeouts = Timeouts()
    faster: bool = False


class PaxosPartEnded(Record, frozen=True, tag="px-p-ended"):
    committed: bool


class PaxosAcceptorState(Record, frozen=True, tag="px-acceptor"):
    instance: str
    promised: Ballot
    accepted_ballot: Ballot | None = None
    accepted_value: InstanceValue | None = None


class PaxosLeaderBallot(Record, frozen=True, tag="px-ballot"):
    round: int
    participants: tuple[str, ...]
    acceptors: tuple[str, ...] = ()
    leaders: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()


class PaxosLeaderEnded(Record, frozen=True, tag="px-leader-ended"):
    committed: bool


PaxosRecord = (
    PaxosPartPrepared | PaxosPartEnded | PaxosAcceptorState | PaxosLeaderBallot | PaxosLeaderEnded
)

PAXOS_RECORD_TYPES: tuple[type[Record], ...] = (
    PaxosPartPrepared,
    PaxosPartEnded,
    PaxosAcceptorState,
    PaxosLeaderBallot,
    PaxosLeaderEnded,
)
