"""Forged decisions (issue 14, finding 5): a participant applies only a decision its
transaction's coordinator made, whoever else sends one and whatever it says.

The senders here are authenticated (over NATS a node can speak only in its own
name); what is forged is the decision. A member's word in 2PC is never the
coordinator's, and a 3PC member decides only as the backup of a termination round.
"""

from __future__ import annotations

import copy

import pytest
from dtxn.protocols.effects import (
    Begin,
    Effect,
    Ignored,
    InvokeResource,
    LocalVoteCast,
    Received,
)
from dtxn.protocols.messages import Decision, Prepare, Protocol, Vote, VoteCast
from dtxn.protocols.threepc import ThreePCCoordinator, ThreePCParticipant
from dtxn.protocols.twopc import TwoPCParticipant

C, P1, P2, P3 = "coordinator@c", "p1@n1", "p2@n2", "p3@n3"
MALLORY = "mallory@n9"
MEMBERS = (P1, P2, P3)


def prepared(protocol: Protocol) -> TwoPCParticipant | ThreePCParticipant:
    """P1 voted yes; the coordinator still waits for P3's vote."""
    machine: TwoPCParticipant | ThreePCParticipant
    if protocol is Protocol.TWO_PC:
        machine = TwoPCParticipant("t1", P1)
    else:
        machine = ThreePCParticipant("t1", P1)
    machine.handle(Received(Prepare("t1", C, protocol, MEMBERS)))
    machine.handle(LocalVoteCast(Vote.YES))
    return machine


def ignored_without_change(
    machine: TwoPCParticipant | ThreePCParticipant, message: Decision
) -> list[Effect]:
    before = copy.deepcopy(vars(machine))
    effects = machine.handle(Received(message))
    assert len(effects) == 1 and isinstance(effects[0], Ignored), effects
    assert vars(machine) == before
    return effects


@pytest.mark.parametrize("protocol", [Protocol.TWO_PC, Protocol.THREE_PC])
@pytest.mark.parametrize("commit", [True, False])
def test_a_prepared_participant_ignores_a_decision_from_a_non_member_as_a_violation(
    protocol: Protocol, commit: bool
) -> None:
    effects = ignored_without_change(prepared(protocol), Decision("t1", MALLORY, commit))
    assert isinstance(effects[0], Ignored) and effects[0].violation


@pytest.mark.parametrize("protocol", [Protocol.TWO_PC, Protocol.THREE_PC])
@pytest.mark.parametrize("commit", [True, False])
def test_a_member_cannot_decide_for_a_participant_while_the_coordinator_waits_for_votes(
    protocol: Protocol, commit: bool
) -> None:
    """The finding: with p2's credentials, COMMIT to p1 while p3 has not voted."""
    ignored_without_change(prepared(protocol), Decision("t1", P2, commit))


@pytest.mark.parametrize("commit", [True, False])
def test_a_2pc_participant_applies_only_the_coordinators_decision(commit: bool) -> None:
    machine = prepared(Protocol.TWO_PC)
    ignored_without_change(machine, Decision("t1", P2, commit))
    effects = machine.handle(Received(Decision("t1", C, commit)))
    assert any(isinstance(e, InvokeResource) for e in effects)


def test_a_3pc_member_decides_for_a_participant_once_termination_started_there() -> None:
    """The elected backup's decision still counts: termination keeps working."""
    machine = prepared(Protocol.THREE_PC)
    assert isinstance(machine, ThreePCParticipant)
    machine.handle(Received(Decision("t1", P2, False)))
    assert machine.state.value == "uncertain"
    machine.round = 1  # a STATE-REQ of round 1 (backup P2) was answered
    effects = machine.handle(Received(Decision("t1", P2, False)))
    assert any(isinstance(e, InvokeResource) for e in effects)


def test_a_3pc_coordinator_collecting_votes_refuses_a_commit_from_a_participant() -> None:
    coordinator = ThreePCCoordinator("t1", C)
    coordinator.handle(Begin(MEMBERS, (None, None, None)))
    coordinator.handle(Received(VoteCast("t1", P1, Vote.YES)))
    before = copy.deepcopy(vars(coordinator))
    effects = coordinator.handle(Received(Decision("t1", P2, True)))
    assert len(effects) == 1 and isinstance(effects[0], Ignored) and effects[0].violation
    assert vars(coordinator) == before
