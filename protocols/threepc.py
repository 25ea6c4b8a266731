"""Three-phase commit with per-phase timeouts and the termination protocol.

Theory of operation
-------------------
3PC inserts a pre-commit phase between the vote and the commit so that no
process commits while another is still uncertain (voted yes, not
pre-committed). States (BHG ch. 7): a participant is UNCERTAIN after voting
yes, COMMITTABLE after a forced PRE-COMMIT, then COMMITTED or ABORTED.

Timeouts (PROTOCOLS.md section 3):
- coordinator collecting votes: abort and tell the yes voters;
- coordinator collecting pre-commit acks: treat the silent as failed, force
  COMMIT and send it to everyone;
- participant UNCERTAIN or COMMITTABLE: run the termination protocol;
- anyone waiting on an elected backup: start a new election round.
(The row "participant before VOTE-REQ" does not arise: a participant learns
of a transaction from its VOTE-REQ and answers it at once; a participant
asked about a transaction it has not voted on aborts it durably.)

Termination: election is deterministic — in round r the backup coordinator
is `participants[r % n]`. The backup sends STATE-REQ(r) and applies
TR1 any aborted -> abort; TR2 any committed -> commit; TR3 all uncertain ->
abort; TR4 some committable, none committed -> PRE-COMMIT the uncertain ones,
collect acks (silent = failed), commit. A backup applies a decision locally
and forces it before broadcasting (log before send).

Recovering processes do not vote: a recovered participant asks the
coordinator and its peers (and keeps asking the coordinator), and reports in
termination only the state its log proves. As a backup it decides TR1/TR2 as
anyone, TR4 only on every participant's report, and TR3 only on every report
and once the coordinator has shown it never committed: while it was down, a
commit may have been decided without it (the coordinator presumes silent
participants failed). A coordinator recovering after PRE-COMMIT but before
COMMIT asks the participants instead of deciding; a commit it learns it
adopts as its own (forced before it is relayed, held until every ack is in),
never as a lazy end record. Participants force their
abort as well as their commit, so no decision is forgotten in a crash.

Failure model: fail-stop crashes, reliable links, no partitions, accurate
timeouts, not every process down. Under a partition 3PC can split its
decision (one side aborts by TR3 while the other commits); that is the
documented limit, demonstrated by a test.

The read-only optimisation is not used in 3PC: a read-only vote counts as
yes, so that every participant can answer termination state requests.
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
    PreCommit,
    PreCommitAck,
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
    CoordPreCommitted,
    PartAborted,
    PartCommitted,
    PartPreCommitted,
    PartPrepared,
    PartResolved,
)
from dtxn.protocols.twopc import applied_resolution, heuristic_check, resolution_reason

VOTES_TIMER = "votes"
PRECOMMIT_ACKS_TIMER = "precommit-acks"
ACKS_TIMER = "acks"
INQUIRY_TIMER = "inquiry"
DECISION_TIMER = "decision"
TERMINATION_TIMER = "termination"


class Coord3State(enum.Enum):
    INIT = "init"
    WAITING = "waiting"
    PRECOMMITTING = "precommitting"
    COMMITTED = "committed"
    ABORTED = "aborted"
    ENDED = "ended"
    RECOVERING = "recovering"  # pre-commit forced, decision unknown: asks


class Part3State(enum.Enum):
    INIT = "init"
    PREPARING = "preparing"
    UNCERTAIN = "uncertain"
    COMMITTABLE = "committable"
    COMMITTING = "committing"
    ABORTING = "aborting"
    COMMITTED = "committed"
    ABORTED = "aborted"


def _illegal(role: str, txid: str, state: enum.Enum, event: Event) -> ProtocolError:
    return ProtocolError(
        f"3PC {role} of transaction {txid!r} in state {state.value!r} "
        f"cannot handle {type(event).__name__}"
    )


class ThreePCCoordinator:
    """The coordinator of one 3PC transaction."""

    protocol = Protocol.THREE_PC

    def __init__(
        self, txid: str, me: str, timeouts: Timeouts | None = None, *, cooperative: bool = True
    ) -> None:
        self.txid = txid
        self.me = me
        self.timeouts = timeouts or Timeouts()
        self.cooperative = cooperative
        self.state = Coord3State.INIT
        self.participants: tuple[str, ...] = ()
        self.votes: dict[str, Vote] = {}
        self.yes: tuple[str, ...] = ()
        self.pending: dict[str, None] = {}
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

    def _begin(self, event: Begin) -> list[Effect]:
        if self.state is not Coord3State.INIT:
            raise _illegal("coordinator", self.txid, self.state, event)
        participants = event.participants
        if not participants or len(set(participants)) != len(participants):
            raise ProtocolError(
                f"transaction {self.txid!r} needs distinct participants, got {participants!r}"
            )
        if len(event.payloads) != len(participants):
            raise ProtocolError(f"transaction {self.txid!r}: one payload per participant needed")
        self.state = Coord3State.WAITING
        self.participants = participants
        effects: list[Effect] = [
            Send(
                p,
                Prepare(
                    self.txid, self.me, self.protocol, participants, payload, self.timeouts, True
                ),
            )
            for p, payload in zip(participants, event.payloads, strict=True)
        ]
        effects.append(SetTimer(VOTES_TIMER, self.timeouts.votes_s))
        return effects

    def _abort(self, reason: str) -> list[Effect]:
        self.state = Coord3State.ABORTED
        self.reason = reason
        effects: list[Effect] = [
            CancelTimer(VOTES_TIMER),
            Log(CoordAborted(self.txid, reason)),
            Decide(Outcome.ABORTED, reason),
        ]
        effects.extend(
            Send(p, Decision(self.txid, self.me, False))
            for p in self.participants
            if self.votes.get(p) is not Vote.NO
        )
        effects.extend([Compact(), Forget()])
        return effects

    def _precommit(self) -> list[Effect]:
        self.state = Coord3State.PRECOMMITTING
        self.yes = self.participants
        self.pending = dict.fromkeys(self.yes)
        effects: list[Effect] = [
            CancelTimer(VOTES_TIMER),
            ForceLog(CoordPreCommitted(self.txid, self.protocol, self.yes)),
        ]
        effects.extend(Send(p, PreCommit(self.txid, self.me)) for p in self.yes)
        effects.append(SetTimer(PRECOMMIT_ACKS_TIMER, self.timeouts.acks_s))
        return effects

    def _commit(self, reason: str = "") -> list[Effect]:
        self.state = Coord3State.COMMITTED
        self.pending = dict.fromkeys(self.yes)
        self.retry_s = self.timeouts.acks_s
        effects: list[Effect] = [
            CancelTimer(PRECOMMIT_ACKS_TIMER),
            ForceLog(CoordCommitted(self.txid, self.protocol, self.yes)),
            Decide(Outcome.COMMITTED, reason),
        ]
        effects.extend(Send(p, Decision(self.txid, self.me, True)) for p in self.yes)
        effects.append(SetTimer(ACKS_TIMER, self.retry_s))
        return effects

    def receive(self, message: Message) -> list[Effect]:
        """Same as `handle(Received(message))`, without building the event (the hot path)."""
        state = self.state
        sender = message.sender
        if isinstance(message, VoteCast):
            if sender not in self.participants:
                return [Ignored(f"vote from {sender!r}, not a participant", violation=True)]
            if state is not Coord3State.WAITING or sender in self.votes:
                return [Ignored(f"late or duplicate vote from {sender!r}")]
            self.votes[sender] = message.vote
            if message.vote is Vote.NO:
                return self._abort(
                f"participant {sender!r} voted no"
                + (f": {message.reason}" if message.reason else "")
            )
            if len(self.votes) < len(self.participants):
                return []
            return self._precommit()
        if isinstance(message, PreCommitAck):
            if state is not Coord3State.PRECOMMITTING or sender not in self.pending:
                return [Ignored(f"unexpected pre-commit ack from {sender!r}")]
            del self.pending[sender]
            return [] if self.pending else self._commit()
        if isinstance(message, Ack):
            if state is not Coord3State.COMMITTED or sender not in self.pending:
                return [Ignored(f"unexpected ack from {sender!r}")]
            del self.pending[sender]
            if self.pending:
                return []
            self.state = Coord3State.ENDED
            return [CancelTimer(ACKS_TIMER), Log(CoordEnded(self.txid)), Compact(), Forget()]
        if isinstance(message, Decision):
            if sender not in self.participants:
                return [Ignored(f"decision from {sender!r}, not a participant", violation=True)]
            # A backup coordinator decided (we were presumed failed, or we
            # are recovering). Adopt it unless we already decided otherwise.
            if state is Coord3State.WAITING and message.commit:
                # No one is committable before this coordinator pre-commits, so
                # no backup can have committed (TR2 and TR4 both need one).
                return [
                    Ignored(
                        f"COMMIT from {sender!r} while this coordinator collects votes",
                        violation=True,
                    )
                ]
            if state in (Coord3State.WAITING, Coord3State.PRECOMMITTING, Coord3State.RECOVERING):
                return self._adopt(message)
            if state is Coord3State.COMMITTED and not message.commit:
                return [
                    Ignored(
                        f"ABORT from {sender!r} after this coordinator committed: split decision",
                        violation=True,
                    )
                ]
            return [Ignored(f"decision from {sender!r} in state {state.value}")]
        if isinstance(message, DecisionRequest):
            if state is Coord3State.COMMITTED:
                return [Send(sender, Decision(self.txid, self.me, True))]
            return [Ignored(f"inquiry from {sender!r} in state {state.value}")]
        if isinstance(message, StatusReply | StateReport | StateRequest):
            return [Ignored(f"{type(message).__name__} from {sender!r}: no decision yet")]
        return [Ignored(f"{type(message).__name__} is not for a 3PC coordinator", violation=True)]

    def _adopt(self, message: Decision) -> list[Effect]:
        timers: list[Effect] = [
            CancelTimer(VOTES_TIMER),
            CancelTimer(PRECOMMIT_ACKS_TIMER),
            CancelTimer(INQUIRY_TIMER),
        ]
        reason = f"decided by backup coordinator {message.sender}"
        if message.commit:
            # Adopted as if decided here: forced before any COMMIT is relayed,
            # and held until every participant acked. Ending at once (a lazy
            # c-end) left a participant still in doubt with an outcome only
            # the `remember_ended` window kept (docs/protocols.md, "A coordinator
            # that learns the outcome").
            self.yes = self.participants
            # (`_commit` cancels the pre-commit acks timer itself.)
            return [CancelTimer(VOTES_TIMER), CancelTimer(INQUIRY_TIMER), *self._commit(reason)]
        self.state = Coord3State.ABORTED
        return [
            *timers,
            Log(CoordAborted(self.txid, reason)),
            Decide(Outcome.ABORTED, reason),
            Compact(),
            Forget(),
        ]

    def _on_timer(self, name: str) -> list[Effect]:
        state = self.state
        if name == VOTES_TIMER and state is Coord3State.WAITING:
            silent = [p for p in self.participants if p not in self.votes]
            return self._abort(
                f"no vote from {', '.join(map(repr, silent))} within {self.timeouts.votes_s}s"
            )
        if name == PRECOMMIT_ACKS_TIMER and state is Coord3State.PRECOMMITTING:
            unacked = ", ".join(map(repr, self.pending))
            return self._commit(f"no pre-commit ack from {unacked} (presumed failed)")
        if name == ACKS_TIMER and state is Coord3State.COMMITTED:
            self.retry_s = min(self.retry_s * 2, self.timeouts.retry_max_s)
            effects: list[Effect] = [
                Send(p, Decision(self.txid, self.me, True)) for p in self.pending
            ]
            effects.append(SetTimer(ACKS_TIMER, self.retry_s))
            return effects
        if name == INQUIRY_TIMER and state is Coord3State.RECOVERING:
            self.retry_s = min(self.retry_s * 2, self.timeouts.retry_max_s)
            effects = [Send(p, DecisionRequest(self.txid, self.me)) for p in self.yes]
            effects.append(SetTimer(INQUIRY_TIMER, self.retry_s))
            return effects
        return [Ignored(f"stale timer {name!r} in state {state.value}")]

    def _recover(self, event: RecordRecovered) -> list[Effect]:
        record = event.record
        if isinstance(record, CoordPreCommitted) and self.state is Coord3State.INIT:
            self.state = Coord3State.RECOVERING
            self.participants = self.yes = record.participants
            return []
        if isinstance(record, CoordCommitted) and self.state in (
            Coord3State.INIT,
            Coord3State.RECOVERING,
        ):
            self.state = Coord3State.COMMITTED
            self.participants = self.yes = record.participants
            self.pending = dict.fromkeys(self.yes)
            return []
        if isinstance(record, CoordAborted):
            self.state = Coord3State.ABORTED
            self.reason = record.reason
            return []
        if isinstance(record, CoordEnded):
            self.state = Coord3State.ENDED
            return []
        raise _illegal("coordinator", self.txid, self.state, event)

    def _resume(self) -> list[Effect]:
        state = self.state
        if state is Coord3State.COMMITTED:
            effects: list[Effect] = [Decide(Outcome.COMMITTED, "recovered from the log")]
            effects.extend(Send(p, Decision(self.txid, self.me, True)) for p in self.pending)
            effects.append(SetTimer(ACKS_TIMER, self.retry_s))
            return effects
        if state is Coord3State.RECOVERING:
            # Participants may have terminated without us: ask, never decide.
            effects = [Send(p, DecisionRequest(self.txid, self.me)) for p in self.yes]
            effects.append(SetTimer(INQUIRY_TIMER, self.retry_s))
            return effects
        if state is Coord3State.ENDED:
            return [Decide(Outcome.COMMITTED, "recovered from the log"), Forget()]
        self.state = Coord3State.ABORTED
        return [Decide(Outcome.ABORTED, self.reason or "presumed abort after recovery"), Forget()]


_PEER_STATE = {
    Part3State.UNCERTAIN: PeerState.UNCERTAIN,
    Part3State.COMMITTABLE: PeerState.COMMITTABLE,
    Part3State.COMMITTING: PeerState.COMMITTED,
    Part3State.COMMITTED: PeerState.COMMITTED,
    Part3State.ABORTING: PeerState.ABORTED,
    Part3State.ABORTED: PeerState.ABORTED,
}


class ThreePCParticipant:
    """A participant of one 3PC transaction, including its backup-coordinator role."""

    protocol = Protocol.THREE_PC

    def __init__(self, txid: str, me: str) -> None:
        self.txid = txid
        self.me = me
        self.state = Part3State.INIT
        self.coordinator = ""
        self.participants: tuple[str, ...] = ()
        self.timeouts = Timeouts()
        self.retry_s = self.timeouts.decision_s
        self.vote_pending = False
        # Recovered from a lone p-abort (forced on an inquiry while preparing):
        # resource.abort is applied on resume, since the crash may have cut it off.
        self.abort_unapplied = False
        self.reason = ""
        # Termination protocol.
        self.round = -1
        self.leading = False
        self.reports: dict[str, PeerState] = {}
        self.precommit_pending: dict[str, None] | None = None
        # Set when this process decided as backup: broadcast once applied locally.
        self.broadcast = False
        # Set when rebuilt in doubt from the log: it may have missed a decision
        # taken while it was down, so its own state proves little (see _apply_rules).
        self.recovered = False
        # Set when the coordinator asked us: it only asks while recovering with
        # a pre-commit and no commit in its log, and then it never commits itself.
        self.coordinator_undecided = False
        # An operator's heuristic decision recovered from the log (`dtxn resolve`).
        self.resolution: PartResolved | None = None

    @property
    def in_doubt(self) -> bool:
        return self.state in (Part3State.UNCERTAIN, Part3State.COMMITTABLE)

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

    def _others(self) -> list[str]:
        return [p for p in self.participants if p != self.me]

    def _member(self, sender: str) -> bool:
        return sender == self.coordinator or sender in self.participants

    # -- the normal path ---------------------------------------------------------

    def receive(self, message: Message) -> list[Effect]:
        """Same as `handle(Received(message))`, without building the event (the hot path)."""
        state = self.state
        sender = message.sender
        if isinstance(message, Prepare):
            if state is Part3State.INIT and self.me not in message.participants:
                return [
                    Ignored(f"prepare from {sender!r} does not list {self.me!r}", violation=True)
                ]
            if state is Part3State.INIT:
                self.state = Part3State.PREPARING
                self.coordinator = sender
                self.participants = message.participants
                self.timeouts = message.timeouts
                self.retry_s = self.timeouts.decision_s
                return [InvokeResource(ResourceOp.PREPARE, message.payload)]
            if state in (Part3State.UNCERTAIN, Part3State.COMMITTABLE):
                return [Send(sender, VoteCast(self.txid, self.me, Vote.YES))]
            if state is Part3State.ABORTED and not self.vote_pending:
                return [Send(sender, VoteCast(self.txid, self.me, Vote.NO))]
            return [Ignored(f"duplicate prepare in state {state.value}")]
        if isinstance(message, Decision | PreCommit | StateRequest) and not self._member(sender):
            return [
                Ignored(f"{type(message).__name__} from {sender!r}, not a member", violation=True)
            ]
        if isinstance(message, PreCommit):
            if state is Part3State.UNCERTAIN:
                self.state = Part3State.COMMITTABLE
                return [
                    ForceLog(PartPreCommitted(self.txid)),
                    Send(sender, PreCommitAck(self.txid, self.me)),
                    # The coordinator may wait acks_s for the other acks first.
                    SetTimer(DECISION_TIMER, self.timeouts.acks_s + self.timeouts.decision_s),
                ]
            if state is Part3State.COMMITTABLE:
                return [Send(sender, PreCommitAck(self.txid, self.me))]
            return [Ignored(f"pre-commit from {sender!r} in state {state.value}")]
        if isinstance(message, PreCommitAck):
            if self.leading and self.precommit_pending is not None:
                self.precommit_pending.pop(sender, None)
                if not self.precommit_pending:
                    return self._decide_as_backup(commit=True)
                return []
            return [Ignored(f"pre-commit ack from {sender!r} while not leading")]
        if isinstance(message, Decision):
            return self._on_decision(message)
        if isinstance(message, DecisionRequest):
            if sender == self.coordinator:
                self.coordinator_undecided = True
            return self._answer(sender, None)
        if isinstance(message, StateRequest):
            return self._on_state_request(message)
        if isinstance(message, StateReport):
            return self._on_state_report(message)
        if isinstance(message, StatusReply):
            return [Ignored(f"peer {sender!r} is {message.state.value}")]
        return [Ignored(f"{type(message).__name__} is not for a 3PC participant", violation=True)]

    def _on_local_vote(self, event: LocalVoteCast) -> list[Effect]:
        if self.state is Part3State.PREPARING:
            if event.vote is Vote.NO:
                self.state = Part3State.ABORTED
                self.reason = event.reason or "voted no"
                return [
                    Send(self.coordinator, VoteCast(self.txid, self.me, Vote.NO, event.reason)),
                    Decide(Outcome.ABORTED, self.reason),
                    Forget(),
                ]
            self.state = Part3State.UNCERTAIN
            return [
                ForceLog(
                    PartPrepared(
                        self.txid, self.protocol, self.coordinator, self.participants, self.timeouts
                    )
                ),
                Send(self.coordinator, VoteCast(self.txid, self.me, Vote.YES)),
                # Accurate timeouts are 3PC's premise: the coordinator may still
                # be waiting up to votes_s for slower voters, so suspecting it
                # sooner would start termination against a live coordinator.
                SetTimer(DECISION_TIMER, self.timeouts.votes_s + self.timeouts.decision_s),
            ]
        if self.state is Part3State.ABORTED and self.vote_pending:
            self.vote_pending = False
            if event.vote is Vote.NO:
                # Its forced abort (on a request before the vote) is the tombstone.
                return [Decide(Outcome.ABORTED, self.reason), Compact(), Forget()]
            self.state = Part3State.ABORTING
            return [InvokeResource(ResourceOp.ABORT)]
        raise _illegal("participant", self.txid, self.state, event)

    def _on_decision(self, message: Decision) -> list[Effect]:
        state = self.state
        if self.resolution is not None:
            return [heuristic_check(self.resolution, message)]
        if (
            message.sender != self.coordinator
            and self.in_doubt
            and self.round < 0
            and not self.recovered
        ):
            # A member decides only as the backup of a termination round; with
            # no round started here and nothing asked after a recovery, no
            # member has grounds to decide for us (docs/protocols.md, "Who may
            # decide"). If a round did run without us, our own decision timer
            # starts one and learns the outcome.
            said = "COMMIT" if message.commit else "ABORT"
            return [
                Ignored(f"{said} from member {message.sender!r} before any termination round")
            ]
        if state in (Part3State.UNCERTAIN, Part3State.COMMITTABLE):
            self._stop_leading()
            cancel: list[Effect] = [CancelTimer(DECISION_TIMER), CancelTimer(TERMINATION_TIMER)]
            if message.commit:
                self.state = Part3State.COMMITTING
                return [*cancel, InvokeResource(ResourceOp.COMMIT)]
            self.state = Part3State.ABORTING
            self.reason = f"abort decided by {message.sender}"
            return [*cancel, InvokeResource(ResourceOp.ABORT)]
        if state is Part3State.PREPARING and not message.commit:
            self.state = Part3State.ABORTED
            self.vote_pending = True
            self.reason = f"abort decided by {message.sender} before the vote"
            return []
        committed = state in (Part3State.COMMITTING, Part3State.COMMITTED)
        aborted = state in (Part3State.ABORTING, Part3State.ABORTED)
        if (message.commit and committed) or (not message.commit and aborted):
            return [Ignored(f"duplicate decision in state {state.value}")]
        return [
            Ignored(
                f"{'COMMIT' if message.commit else 'ABORT'} from {message.sender!r} for a "
                f"transaction this participant holds as {state.value}",
                violation=True,
            )
        ]

    def _on_applied(self, event: ResourceApplied) -> list[Effect]:
        if self.resolution is not None:
            ended = applied_resolution(
                self.txid, self.me, self.coordinator, self.resolution, event.op
            )
            if ended is None:
                raise _illegal("participant", self.txid, self.state, event)
            self.state = Part3State.COMMITTED if self.resolution.commit else Part3State.ABORTED
            return ended
        if self.state is Part3State.COMMITTING and event.op is ResourceOp.COMMIT:
            self.state = Part3State.COMMITTED
            effects: list[Effect] = [
                ForceLog(PartCommitted(self.txid)),
                Send(self.coordinator, Ack(self.txid, self.me)),
            ]
            if self.broadcast:
                effects.extend(Send(p, Decision(self.txid, self.me, True)) for p in self._others())
            effects.extend([Decide(Outcome.COMMITTED, self.reason), Compact(), Forget()])
            return effects
        if self.state is Part3State.ABORTING and event.op is ResourceOp.ABORT:
            self.state = Part3State.ABORTED
            # Forced even when not the backup: a lost abort would let this
            # process come back in doubt and, with others that missed the
            # abort, commit by TR4 what a backup durably aborted.
            effects = [ForceLog(PartAborted(self.txid))]
            if self.broadcast:
                effects.extend(
                    Send(p, Decision(self.txid, self.me, False))
                    for p in (*self._others(), self.coordinator)
                )
            effects.extend([Decide(Outcome.ABORTED, self.reason), Compact(), Forget()])
            return effects
        raise _illegal("participant", self.txid, self.state, event)

    def _answer(self, asker: str, round_: int | None) -> list[Effect]:
        """Answer an inquiry (round_ None) or a state request with what we know."""
        state = self.state
        if state is Part3State.PREPARING:
            # Not voted: abort unilaterally and durably before answering.
            self.state = Part3State.ABORTED
            self.vote_pending = True
            self.reason = f"aborted on request from {asker} before voting"
            reply: Message
            if round_ is None:
                reply = Decision(self.txid, self.me, False)
            else:
                reply = StateReport(self.txid, self.me, round_, PeerState.ABORTED)
            return [ForceLog(PartAborted(self.txid)), Send(asker, reply)]
        peer_state = _PEER_STATE.get(state)
        if peer_state is None:
            return [Ignored(f"request from {asker!r} in state {state.value}")]
        if round_ is not None:
            return [Send(asker, StateReport(self.txid, self.me, round_, peer_state))]
        if peer_state is PeerState.COMMITTED:
            return [Send(asker, Decision(self.txid, self.me, True))]
        if peer_state is PeerState.ABORTED:
            return [Send(asker, Decision(self.txid, self.me, False))]
        return [Send(asker, StatusReply(self.txid, self.me, peer_state))]

    # -- termination protocol ----------------------------------------------------

    def _candidate(self, round_: int) -> str:
        return self.participants[round_ % len(self.participants)]

    def _stop_leading(self) -> None:
        self.leading = False
        self.reports = {}
        self.precommit_pending = None

    def _on_timer(self, name: str) -> list[Effect]:
        if name == DECISION_TIMER and self.in_doubt:
            # Waiting on the coordinator, or on the backup of this round: elect the next.
            self.round += 1
            self._stop_leading()
            # A recovered process also keeps asking the coordinator, which may
            # come back with the outcome, with nothing (presumed abort), or
            # recovering itself (which _apply_rules needs to know).
            ask: list[Effect] = []
            if self.recovered:
                ask.append(Send(self.coordinator, DecisionRequest(self.txid, self.me)))
            if self._candidate(self.round) == self.me:
                return ask + self._lead()
            self.retry_s = min(self.retry_s * 2, self.timeouts.retry_max_s)
            return [*ask, SetTimer(DECISION_TIMER, self.retry_s)]
        if name == TERMINATION_TIMER and self.leading and self.in_doubt:
            if self.precommit_pending is not None:
                # TR4: the silent uncertain ones are presumed failed.
                return self._decide_as_backup(commit=True)
            # Every report may be in already (a single participant leads alone).
            return self._apply_rules(complete=len(self.reports) == len(self.participants))
        return [Ignored(f"stale timer {name!r} in state {self.state.value}")]

    def _lead(self) -> list[Effect]:
        self.leading = True
        self.reports = {self.me: _PEER_STATE[self.state]}
        effects: list[Effect] = [
            Send(p, StateRequest(self.txid, self.me, self.round)) for p in self._others()
        ]
        effects.append(SetTimer(TERMINATION_TIMER, self.timeouts.decision_s))
        effects.append(SetTimer(DECISION_TIMER, self.timeouts.decision_s * 4))
        return effects

    def _on_state_request(self, message: StateRequest) -> list[Effect]:
        if message.round < self.round:
            return [Ignored(f"state request of stale round {message.round} (now {self.round})")]
        if self.in_doubt:
            if message.round > self.round or message.sender != self.me:
                self._stop_leading()
            self.round = message.round
            self.retry_s = self.timeouts.decision_s
            return [
                *self._answer(message.sender, message.round),
                SetTimer(DECISION_TIMER, self.timeouts.decision_s * 2),
            ]
        return self._answer(message.sender, message.round)

    def _on_state_report(self, message: StateReport) -> list[Effect]:
        if not self.leading or message.round != self.round or self.precommit_pending is not None:
            return [Ignored(f"state report from {message.sender!r} not awaited")]
        if message.sender not in self.participants:
            return [
                Ignored(f"state report from non-participant {message.sender!r}", violation=True)
            ]
        self.reports[message.sender] = message.state
        if len(self.reports) < len(self.participants):
            return []
        return self._apply_rules(complete=True)

    def _apply_rules(self, *, complete: bool) -> list[Effect]:
        # Our own report is taken now, not when we started leading: a PRE-COMMIT
        # may have reached us meanwhile, and a committable backup must not TR3.
        self.reports[self.me] = _PEER_STATE[self.state]
        states = list(self.reports.values())
        cancel: list[Effect] = [CancelTimer(TERMINATION_TIMER)]
        if PeerState.ABORTED in states:  # TR1
            return cancel + self._decide_as_backup(commit=False)
        if PeerState.COMMITTED in states:  # TR2
            return cancel + self._decide_as_backup(commit=True)
        if self.recovered and not (
            complete and (PeerState.COMMITTABLE in states or self.coordinator_undecided)
        ):
            # A process that was down may have missed a pre-commit and a commit
            # decided without it, and a silent peer may hold a forced abort. So
            # it decides TR4 only on every participant's report, and TR3 only
            # when, besides, the coordinator is known not to have committed
            # (every participant uncertain, none was ever pre-committed).
            # Otherwise it waits for the next round or an answer.
            self._stop_leading()
            return cancel
        if PeerState.COMMITTABLE not in states:  # TR3
            return cancel + self._decide_as_backup(commit=False)
        # TR4: make the uncertain ones committable first, then commit.
        effects: list[Effect] = list(cancel)
        if self.state is Part3State.UNCERTAIN:
            self.state = Part3State.COMMITTABLE
            effects.append(ForceLog(PartPreCommitted(self.txid)))
        uncertain = [
            p for p, s in self.reports.items() if s is PeerState.UNCERTAIN and p != self.me
        ]
        if not uncertain:
            return effects + self._decide_as_backup(commit=True)
        self.precommit_pending = dict.fromkeys(uncertain)
        effects.extend(Send(p, PreCommit(self.txid, self.me)) for p in uncertain)
        effects.append(SetTimer(TERMINATION_TIMER, self.timeouts.acks_s))
        return effects

    def _decide_as_backup(self, *, commit: bool) -> list[Effect]:
        self._stop_leading()
        self.broadcast = True
        cancel: list[Effect] = [CancelTimer(DECISION_TIMER), CancelTimer(TERMINATION_TIMER)]
        if commit:
            self.state = Part3State.COMMITTING
            self.reason = f"committed by termination (backup {self.me}, round {self.round})"
            return [*cancel, InvokeResource(ResourceOp.COMMIT)]
        self.state = Part3State.ABORTING
        self.reason = f"aborted by termination (backup {self.me}, round {self.round})"
        return [*cancel, InvokeResource(ResourceOp.ABORT)]

    # -- recovery ----------------------------------------------------------------

    def _recover(self, event: RecordRecovered) -> list[Effect]:
        record = event.record
        if isinstance(record, PartPrepared) and self.state is Part3State.INIT:
            self.state = Part3State.UNCERTAIN
            self.coordinator = record.coordinator
            self.participants = record.participants
            self.timeouts = record.timeouts
            self.retry_s = self.timeouts.decision_s
            return []
        if isinstance(record, PartPreCommitted) and self.state is Part3State.UNCERTAIN:
            self.state = Part3State.COMMITTABLE
            return []
        if isinstance(record, PartCommitted):
            self.state = Part3State.COMMITTED
            return []
        if isinstance(record, PartAborted):
            # Alone (no PREPARED before it), it was forced on an inquiry while
            # `prepare` ran: that prepare may have applied, and its abort never ran.
            self.abort_unapplied = self.state is Part3State.INIT
            self.state = Part3State.ABORTED
            return []
        if isinstance(record, PartResolved) and self.resolution is None:
            if self.in_doubt:
                self.resolution = record
                return []
            if self.state is Part3State.INIT:
                # Alone: the tombstone of a resolution already applied (see 2PC).
                self.resolution = record
                self.state = Part3State.COMMITTED if record.commit else Part3State.ABORTED
                return []
        raise _illegal("participant", self.txid, self.state, event)

    def _resume(self) -> list[Effect]:
        if self.resolution is not None:
            return self._resume_resolved(self.resolution)
        if self.in_doubt:
            # Recovering processes ask; they do not vote again.
            self.recovered = True
            effects: list[Effect] = [
                Send(p, DecisionRequest(self.txid, self.me))
                for p in (self.coordinator, *self._others())
            ]
            effects.append(SetTimer(DECISION_TIMER, self.retry_s))
            return effects
        if self.state is Part3State.COMMITTED:
            return [Decide(Outcome.COMMITTED, "recovered from the log"), Forget()]
        if self.state is Part3State.ABORTED and self.abort_unapplied:
            # Apply the abort the crash cut off (idempotent, and harmless if the
            # prepare never applied); then end as a lazily-logged abort does.
            self.state = Part3State.ABORTING
            self.reason = "aborted on inquiry before its vote; abort reapplied after a crash"
            return [InvokeResource(ResourceOp.ABORT)]
        if self.state is Part3State.ABORTED:
            return [Decide(Outcome.ABORTED, "recovered from the log"), Forget()]
        raise ProtocolError(f"3PC participant of {self.txid!r} recovered with no records")

    def _resume_resolved(self, record: PartResolved) -> list[Effect]:
        self.reason = resolution_reason(record)
        if self.in_doubt:
            # Applied as a decision; it takes no part in termination (never a backup).
            self.state = Part3State.COMMITTING if record.commit else Part3State.ABORTING
            return [InvokeResource(ResourceOp.COMMIT if record.commit else ResourceOp.ABORT)]
        outcome = Outcome.COMMITTED if record.commit else Outcome.ABORTED
        return [Decide(outcome, self.reason), Compact(), Forget()]
