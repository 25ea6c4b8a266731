"""Two-phase commit with presumed abort, read-only votes and cooperative termination.

Theory of operation
-------------------
One coordinator machine and one participant machine per transaction and
process. They are pure: `handle(event)` validates the event against the
current state, raises `ProtocolError` *before* changing anything if the
event is illegal, and otherwise returns the effects to carry out in order.

Presumed abort (R*): the coordinator writes nothing until it decides commit,
then forces COMMIT before sending it; abort is neither forced nor
acknowledged, so a coordinator that knows nothing of a transaction answers
"abort". A participant forces PREPARED before voting yes and COMMITTED before
acknowledging. A read-only participant votes READ_ONLY, writes nothing and is
left out of phase two; an all-read-only transaction writes nothing at all.

An in-doubt participant (voted yes, no decision) never aborts on its own
(S5). When its decision timer fires it asks the coordinator and, with
cooperative termination, its peers (PREPARE carries the participant list):
a decided peer answers with the decision; a peer that has not voted aborts
(durably) and answers abort; an uncertain peer answers "uncertain" and the
asker stays blocked, re-asking with exponential backoff. A peer that holds
nothing about the transaction answers "unknown": it may have voted read-only
(which writes nothing and decides nothing), so it can vouch for no outcome.
The asker applies none of these answers: only the coordinator's decision
binds, since a compromised member could answer either outcome (docs/
protocols.md, "Who may decide"); it keeps asking the coordinator.

An operator may decide instead (`dtxn resolve`, docs/operations.md): a
p-resolved record after the p-prepared is replayed as the coordinator's
decision at the next start and, once applied, is the tombstone. A coordinator
decision that disagrees with it later is a "heuristic mismatch": not applied,
reported as a violation.

Messages that are late, duplicated or for a finished transaction are answered
or ignored (`Ignored` effect, counted by the runtime), never an error.
"""

from __future__ import annotations

import enum

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
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.messages import (
    Ack,
    Decision,
    DecisionRequest,
    Message,
    PeerState,
    Prepare,
    Protocol,
    StateReport,
    StateRequest,
    StatusReply,
    Timeouts,
    Vote,
    VoteCast,
)
from dtxn.protocols.records import (
    CoordAborted,
    CoordCommitted,
    CoordEnded,
    PartAborted,
    PartCommitted,
    PartPrepared,
    PartResolved,
)

VOTES_TIMER = "votes"
ACKS_TIMER = "acks"
DECISION_TIMER = "decision"


class CoordState(enum.Enum):
    INIT = "init"
    WAITING = "waiting"  # collecting votes
    COMMITTED = "committed"  # decision forced, collecting acks
    ABORTED = "aborted"
    ENDED = "ended"


class PartState(enum.Enum):
    INIT = "init"
    PREPARING = "preparing"  # resource.prepare running
    PREPARED = "prepared"  # voted yes: in doubt until the decision
    COMMITTING = "committing"  # resource.commit running
    ABORTING = "aborting"  # resource.abort running
    COMMITTED = "committed"
    ABORTED = "aborted"
    READ_ONLY = "read_only"


def _illegal(role: str, txid: str, state: enum.Enum, event: Event) -> ProtocolError:
    return ProtocolError(
        f"{role} of transaction {txid!r} in state {state.value!r} "
        f"cannot handle {type(event).__name__}"
    )


class TwoPCCoordinator:
    """The coordinator of one 2PC transaction (presumed abort)."""

    protocol = Protocol.TWO_PC

    def __init__(
        self, txid: str, me: str, timeouts: Timeouts | None = None, *, cooperative: bool = True
    ) -> None:
        self.txid = txid
        self.me = me
        self.timeouts = timeouts or Timeouts()
        self.cooperative = cooperative
        self.state = CoordState.INIT
        self.participants: tuple[str, ...] = ()
        self.votes: dict[str, Vote] = {}
        self.pending_acks: dict[str, None] = {}
        self.retry_s = self.timeouts.acks_s
        self.reason = ""

    def handle(self, event: Event) -> list[Effect]:
        if isinstance(event, Received):
            return self.receive(event.message)
        if isinstance(event, TimerFired):
            return self._on_timer(event.name)
        if isinstance(event, Begin):
            return self._begin(event)
        if isinstance(event, RecordRecovered):
            return self._recover(event)
        if isinstance(event, RecoveryDone):
            return self._resume()
        raise _illegal("coordinator", self.txid, self.state, event)

    # -- phase one -------------------------------------------------------------

    def _begin(self, event: Begin) -> list[Effect]:
        if self.state is not CoordState.INIT:
            raise _illegal("coordinator", self.txid, self.state, event)
        participants = event.participants
        if not participants:
            raise ProtocolError(f"transaction {self.txid!r} needs at least one participant")
        if len(set(participants)) != len(participants):
            raise ProtocolError(f"transaction {self.txid!r} lists a participant twice")
        if len(event.payloads) != len(participants):
            raise ProtocolError(
                f"transaction {self.txid!r}: {len(event.payloads)} payloads for "
                f"{len(participants)} participants"
            )
        self.state = CoordState.WAITING
        self.participants = participants
        effects: list[Effect] = [
            Send(
                p,
                Prepare(
                    self.txid,
                    self.me,
                    self.protocol,
                    participants,
                    payload,
                    self.timeouts,
                    self.cooperative,
                ),
            )
            for p, payload in zip(participants, event.payloads, strict=True)
        ]
        effects.append(SetTimer(VOTES_TIMER, self.timeouts.votes_s))
        return effects

    def _on_vote(self, message: VoteCast) -> list[Effect]:
        sender = message.sender
        if sender not in self.participants:
            return [Ignored(f"vote from {sender!r}, not a participant", violation=True)]
        if self.state is not CoordState.WAITING:
            if message.vote is Vote.YES and self.state is CoordState.ABORTED:
                return [Send(sender, Decision(self.txid, self.me, False))]
            return [Ignored(f"late vote from {sender!r} in state {self.state.value}")]
        if sender in self.votes:
            return [Ignored(f"duplicate vote from {sender!r}")]
        self.votes[sender] = message.vote
        if message.vote is Vote.NO:
            return self._abort(
                f"participant {sender!r} voted no"
                + (f": {message.reason}" if message.reason else "")
            )
        if len(self.votes) < len(self.participants):
            return []
        return self._all_voted()

    def _all_voted(self) -> list[Effect]:
        yes = tuple(p for p in self.participants if self.votes[p] is Vote.YES)
        if not yes:
            self.state = CoordState.ENDED
            return [
                CancelTimer(VOTES_TIMER),
                Decide(Outcome.COMMITTED, "every participant was read-only"),
                Forget(),
            ]
        return self._commit(yes)

    def _commit(self, yes: tuple[str, ...]) -> list[Effect]:
        self.state = CoordState.COMMITTED
        self.pending_acks = dict.fromkeys(yes)
        effects: list[Effect] = [
            CancelTimer(VOTES_TIMER),
            ForceLog(CoordCommitted(self.txid, self.protocol, yes)),
            Decide(Outcome.COMMITTED),
        ]
        effects.extend(Send(p, Decision(self.txid, self.me, True)) for p in yes)
        effects.append(SetTimer(ACKS_TIMER, self.retry_s))
        return effects

    def _abort(self, reason: str) -> list[Effect]:
        self.state = CoordState.ABORTED
        self.reason = reason
        effects: list[Effect] = [CancelTimer(VOTES_TIMER), Decide(Outcome.ABORTED, reason)]
        # Everyone who may have voted yes, or may still vote, hears abort now
        # rather than after its own decision timer; no ack is expected (PrA).
        effects.extend(
            Send(p, Decision(self.txid, self.me, False))
            for p in self.participants
            if self.votes.get(p) not in (Vote.NO, Vote.READ_ONLY)
        )
        # Presumed abort logs nothing; `protocol="auto"` logged its choice,
        # which stays as the tombstone.
        effects.extend([Compact(), Forget()])
        return effects

    # -- phase two ---------------------------------------------------------------

    def receive(self, message: Message) -> list[Effect]:
        """Same as `handle(Received(message))`, without building the event (the hot path)."""
        if isinstance(message, VoteCast):
            return self._on_vote(message)
        if isinstance(message, Ack):
            if self.state is not CoordState.COMMITTED or message.sender not in self.pending_acks:
                return [Ignored(f"unexpected ack from {message.sender!r}")]
            del self.pending_acks[message.sender]
            if self.pending_acks:
                return []
            self.state = CoordState.ENDED
            return [CancelTimer(ACKS_TIMER), Log(CoordEnded(self.txid)), Compact(), Forget()]
        if isinstance(message, DecisionRequest):
            if self.state is CoordState.COMMITTED:
                return [Send(message.sender, Decision(self.txid, self.me, True))]
            if self.state is CoordState.ABORTED:
                return [Send(message.sender, Decision(self.txid, self.me, False))]
            return [Ignored(f"inquiry from {message.sender!r} before the decision")]
        return [Ignored(f"{type(message).__name__} is not for a 2PC coordinator", violation=True)]

    def _on_timer(self, name: str) -> list[Effect]:
        if name == VOTES_TIMER and self.state is CoordState.WAITING:
            silent = [p for p in self.participants if p not in self.votes]
            return self._abort(
                f"no vote from {', '.join(map(repr, silent))} within {self.timeouts.votes_s}s"
            )
        if name == ACKS_TIMER and self.state is CoordState.COMMITTED:
            self.retry_s = min(self.retry_s * 2, self.timeouts.retry_max_s)
            effects: list[Effect] = [
                Send(p, Decision(self.txid, self.me, True)) for p in self.pending_acks
            ]
            effects.append(SetTimer(ACKS_TIMER, self.retry_s))
            return effects
        return [Ignored(f"stale timer {name!r} in state {self.state.value}")]

    # -- recovery ----------------------------------------------------------------

    def _recover(self, event: RecordRecovered) -> list[Effect]:
        record = event.record
        if isinstance(record, CoordCommitted) and self.state is CoordState.INIT:
            self.state = CoordState.COMMITTED
            self.participants = record.participants
            self.pending_acks = dict.fromkeys(record.participants)
            return []
        if isinstance(record, CoordEnded):
            self.state = CoordState.ENDED
            return []
        if isinstance(record, CoordAborted) and self.state is CoordState.INIT:
            # Written (lazily) by a 3PC coordinator that aborted before
            # pre-committing; the record names no protocol, so recovery may
            # hand it to this class. It means what presumed abort means.
            self.state = CoordState.ABORTED
            return []
        raise _illegal("coordinator", self.txid, self.state, event)

    def _resume(self) -> list[Effect]:
        if self.state is CoordState.COMMITTED:
            effects: list[Effect] = [Decide(Outcome.COMMITTED, "recovered from the log")]
            effects.extend(Send(p, Decision(self.txid, self.me, True)) for p in self.pending_acks)
            effects.append(SetTimer(ACKS_TIMER, self.retry_s))
            return effects
        if self.state is CoordState.ENDED:
            return [Decide(Outcome.COMMITTED, "recovered from the log"), Forget()]
        # Nothing forced: presumed abort.
        self.state = CoordState.ABORTED
        return [Decide(Outcome.ABORTED, "presumed abort after recovery"), Forget()]


class TwoPCParticipant:
    """A participant of one 2PC transaction; drives the local `Resource` via effects."""

    protocol = Protocol.TWO_PC

    def __init__(self, txid: str, me: str) -> None:
        self.txid = txid
        self.me = me
        self.state = PartState.INIT
        self.coordinator = ""
        self.participants: tuple[str, ...] = ()
        self.timeouts = Timeouts()
        self.cooperative = True
        self.retry_s = self.timeouts.decision_s
        # True while resource.prepare runs after the transaction was already
        # aborted (by the coordinator or a peer's inquiry): its vote is then
        # answered with resource.abort, never sent.
        self.vote_pending = False
        # Recovered from a lone p-abort (forced on an inquiry while preparing):
        # resource.abort is applied on resume, since the crash may have cut it off.
        self.abort_unapplied = False
        self.reason = ""
        # An operator's heuristic decision recovered from the log (`dtxn resolve`).
        self.resolution: PartResolved | None = None

    @property
    def in_doubt(self) -> bool:
        return self.state is PartState.PREPARED

    def handle(self, event: Event) -> list[Effect]:
        if isinstance(event, Received):
            return self.receive(event.message)
        if isinstance(event, LocalVoteCast):
            return self._on_local_vote(event)
        if isinstance(event, ResourceApplied):
            return self._on_applied(event)
        if isinstance(event, TimerFired):
            return self._on_timer(event.name)
        if isinstance(event, RecordRecovered):
            return self._recover(event)
        if isinstance(event, RecoveryDone):
            return self._resume()
        raise _illegal("participant", self.txid, self.state, event)

    def _peers(self) -> list[str]:
        return [p for p in self.participants if p != self.me]

    def receive(self, message: Message) -> list[Effect]:
        """Same as `handle(Received(message))`, without building the event (the hot path)."""
        state = self.state
        if isinstance(message, Prepare):
            if state is PartState.INIT:
                self.state = PartState.PREPARING
                self.coordinator = message.sender
                self.participants = message.participants
                self.timeouts = message.timeouts
                self.cooperative = message.cooperative
                self.retry_s = self.timeouts.decision_s
                return [InvokeResource(ResourceOp.PREPARE, message.payload)]
            if state in (PartState.PREPARED, PartState.COMMITTING, PartState.COMMITTED):
                return [Send(message.sender, VoteCast(self.txid, self.me, Vote.YES))]
            if state is PartState.ABORTED and not self.vote_pending:
                return [Send(message.sender, VoteCast(self.txid, self.me, Vote.NO))]
            return [Ignored(f"duplicate prepare in state {state.value}")]
        if isinstance(message, Decision):
            return self._on_decision(message)
        if isinstance(message, DecisionRequest):
            return self._answer_inquiry(message.sender)
        if isinstance(message, StatusReply):
            # An uncertain peer cannot help; stay blocked and keep asking.
            return [Ignored(f"peer {message.sender!r} is {message.state.value} too")]
        return [Ignored(f"{type(message).__name__} is not for a 2PC participant", violation=True)]

    def _on_local_vote(self, event: LocalVoteCast) -> list[Effect]:
        if self.state is PartState.PREPARING:
            vote = event.vote
            if vote is Vote.YES:
                self.state = PartState.PREPARED
                return [
                    ForceLog(
                        PartPrepared(
                            self.txid,
                            self.protocol,
                            self.coordinator,
                            self.participants,
                            self.timeouts,
                            self.cooperative,
                        )
                    ),
                    Send(self.coordinator, VoteCast(self.txid, self.me, Vote.YES)),
                    SetTimer(DECISION_TIMER, self.retry_s),
                ]
            if vote is Vote.NO:
                self.state = PartState.ABORTED
                self.reason = event.reason or "voted no"
                return [
                    Send(self.coordinator, VoteCast(self.txid, self.me, Vote.NO, event.reason)),
                    Decide(Outcome.ABORTED, self.reason),
                    Forget(),
                ]
            # No Decide: a read-only voter is out of the transaction and never
            # learns its outcome, so it must not be remembered as committed (it
            # would then vouch for COMMIT to an in-doubt peer of an aborted one).
            self.state = PartState.READ_ONLY
            return [
                Send(self.coordinator, VoteCast(self.txid, self.me, Vote.READ_ONLY)),
                Forget(),
            ]
        if self.state is PartState.ABORTED and self.vote_pending:
            self.vote_pending = False
            if event.vote is Vote.YES:
                self.state = PartState.ABORTING
                return [InvokeResource(ResourceOp.ABORT)]
            # Its forced abort (on an inquiry before the vote) is the tombstone.
            return [Decide(Outcome.ABORTED, self.reason), Compact(), Forget()]
        raise _illegal("participant", self.txid, self.state, event)

    def _on_decision(self, message: Decision) -> list[Effect]:
        state = self.state
        if self.resolution is not None and message.sender == self.coordinator:
            return [heuristic_check(self.resolution, message)]
        if message.sender != self.coordinator:
            if message.sender not in self.participants:
                return [
                    Ignored(f"decision from {message.sender!r}, not a member", violation=True)
                ]
            # Only the coordinator decides in 2PC. A peer's word cannot be told
            # from an invention: a member that voted yes could answer "abort"
            # (or "commit") to split the transaction. Keep asking the
            # coordinator (docs/protocols.md, "Who may decide").
            said = "COMMIT" if message.commit else "ABORT"
            return [
                Ignored(f"{said} from peer {message.sender!r} not applied: not the coordinator")
            ]
        if message.commit:
            if state is PartState.PREPARED:
                self.state = PartState.COMMITTING
                return [CancelTimer(DECISION_TIMER), InvokeResource(ResourceOp.COMMIT)]
            if state in (PartState.COMMITTING, PartState.COMMITTED):
                return [Ignored(f"duplicate commit in state {state.value}")]
            return [
                Ignored(
                    f"COMMIT from {message.sender!r} for a transaction this participant "
                    f"holds as {state.value}",
                    violation=True,
                )
            ]
        if state is PartState.PREPARED:
            self.state = PartState.ABORTING
            self.reason = f"abort decided by {message.sender}"
            return [CancelTimer(DECISION_TIMER), InvokeResource(ResourceOp.ABORT)]
        if state is PartState.PREPARING:
            self.state = PartState.ABORTED
            self.vote_pending = True
            self.reason = f"abort decided by {message.sender} before the vote"
            return []
        if state in (PartState.ABORTING, PartState.ABORTED, PartState.READ_ONLY):
            return [Ignored(f"duplicate abort in state {state.value}")]
        return [
            Ignored(
                f"ABORT from {message.sender!r} for a transaction this participant "
                f"holds as {state.value}",
                violation=True,
            )
        ]

    def _answer_inquiry(self, asker: str) -> list[Effect]:
        state = self.state
        if state in (PartState.COMMITTING, PartState.COMMITTED):
            return [Send(asker, Decision(self.txid, self.me, True))]
        if state in (PartState.ABORTING, PartState.ABORTED):
            return [Send(asker, Decision(self.txid, self.me, False))]
        if state is PartState.PREPARED:
            return [Send(asker, StatusReply(self.txid, self.me, PeerState.UNCERTAIN))]
        if state is PartState.PREPARING:
            # Not voted yet: abort unilaterally, durably (a duplicated PREPARE
            # after a crash must not turn this into a yes), then answer.
            self.state = PartState.ABORTED
            self.vote_pending = True
            self.reason = f"aborted on inquiry from {asker} before voting"
            return [
                ForceLog(PartAborted(self.txid)),
                Send(asker, Decision(self.txid, self.me, False)),
            ]
        return [Ignored(f"inquiry in state {state.value}")]

    def _on_applied(self, event: ResourceApplied) -> list[Effect]:
        if self.resolution is not None:
            ended = applied_resolution(
                self.txid, self.me, self.coordinator, self.resolution, event.op
            )
            if ended is None:
                raise _illegal("participant", self.txid, self.state, event)
            self.state = PartState.COMMITTED if self.resolution.commit else PartState.ABORTED
            return ended
        if self.state is PartState.COMMITTING and event.op is ResourceOp.COMMIT:
            self.state = PartState.COMMITTED
            return [
                ForceLog(PartCommitted(self.txid)),
                Send(self.coordinator, Ack(self.txid, self.me)),
                Decide(Outcome.COMMITTED),
                Compact(),
                Forget(),
            ]
        if self.state is PartState.ABORTING and event.op is ResourceOp.ABORT:
            self.state = PartState.ABORTED
            return [
                Log(PartAborted(self.txid)),
                Decide(Outcome.ABORTED, self.reason),
                Compact(),
                Forget(),
            ]
        raise _illegal("participant", self.txid, self.state, event)

    def _on_timer(self, name: str) -> list[Effect]:
        if name == DECISION_TIMER and self.state is PartState.PREPARED:
            effects: list[Effect] = [
                Send(self.coordinator, DecisionRequest(self.txid, self.me))
            ]
            if self.cooperative:
                effects.extend(Send(p, DecisionRequest(self.txid, self.me)) for p in self._peers())
            self.retry_s = min(self.retry_s * 2, self.timeouts.retry_max_s)
            effects.append(SetTimer(DECISION_TIMER, self.retry_s))
            return effects
        return [Ignored(f"stale timer {name!r} in state {self.state.value}")]

    def _recover(self, event: RecordRecovered) -> list[Effect]:
        record = event.record
        if isinstance(record, PartPrepared) and self.state is PartState.INIT:
            self.state = PartState.PREPARED
            self.coordinator = record.coordinator
            self.participants = record.participants
            self.timeouts = record.timeouts
            self.cooperative = record.cooperative
            self.retry_s = self.timeouts.decision_s
            return []
        if isinstance(record, PartCommitted):
            self.state = PartState.COMMITTED
            return []
        if isinstance(record, PartAborted):
            # Alone (no PREPARED before it), it was forced on an inquiry while
            # `prepare` ran: that prepare may have applied, and its abort never ran.
            self.abort_unapplied = self.state is PartState.INIT
            self.state = PartState.ABORTED
            return []
        if isinstance(record, PartResolved) and self.resolution is None:
            if self.state is PartState.PREPARED:
                self.resolution = record
                return []
            if self.state is PartState.INIT:
                # Alone: the p-prepared was compacted, which happens only once
                # the resource applied the resolution. It is the tombstone.
                self.resolution = record
                self.state = PartState.COMMITTED if record.commit else PartState.ABORTED
                return []
        raise _illegal("participant", self.txid, self.state, event)

    def _resume(self) -> list[Effect]:
        if self.resolution is not None:
            return self._resume_resolved(self.resolution)
        if self.state is PartState.PREPARED:
            # In doubt after a crash: ask at once, then keep asking on the timer.
            effects: list[Effect] = [Send(self.coordinator, DecisionRequest(self.txid, self.me))]
            if self.cooperative:
                effects.extend(Send(p, DecisionRequest(self.txid, self.me)) for p in self._peers())
            effects.append(SetTimer(DECISION_TIMER, self.retry_s))
            return effects
        if self.state is PartState.COMMITTED:
            return [Decide(Outcome.COMMITTED, "recovered from the log"), Forget()]
        if self.state is PartState.ABORTED and self.abort_unapplied:
            # Apply the abort the crash cut off (idempotent, and harmless if the
            # prepare never applied); then end as a lazily-logged abort does.
            self.state = PartState.ABORTING
            self.reason = "aborted on inquiry before its vote; abort reapplied after a crash"
            return [InvokeResource(ResourceOp.ABORT)]
        if self.state is PartState.ABORTED:
            return [Decide(Outcome.ABORTED, "recovered from the log"), Forget()]
        raise ProtocolError(f"participant of {self.txid!r} recovered with no records")

    def _resume_resolved(self, record: PartResolved) -> list[Effect]:
        self.reason = resolution_reason(record)
        if self.state is PartState.PREPARED:
            # Applied exactly as the coordinator's decision would be.
            self.state = PartState.COMMITTING if record.commit else PartState.ABORTING
            return [InvokeResource(ResourceOp.COMMIT if record.commit else ResourceOp.ABORT)]
        outcome = Outcome.COMMITTED if record.commit else Outcome.ABORTED
        # Recovery compacts only the usual end records: keep this one as the tombstone.
        return [Decide(outcome, self.reason), Compact(), Forget()]


def resolution_reason(record: PartResolved) -> str:
    """How a participant reports an outcome an operator decided."""
    outcome = "commit" if record.commit else "abort"
    return f"{outcome} resolved by {record.by} (heuristic): {record.reason}"


def heuristic_check(record: PartResolved, message: Decision) -> Ignored:
    """What a participant does with a decision for a branch an operator resolved: nothing.

    Agreeing, it is a duplicate. Disagreeing, the transaction is split: an
    operator chose wrongly (or the coordinator remembered late), which must
    not pass silently, and cannot be undone by the machine either.
    """
    said = "COMMIT" if message.commit else "ABORT"
    if message.commit == record.commit:
        return Ignored(f"{said} from {message.sender!r} agrees with the operator's resolution")
    return Ignored(
        f"heuristic mismatch: {said} from {message.sender!r} for a branch "
        f"{resolution_reason(record)}; not applied",
        violation=True,
    )


def applied_resolution(
    txid: str, me: str, coordinator: str, record: PartResolved, op: ResourceOp
) -> list[Effect] | None:
    """How a branch an operator resolved ends once its resource applied `op`; None if
    `op` is not the resolution's.

    No p-commit/p-abort is written: the forced p-resolved already says how
    it ends and stays as the tombstone (with the operator's reason).
    """
    reason = resolution_reason(record)
    if record.commit and op is ResourceOp.COMMIT:
        # The coordinator may still wait for acks, if it remembered its commit.
        return [Send(coordinator, Ack(txid, me)), Decide(Outcome.COMMITTED, reason), Compact(),
                Forget()]
    if not record.commit and op is ResourceOp.ABORT:
        return [Decide(Outcome.ABORTED, reason), Compact(), Forget()]
    return None


def answer_for_unknown_coordinator(
    txid: str, me: str, message: Message, *, presume: bool = True
) -> list[Effect]:
    """A coordinator's answer about a transaction it holds no state for: presumed abort.

    With `presume` False (its log may have lost records, so "unknown" may be
    a decision it forgot) it refuses to guess: an inquiry is answered
    "unknown", which leaves the asker in doubt, and a late YES vote decides
    nothing. The host says so loudly.
    """
    if isinstance(message, VoteCast):
        if message.vote is Vote.YES:
            if not presume:
                return [Ignored(f"YES vote from {message.sender!r} for {txid!r}, unknown here, "
                                "and this log may be short: no abort presumed")]
            return [Send(message.sender, Decision(txid, me, False))]
        return [Ignored(f"late {message.vote.value} vote for a finished transaction")]
    if isinstance(message, DecisionRequest):
        if not presume:
            return [
                Send(message.sender, StatusReply(txid, me, PeerState.UNKNOWN)),
                Ignored(f"inquiry from {message.sender!r} about {txid!r}, unknown here, and "
                        "this log may be short: answered unknown, no abort presumed"),
            ]
        return [Send(message.sender, Decision(txid, me, False))]
    return [Ignored(f"{type(message).__name__} for unknown transaction {txid!r}")]


def answer_for_unknown_participant(txid: str, me: str, message: Message) -> list[Effect]:
    """A participant's answer about a transaction it holds no state for.

    It has not voted yes (a yes vote is forced first and would have been
    recovered), but in 2PC it may have voted READ_ONLY, which writes nothing
    and leaves the transaction free to commit without it. So an inquiry
    (DecisionRequest, 2PC or a recovering 3PC process) is answered "unknown"
    and decides nothing. A 3PC termination STATE-REQ is different: 3PC has no
    read-only votes (every vote but NO is forced), so it aborts unilaterally,
    forced before answering so that a duplicated PREPARE arriving later is
    refused. A COMMIT for a forgotten transaction is acknowledged: this
    participant forgets only after forcing its commit.
    """
    if isinstance(message, DecisionRequest):
        return [Send(message.sender, StatusReply(txid, me, PeerState.UNKNOWN))]
    if isinstance(message, StateRequest):
        return [
            ForceLog(PartAborted(txid)),
            Decide(Outcome.ABORTED, f"aborted unilaterally on inquiry from {message.sender}"),
            Send(message.sender, StateReport(txid, me, message.round, PeerState.ABORTED)),
        ]
    if isinstance(message, Decision):
        if message.commit:
            return [Send(message.sender, Ack(txid, me))]
        return [Ignored(f"abort for unknown transaction {txid!r}")]
    return [Ignored(f"{type(message).__name__} for unknown transaction {txid!r}")]


def answer_for_finished(txid: str, me: str, outcome: Outcome, message: Message) -> list[Effect]:
    """Answer a message about a transaction this process finished and forgot.

    Used by coordinators and participants alike: the remembered outcome is
    better than a presumption.
    """
    committed = outcome is Outcome.COMMITTED
    if isinstance(message, DecisionRequest):
        return [Send(message.sender, Decision(txid, me, committed))]
    if isinstance(message, StateRequest):
        state = PeerState.COMMITTED if committed else PeerState.ABORTED
        return [Send(message.sender, StateReport(txid, me, message.round, state))]
    if isinstance(message, Decision):
        if message.commit != committed:
            return [
                Ignored(
                    f"{'COMMIT' if message.commit else 'ABORT'} from {message.sender!r} for a "
                    f"transaction that ended {outcome.value} here",
                    violation=True,
                )
            ]
        if committed:
            return [Send(message.sender, Ack(txid, me))]
        return [Ignored("duplicate abort for a finished transaction")]
    if isinstance(message, Prepare) and not committed:
        return [Send(message.sender, VoteCast(txid, me, Vote.NO))]
    if isinstance(message, VoteCast) and message.vote is Vote.YES and not committed:
        return [Send(message.sender, Decision(txid, me, False))]
    return [Ignored(f"late {type(message).__name__} for a finished transaction")]
