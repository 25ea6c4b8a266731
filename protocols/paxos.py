"""Paxos Commit (Gray & Lamport, "Consensus on Transaction Commit", TODS 2006).

Theory of operation
-------------------
Each participant's commit/abort wish is decided by its own Paxos consensus
instance (named by the participant's id) among 2F+1 acceptors; the
transaction commits iff every instance chose PREPARED and aborts as soon as
one chose ABORTED. A value is chosen at ballot b when F+1 acceptors accepted
it at b; learners (the leader, and the participants in the `faster` variant)
count phase 2b messages per (instance, ballot, value).

The normal case has no phase 1: a participant is the ballot-0 leader of its
own instance, so after its vote it sends phase 2a (ballot 0, its value)
straight to the acceptors. A YES is forced (PX-PREPARED) first; a NO decides
abort at once, since nobody but the participant ever proposes PREPARED for
its instance.

The leader (the coordinator) sends PREPARE, learns from the acceptors'
phase 2b and announces the outcome with `Decision`. When its timer fires, or
when it takes over (`TakeOver`) or recovers, it runs phase 1 at a higher
ballot (round, its id) for every instance it has not learned, and proposes
the value of the highest accepted ballot it is told of, or ABORTED if none.
It forces its round (PX-BALLOT) before phase 1a, so no restart reuses a
ballot. Safety rests on the acceptors alone: each forces its state for an
instance (PX-ACCEPTOR) before answering, promises only ballots at least as
high as any before, and refuses lower ones with a `Nack`. So two leaders at
once, a leader that crashes after choosing, or one that never returns, all
learn the same values.

In doubt, a participant asks every leader with `PaxosDecisionRequest`,
which names the membership and how many times it asked. A leader that
holds nothing about the transaction (a backup, or a coordinator restarted
without records) takes it over (`leader_for_unknown`) when the asker is a
participant on its own node and has asked `takeover_after(i)` times, i
being its place in the leaders list: the coordinator at once, the first
backup after about `votes_s`, the next one `votes_s` later, so that backups
rarely duel. Once every participant
has applied the outcome (forced PX-ENDED) and told the acceptors
(`PaxosApplied`), the acceptors drop their records.

The machines are pure like `dtxn.protocols.twopc`: `handle(event)` raises
`ProtocolError` before changing anything on an illegal event, and returns
effects in order otherwise. Late, duplicated or stray messages are answered
or `Ignored`. Hosted by `dtxn.runtime.hosting` (leaders in the coordinator
host, participants in the participant hosts, acceptors in `acceptor`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from dtxn.protocols.effects import (
    Begin,
    CancelTimer,
    Compact,
    Decide,
    Effect,
    Event,
    ForceLog,
    Forget,
    Ignored,
    InvokeResource,
    LocalVoteCast,
    Log,
    Outcome,
    Received,
    RecordRecovered,
    RecoveryDone,
    ResourceApplied,
    ResourceOp,
    Send,
    SetTimer,
    TimerFired,
)
from dtxn.protocols.errors import ConfigError, ProtocolError
from dtxn.protocols.messages import Decision, DecisionRequest, Message, Timeouts, Vote
from dtxn.protocols.paxos_messages import (
    Ballot,
    InstanceValue,
    Nack,
    PaxosApplied,
    PaxosDecisionRequest,
    PaxosPrepare,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
)
from dtxn.protocols.paxos_records import (
    PaxosAcceptorState,
    PaxosLeaderBallot,
    PaxosLeaderEnded,
    PaxosPartEnded,
    PaxosPartPrepared,
)

LEADER_TIMER = "paxos-leader"
DECISION_TIMER = "decision"

PREPARED, ABORTED = InstanceValue.PREPARED, InstanceValue.ABORTED


class TakeOver(Event, frozen=True):
    """This (backup) leader is asked to finish a transaction it did not start."""

    participants: tuple[str, ...]


def quorum_of(acceptors: tuple[str, ...]) -> int:
    """F+1 of 2F+1 acceptors."""
    return len(acceptors) // 2 + 1


def check_acceptors(acceptors: tuple[str, ...]) -> None:
    if not acceptors or len(acceptors) % 2 == 0:
        raise ConfigError(f"Paxos Commit needs 2F+1 acceptors, got {len(acceptors)}")
    if len(set(acceptors)) != len(acceptors):
        raise ConfigError("Paxos Commit lists an acceptor twice")


def takeover_after(index: int, timeouts: Timeouts) -> int:
    """How many inquiries of a participant the leader at `index` of the leaders list waits for.

    0 for the coordinator (it holds nothing only after a restart: at once);
    a backup i waits until the participant has been in doubt about i times
    `votes_s`, counted in `decision_s` inquiries.
    """
    if index <= 0:
        return 0
    per_backup = max(1, math.ceil(timeouts.votes_s / timeouts.decision_s))
    return index * per_backup


def _illegal(role: str, txid: str, state: enum.Enum, event: Event) -> ProtocolError:
    return ProtocolError(
        f"Paxos {role} of transaction {txid!r} in state {state.value!r} "
        f"cannot handle {type(event).__name__}"
    )


@dataclass
class Learner:
    """Counts phase 2b messages; an instance's value is chosen at F+1 for one ballot."""

    quorum: int
    votes: dict[tuple[str, Ballot, InstanceValue], set[str]] = field(default_factory=dict)
    chosen: dict[str, InstanceValue] = field(default_factory=dict)

    def add(self, message: Phase2b) -> bool:
        """Count one 2b; true if it made its instance's value chosen."""
        if message.instance in self.chosen:
            return False
        key = (message.instance, message.ballot, message.value)
        voters = self.votes.setdefault(key, set())
        voters.add(message.sender)
        if len(voters) < self.quorum:
            return False
        self.chosen[message.instance] = message.value
        return True

    def outcome(self, instances: tuple[str, ...]) -> Outcome | None:
        if any(v is ABORTED for v in self.chosen.values()):
            return Outcome.ABORTED
        if instances and all(self.chosen.get(i) is PREPARED for i in instances):
            return Outcome.COMMITTED
        return None


# -- acceptor --------------------------------------------------------------------


class AcceptorState(enum.Enum):
    ACTIVE = "active"
    RECOVERING = "recovering"


class PaxosAcceptor:
    """One acceptor's state for every instance of one transaction."""

    def __init__(self, txid: str, me: str) -> None:
        self.txid = txid
        self.me = me
        self.state = AcceptorState.ACTIVE
        self.instances: dict[str, PaxosAcceptorState] = {}
        self.applied: set[str] = set()  # participants that applied the outcome
        self.outcome: bool | None = None  # committed?, as they report it

    def handle(self, event: Event) -> list[Effect]:
        if isinstance(event, Received) and self.state is AcceptorState.ACTIVE:
            return self.receive(event.message)
        if isinstance(event, RecordRecovered):
            record = event.record
            if isinstance(record, PaxosAcceptorState) and (
                self.state is AcceptorState.RECOVERING or not self.instances
            ):
                self.state = AcceptorState.RECOVERING
                self.instances[record.instance] = record  # the last one wins
                return []
        if isinstance(event, RecoveryDone) and self.state is AcceptorState.RECOVERING:
            self.state = AcceptorState.ACTIVE
            return []
        raise _illegal("acceptor", self.txid, self.state, event)

    def _zero(self, instance: str) -> PaxosAcceptorState:
        return PaxosAcceptorState(self.txid, instance, Ballot(0, ""))

    def receive(self, message: Message) -> list[Effect]:
        if isinstance(message, Phase1a):
            return self._on_1a(message)
        if isinstance(message, Phase2a):
            return self._on_2a(message)
        if isinstance(message, PaxosApplied):
            if message.sender not in message.participants:
                return [
                    Ignored(f"applied from {message.sender!r}, not a participant", violation=True)
                ]
            self.applied.add(message.sender)
            if message.committed is not None:
                self.outcome = message.committed
            if not self.applied.issuperset(message.participants):
                return []
            # No participant can be in doubt: drop every record. A leader still
            # balloting (say, a coordinator a backup finished for) must not
            # find a blank acceptor, so the host remembers the outcome (Decide
            # after Compact: no record is kept) and answers it with that.
            effects: list[Effect] = [Compact()]
            if self.outcome is not None:
                outcome = Outcome.COMMITTED if self.outcome else Outcome.ABORTED
                effects.append(Decide(outcome, "every participant applied it"))
            effects.append(Forget())
            return effects
        return [Ignored(f"{type(message).__name__} is not for a Paxos acceptor", violation=True)]

    def _on_1a(self, message: Phase1a) -> list[Effect]:
        held = self.instances.get(message.instance) or self._zero(message.instance)
        if message.ballot < held.promised:
            return [
                Send(
                    message.sender,
                    Nack(self.txid, self.me, message.instance, message.ballot, held.promised),
                )
            ]
        effects: list[Effect] = []
        if message.ballot > held.promised:
            held = PaxosAcceptorState(
                self.txid,
                message.instance,
                message.ballot,
                held.accepted_ballot,
                held.accepted_value,
            )
            self.instances[message.instance] = held
            effects.append(ForceLog(held))
        effects.append(
            Send(
                message.sender,
                Phase1b(
                    self.txid,
                    self.me,
                    message.instance,
                    message.ballot,
                    held.accepted_ballot,
                    held.accepted_value,
                ),
            )
        )
        return effects

    def _on_2a(self, message: Phase2a) -> list[Effect]:
        held = self.instances.get(message.instance) or self._zero(message.instance)
        if message.ballot < held.promised:
            return [
                Send(
                    message.sender,
                    Nack(self.txid, self.me, message.instance, message.ballot, held.promised),
                )
            ]
        effects: list[Effect] = []
        if held.accepted_ballot != message.ballot:
            held = PaxosAcceptorState(
                self.txid, message.instance, message.ballot, message.ballot, message.value
            )
            self.instances[message.instance] = held
            effects.append(ForceLog(held))
        elif held.accepted_value is not message.value:
            return [Ignored(f"two values proposed at ballot {message.ballot}", violation=True)]
        reply = Phase2b(self.txid, self.me, message.instance, message.ballot, message.value)
        effects.extend(Send(learner, reply) for learner in message.learners)
        return effects


# -- participant -----------------------------------------------------------------


class PartState(enum.Enum):
    INIT = "init"
    PREPARING = "preparing"  # resource.prepare running
    PREPARED = "prepared"  # voted yes (forced, 2a sent): in doubt until learned
    COMMITTING = "committing"
    ABORTING = "aborting"
    COMMITTED = "committed"
    ABORTED = "aborted"
    READ_ONLY = "read_only"  # proposed PREPARED, needs no outcome: gone
    RECOVERING = "recovering"


class PaxosParticipant:
    """A participant of one Paxos Commit transaction, ballot-0 leader of its own instance."""

    def __init__(self, txid: str, me: str) -> None:
        self.txid = txid
        self.me = me
        self.state = PartState.INIT
        self.participants: tuple[str, ...] = ()
        self.acceptors: tuple[str, ...] = ()
        self.leaders: tuple[str, ...] = ()
        self.timeouts = Timeouts()
        self.faster = False
        self.learner = Learner(1)
        self.vote_pending = False  # resource.prepare runs after abort was learned
        self.asks = 0  # decision requests sent (PaxosDecisionRequest.attempt)
        self.forced_prepared = False
        self.recovered_end: bool | None = None
        self.reason = ""

    @property
    def quorum(self) -> int:
        return quorum_of(self.acceptors)

    @property
    def in_doubt(self) -> bool:
        return self.state is PartState.PREPARED

    def handle(self, event: Event) -> list[Effect]:
        if isinstance(event, Received) and self.state is not PartState.RECOVERING:
            return self.receive(event.message)
        if isinstance(event, LocalVoteCast):
            return self._on_local_vote(event)
        if isinstance(event, ResourceApplied):
            return self._on_applied(event)
        if isinstance(event, TimerFired) and self.state is not PartState.RECOVERING:
            return self._on_timer(event.name)
        if isinstance(event, RecordRecovered):
            return self._recover(event)
        if isinstance(event, RecoveryDone) and self.state is PartState.RECOVERING:
            return self._resume()
        raise _illegal("participant", self.txid, self.state, event)

    def _proposal(self, value: InstanceValue) -> list[Effect]:
        learners = (self.leaders[0], *self.participants) if self.faster else self.leaders[:1]
        message = Phase2a(self.txid, self.me, self.me, Ballot(0, self.me), value, learners)
        return [Send(a, message) for a in self.acceptors]

    def _ask(self) -> list[Effect]:
        self.asks += 1
        effects = self._proposal(PREPARED)  # idempotent: the 2b may have been lost
        request = PaxosDecisionRequest(
            self.txid,
            self.me,
            self.participants,
            self.acceptors,
            self.leaders,
            self.timeouts,
            self.asks,
        )
        effects.extend(Send(leader, request) for leader in self.leaders)
        effects.append(SetTimer(DECISION_TIMER, self.timeouts.decision_s))
        return effects

    def _applied(self, committed: bool | None) -> list[Effect]:
        message = PaxosApplied(self.txid, self.me, self.participants, committed)
        return [Send(a, message) for a in self.acceptors]

    def receive(self, message: Message) -> list[Effect]:
        state = self.state
        if isinstance(message, PaxosPrepare):
            if state is not PartState.INIT:
                return [Ignored(f"duplicate prepare in state {state.value}")]
            if self.me not in message.participants or not message.leaders:
                return [Ignored("prepare that does not list this participant", violation=True)]
            try:
                check_acceptors(message.acceptors)
            except ConfigError as error:
                return [Ignored(f"prepare with bad acceptors: {error}", violation=True)]
            self.state = PartState.PREPARING
            self.participants = message.participants
            self.acceptors = message.acceptors
            self.leaders = message.leaders
            self.timeouts = message.timeouts
            self.faster = message.faster
            self.learner = Learner(self.quorum)
            return [InvokeResource(ResourceOp.PREPARE, message.payload)]
        if isinstance(message, Decision):
            if self.leaders and message.sender not in self.leaders:
                return [Ignored(f"decision from {message.sender!r}, not a leader", violation=True)]
            return self._learned(
                Outcome.COMMITTED if message.commit else Outcome.ABORTED,
                f"decided by {message.sender}",
            )
        if isinstance(message, Phase2b):
            if state is PartState.INIT or message.sender not in self.acceptors:
                return [Ignored(f"phase 2b from {message.sender!r} in state {state.value}")]
            if message.instance not in self.participants:
                return [
                    Ignored(f"phase 2b for unknown instance {message.instance!r}", violation=True)
                ]
            self.learner.add(message)
            outcome = self.learner.outcome(self.participants)
            if outcome is None:
                return []
            return self._learned(outcome, "learned from the acceptors")
        if isinstance(message, Nack):
            return [Ignored(f"ballot 0 refused by {message.sender!r}: {message.promised}")]
        return [Ignored(f"{type(message).__name__} is not for a Paxos participant", violation=True)]

    def _learned(self, outcome: Outcome, reason: str) -> list[Effect]:
        state = self.state
        commit = outcome is Outcome.COMMITTED
        if state is PartState.PREPARED:
            self.state = PartState.COMMITTING if commit else PartState.ABORTING
            self.reason = reason
            op = ResourceOp.COMMIT if commit else ResourceOp.ABORT
            return [CancelTimer(DECISION_TIMER), InvokeResource(op)]
        if commit:
            if state in (PartState.COMMITTING, PartState.COMMITTED):
                return [Ignored(f"duplicate commit in state {state.value}")]
            return [Ignored(f"COMMIT for a transaction held as {state.value}", violation=True)]
        if state is PartState.INIT:
            # Never prepared: the abort is final for this process (a PREPARE
            # arriving after a crash would be refused by the acceptors' promises).
            self.state = PartState.ABORTED
            self.reason = reason
            return [Decide(Outcome.ABORTED, reason)]
        if state is PartState.PREPARING:
            self.state = PartState.ABORTED
            self.vote_pending = True
            self.reason = reason
            return []
        if state in (PartState.ABORTING, PartState.ABORTED):
            return [Ignored(f"duplicate abort in state {state.value}")]
        return [Ignored(f"ABORT for a transaction held as {state.value}", violation=True)]

    def _on_local_vote(self, event: LocalVoteCast) -> list[Effect]:
        if self.state is PartState.PREPARING:
            if event.vote is Vote.READ_ONLY:
                # Nothing to apply either way: its instance may choose PREPARED
                # (forcing nothing: should it be lost, ABORTED is as good) and
                # it leaves. No Decide: it never learns the outcome (as in 2PC).
                self.state = PartState.READ_ONLY
                return [*self._proposal(PREPARED), *self._applied(None), Forget()]
            if event.vote is Vote.YES:
                self.state = PartState.PREPARED
                self.forced_prepared = True
                effects: list[Effect] = [
                    ForceLog(
                        PaxosPartPrepared(
                            self.txid,
                            self.participants,
                            self.acceptors,
                            self.leaders,
                            self.timeouts,
                            self.faster,
                        )
                    )
                ]
                effects.extend(self._proposal(PREPARED))
                effects.append(SetTimer(DECISION_TIMER, self.timeouts.decision_s))
                return effects
            self.state = PartState.ABORTED
            self.reason = event.reason or "voted no"
            effects = self._proposal(ABORTED)
            effects.extend(self._applied(False))
            effects.extend([Decide(Outcome.ABORTED, self.reason), Forget()])
            return effects
        if self.state is PartState.ABORTED and self.vote_pending:
            self.vote_pending = False
            if event.vote is Vote.YES:
                self.state = PartState.ABORTING
                return [InvokeResource(ResourceOp.ABORT)]
            return [*self._applied(False), Decide(Outcome.ABORTED, self.reason), Forget()]
        raise _illegal("participant", self.txid, self.state, event)

    def _on_applied(self, event: ResourceApplied) -> list[Effect]:
        if self.state is PartState.COMMITTING and event.op is ResourceOp.COMMIT:
            self.state = PartState.COMMITTED
            return [
                ForceLog(PaxosPartEnded(self.txid, True)),
                *self._applied(True),
                Decide(Outcome.COMMITTED, self.reason),
                Compact(),
                Forget(),
            ]
        if self.state is PartState.ABORTING and event.op is ResourceOp.ABORT:
            self.state = PartState.ABORTED
            if not self.forced_prepared:
                # Aborted while its prepare ran: nothing of it was ever forced.
                return [*self._applied(False), Decide(Outcome.ABORTED, self.reason), Forget()]
            return [
                ForceLog(PaxosPartEnded(self.txid, False)),
                *self._applied(False),
                Decide(Outcome.ABORTED, self.reason),
                Compact(),
                Forget(),
            ]
        raise _illegal("participant", self.txid, self.state, event)

    def _on_timer(self, name: str) -> list[Effect]:
        if name == DECISION_TIMER and self.state is PartState.PREPARED:
            return self._ask()
        return [Ignored(f"stale timer {name!r} in state {self.state.value}")]

    def _recover(self, event: RecordRecovered) -> list[Effect]:
        record = event.record
        if self.state is PartState.INIT:
            if isinstance(record, PaxosPartPrepared):
                check_acceptors(record.acceptors)
                self.state = PartState.RECOVERING
                self.forced_prepared = True
                self.participants = record.participants
                self.acceptors = record.acceptors
                self.leaders = record.leaders
                self.timeouts = record.timeouts
                self.faster = record.faster
                self.learner = Learner(self.quorum)
                return []
        elif self.state is PartState.RECOVERING and isinstance(record, PaxosPartEnded):
            self.recovered_end = record.committed
            return []
        raise _illegal("participant", self.txid, self.state, event)

    def _resume(self) -> list[Effect]:
        if self.recovered_end is not None:
            committed = self.recovered_end
            self.state = PartState.COMMITTED if committed else PartState.ABORTED
            outcome = Outcome.COMMITTED if committed else Outcome.ABORTED
            # The acceptors may not have heard: tell them again (idempotent).
            return [*self._applied(committed), Decide(outcome, "recovered from the log"), Forget()]
        self.state = PartState.PREPARED
        return self._ask()


# -- leader ----------------------------------------------------------------------


class LeaderState(enum.Enum):
    INIT = "init"
    WAITING = "waiting"  # ballot 0: the participants' own proposals
    BALLOTING = "balloting"  # phase 1/2 at a ballot of this leader's
    RECOVERING = "recovering"
    COMMITTED = "committed"
    ABORTED = "aborted"


class PaxosLeader:
    """The leader (coordinator) of one Paxos Commit transaction, or a backup of it."""

    def __init__(
        self,
        txid: str,
        me: str,
        acceptors: tuple[str, ...],
        *,
        backups: tuple[str, ...] = (),
        timeouts: Timeouts | None = None,
        faster: bool = False,
    ) -> None:
        check_acceptors(acceptors)
        self.txid = txid
        self.me = me
        self.acceptors = acceptors
        self.leaders = (me, *(b for b in backups if b != me))
        self.timeouts = timeouts or Timeouts()
        self.faster = faster
        self.state = LeaderState.INIT
        self.participants: tuple[str, ...] = ()
        self.learner = Learner(self.quorum)
        self.round = 0  # the highest round this leader has forced
        self.seen_round = 0  # the highest round an acceptor told of (Nack)
        self.ballot: Ballot | None = None
        self.promises: dict[str, dict[str, Phase1b]] = {}
        self.proposed: set[str] = set()
        self.recovered_end: bool | None = None

    @property
    def quorum(self) -> int:
        return quorum_of(self.acceptors)

    def handle(self, event: Event) -> list[Effect]:
        state = self.state
        if isinstance(event, Received) and state is not LeaderState.RECOVERING:
            return self.receive(event.message)
        if isinstance(event, TimerFired) and state is not LeaderState.RECOVERING:
            if event.name == LEADER_TIMER and state in (LeaderState.WAITING, LeaderState.BALLOTING):
                return self._new_ballot()
            return [Ignored(f"stale timer {event.name!r} in state {state.value}")]
        if isinstance(event, Begin) and state is LeaderState.INIT:
            return self._begin(event)
        if isinstance(event, TakeOver) and state is LeaderState.INIT:
            self._check_participants(event.participants)
            self.participants = event.participants
            return self._new_ballot()
        if isinstance(event, RecordRecovered) and state in (
            LeaderState.INIT,
            LeaderState.RECOVERING,
        ):
            record = event.record
            if isinstance(record, PaxosLeaderBallot):
                self.state = LeaderState.RECOVERING
                self.round = max(self.round, record.round)
                self.participants = record.participants
                return []
            if isinstance(record, PaxosLeaderEnded) and state is LeaderState.RECOVERING:
                self.recovered_end = record.committed
                return []
        if isinstance(event, RecoveryDone) and state is LeaderState.RECOVERING:
            if self.recovered_end is not None:
                committed = self.recovered_end
                self.state = LeaderState.COMMITTED if committed else LeaderState.ABORTED
                outcome = Outcome.COMMITTED if committed else Outcome.ABORTED
                return [Decide(outcome, "recovered from the log"), Forget()]
            return self._new_ballot()
        raise _illegal("leader", self.txid, state, event)

    def _check_participants(self, participants: tuple[str, ...]) -> None:
        if not participants:
            raise ProtocolError(f"transaction {self.txid!r} needs at least one participant")
        if len(set(participants)) != len(participants):
            raise ProtocolError(f"transaction {self.txid!r} lists a participant twice")

    def _begin(self, event: Begin) -> list[Effect]:
        self._check_participants(event.participants)
        if len(event.payloads) != len(event.participants):
            raise ProtocolError(
                f"transaction {self.txid!r}: {len(event.payloads)} payloads for "
                f"{len(event.participants)} participants"
            )
        self.state = LeaderState.WAITING
        self.participants = event.participants
        effects: list[Effect] = [
            Send(
                p,
                PaxosPrepare(
                    self.txid,
                    self.me,
                    self.participants,
                    self.acceptors,
                    self.leaders,
                    payload,
                    self.timeouts,
                    self.faster,
                ),
            )
            for p, payload in zip(event.participants, event.payloads, strict=True)
        ]
        effects.append(SetTimer(LEADER_TIMER, self.timeouts.votes_s))
        return effects

    def make_ballot(self, round_: int) -> Ballot:
        return Ballot(round_, self.me)

    def _new_ballot(self) -> list[Effect]:
        """Phase 1 at a ballot above every one this leader used or heard of."""
        self.state = LeaderState.BALLOTING
        self.round = max(self.round, self.seen_round) + 1
        self.ballot = self.make_ballot(self.round)
        self.promises = {}
        self.proposed = set()
        effects: list[Effect] = [
            ForceLog(
                PaxosLeaderBallot(
                    self.txid,
                    self.round,
                    self.participants,
                    self.acceptors,
                    self.leaders,
                    self.timeouts,
                )
            )
        ]
        for instance in self.participants:
            if instance not in self.learner.chosen:
                message = Phase1a(self.txid, self.me, instance, self.ballot)
                effects.extend(Send(a, message) for a in self.acceptors)
        effects.append(SetTimer(LEADER_TIMER, self.timeouts.votes_s))
        return effects

    def _learners(self) -> tuple[str, ...]:
        return (self.me, *self.participants) if self.faster else (self.me,)

    def receive(self, message: Message) -> list[Effect]:
        state = self.state
        if isinstance(message, DecisionRequest | PaxosDecisionRequest):
            if state in (LeaderState.COMMITTED, LeaderState.ABORTED):
                return [
                    Send(
                        message.sender, Decision(self.txid, self.me, state is LeaderState.COMMITTED)
                    )
                ]
            return [Ignored(f"inquiry from {message.sender!r} before the outcome is known")]
        if isinstance(message, (Phase2b, Phase1b, Nack)):
            if message.sender not in self.acceptors:
                return [
                    Ignored(
                        f"{type(message).__name__} from {message.sender!r}, not an acceptor",
                        violation=True,
                    )
                ]
            if state not in (LeaderState.WAITING, LeaderState.BALLOTING):
                return [Ignored(f"late {type(message).__name__} in state {state.value}")]
            if message.instance not in self.participants:
                return [
                    Ignored(
                        f"{type(message).__name__} for unknown instance {message.instance!r}",
                        violation=True,
                    )
                ]
            if isinstance(message, Phase2b):
                return self._on_2b(message)
            if isinstance(message, Phase1b):
                return self._on_1b(message)
            self.seen_round = max(self.seen_round, message.promised.round)
            return []
        if isinstance(message, Decision) and message.sender in self.acceptors:
            if state not in (LeaderState.WAITING, LeaderState.BALLOTING):
                return [Ignored(f"late outcome from acceptor {message.sender!r}")]
            # The acceptors forgot it once every participant applied it; they
            # remember the outcome, which nobody needs announced any more.
            return self._decided(
                Outcome.COMMITTED if message.commit else Outcome.ABORTED,
                f"every participant applied it (told by {message.sender})",
                announce=False,
            )
        return [Ignored(f"{type(message).__name__} is not for a Paxos leader", violation=True)]

    def _on_2b(self, message: Phase2b) -> list[Effect]:
        self.learner.add(message)
        outcome = self.learner.outcome(self.participants)
        if outcome is None:
            return []
        return self._decided(outcome, "", announce=True)

    def _decided(self, outcome: Outcome, reason: str, *, announce: bool) -> list[Effect]:
        committed = outcome is Outcome.COMMITTED
        self.state = LeaderState.COMMITTED if committed else LeaderState.ABORTED
        effects: list[Effect] = [CancelTimer(LEADER_TIMER), Decide(outcome, reason)]
        if announce and (not self.faster or self.ballot is not None):
            effects.extend(
                Send(p, Decision(self.txid, self.me, committed)) for p in self.participants
            )
        if self.round > 0:
            # Its ballot records would run phase 1 again after a restart; this
            # one, kept as the tombstone, says it is over.
            effects.extend([Log(PaxosLeaderEnded(self.txid, committed)), Compact()])
        # The host remembers the outcome and answers later inquiries with it.
        effects.append(Forget())
        return effects

    def _on_1b(self, message: Phase1b) -> list[Effect]:
        instance = message.instance
        if message.ballot != self.ballot or instance in self.proposed:
            return [Ignored(f"stale phase 1b from {message.sender!r}")]
        if instance in self.learner.chosen:
            return []
        promises = self.promises.setdefault(instance, {})
        promises[message.sender] = message
        if len(promises) < self.quorum:
            return []
        self.proposed.add(instance)
        value = ABORTED
        best: Ballot | None = None
        for promise in promises.values():
            if (
                promise.accepted_ballot is not None
                and promise.accepted_value is not None
                and (best is None or promise.accepted_ballot > best)
            ):
                best, value = promise.accepted_ballot, promise.accepted_value
        proposal = Phase2a(self.txid, self.me, instance, message.ballot, value, self._learners())
        return [Send(a, proposal) for a in self.acceptors]


# -- a leader asked about a transaction it does not hold ---------------------------


def leader_for_unknown(txid: str, me: str, message: Message) -> PaxosLeader | None:
    """A leader to take `txid` over, if `message` asks `me` to and it is time; else None.

    The caller (the coordinator host) hands it `TakeOver(participants)` and
    then the message itself.
    """
    if not isinstance(message, PaxosDecisionRequest) or me not in message.leaders:
        return None
    if message.sender.rpartition("@")[2] != me.rpartition("@")[2]:
        # Only for a participant of its own node, whose membership came in
        # the coordinator's PaxosPrepare: a request from elsewhere could name
        # acceptors of its own choosing and so decide what it likes.
        return None
    if message.sender not in message.participants or len(set(message.participants)) != len(
        message.participants
    ):
        return None
    if message.attempt < takeover_after(message.leaders.index(me), message.timeouts):
        return None
    try:
        check_acceptors(message.acceptors)
    except ConfigError:
        return None
    return PaxosLeader(
        txid, me, message.acceptors, backups=message.leaders, timeouts=message.timeouts
    )


def answer_for_unknown_leader(txid: str, me: str, message: Message) -> list[Effect]:
    """What a leader holding nothing about `txid` answers: never a presumption.

    Its log holds nothing in the normal case, so "unknown" says nothing of
    the outcome, which lives at the acceptors.
    """
    return [Ignored(f"{type(message).__name__} about {txid!r}, which {me} does not hold")]


def answer_for_finished_leader(
    txid: str, me: str, outcome: Outcome, message: Message
) -> list[Effect]:
    if isinstance(message, PaxosDecisionRequest):
        return [Send(message.sender, Decision(txid, me, outcome is Outcome.COMMITTED))]
    return [Ignored(f"late {type(message).__name__} for a finished transaction")]
