"""What a participant machine does with an operator's p-resolved record (`dtxn resolve`).

No event loop: records are replayed into 2PC and 3PC participants as the
runtime's recovery does, and their effects checked one by one.
"""

from __future__ import annotations

import pytest
from dtxn.protocols.effects import (
    Compact,
    Decide,
    Effect,
    ForceLog,
    Forget,
    Ignored,
    InvokeResource,
    Log,
    Outcome,
    RecordRecovered,
    RecoveryDone,
    ResourceApplied,
    ResourceOp,
    Send,
)
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.messages import Ack, Decision, Protocol
from dtxn.protocols.records import (
    PartCommitted,
    PartPreCommitted,
    PartPrepared,
    PartResolved,
    Record,
)
from dtxn.protocols.threepc import ThreePCParticipant
from dtxn.protocols.twopc import TwoPCParticipant

ME, COORD, PEER = "ledger@bank-a", "coordinator@coord", "ledger@bank-b"
Machine = TwoPCParticipant | ThreePCParticipant


def _recovered(protocol: Protocol, *records: Record) -> tuple[Machine, list[Effect]]:
    machine: Machine = (
        TwoPCParticipant("t", ME) if protocol is Protocol.TWO_PC else ThreePCParticipant("t", ME)
    )
    for record in records:
        assert machine.handle(RecordRecovered(record)) == []
    return machine, machine.handle(RecoveryDone())


def _prepared(protocol: Protocol) -> PartPrepared:
    return PartPrepared("t", protocol, COORD, (ME, PEER))


PROTOCOLS = [Protocol.TWO_PC, Protocol.THREE_PC]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_resolved_commit_is_applied_then_ends_on_the_resolution_as_tombstone(
    protocol: Protocol,
) -> None:
    machine, effects = _recovered(
        protocol, _prepared(protocol), PartResolved("t", protocol, True, "peer log says so")
    )
    assert effects == [InvokeResource(ResourceOp.COMMIT)]
    assert not machine.in_doubt
    ended = machine.handle(ResourceApplied(ResourceOp.COMMIT))
    assert ended[0] == Send(COORD, Ack("t", ME))
    assert isinstance(ended[1], Decide) and ended[1].outcome is Outcome.COMMITTED
    assert "resolved by operator (heuristic): peer log says so" in ended[1].reason
    assert ended[2:] == [Compact(), Forget()]
    assert not any(isinstance(e, ForceLog | Log) for e in ended)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_resolved_abort_is_applied_without_an_ack(protocol: Protocol) -> None:
    machine, effects = _recovered(
        protocol, _prepared(protocol), PartResolved("t", protocol, False, "nobody committed")
    )
    assert effects == [InvokeResource(ResourceOp.ABORT)]
    ended = machine.handle(ResourceApplied(ResourceOp.ABORT))
    assert [type(e) for e in ended] == [Decide, Compact, Forget]
    assert isinstance(ended[0], Decide) and ended[0].outcome is Outcome.ABORTED


def test_a_3pc_branch_resolved_after_its_pre_commit_is_applied_too() -> None:
    _, effects = _recovered(
        Protocol.THREE_PC, _prepared(Protocol.THREE_PC), PartPreCommitted("t"),
        PartResolved("t", Protocol.THREE_PC, False, "operator's call"),
    )
    assert effects == [InvokeResource(ResourceOp.ABORT)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_coordinator_decision_against_the_resolution_is_a_heuristic_mismatch(
    protocol: Protocol,
) -> None:
    machine, _ = _recovered(
        protocol, _prepared(protocol), PartResolved("t", protocol, False, "guessed")
    )
    (mismatch,) = machine.receive(Decision("t", COORD, True))
    assert isinstance(mismatch, Ignored) and mismatch.violation
    assert mismatch.reason.startswith("heuristic mismatch: COMMIT from 'coordinator@coord'")
    (agrees,) = machine.receive(Decision("t", COORD, False))
    assert isinstance(agrees, Ignored) and not agrees.violation
    # Nothing was applied either way: the abort in flight still ends the branch.
    ended = machine.handle(ResourceApplied(ResourceOp.ABORT))
    assert isinstance(ended[0], Decide) and ended[0].outcome is Outcome.ABORTED


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_lone_resolution_is_an_ended_branch_kept_as_its_tombstone(
    protocol: Protocol,
) -> None:
    _, effects = _recovered(protocol, PartResolved("t", protocol, True, "applied before"))
    assert [type(e) for e in effects] == [Decide, Compact, Forget]
    assert isinstance(effects[0], Decide) and effects[0].outcome is Outcome.COMMITTED


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_resolution_after_an_end_record_is_refused(protocol: Protocol) -> None:
    machine: Machine = (
        TwoPCParticipant("t", ME) if protocol is Protocol.TWO_PC else ThreePCParticipant("t", ME)
    )
    machine.handle(RecordRecovered(_prepared(protocol)))
    machine.handle(RecordRecovered(PartCommitted("t")))
    with pytest.raises(ProtocolError, match="cannot handle RecordRecovered"):
        machine.handle(RecordRecovered(PartResolved("t", protocol, False, "late")))
