"""Proof that the simulator bites: deliberately broken protocol variants are caught.

Each mutant is a small subclass of a 2PC machine that reorders or alters its
effects; it is plugged into the simulated cluster through `machine_factory`.
Hypothesis searches scenarios until one breaks an invariant, and each test
asserts that happens within a bounded number of examples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dtxn.protocols.effects import Effect, ForceLog, InvokeResource, ResourceOp, Send
from dtxn.protocols.messages import Decision, Protocol, VoteCast
from dtxn.protocols.twopc import DECISION_TIMER, PartState, TwoPCCoordinator, TwoPCParticipant
from dtxn.runtime.sim import Scenario, SimulationFailure, check, failing, random_scenario, run
from dtxn.runtime.wal import MemoryWal
from dtxn.testing import scenarios
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

EXAMPLES_MAX = 300


class CommitBeforeForce(TwoPCCoordinator):
    """Sends COMMIT before its c-commit record is durable."""

    def _commit(self, yes: tuple[str, ...]) -> list[Effect]:
        effects = super()._commit(yes)
        sends = [e for e in effects if isinstance(e, Send)]
        rest = [e for e in effects if not isinstance(e, Send)]
        at = next(i for i, e in enumerate(rest) if isinstance(e, ForceLog))
        return rest[:at] + sends + rest[at:]


class VoteBeforeForce(TwoPCParticipant):
    """Votes YES before its p-prepared record is durable."""

    def _on_local_vote(self, event: Any) -> list[Effect]:
        effects = super()._on_local_vote(event)
        votes = [e for e in effects if isinstance(e, Send) and isinstance(e.message, VoteCast)]
        if votes and any(isinstance(e, ForceLog) for e in effects):
            rest = [e for e in effects if e not in votes]
            return votes + rest
        return effects


class AbortOnTimeout(TwoPCParticipant):
    """Gives up on its own while prepared when the decision is late (breaks S5)."""

    def _on_timer(self, name: str) -> list[Effect]:
        if name == DECISION_TIMER and self.state is PartState.PREPARED:
            self.state = PartState.ABORTING
            self.reason = "gave up waiting"
            return [InvokeResource(ResourceOp.ABORT)]
        return super()._on_timer(name)


class ForgetsAbortCutOffByCrash(TwoPCParticipant):
    """After a crash, ends a transaction it aborted on inquiry while preparing without
    applying the abort the crash cut off (issue 14, finding 1): its resource keeps the
    prepared branch of a transaction its log says aborted."""

    def _resume(self) -> list[Effect]:
        self.abort_unapplied = False
        return super()._resume()


class TrustsAnyDecision(TwoPCParticipant):
    """Applies a decision from anyone, as if every sender were its coordinator
    (issue 14, finding 5): a compromised node's forged decisions split transactions."""

    def _on_decision(self, message: Decision) -> list[Effect]:
        return super()._on_decision(
            Decision(message.txid, self.coordinator, message.commit)
        )


def swap(coordinator: type | None = None, participant: type | None = None) -> Callable[[Any], Any]:
    def factory(machine: Any) -> Any:
        if coordinator is not None and type(machine) is TwoPCCoordinator:
            return coordinator(machine.txid, machine.me, machine.timeouts,
                               cooperative=machine.cooperative)
        if participant is not None and type(machine) is TwoPCParticipant:
            return participant(machine.txid, machine.me)
        return machine

    return factory


SEARCH = settings(
    max_examples=EXAMPLES_MAX,
    database=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
    deadline=None,
)


def caught(factory: Callable[[Any], Any], codes: set[str]) -> Scenario:
    """The first scenario (within EXAMPLES_MAX) where the mutant breaks one of `codes`."""

    def breaks(scenario: Scenario) -> bool:
        return any(v.code in codes for v in failing(scenario, machine_factory=factory))

    return find(scenarios(Protocol.TWO_PC), breaks, settings=SEARCH)


def test_the_unmutated_protocol_passes_the_same_search() -> None:
    with pytest.raises(NoSuchExample):
        caught(swap(), {"S1", "S2", "S3", "S4", "S5", "C", "L", "R"})


def test_a_coordinator_that_sends_commit_before_forcing_it_is_caught() -> None:
    factory = swap(coordinator=CommitBeforeForce)
    scenario = caught(factory, {"S4"})
    with pytest.raises(SimulationFailure, match="replay with: dtxn replay"):
        check(scenario, machine_factory=factory)


def test_a_participant_that_votes_yes_before_forcing_prepared_is_caught() -> None:
    caught(swap(participant=VoteBeforeForce), {"S4"})


def test_a_2pc_participant_that_aborts_on_timeout_while_prepared_is_caught() -> None:
    caught(swap(participant=AbortOnTimeout), {"S5", "S1"})


SWEEP_MAX = 400


def swept(
    factory: Callable[[Any], Any], codes: set[str], protocol: str = "2pc", limit: int = SWEEP_MAX
) -> Scenario:
    """The first of `dtxn simulate`'s random schedules (seeds 0..limit) that breaks
    one of `codes`: the sweep a user runs, rather than hypothesis' search."""
    for seed in range(limit):
        scenario = random_scenario(seed, protocol=protocol)
        if any(v.code in codes for v in failing(scenario, machine_factory=factory)):
            return scenario
    raise AssertionError(f"no schedule of {limit} broke {codes}")


def test_a_participant_that_loses_an_abort_cut_off_by_a_crash_is_caught() -> None:
    # The crashvote fault: a prepare applies, lingers until a peer asks (the
    # participant aborts from PREPARING), then the node crashes before its vote
    # is handled. Without reapplying that abort, the branch stays prepared.
    scenario = swept(swap(participant=ForgetsAbortCutOffByCrash), {"R"})
    assert any(f.kind == "crashvote" for f in scenario.faults)
    assert not failing(scenario)  # the real participant passes the same schedule


def test_a_coordinator_log_that_loses_records_silently_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The walcut fault with the detection taken out: a damaged sidecar SQLite
    # reads silently, after which presumed abort splits committed transactions.
    silent = MemoryWal.lose_tail

    def lose_tail_silently(self: MemoryWal, *, detected: bool = True) -> int:
        return silent(self, detected=False)

    monkeypatch.setattr(MemoryWal, "lose_tail", lose_tail_silently)
    # Rarer than the others (about 1 schedule in 700 has a participant in doubt
    # when the cut comes), so the sweep goes further; it stops at the first.
    scenario = swept(swap(), {"S1", "S6", "C"}, limit=3000)
    assert any(f.kind == "walcut" for f in scenario.faults)
    monkeypatch.undo()
    assert not failing(scenario)  # detected, the same schedule is safe


CUT_WHILE_IN_DOUBT = (
    "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0.1 p1=y ; "
    "part@0.1025 c,p2|p1 ; walcut@0.2 c ; restart@0.25 c ; heal@0.3"
)


def test_a_cut_log_while_a_participant_is_in_doubt_splits_only_when_undetected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # p1 voted yes; the COMMIT to it is cut off; the coordinator's log loses its
    # c-commit; p1 asks the restarted coordinator.
    scenario = Scenario.parse(CUT_WHILE_IN_DOUBT)
    assert not failing(scenario)  # detected: "unknown", p1 stays in doubt for an operator
    silent = MemoryWal.lose_tail
    monkeypatch.setattr(
        MemoryWal, "lose_tail", lambda self, detected=True: silent(self, detected=False)
    )
    assert {"S1", "S6", "C"} <= {v.code for v in failing(scenario)}


def test_the_minimal_schedule_for_a_mutant_replays_to_the_same_failure() -> None:
    factory = swap(participant=AbortOnTimeout)
    scenario = caught(factory, {"S5"})
    with pytest.raises(SimulationFailure) as first:
        check(scenario, machine_factory=factory)
    small = Scenario.parse(first.value.scenario.text())
    assert len(small.faults) <= len(scenario.faults)
    with pytest.raises(SimulationFailure):
        check(small, machine_factory=factory, shrink=False)


def test_a_participant_that_applies_a_decision_from_anyone_is_caught() -> None:
    # The forge fault: a compromised participant node sends decisions nobody
    # made, in its own name and (rejected by the network) in other nodes'.
    scenario = swept(swap(participant=TrustsAnyDecision), {"F"})
    assert any(f.kind == "forge" for f in scenario.faults)
    assert not failing(scenario)  # the real participant passes the same schedule


def test_the_network_rejects_forged_decisions_in_another_nodes_name() -> None:
    forged = "2pc n=3 seed=7 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0.1 p1=y,p2=y,p3=n ; "
    forged += "forge@0.1 p2"
    result = run(Scenario.parse(forged))
    rejected = [d for _, what, d in result.trace if what == "rejected"]
    through = [d for _, what, d in result.trace if what == "deliver forged"]
    # In the coordinator's name: rejected; in p2's own: delivered, and ignored.
    assert rejected and all(not d.message.sender.endswith("@p2") for d in rejected)
    assert through and all(d.message.sender == "r@p2" for d in through)
    assert result.violations == []
    assert result.outcomes["t0"] == "aborted"
