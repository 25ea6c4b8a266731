"""Scripted 2PC scenarios (presumed abort, read-only, cooperative termination) on a `Cluster`.

Every step is checked against S1-S5 by the cluster itself; the assertions
here pin down forces, messages and outcomes of each scenario.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
from cluster import COORDINATOR, Cluster
from dtxn.protocols.effects import (
    Begin,
    Decide,
    Effect,
    Event,
    ForceLog,
    Ignored,
    LocalVoteCast,
    Outcome,
    Received,
    RecordRecovered,
    ResourceApplied,
    ResourceOp,
    Send,
)
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.messages import (
    Ack,
    Decision,
    DecisionRequest,
    PeerState,
    Prepare,
    Protocol,
    StatusReply,
    Vote,
    VoteCast,
)
from dtxn.protocols.records import (
    CoordCommitted,
    CoordEnded,
    PartAborted,
    PartCommitted,
    PartPrepared,
)
from dtxn.protocols.twopc import (
    ACKS_TIMER,
    DECISION_TIMER,
    VOTES_TIMER,
    CoordState,
    PartState,
    TwoPCCoordinator,
    TwoPCParticipant,
)

P1, P2, P3 = "p1@n2", "p2@n3", "p3@n4"
COMMITTED, ABORTED = Outcome.COMMITTED, Outcome.ABORTED


def kinds(records: Sequence[object]) -> list[type]:
    return [type(r) for r in records]


def commit_sent_to(to: str) -> Callable[[Effect], bool]:
    """A crash point: the coordinator's COMMIT to `to` has just been sent."""

    def match(effect: Effect) -> bool:
        return (
            isinstance(effect, Send)
            and isinstance(effect.message, Decision)
            and effect.message.commit
            and effect.to == to
        )

    return match


# -- the normal paths ------------------------------------------------------------


def test_all_yes_votes_commit_with_the_forces_of_presumed_abort() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.settle()

    assert cluster.outcomes() == {COORDINATOR: COMMITTED, P1: COMMITTED, P2: COMMITTED}
    assert kinds(cluster.forced(COORDINATOR)) == [CoordCommitted]
    assert cluster.forced(COORDINATOR)[0] == CoordCommitted("t1", Protocol.TWO_PC, (P1, P2))
    assert kinds(cluster.lazy(COORDINATOR)) == [CoordEnded]
    for p in (P1, P2):
        assert kinds(cluster.forced(p)) == [PartPrepared, PartCommitted]
        assert cluster.lazy(p) == []
        assert kinds(cluster.sent(p)) == [VoteCast, Ack]
    assert kinds(cluster.sent(COORDINATOR)) == [Prepare, Prepare, Decision, Decision]
    assert all(not m.machines for m in cluster.processes.values())
    cluster.check_converged()


def test_a_no_vote_aborts_with_no_coordinator_force_and_no_acks() -> None:
    cluster = Cluster(participants=2)
    cluster.script(P2, Vote.NO)
    cluster.begin()
    cluster.settle()

    assert cluster.outcomes() == {COORDINATOR: ABORTED, P1: ABORTED, P2: ABORTED}
    assert cluster.forced(COORDINATOR) == [] and cluster.lazy(COORDINATOR) == []
    assert kinds(cluster.forced(P1)) == [PartPrepared]
    assert kinds(cluster.lazy(P1)) == [PartAborted]
    assert cluster.processes[P2].log == []
    assert cluster.sent(COORDINATOR, Decision) == [Decision("t1", COORDINATOR, False)]
    assert cluster.sent(P1, Ack) == [] and cluster.sent(P2, Ack) == []
    cluster.check_converged()


def test_read_only_votes_skip_phase_two_and_write_nothing() -> None:
    cluster = Cluster(participants=3)
    cluster.script(P2, Vote.READ_ONLY)
    cluster.begin()
    cluster.settle()

    assert cluster.forced(COORDINATOR) == [CoordCommitted("t1", Protocol.TWO_PC, (P1, P3))]
    assert cluster.processes[P2].log == []
    assert kinds(cluster.sent(P2)) == [VoteCast]
    # Phase two is addressed to the yes voters only.
    assert len(cluster.sent(COORDINATOR, Decision)) == 2
    assert [type(m) for m in cluster.received(P2)] == [Prepare]
    assert cluster.outcome(COORDINATOR) is COMMITTED
    assert cluster.outcome(P2) is None  # a read-only vote decides nothing for the transaction
    cluster.check_converged()


def test_an_all_read_only_transaction_commits_and_the_coordinator_writes_nothing() -> None:
    cluster = Cluster(participants=2)
    cluster.script(P1, Vote.READ_ONLY)
    cluster.script(P2, Vote.READ_ONLY)
    cluster.begin()
    cluster.settle()

    assert cluster.outcome(COORDINATOR) is COMMITTED
    assert all(p.log == [] for p in cluster.processes.values())
    assert cluster.sent(COORDINATOR, Decision) == []
    cluster.check_converged()


def test_a_vote_timeout_aborts_and_tells_the_participants() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.drop(Prepare, dst=P2)
    cluster.settle()
    assert cluster.in_doubt(P1)

    cluster.fire(COORDINATOR, VOTES_TIMER)
    cluster.settle()

    assert cluster.outcome(COORDINATOR) is ABORTED
    assert cluster.outcome(P1) is ABORTED
    assert cluster.forced(COORDINATOR) == []
    # P2 never heard of the transaction; the abort it gets is ignored.
    assert cluster.processes[P2].log == []
    cluster.check_converged()


def test_the_decision_is_resent_until_acknowledged() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.deliver_until(Decision)
    cluster.drop(Decision, dst=P2)
    cluster.settle()
    assert cluster.outcome(P1) is COMMITTED and cluster.outcome(P2) is None
    assert cluster.has_timer(COORDINATOR, ACKS_TIMER)

    cluster.fire(COORDINATOR, ACKS_TIMER)
    assert [e.dst for e in cluster.in_flight(Decision)] == [P2]
    cluster.drop(Decision, dst=P2)
    cluster.fire(COORDINATOR, ACKS_TIMER)
    cluster.settle()

    assert cluster.outcome(P2) is COMMITTED
    assert len(cluster.sent(COORDINATOR, Decision)) == 4
    assert not cluster.has_timer(COORDINATOR, ACKS_TIMER)
    assert kinds(cluster.lazy(COORDINATOR)) == [CoordEnded]
    cluster.check_converged()


def test_an_in_doubt_participant_asks_the_coordinator_and_finishes() -> None:
    cluster = Cluster(participants=2, cooperative=False)
    cluster.begin()
    cluster.deliver_until(Decision)
    cluster.drop(Decision, dst=P1)
    cluster.settle()
    assert cluster.in_doubt(P1)

    cluster.fire(P1, DECISION_TIMER)
    assert [(e.dst, type(e.message)) for e in cluster.in_flight(src=P1)] == [
        (COORDINATOR, DecisionRequest)
    ]
    cluster.settle()

    assert cluster.outcome(P1) is COMMITTED
    cluster.check_converged()


# -- cooperative termination -----------------------------------------------------


def test_an_in_doubt_participant_waits_for_the_coordinator_though_a_peer_answers_commit() -> None:
    """A peer's COMMIT could be invented by a compromised member: only the
    coordinator's decision is applied (docs/protocols.md, "Who may decide")."""
    cluster = Cluster(participants=2)
    cluster.begin()
    # The coordinator dies after its COMMIT went to P1 only.
    cluster.arm_crash(COORDINATOR, after=commit_sent_to(P1))
    cluster.settle()
    assert not cluster.processes[COORDINATOR].alive
    assert cluster.outcome(P1) is COMMITTED and cluster.in_doubt(P2)

    cluster.fire(P2, DECISION_TIMER)
    cluster.settle()  # the request to the coordinator is lost; P1 answers from memory

    assert Decision("t1", P1, True) in cluster.received(P2)
    assert cluster.in_doubt(P2)
    cluster.restart(COORDINATOR)
    cluster.settle()
    assert cluster.outcome(P2) is COMMITTED


def test_a_peer_that_has_not_voted_aborts_durably_and_answers_abort() -> None:
    cluster = Cluster(participants=2)
    cluster.hold(P2)  # P2's resource is slow to prepare
    cluster.begin()
    cluster.arm_crash(COORDINATOR, before=lambda e: isinstance(e, Send))
    cluster.settle()
    assert cluster.in_doubt(P1) and cluster.pending_work(P2)

    cluster.fire(P1, DECISION_TIMER)
    cluster.settle()

    # P2's abort is its own, but P1 cannot tell it from a lie: it waits for the coordinator.
    assert cluster.in_doubt(P1)
    assert cluster.forced(P2) == [PartAborted("t1")]
    # P2's late yes from the resource is turned into a local abort, never a vote.
    cluster.release(P2)
    cluster.settle()
    assert cluster.outcome(P2) is ABORTED
    assert cluster.sent(P2, VoteCast) == []
    # After a crash, a duplicated PREPARE gets a no: the abort was forced.
    cluster.crash(P2)
    cluster.restart(P2)
    cluster.inject(COORDINATOR, P2, Prepare("t1", COORDINATOR, Protocol.TWO_PC, (P1, P2)))
    cluster.settle()
    assert cluster.sent(P2, VoteCast) == [VoteCast("t1", P2, Vote.NO)]
    cluster.restart(COORDINATOR)
    cluster.fire(P1, DECISION_TIMER)  # it asks again and hears presumed abort
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED


def test_when_every_reachable_peer_is_uncertain_the_participant_stays_blocked() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    # Both vote yes; the coordinator dies before it hears the votes.
    cluster.deliver(Prepare, dst=P1)
    cluster.deliver(Prepare, dst=P2)
    cluster.crash(COORDINATOR)
    cluster.settle()
    assert cluster.in_doubt(P1) and cluster.in_doubt(P2)

    for _ in range(3):
        cluster.fire(P1, DECISION_TIMER)
        cluster.settle()
    assert cluster.in_doubt(P1) and cluster.in_doubt(P2)
    assert cluster.ignored(P1) and all("uncertain" in i.reason for i in cluster.ignored(P1))
    assert cluster.outcome(P1) is None

    # The coordinator comes back knowing nothing: presumed abort unblocks both.
    cluster.restart(COORDINATOR)
    cluster.fire(P1, DECISION_TIMER)
    cluster.fire(P2, DECISION_TIMER)
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED and cluster.outcome(P2) is ABORTED
    cluster.check_converged()


# -- crashes -----------------------------------------------------------------------


def test_a_coordinator_crash_before_the_decision_is_presumed_abort_after_restart() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.deliver(Prepare, dst=P1)
    cluster.deliver(Prepare, dst=P2)
    cluster.deliver(VoteCast, src=P1)
    cluster.crash(COORDINATOR)
    cluster.settle()
    cluster.restart(COORDINATOR)
    assert cluster.processes[COORDINATOR].machines == {}

    cluster.fire(P1, DECISION_TIMER)
    cluster.fire(P2, DECISION_TIMER)
    cluster.settle()

    assert cluster.outcome(P1) is ABORTED and cluster.outcome(P2) is ABORTED
    assert cluster.processes[COORDINATOR].log == []
    cluster.check_converged()


def test_a_coordinator_crash_after_forcing_commit_resends_it_after_restart() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=lambda e: isinstance(e, ForceLog))
    cluster.settle()
    assert not cluster.processes[COORDINATOR].alive
    assert cluster.in_doubt(P1) and cluster.in_doubt(P2)
    assert cluster.outcome(COORDINATOR) is None  # it crashed before Decide

    cluster.restart(COORDINATOR)
    cluster.settle()

    assert cluster.outcomes() == {COORDINATOR: COMMITTED, P1: COMMITTED, P2: COMMITTED}
    cluster.check_converged()


def test_a_participant_crash_after_prepared_asks_on_restart_and_finishes() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.arm_crash(P1, after=lambda e: isinstance(e, Send) and isinstance(e.message, VoteCast))
    cluster.settle()
    assert not cluster.processes[P1].alive
    assert cluster.outcome(COORDINATOR) is COMMITTED  # the vote left before the crash

    cluster.restart(P1)
    assert cluster.in_doubt(P1)
    assert [e.dst for e in cluster.in_flight(DecisionRequest, src=P1)] == [COORDINATOR, P2]
    cluster.settle()

    assert cluster.outcome(P1) is COMMITTED
    assert kinds(cluster.forced(P1)) == [PartPrepared, PartCommitted]
    assert kinds(cluster.lazy(COORDINATOR)) == [CoordEnded]  # P1's ack ended it
    cluster.check_converged()


def test_a_participant_that_lost_its_lazy_abort_asks_again_and_aborts_again() -> None:
    cluster = Cluster(participants=2)
    cluster.script(P2, Vote.NO)
    cluster.begin()
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED
    cluster.crash(P1)  # the lazy ABORTED record is lost
    cluster.restart(P1)
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED
    assert [d for t, d, _ in cluster.processes[P1].decisions] == [ABORTED, ABORTED]


# -- late, duplicate and wrong messages ---------------------------------------------


def test_duplicate_and_late_messages_are_ignored_not_errors() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.duplicate(Prepare, dst=P1)
    cluster.deliver(Prepare, dst=P1)
    cluster.deliver(Prepare, dst=P1)  # the duplicate: P1 re-sends its yes
    assert len(cluster.in_flight(VoteCast, src=P1)) == 2
    cluster.deliver(Prepare, dst=P2)
    cluster.deliver(VoteCast, src=P1)
    cluster.deliver(VoteCast, src=P1)  # duplicate vote
    assert any("duplicate vote" in i.reason for i in cluster.ignored(COORDINATOR))
    cluster.duplicate(VoteCast, src=P2)
    cluster.deliver(VoteCast, src=P2)
    cluster.deliver(VoteCast, src=P2)  # late vote once committed
    cluster.duplicate(Decision, dst=P1)
    cluster.settle()  # duplicate COMMIT to a finished participant is acked again
    assert cluster.outcomes() == {COORDINATOR: COMMITTED, P1: COMMITTED, P2: COMMITTED}
    assert len(cluster.sent(P1, Ack)) == 2
    assert cluster.ignored(COORDINATOR, violation=True) == []
    assert cluster.ignored(P1, violation=True) == []
    cluster.check_converged()


def test_a_late_yes_vote_after_a_timeout_abort_is_answered_with_abort() -> None:
    cluster = Cluster(participants=2)
    cluster.begin()
    cluster.deliver(Prepare, dst=P1)
    cluster.fire(COORDINATOR, VOTES_TIMER)
    cluster.drop(Decision, dst=P1)
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED  # the late yes vote got an ABORT back


def test_commit_to_a_participant_that_voted_no_is_an_ignored_violation() -> None:
    cluster = Cluster(participants=2)
    cluster.script(P1, Vote.NO)
    cluster.begin()
    cluster.settle()
    log_before = list(cluster.processes[P1].log)
    cluster.inject(COORDINATOR, P1, Decision("t1", COORDINATOR, True))
    cluster.settle()
    assert [i.violation for i in cluster.ignored(P1)] == [True]
    assert cluster.processes[P1].log == log_before
    assert cluster.outcome(P1) is ABORTED

    # The same at the machine, before it is forgotten: nothing changes.
    machine = TwoPCParticipant("t2", P1)
    machine.handle(Received(Prepare("t2", COORDINATOR, Protocol.TWO_PC, (P1, P2))))
    machine.handle(LocalVoteCast(Vote.NO))
    before = copy.deepcopy(vars(machine))
    effects = machine.handle(Received(Decision("t2", COORDINATOR, True)))
    assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].violation
    assert vars(machine) == before


def test_a_commit_from_a_stranger_is_an_ignored_violation() -> None:
    machine = TwoPCParticipant("t1", P1)
    machine.handle(Received(Prepare("t1", COORDINATOR, Protocol.TWO_PC, (P1, P2))))
    machine.handle(LocalVoteCast(Vote.YES))
    before = copy.deepcopy(vars(machine))
    effects = machine.handle(Received(Decision("t1", "mallory@n9", True)))
    assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].violation
    assert vars(machine) == before


@pytest.mark.parametrize(
    ("machine", "event"),
    [
        (TwoPCCoordinator("t1", COORDINATOR), LocalVoteCast(Vote.YES)),
        (TwoPCCoordinator("t1", COORDINATOR), Begin((), ())),
        (TwoPCCoordinator("t1", COORDINATOR), Begin((P1, P1), ("a", "b"))),
        (TwoPCCoordinator("t1", COORDINATOR), Begin((P1, P2), ("a",))),
        (
            TwoPCCoordinator("t1", COORDINATOR),
            RecordRecovered(PartPrepared("t1", Protocol.TWO_PC, COORDINATOR, (P1,))),
        ),
        (TwoPCParticipant("t1", P1), Begin((P1,), ("a",))),
        (TwoPCParticipant("t1", P1), LocalVoteCast(Vote.YES)),
        (TwoPCParticipant("t1", P1), ResourceApplied(ResourceOp.COMMIT)),
        (TwoPCParticipant("t1", P1), RecordRecovered(CoordEnded("t1"))),
    ],
    ids=lambda v: type(v).__name__,
)
def test_illegal_local_events_raise_protocol_error_and_leave_state_unchanged(
    machine: TwoPCCoordinator | TwoPCParticipant, event: Event
) -> None:
    before = copy.deepcopy(vars(machine))
    with pytest.raises(ProtocolError, match="t1"):
        machine.handle(event)
    assert vars(machine) == before


def test_illegal_events_in_later_states_leave_state_unchanged() -> None:
    coordinator = TwoPCCoordinator("t1", COORDINATOR)
    coordinator.handle(Begin((P1, P2), ("a", "b")))
    participant = TwoPCParticipant("t1", P1)
    participant.handle(Received(Prepare("t1", COORDINATOR, Protocol.TWO_PC, (P1, P2))))
    participant.handle(LocalVoteCast(Vote.YES))
    assert coordinator.state is CoordState.WAITING and participant.state is PartState.PREPARED
    cases: list[tuple[TwoPCCoordinator | TwoPCParticipant, Event]] = [
        (coordinator, Begin((P1,), ("a",))),
        (participant, LocalVoteCast(Vote.NO)),
        (participant, ResourceApplied(ResourceOp.ABORT)),
        (participant, RecordRecovered(PartPrepared("t1", Protocol.TWO_PC, COORDINATOR, (P1,)))),
    ]
    for machine, event in cases:
        before = copy.deepcopy(vars(machine))
        with pytest.raises(ProtocolError):
            machine.handle(event)
        assert vars(machine) == before


# -- read-only votes and cooperative termination (regressions) ------------------------


def test_a_read_only_peer_never_vouches_for_commit_when_the_transaction_aborted() -> None:
    """A read-only voter is out of the transaction: it must not answer COMMIT to an
    in-doubt peer (the transaction may have aborted without it)."""
    cluster = Cluster(participants=3)
    cluster.script(P1, Vote.READ_ONLY)
    cluster.script(P3, Vote.NO)
    cluster.hold(P3)
    cluster.begin()
    cluster.deliver(Prepare, dst=P1)
    cluster.deliver(Prepare, dst=P2)
    cluster.deliver(Prepare, dst=P3)
    cluster.deliver(VoteCast, src=P1)
    cluster.deliver(VoteCast, src=P2)
    cluster.complete(P3)  # no: the coordinator aborts ...
    cluster.arm_crash(COORDINATOR, after=lambda e: isinstance(e, Decide))
    cluster.deliver(VoteCast, src=P3)  # ... and dies before telling P2
    assert cluster.outcome(COORDINATOR) is ABORTED and cluster.in_doubt(P2)

    cluster.fire(P2, DECISION_TIMER)
    cluster.deliver(DecisionRequest, dst=P1)
    cluster.deliver(src=P1, dst=P2)
    assert cluster.in_doubt(P2)  # the read-only peer could not tell
    cluster.settle()  # P3 voted no and answers abort, which is not the coordinator's word
    assert cluster.in_doubt(P2)
    cluster.restart(COORDINATOR)
    cluster.fire(P2, DECISION_TIMER)  # it asks again and hears presumed abort
    cluster.settle()
    assert cluster.outcome(P2) is ABORTED


def test_a_read_only_peer_that_restarted_never_answers_abort_when_the_transaction_committed() -> (
    None
):
    cluster = Cluster(participants=2)
    cluster.script(P1, Vote.READ_ONLY)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=lambda e: isinstance(e, Decide))
    cluster.settle()
    assert cluster.outcome(COORDINATOR) is COMMITTED and cluster.in_doubt(P2)
    cluster.crash(P1)
    cluster.restart(P1)  # it remembers nothing: a read-only vote writes nothing

    cluster.fire(P2, DECISION_TIMER)
    cluster.settle()
    assert cluster.in_doubt(P2)
    assert cluster.sent(P1)[-1] == StatusReply("t1", P1, PeerState.UNKNOWN)
    assert cluster.processes[P1].log == []

    cluster.restart(COORDINATOR)
    cluster.settle()
    assert cluster.outcome(P2) is COMMITTED
    cluster.check_converged()
