"""Unit tests of the Paxos Commit machines: participant, acceptor and leader."""

from __future__ import annotations

import copy

import msgspec
import pytest
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
    TimerFired,
)
from dtxn.protocols.errors import ConfigError, ProtocolError
from dtxn.protocols.messages import MESSAGE_TYPES, Decision, DecisionRequest, Timeouts, Vote
from dtxn.protocols.paxos import (
    DECISION_TIMER,
    LEADER_TIMER,
    AcceptorState,
    LeaderState,
    PartState,
    PaxosAcceptor,
    PaxosLeader,
    PaxosParticipant,
    TakeOver,
    answer_for_finished_leader,
    answer_for_unknown_leader,
    leader_for_unknown,
    takeover_after,
)
from dtxn.protocols.paxos_messages import (
    PAXOS_MESSAGE_TYPES,
    Ballot,
    InstanceValue,
    Nack,
    PaxosApplied,
    PaxosDecisionRequest,
    PaxosMessage,
    PaxosPrepare,
    Phase1a,
    Phase1b,
    Phase2a,
    Phase2b,
)
from dtxn.protocols.paxos_records import (
    PAXOS_RECORD_TYPES,
    PaxosAcceptorState,
    PaxosLeaderBallot,
    PaxosLeaderEnded,
    PaxosPartEnded,
    PaxosPartPrepared,
    PaxosRecord,
)
from dtxn.protocols.records import RECORD_TYPES, kind_of

TX = "t1"
P1, P2 = "p1", "p2"
A = ("a1", "a2", "a3")
L1, L2 = "l1", "l2"
PREPARED, ABORTED = InstanceValue.PREPARED, InstanceValue.ABORTED
Machine = PaxosParticipant | PaxosAcceptor | PaxosLeader


def rx(message: msgspec.Struct) -> Received:
    return Received(message)  # type: ignore[arg-type]


def prepare(faster: bool = False) -> PaxosPrepare:
    return PaxosPrepare(TX, L1, (P1, P2), A, (L1, L2), "work", faster=faster)


def prepared_participant(faster: bool = False) -> PaxosParticipant:
    part = PaxosParticipant(TX, P1)
    part.handle(rx(prepare(faster)))
    part.handle(LocalVoteCast(Vote.YES))
    return part


def sends(effects: list[Effect]) -> list[Send]:
    return [e for e in effects if isinstance(e, Send)]


def first(effects: list[Effect], kind: type[Effect]) -> int:
    return next(i for i, e in enumerate(effects) if isinstance(e, kind))


def b2(acceptor: str, instance: str, value: InstanceValue, ballot: Ballot | None = None) -> Phase2b:
    return Phase2b(TX, acceptor, instance, ballot or Ballot(0, instance), value)


# -- ballots, messages and records ----------------------------------------------------


def test_ballots_of_two_leaders_in_one_round_differ_and_ballot_0_is_below_every_leader_ballot() -> (
    None
):
    assert Ballot(1, L1) != Ballot(1, L2)
    assert Ballot(1, L1) < Ballot(1, L2) < Ballot(2, L1)
    assert Ballot(0, P1) < Ballot(1, "")


def test_every_paxos_message_and_record_round_trips_through_msgpack_by_its_tag() -> None:
    ballot = Ballot(2, L1)
    messages = [
        prepare(faster=True),
        Phase1a(TX, L1, P1, ballot),
        Phase1b(TX, "a1", P1, ballot, Ballot(0, P1), PREPARED),
        Phase1b(TX, "a1", P1, ballot),
        Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,)),
        Phase2b(TX, "a1", P1, ballot, ABORTED),
        Nack(TX, "a1", P1, Ballot(0, P1), ballot),
    ]
    for message in messages:
        wire = msgspec.msgpack.encode(message)
        assert msgspec.msgpack.decode(wire, type=PaxosMessage) == message
    records = [
        PaxosPartPrepared(TX, (P1, P2), A, (L1,), faster=True),
        PaxosPartEnded(TX, True),
        PaxosAcceptorState(TX, P1, ballot, Ballot(0, P1), PREPARED),
        PaxosAcceptorState(TX, P1, ballot),
        PaxosLeaderBallot(TX, 3, (P1, P2)),
    ]
    for record in records:
        wire = msgspec.msgpack.encode(record)
        assert msgspec.msgpack.decode(wire, type=PaxosRecord) == record


def test_paxos_tags_are_distinct_from_each_other_and_from_the_2pc_and_3pc_tags() -> None:
    old = {t.__struct_config__.tag for t in (*MESSAGE_TYPES, *RECORD_TYPES)}
    new = [t.__struct_config__.tag for t in (*PAXOS_MESSAGE_TYPES, *PAXOS_RECORD_TYPES)]
    assert len(set(new)) == len(new)
    assert not old & set(new)
    assert kind_of(PaxosLeaderBallot(TX, 1, (P1,))) == "px-ballot"


def test_an_even_or_repeated_acceptor_list_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="2F\\+1"):
        PaxosLeader(TX, L1, ("a1", "a2"))
    with pytest.raises(ConfigError, match="twice"):
        PaxosLeader(TX, L1, ("a1", "a1", "a2"))


# -- participant ----------------------------------------------------------------------


def test_a_yes_vote_forces_prepared_before_its_ballot_0_phase_2a_goes_to_every_acceptor() -> None:
    part = PaxosParticipant(TX, P1)
    assert part.handle(rx(prepare())) == [InvokeResource(ResourceOp.PREPARE, "work")]
    effects = part.handle(LocalVoteCast(Vote.YES))
    assert isinstance(effects[0], ForceLog)
    assert isinstance(effects[0].record, PaxosPartPrepared)
    out = sends(effects)
    assert [s.to for s in out] == list(A)
    assert {s.message for s in out} == {Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,))}
    assert first(effects, ForceLog) < first(effects, Send)
    assert part.state is PartState.PREPARED


def test_a_no_vote_proposes_aborted_at_ballot_0_and_decides_abort_at_once_forcing_nothing() -> None:
    part = PaxosParticipant(TX, P1)
    part.handle(rx(prepare()))
    effects = part.handle(LocalVoteCast(Vote.NO, "full"))
    assert not [e for e in effects if isinstance(e, ForceLog)]
    assert {s.message for s in sends(effects)} == {
        Phase2a(TX, P1, P1, Ballot(0, P1), ABORTED, (L1,)),
        PaxosApplied(TX, P1, (P1, P2), False),
    }
    assert effects[-2:] == [Decide(Outcome.ABORTED, "full"), Forget()]


def test_a_prepared_participant_applies_the_leaders_commit_then_reports_it() -> None:
    part = prepared_participant()
    effects = part.handle(rx(Decision(TX, L2, True)))
    assert InvokeResource(ResourceOp.COMMIT) in effects
    effects = part.handle(ResourceApplied(ResourceOp.COMMIT))
    assert Decide(Outcome.COMMITTED, f"decided by {L2}") in effects
    assert part.state is PartState.COMMITTED


def test_in_the_faster_variant_a_participant_learns_commit_from_f_plus_1_2bs_per_instance() -> None:
    part = prepared_participant(faster=True)
    for message in (b2("a1", P1, PREPARED), b2("a1", P2, PREPARED), b2("a2", P1, PREPARED)):
        assert part.handle(rx(message)) == []  # P2's instance has F = 1 so far
    effects = part.handle(rx(b2("a3", P2, PREPARED)))
    assert InvokeResource(ResourceOp.COMMIT) in effects


def test_a_participant_does_not_count_2bs_of_different_ballots_together() -> None:
    part = prepared_participant(faster=True)
    part.handle(rx(b2("a1", P2, PREPARED)))
    assert part.handle(rx(b2("a2", P2, ABORTED, Ballot(1, L1)))) == []
    effects = part.handle(rx(b2("a3", P2, ABORTED, Ballot(1, L1))))
    assert InvokeResource(ResourceOp.ABORT) in effects


def test_a_participant_rebuilt_from_its_prepared_record_is_in_doubt_and_asks_again() -> None:
    record = PaxosPartPrepared(TX, (P1, P2), A, (L1, L2))
    part = PaxosParticipant(TX, P1)
    assert part.handle(RecordRecovered(record)) == []
    effects = part.handle(RecoveryDone())
    assert part.state is PartState.PREPARED
    targets = [s.to for s in sends(effects)]
    assert targets == [*A, L1, L2]
    assert sends(effects)[-1].message == PaxosDecisionRequest(TX, P1, (P1, P2), A, (L1, L2))


# -- acceptor -------------------------------------------------------------------------


def test_an_acceptor_forces_its_promise_before_its_phase_1b() -> None:
    acc = PaxosAcceptor(TX, "a1")
    effects = acc.handle(rx(Phase1a(TX, L1, P1, Ballot(1, L1))))
    assert effects == [
        ForceLog(PaxosAcceptorState(TX, P1, Ballot(1, L1))),
        Send(L1, Phase1b(TX, "a1", P1, Ballot(1, L1))),
    ]


def test_an_acceptor_forces_what_it_accepted_before_sending_2b_to_every_learner() -> None:
    acc = PaxosAcceptor(TX, "a1")
    effects = acc.handle(rx(Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1, P2))))
    state = PaxosAcceptorState(TX, P1, Ballot(0, P1), Ballot(0, P1), PREPARED)
    reply = Phase2b(TX, "a1", P1, Ballot(0, P1), PREPARED)
    assert effects == [ForceLog(state), Send(L1, reply), Send(P2, reply)]
    # A duplicate is answered again without forcing again.
    assert acc.handle(rx(Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,)))) == [Send(L1, reply)]


def test_an_acceptor_answers_a_stale_ballot_with_a_nack_carrying_its_promise() -> None:
    acc = PaxosAcceptor(TX, "a1")
    acc.handle(rx(Phase1a(TX, L2, P1, Ballot(2, L2))))
    before = copy.deepcopy(vars(acc))
    late = Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,))
    assert acc.handle(rx(late)) == [Send(P1, Nack(TX, "a1", P1, Ballot(0, P1), Ballot(2, L2)))]
    assert acc.handle(rx(Phase1a(TX, L1, P1, Ballot(1, L1)))) == [
        Send(L1, Nack(TX, "a1", P1, Ballot(1, L1), Ballot(2, L2)))
    ]
    assert vars(acc) == before


def test_an_acceptor_reports_its_highest_accepted_ballot_in_phase_1b() -> None:
    acc = PaxosAcceptor(TX, "a1")
    acc.handle(rx(Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,))))
    effects = acc.handle(rx(Phase1a(TX, L2, P1, Ballot(1, L2))))
    assert sends(effects)[0].message == Phase1b(
        TX, "a1", P1, Ballot(1, L2), Ballot(0, P1), PREPARED
    )


def test_an_acceptor_rebuilt_from_its_last_forced_record_keeps_its_promise() -> None:
    acc = PaxosAcceptor(TX, "a1")
    forced = [
        e.record
        for event in (
            rx(Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,))),
            rx(Phase1a(TX, L2, P1, Ballot(3, L2))),
        )
        for e in acc.handle(event)
        if isinstance(e, ForceLog)
    ]
    rebuilt = PaxosAcceptor(TX, "a1")
    for record in forced:
        rebuilt.handle(RecordRecovered(record))
    rebuilt.handle(RecoveryDone())
    assert rebuilt.instances == acc.instances
    assert sends(rebuilt.handle(rx(Phase1a(TX, L1, P1, Ballot(2, L1)))))[0].message == Nack(
        TX, "a1", P1, Ballot(2, L1), Ballot(3, L2)
    )


# -- leader ---------------------------------------------------------------------------


def begun_leader(faster: bool = False) -> PaxosLeader:
    leader = PaxosLeader(TX, L1, A, backups=(L2,), faster=faster)
    leader.handle(Begin((P1, P2), ("x", "y")))
    return leader


def test_begin_sends_prepare_naming_acceptors_and_leaders_and_forces_nothing() -> None:
    leader = PaxosLeader(TX, L1, A, backups=(L2,))
    effects = leader.handle(Begin((P1, P2), ("x", "y")))
    assert not [e for e in effects if isinstance(e, ForceLog)]
    assert [s.message for s in sends(effects)] == [
        PaxosPrepare(TX, L1, (P1, P2), A, (L1, L2), "x"),
        PaxosPrepare(TX, L1, (P1, P2), A, (L1, L2), "y"),
    ]


def test_the_leader_commits_once_every_instance_chose_prepared_at_f_plus_1_and_not_before() -> None:
    leader = begun_leader()
    for message in (b2("a1", P1, PREPARED), b2("a2", P1, PREPARED), b2("a1", P2, PREPARED)):
        assert leader.handle(rx(message)) == []
    effects = leader.handle(rx(b2("a3", P2, PREPARED)))
    assert Decide(Outcome.COMMITTED) in effects
    assert {s.message for s in sends(effects)} == {Decision(TX, L1, True)}
    assert leader.handle(rx(DecisionRequest(TX, P2))) == [Send(P2, Decision(TX, L1, True))]


def test_the_leader_aborts_as_soon_as_one_instance_chose_aborted() -> None:
    leader = begun_leader()
    leader.handle(rx(b2("a1", P2, ABORTED)))
    effects = leader.handle(rx(b2("a3", P2, ABORTED)))
    assert Decide(Outcome.ABORTED) in effects
    assert leader.state is LeaderState.ABORTED


def test_on_timeout_the_leader_forces_a_higher_round_then_runs_phase_1_for_unknown_instances() -> (
    None
):
    leader = begun_leader()
    leader.handle(rx(b2("a1", P1, PREPARED)))
    leader.handle(rx(b2("a2", P1, PREPARED)))  # P1's instance is known
    leader.handle(rx(Nack(TX, "a3", P2, Ballot(0, P2), Ballot(4, L2))))
    effects = leader.handle(TimerFired(LEADER_TIMER))
    assert effects[0] == ForceLog(PaxosLeaderBallot(TX, 5, (P1, P2), A, leader.leaders))
    assert {(s.to, s.message) for s in sends(effects)} == {
        (a, Phase1a(TX, L1, P2, Ballot(5, L1))) for a in A
    }


def test_after_phase_1_the_leader_proposes_the_highest_accepted_value_or_else_aborted() -> None:
    leader = begun_leader()
    leader.handle(TimerFired(LEADER_TIMER))
    b = Ballot(1, L1)
    assert leader.handle(rx(Phase1b(TX, "a1", P1, b))) == []
    effects = leader.handle(rx(Phase1b(TX, "a2", P1, b, Ballot(0, P1), PREPARED)))
    assert {s.message for s in sends(effects)} == {Phase2a(TX, L1, P1, b, PREPARED, (L1,))}
    leader.handle(rx(Phase1b(TX, "a1", P2, b)))
    effects = leader.handle(rx(Phase1b(TX, "a3", P2, b)))
    assert {s.message for s in sends(effects)} == {Phase2a(TX, L1, P2, b, ABORTED, (L1,))}
    # A third promise for an instance already proposed changes nothing.
    assert sends(leader.handle(rx(Phase1b(TX, "a2", P2, b)))) == []


def test_a_restarted_leader_resumes_with_a_round_above_its_forced_one() -> None:
    leader = PaxosLeader(TX, L1, A)
    leader.handle(RecordRecovered(PaxosLeaderBallot(TX, 1, (P1, P2))))
    leader.handle(RecordRecovered(PaxosLeaderBallot(TX, 2, (P1, P2))))
    effects = leader.handle(RecoveryDone())
    assert effects[0] == ForceLog(PaxosLeaderBallot(TX, 3, (P1, P2), A, (L1,)))
    assert {s.message for s in sends(effects)} >= {Phase1a(TX, L1, P1, Ballot(3, L1))}


def test_a_backup_leader_taking_over_runs_phase_1_for_every_instance() -> None:
    leader = PaxosLeader(TX, L2, A)
    effects = leader.handle(TakeOver((P1, P2)))
    # The membership is forced with the round: a restart must run phase 1 again.
    assert effects[0] == ForceLog(PaxosLeaderBallot(TX, 1, (P1, P2), A, (L2,)))
    assert len(sends(effects)) == 2 * len(A)


# -- illegal events raise and change nothing -------------------------------------------

ILLEGAL: list[tuple[str, Machine, Event]] = [
    ("participant", PaxosParticipant(TX, P1), LocalVoteCast(Vote.YES)),
    ("participant", PaxosParticipant(TX, P1), ResourceApplied(ResourceOp.COMMIT)),
    ("participant", PaxosParticipant(TX, P1), RecoveryDone()),
    ("participant", PaxosParticipant(TX, P1), RecordRecovered(PaxosPartEnded(TX, True))),
    ("participant", PaxosParticipant(TX, P1), Begin((P1,), ("x",))),
    ("participant", prepared_participant(), LocalVoteCast(Vote.YES)),
    ("participant", prepared_participant(), LocalVoteCast(Vote.READ_ONLY)),
    ("participant", prepared_participant(), ResourceApplied(ResourceOp.ABORT)),
    ("participant", prepared_participant(), RecordRecovered(PaxosPartEnded(TX, False))),
    ("acceptor", PaxosAcceptor(TX, "a1"), LocalVoteCast(Vote.YES)),
    ("acceptor", PaxosAcceptor(TX, "a1"), TimerFired("x")),
    ("acceptor", PaxosAcceptor(TX, "a1"), RecoveryDone()),
    ("acceptor", PaxosAcceptor(TX, "a1"), RecordRecovered(PaxosPartEnded(TX, True))),
    ("leader", PaxosLeader(TX, L1, A), RecoveryDone()),
    ("leader", PaxosLeader(TX, L1, A), Begin((), ())),
    ("leader", PaxosLeader(TX, L1, A), Begin((P1, P1), ("x", "y"))),
    ("leader", PaxosLeader(TX, L1, A), Begin((P1, P2), ("x",))),
    ("leader", PaxosLeader(TX, L1, A), TakeOver(())),
    ("leader", PaxosLeader(TX, L1, A), LocalVoteCast(Vote.YES)),
    ("leader", begun_leader(), Begin((P1, P2), ("x", "y"))),
    ("leader", begun_leader(), TakeOver((P1, P2))),
    ("leader", begun_leader(), RecordRecovered(PaxosLeaderBallot(TX, 1, (P1,)))),
    ("leader", begun_leader(), ResourceApplied(ResourceOp.COMMIT)),
]


@pytest.mark.parametrize(("role", "machine", "event"), ILLEGAL)
def test_an_illegal_event_raises_protocol_error_naming_the_transaction_and_changes_nothing(
    role: str, machine: Machine, event: Event
) -> None:
    machine = copy.deepcopy(machine)
    before = copy.deepcopy(vars(machine))
    with pytest.raises(ProtocolError, match=TX):
        machine.handle(event)
    assert vars(machine) == before


def test_an_acceptor_in_recovery_refuses_messages_until_recovery_is_done() -> None:
    acc = PaxosAcceptor(TX, "a1")
    acc.handle(RecordRecovered(PaxosAcceptorState(TX, P1, Ballot(1, L1))))
    assert acc.state is AcceptorState.RECOVERING
    with pytest.raises(ProtocolError):
        acc.handle(rx(Phase1a(TX, L1, P1, Ballot(1, L1))))
    acc.handle(RecoveryDone())
    assert acc.state is AcceptorState.ACTIVE


def test_a_participant_timer_re_asks_only_while_in_doubt() -> None:
    part = prepared_participant()
    assert sends(part.handle(TimerFired(DECISION_TIMER)))
    part.handle(rx(Decision(TX, L1, False)))
    assert not sends(part.handle(TimerFired(DECISION_TIMER)))


# -- ends, compaction and takeover (what the runtime relies on) ---------------------------


def test_a_participant_forces_its_end_before_telling_the_acceptors_it_applied() -> None:
    part = prepared_participant()
    part.handle(rx(Decision(TX, L1, True)))
    effects = part.handle(ResourceApplied(ResourceOp.COMMIT))
    assert effects[0] == ForceLog(PaxosPartEnded(TX, True))
    assert {(s.to, s.message) for s in sends(effects)} == {
        (a, PaxosApplied(TX, P1, (P1, P2), True)) for a in A
    }
    assert effects[-2:] == [Compact(), Forget()]


def test_an_acceptor_drops_its_records_once_every_participant_applied_and_not_before() -> None:
    acc = PaxosAcceptor(TX, "a1")
    acc.handle(rx(Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,))))
    assert acc.handle(rx(PaxosApplied(TX, P1, (P1, P2), True))) == []
    assert acc.handle(rx(PaxosApplied(TX, P1, (P1, P2), True))) == []  # a duplicate counts once
    # Compact first: no record is kept; the host remembers the outcome in memory.
    assert acc.handle(rx(PaxosApplied(TX, P2, (P1, P2), None))) == [
        Compact(),
        Decide(Outcome.COMMITTED, "every participant applied it"),
        Forget(),
    ]


def test_a_leader_still_balloting_learns_the_outcome_from_an_acceptor_that_forgot() -> None:
    leader = begun_leader()
    leader.handle(TimerFired(LEADER_TIMER))  # round 1: it forced a ballot
    effects = leader.handle(rx(Decision(TX, "a2", True)))
    assert effects[:2] == [
        CancelTimer(LEADER_TIMER),
        Decide(Outcome.COMMITTED, "every participant applied it (told by a2)"),
    ]
    assert not sends(effects)  # every participant has it already
    assert effects[-3:] == [Log(PaxosLeaderEnded(TX, True)), Compact(), Forget()]
    # A Decision from anyone else is no news to a leader.
    (ignored,) = begun_leader().handle(rx(Decision(TX, "mallory", False)))
    assert isinstance(ignored, Ignored) and ignored.violation


def test_an_acceptor_refuses_an_applied_from_a_process_that_is_no_participant() -> None:
    acc = PaxosAcceptor(TX, "a1")
    (effect,) = acc.handle(rx(PaxosApplied(TX, "mallory", (P1,))))
    assert isinstance(effect, Ignored) and effect.violation
    assert acc.applied == set()


def test_a_leader_in_the_normal_case_forgets_once_decided_and_writes_nothing() -> None:
    leader = begun_leader()
    for instance in (P1, P2):
        for a in A[:2]:
            effects = leader.handle(rx(b2(a, instance, PREPARED)))
    assert Decide(Outcome.COMMITTED) in effects
    assert effects[-1] == Forget()
    assert not [e for e in effects if isinstance(e, ForceLog | Log)]


def test_a_leader_that_balloted_leaves_an_end_record_as_its_tombstone() -> None:
    leader = PaxosLeader(TX, L2, A)
    leader.handle(TakeOver((P1,)))
    b = Ballot(1, L2)
    leader.handle(rx(Phase1b(TX, "a1", P1, b)))
    leader.handle(rx(Phase1b(TX, "a2", P1, b)))
    leader.handle(rx(b2("a1", P1, ABORTED, b)))
    effects = leader.handle(rx(b2("a2", P1, ABORTED, b)))
    assert effects[-3:] == [Log(PaxosLeaderEnded(TX, False)), Compact(), Forget()]
    rebuilt = PaxosLeader(TX, L2, A)
    rebuilt.handle(RecordRecovered(PaxosLeaderBallot(TX, 1, (P1,), A, (L2,))))
    rebuilt.handle(RecordRecovered(PaxosLeaderEnded(TX, False)))
    assert rebuilt.handle(RecoveryDone()) == [
        Decide(Outcome.ABORTED, "recovered from the log"),
        Forget(),
    ]


def test_backups_take_over_in_turn_each_about_votes_s_after_the_one_before() -> None:
    t = Timeouts(votes_s=5.0, decision_s=2.0)
    assert [takeover_after(i, t) for i in range(4)] == [0, 3, 6, 9]
    assert takeover_after(1, Timeouts(votes_s=0.1, decision_s=2.0)) == 1


C, N1, N2 = "coordinator@c", "coordinator@n1", "coordinator@n2"
MEMBERS = ("ledger@c", "ledger@n1", "ledger@n2")


@pytest.mark.parametrize(
    ("me", "sender", "attempt", "takes_over"),
    [
        (N1, "ledger@n1", 3, True),  # backup 1, asked by its node's participant, its turn
        (N1, "ledger@n1", 2, False),  # not yet its turn
        (N2, "ledger@n1", 9, False),  # asked by another node's participant: never
        (C, "ledger@c", 1, True),  # the coordinator (restarted), asked by its own node
        (C, "ledger@n1", 9, False),
        ("coordinator@n9", "ledger@n9", 9, False),  # no leader of this transaction
    ],
)
def test_a_leader_holding_nothing_takes_over_only_for_its_nodes_participant_in_its_turn(
    me: str, sender: str, attempt: int, takes_over: bool
) -> None:
    t = Timeouts(votes_s=5.0, decision_s=2.0)
    request = PaxosDecisionRequest(TX, sender, MEMBERS, A, (C, N1, N2), t, attempt)
    leader = leader_for_unknown(TX, me, request)
    assert (leader is not None) is takes_over
    if leader is not None:
        assert leader.acceptors == A and leader.timeouts == t


def test_a_request_with_bad_membership_makes_no_leader_and_unknown_means_no_presumption() -> None:
    asker = "ledger@n1"
    good = PaxosDecisionRequest(TX, asker, MEMBERS, A, (C, N1), attempt=9)
    assert leader_for_unknown(TX, N1, good) is not None
    bad = [
        PaxosDecisionRequest(TX, asker, MEMBERS, ("a1", "a2"), (C, N1), attempt=9),  # even
        PaxosDecisionRequest(TX, asker, ("ledger@c",), A, (C, N1), attempt=9),  # not a member
        PaxosDecisionRequest(TX, asker, (asker, asker), A, (C, N1), attempt=9),  # twice
    ]
    assert [leader_for_unknown(TX, N1, m) for m in bad] == [None, None, None]
    (effect,) = answer_for_unknown_leader(TX, L1, bad[0])
    assert isinstance(effect, Ignored) and not effect.violation
    assert answer_for_finished_leader(TX, L1, Outcome.COMMITTED, bad[0]) == [
        Send(asker, Decision(TX, L1, True))
    ]


def test_a_read_only_vote_proposes_prepared_forcing_nothing_and_leaves_without_an_outcome() -> None:
    part = PaxosParticipant(TX, P1)
    part.handle(rx(prepare()))
    effects = part.handle(LocalVoteCast(Vote.READ_ONLY))
    assert not [e for e in effects if isinstance(e, ForceLog | Decide)]
    assert {s.message for s in sends(effects)} == {
        Phase2a(TX, P1, P1, Ballot(0, P1), PREPARED, (L1,)),
        PaxosApplied(TX, P1, (P1, P2), None),
    }
    assert effects[-1] == Forget() and part.state is PartState.READ_ONLY
