"""Scripted 3PC scenarios: pre-commit, per-phase timeouts, termination rules TR1-TR4.

The cluster checks S1-S5 after every step; the partition test at the end is
the documented limit of 3PC and expects S1 to break.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
from cluster import COORDINATOR, Cluster
from dtxn.protocols.effects import (
    Effect,
    ForceLog,
    Ignored,
    LocalVoteCast,
    Outcome,
    Received,
    Send,
)
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
    Record,
)
from dtxn.protocols.threepc import (
    DECISION_TIMER,
    INQUIRY_TIMER,
    PRECOMMIT_ACKS_TIMER,
    TERMINATION_TIMER,
    VOTES_TIMER,
    Coord3State,
    Part3State,
    ThreePCParticipant,
)
from dtxn.protocols.twopc import DECISION_TIMER as DECISION_TIMER_2PC

P1, P2, P3 = "p1@n2", "p2@n3", "p3@n4"
COMMITTED, ABORTED = Outcome.COMMITTED, Outcome.ABORTED
THREE = Protocol.THREE_PC


def kinds(items: Sequence[object]) -> list[type]:
    return [type(i) for i in items]


def sends(kind: type[Message], to: str | None = None) -> Callable[[Effect], bool]:
    """A crash point: the effect that sends a `kind` message (to `to`)."""

    def match(effect: Effect) -> bool:
        return (
            isinstance(effect, Send)
            and isinstance(effect.message, kind)
            and (to is None or effect.to == to)
        )

    return match


def forces(kind: type[Record]) -> Callable[[Effect], bool]:
    """A crash point: the effect that forces a `kind` record."""
    return lambda effect: isinstance(effect, ForceLog) and isinstance(effect.record, kind)


def elect(cluster: Cluster, leader: str) -> None:
    """Fire decision timers round by round until `leader` starts leading."""
    for _ in range(3 * len(cluster.participants)):
        for p in cluster.participants:
            if cluster.has_timer(p, DECISION_TIMER):
                cluster.fire(p, DECISION_TIMER)
                cluster.settle()
                machine = cluster.processes[p].machines.get("t1")
                if p == leader and isinstance(machine, ThreePCParticipant) and machine.leading:
                    return
            if not cluster.in_doubt(leader):
                return
    raise AssertionError(f"{leader} never led")


# -- the normal paths ------------------------------------------------------------------


def test_all_yes_votes_pre_commit_then_commit_with_the_3pc_forces() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.settle()

    assert cluster.outcomes() == {COORDINATOR: COMMITTED, P1: COMMITTED, P2: COMMITTED}
    assert kinds(cluster.forced(COORDINATOR)) == [CoordPreCommitted, CoordCommitted]
    assert kinds(cluster.lazy(COORDINATOR)) == [CoordEnded]
    for p in (P1, P2):
        assert kinds(cluster.forced(p)) == [PartPrepared, PartPreCommitted, PartCommitted]
        assert kinds(cluster.received(p)) == [Prepare, PreCommit, Decision]
        assert kinds(cluster.sent(p)) == [VoteCast, PreCommitAck, Ack]
    cluster.check_converged()


def test_read_only_votes_count_as_yes_in_3pc() -> None:
    cluster = Cluster(THREE, 2)
    cluster.script(P1, Vote.READ_ONLY)
    cluster.begin()
    cluster.settle()
    assert cluster.outcome(P1) is COMMITTED
    assert kinds(cluster.forced(P1)) == [PartPrepared, PartPreCommitted, PartCommitted]
    assert cluster.sent(P1, VoteCast) == [VoteCast("t1", P1, Vote.YES)]


def test_a_no_vote_aborts_and_the_yes_voter_forces_its_abort() -> None:
    cluster = Cluster(THREE, 2)
    cluster.script(P2, Vote.NO)
    cluster.begin()
    cluster.settle()
    assert cluster.outcomes() == {COORDINATOR: ABORTED, P1: ABORTED, P2: ABORTED}
    assert cluster.forced(COORDINATOR) == []
    assert kinds(cluster.lazy(COORDINATOR)) == [CoordAborted]
    assert kinds(cluster.forced(P1)) == [PartPrepared, PartAborted]
    cluster.check_converged()


def test_a_coordinator_restarts_cleanly_on_a_lone_lazy_abort_record() -> None:
    """The 3PC abort record names no protocol, so recovery (like the runtime's)
    hands it to the 2PC coordinator class, which must read it as an abort."""
    cluster = Cluster(THREE, 2)
    cluster.script(P2, Vote.NO)
    cluster.begin()
    cluster.settle()
    assert kinds(cluster.lazy(COORDINATOR)) == [CoordAborted]
    cluster.crash(COORDINATOR, keep="all")  # the lazy record happened to reach the disk
    cluster.restart(COORDINATOR)
    assert [o for _, o, _ in cluster.processes[COORDINATOR].decisions] == [ABORTED, ABORTED]
    cluster.check_converged()


def test_a_vote_timeout_aborts() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.drop(Prepare, dst=P2)
    cluster.settle()
    cluster.fire(COORDINATOR, VOTES_TIMER)
    cluster.settle()
    assert cluster.outcome(COORDINATOR) is ABORTED and cluster.outcome(P1) is ABORTED
    cluster.check_converged()


def test_a_pre_commit_ack_timeout_commits_and_presumes_the_silent_failed() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.arm_crash(P2, after=sends(VoteCast))
    cluster.settle()
    assert cluster.machine(COORDINATOR).state is Coord3State.PRECOMMITTING

    cluster.fire(COORDINATOR, PRECOMMIT_ACKS_TIMER)
    cluster.settle()

    assert cluster.outcome(COORDINATOR) is COMMITTED and cluster.outcome(P1) is COMMITTED
    reason = cluster.processes[COORDINATOR].decisions[0][2]
    assert P2 in reason and "presumed failed" in reason
    # P2 comes back uncertain, asks, and commits too.
    cluster.restart(P2)
    cluster.settle()
    assert cluster.outcome(P2) is COMMITTED
    cluster.check_converged()


# -- the coordinator dies after pre-commit: 3PC finishes, 2PC blocks -------------------------


def test_3pc_participants_finish_on_their_own_when_the_coordinator_dies_after_pre_commit() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, before=forces(CoordCommitted))
    cluster.settle()
    assert not cluster.processes[COORDINATOR].alive
    assert all(cluster.machine(p).state is Part3State.COMMITTABLE for p in (P1, P2))

    elect(cluster, P1)

    assert cluster.outcome(P1) is COMMITTED and cluster.outcome(P2) is COMMITTED
    assert "termination" in cluster.processes[P1].decisions[0][2]


def test_2pc_participants_stay_in_doubt_when_the_coordinator_dies_at_the_same_point() -> None:
    cluster = Cluster(Protocol.TWO_PC, 2)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, before=forces(CoordCommitted))
    cluster.settle()
    assert not cluster.processes[COORDINATOR].alive

    for _ in range(4):
        for p in (P1, P2):
            cluster.fire(p, DECISION_TIMER_2PC)
        cluster.settle()
    assert cluster.in_doubt(P1) and cluster.in_doubt(P2)
    assert cluster.outcome(P1) is None and cluster.outcome(P2) is None

    cluster.restart(COORDINATOR)  # nothing forced: presumed abort
    for p in (P1, P2):
        cluster.fire(p, DECISION_TIMER_2PC)
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED and cluster.outcome(P2) is ABORTED


# -- the termination rules ---------------------------------------------------------------------


def test_tr1_any_aborted_peer_makes_the_backup_abort() -> None:
    cluster = Cluster(THREE, 3)
    cluster.script(P3, Vote.NO)
    cluster.begin()
    for p in (P1, P2, P3):
        cluster.deliver(Prepare, dst=p)
    cluster.crash(COORDINATOR)  # the votes are lost with it
    cluster.settle()
    assert cluster.outcome(P3) is ABORTED and cluster.in_doubt(P1)

    elect(cluster, P1)

    assert cluster.outcome(P1) is ABORTED and cluster.outcome(P2) is ABORTED
    assert StateReport("t1", P3, 0, PeerState.ABORTED) in cluster.sent(P3)
    assert "termination" in cluster.processes[P1].decisions[0][2]


def test_tr2_any_committed_peer_makes_the_backup_commit() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=sends(Decision, to=P1))
    cluster.settle()
    assert cluster.outcome(P1) is COMMITTED and cluster.in_doubt(P2)

    elect(cluster, P2)

    assert cluster.outcome(P2) is COMMITTED
    assert StateReport("t1", P1, 1, PeerState.COMMITTED) in cluster.sent(P1)


def test_tr3_all_uncertain_makes_the_backup_abort() -> None:
    cluster = Cluster(THREE, 3)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, before=forces(CoordPreCommitted))
    cluster.settle()
    assert all(cluster.machine(p).state is Part3State.UNCERTAIN for p in (P1, P2, P3))

    elect(cluster, P1)

    assert [cluster.outcome(p) for p in (P1, P2, P3)] == [ABORTED] * 3
    assert kinds(cluster.forced(P1)) == [PartPrepared, PartAborted]


def test_tr4_some_committable_makes_the_backup_pre_commit_the_uncertain_then_commit() -> None:
    cluster = Cluster(THREE, 3)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=sends(PreCommit, to=P1))
    cluster.settle()
    assert cluster.machine(P1).state is Part3State.COMMITTABLE
    assert cluster.machine(P2).state is Part3State.UNCERTAIN

    elect(cluster, P1)

    assert [cluster.outcome(p) for p in (P1, P2, P3)] == [COMMITTED] * 3
    assert [m.sender for m in cluster.received(P2, PreCommit)] == [P1]
    for p in (P2, P3):
        assert kinds(cluster.forced(p)) == [PartPrepared, PartPreCommitted, PartCommitted]


def test_tr4_by_an_uncertain_backup_makes_it_committable_first() -> None:
    cluster = Cluster(THREE, 3)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=sends(PreCommit, to=P2))
    cluster.deliver_until(PreCommit)
    cluster.drop(PreCommit, dst=P1)  # lost with the coordinator's crash
    cluster.settle()
    assert cluster.machine(P1).state is Part3State.UNCERTAIN

    elect(cluster, P1)

    assert [cluster.outcome(p) for p in (P1, P2, P3)] == [COMMITTED] * 3
    assert kinds(cluster.forced(P1)) == [PartPrepared, PartPreCommitted, PartCommitted]


def test_a_backup_crash_lets_the_next_rounds_election_finish() -> None:
    cluster = Cluster(THREE, 3)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, before=forces(CoordPreCommitted))
    cluster.settle()
    # Round 0's backup (P1) crashes right after asking for states.
    cluster.arm_crash(P1, after=sends(StateRequest, to=P3))
    cluster.fire(P1, DECISION_TIMER)
    cluster.settle()
    assert not cluster.processes[P1].alive
    assert cluster.in_doubt(P2) and cluster.in_doubt(P3)

    elect(cluster, P2)  # round 1
    cluster.fire(P2, TERMINATION_TIMER)  # P1 stays silent: presumed failed
    cluster.settle()

    assert cluster.outcome(P2) is ABORTED and cluster.outcome(P3) is ABORTED
    cluster.restart(P1)  # recovering processes ask
    cluster.settle()
    assert cluster.outcome(P1) is ABORTED


def test_a_recovering_coordinator_after_pre_commit_asks_rather_than_decides() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, before=forces(CoordCommitted))
    cluster.settle()

    cluster.restart(COORDINATOR)
    assert cluster.machine(COORDINATOR).state is Coord3State.RECOVERING
    assert cluster.outcome(COORDINATOR) is None
    assert [e.dst for e in cluster.in_flight(DecisionRequest, src=COORDINATOR)] == [P1, P2]
    cluster.settle()  # both are committable and say so; nobody decides yet
    assert cluster.outcome(COORDINATOR) is None

    elect(cluster, P1)  # the participants terminate and acknowledge ...
    assert cluster.outcome(COORDINATOR) is None
    cluster.fire(COORDINATOR, INQUIRY_TIMER)  # ... and the coordinator's next inquiry
    cluster.settle()  # is answered from their memory: it adopts the commit

    assert cluster.outcomes() == {COORDINATOR: COMMITTED, P1: COMMITTED, P2: COMMITTED}
    assert "backup" in cluster.processes[COORDINATOR].decisions[0][2]


# -- crashes and restarts (regressions) ------------------------------------------------------


def test_a_participant_that_aborted_keeps_its_abort_across_a_crash() -> None:
    """3PC participants force their abort: a lost lazy abort let a later
    termination among recovered processes commit a transaction a backup had
    durably aborted (S1)."""
    cluster = Cluster(THREE, 3)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=sends(PreCommit, to=P1))
    cluster.settle()
    cluster.crash(P1)  # committable, and down
    elect(cluster, P2)  # round 1: P2 and P3 are uncertain
    cluster.fire(P2, TERMINATION_TIMER)
    cluster.settle()
    assert cluster.outcome(P2) is ABORTED and cluster.outcome(P3) is ABORTED

    cluster.crash(P3)
    cluster.restart(P3)
    assert cluster.outcome(P3) is ABORTED
    assert "t1" in cluster.processes[P3].finished  # recovered from the forced record
    cluster.crash(P2)
    cluster.restart(P1)
    cluster.settle()  # P3 answers P1's inquiry with the abort
    assert cluster.outcome(P1) is ABORTED


def test_a_recovered_participant_never_aborts_alone_by_tr3_while_others_may_have_committed() -> (
    None
):
    cluster = Cluster(THREE, 3)
    cluster.begin()
    cluster.arm_crash(P1, after=sends(VoteCast))  # P1 dies uncertain
    cluster.settle()
    cluster.arm_crash(COORDINATOR, after=sends(Decision, to=P2))
    cluster.fire(COORDINATOR, PRECOMMIT_ACKS_TIMER)
    cluster.settle()
    assert cluster.outcome(P2) is COMMITTED
    assert cluster.machine(P3).state is Part3State.COMMITTABLE

    cluster.crash(P2)
    cluster.restart(P1)  # uncertain; its inquiry reaches P3 only, which is in doubt too
    cluster.settle()
    assert cluster.in_doubt(P1)
    cluster.crash(P3)

    for _ in range(6):  # alone, it must not decide by partial reports
        for name in (DECISION_TIMER, TERMINATION_TIMER):
            if cluster.has_timer(P1, name):
                cluster.fire(P1, name)
                cluster.settle()
    assert cluster.in_doubt(P1) and cluster.outcome(P1) is None

    cluster.restart(P2)  # it committed: its forced record answers for it
    for _ in range(6):
        for name in (DECISION_TIMER, TERMINATION_TIMER):
            if cluster.has_timer(P1, name):
                cluster.fire(P1, name)
                cluster.settle()
    assert cluster.outcome(P1) is COMMITTED


def test_after_a_total_failure_recovered_participants_wait_for_the_coordinator_then_abort() -> None:
    """Everyone crashed after the coordinator forced its pre-commit but before any
    PRE-COMMIT left. The recovered participants alone cannot tell a commit with
    no acks from no commit, so they wait; the recovering coordinator's inquiry
    tells them it never committed, and TR3 on every report aborts."""
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.arm_crash(COORDINATOR, after=forces(CoordPreCommitted))
    cluster.settle()
    cluster.crash(P1)
    cluster.crash(P2)
    cluster.restart(P1)
    cluster.restart(P2)
    cluster.settle()
    for _ in range(8):
        cluster.fire_next()
        cluster.settle()
    assert cluster.in_doubt(P1) and cluster.in_doubt(P2)

    cluster.restart(COORDINATOR)
    assert cluster.machine(COORDINATOR).state is Coord3State.RECOVERING
    for _ in range(20):
        cluster.settle()
        if cluster.converged():
            break
        cluster.fire_next()
    assert cluster.outcomes() == {COORDINATOR: ABORTED, P1: ABORTED, P2: ABORTED}
    cluster.check_converged()


# -- late, duplicate and wrong input --------------------------------------------------------


def test_duplicate_and_late_messages_are_ignored_not_errors() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.duplicate(Prepare, dst=P1)
    cluster.deliver_until(PreCommit)
    cluster.duplicate(PreCommit, dst=P1)
    cluster.deliver_until(Decision)
    cluster.duplicate(Decision, dst=P2)
    cluster.settle()
    for message in (
        PreCommitAck("t1", P1),
        VoteCast("t1", P1, Vote.YES),
        Ack("t1", P2),
        StateReport("t1", P2, 0, PeerState.COMMITTED),
    ):
        cluster.inject(message.sender, COORDINATOR, message)
    cluster.settle()
    assert cluster.outcomes() == {COORDINATOR: COMMITTED, P1: COMMITTED, P2: COMMITTED}
    assert cluster.ignored(COORDINATOR, violation=True) == []
    assert cluster.ignored(P1, violation=True) == []
    assert cluster.ignored(P2, violation=True) == []


def test_commit_to_a_participant_that_voted_no_is_an_ignored_violation() -> None:
    machine = ThreePCParticipant("t1", P1)
    machine.handle(Received(Prepare("t1", COORDINATOR, THREE, (P1, P2))))
    machine.handle(LocalVoteCast(Vote.NO))
    before = copy.deepcopy(vars(machine))
    effects = machine.handle(Received(Decision("t1", COORDINATOR, True)))
    assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].violation
    assert vars(machine) == before


def test_a_prepare_that_does_not_list_the_participant_is_an_ignored_violation() -> None:
    for participants in [(), (P2, P3)]:
        machine = ThreePCParticipant("t1", P1)
        effects = machine.handle(Received(Prepare("t1", COORDINATOR, THREE, participants)))
        assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].violation
        assert machine.state is Part3State.INIT


def test_input_from_strangers_is_an_ignored_violation() -> None:
    machine = ThreePCParticipant("t1", P1)
    machine.handle(Received(Prepare("t1", COORDINATOR, THREE, (P1, P2))))
    machine.handle(LocalVoteCast(Vote.YES))
    for message in (
        Decision("t1", "mallory@n9", True),
        PreCommit("t1", "mallory@n9"),
        StateRequest("t1", "mallory@n9", 7),
    ):
        before = copy.deepcopy(vars(machine))
        effects = machine.handle(Received(message))
        assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].violation
        assert vars(machine) == before


def test_a_coordinator_ignores_a_decision_from_a_stranger() -> None:
    cluster = Cluster(THREE, 2)
    cluster.begin()
    cluster.inject("mallory@n9", COORDINATOR, Decision("t1", "mallory@n9", True))
    cluster.deliver(Decision)
    assert cluster.outcome(COORDINATOR) is None
    assert cluster.ignored(COORDINATOR, violation=True)


# -- the documented limit --------------------------------------------------------------------


@pytest.mark.documented_limit
def test_under_a_partition_3pc_splits_its_decision() -> None:
    """{coordinator, P1} | {P2, P3}: the coordinator presumes the far side failed
    and commits with P1, while P2 and P3, all uncertain, abort by TR3."""
    cluster = Cluster(THREE, 3, strict=False)
    near = {COORDINATOR, P1}
    cluster.begin()
    cluster.deliver_until(PreCommit)

    def heal_never() -> None:
        for envelope in list(cluster.network):
            if (envelope.src in near) != (envelope.dst in near):
                cluster.drop_envelope(envelope)
        cluster.settle()

    heal_never()
    cluster.fire(COORDINATOR, PRECOMMIT_ACKS_TIMER)
    heal_never()
    cluster.fire(P2, DECISION_TIMER)  # round 0: P1 would lead, but it is unreachable
    cluster.fire(P2, DECISION_TIMER)  # round 1: P2 leads and hears from P3 only
    heal_never()
    cluster.fire(P2, TERMINATION_TIMER)  # P1 presumed failed; all it heard is uncertain
    heal_never()

    assert cluster.outcome(COORDINATOR) is COMMITTED and cluster.outcome(P1) is COMMITTED
    assert cluster.outcome(P2) is ABORTED and cluster.outcome(P3) is ABORTED
    assert "S1" in {v.invariant for v in cluster.violations}
