"""Paxos Commit under random faults, and planted bugs that the same property must catch.

Hypothesis draws a cluster (1-3 participants, F = 1 or 2, one or two
leaders, classic or faster, some NO votes) and a schedule: deliver any
message in flight (reordering), drop or duplicate one, finish a resource
call, fire a timer, crash a process now or at its k-th next effect, restart
one (from its forced records only), or have a leader with nothing to go on
take the transaction over. Agreement, validity and "no protocol violation"
are checked at every effect; then the faults stop, everyone restarts, one
leader runs, and the transaction must finish everywhere (liveness).

Each mutant below plants one bug; the property must find it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from dtxn.protocols.effects import Effect, ForceLog
from dtxn.protocols.messages import Message, Vote
from dtxn.protocols.paxos import PaxosAcceptor, PaxosLeader, PaxosParticipant, quorum_of
from dtxn.protocols.paxos_messages import Ballot, InstanceValue, Phase2a
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st
from paxos_driver import Impl, PaxosCluster, Violated

ACTIONS = (
    "deliver",
    "drop",
    "duplicate",
    "complete",
    "fire",
    "crash",
    "arm_crash",
    "restart",
    "take_over",
)


def run_schedule(data: st.DataObject, impl: Impl, max_steps: int = 60) -> PaxosCluster:
    n = data.draw(st.integers(1, 3), label="participants")
    f = data.draw(st.sampled_from([1, 1, 2]), label="F")
    votes = {
        f"p{i}": data.draw(st.sampled_from([Vote.YES] * 5 + [Vote.NO])) for i in range(1, n + 1)
    }
    cluster = PaxosCluster(
        n,
        f,
        votes,
        leaders=data.draw(st.sampled_from([1, 2, 2]), label="leaders"),
        faster=data.draw(st.booleans(), label="faster"),
        impl=impl,
    )
    weights = data.draw(
        st.fixed_dictionaries({a: st.integers(0, 4) for a in ACTIONS}), label="weights"
    )
    weights["deliver"] += 2
    cluster.begin()
    for _ in range(data.draw(st.integers(0, max_steps), label="steps")):
        enabled = {
            "deliver": bool(cluster.network),
            "drop": bool(cluster.network),
            "duplicate": bool(cluster.network),
            "complete": bool(cluster.work),
            "fire": bool(cluster.timers),
            "crash": bool(cluster.alive),
            "arm_crash": bool(cluster.alive),
            "restart": bool(cluster.dead),
            "take_over": len(cluster.leaders) > 1,
        }
        choices = [a for a in ACTIONS if enabled[a] for _ in range(weights[a])]
        if not choices:
            break
        action = data.draw(st.sampled_from(choices))
        if action in ("deliver", "drop", "duplicate"):
            i = data.draw(st.integers(0, len(cluster.network) - 1))
            getattr(cluster, action)(i)
        elif action == "complete":
            cluster.complete(data.draw(st.integers(0, len(cluster.work) - 1)))
        elif action == "fire":
            cluster.fire(data.draw(st.integers(0, len(cluster.timers) - 1)))
        elif action == "crash":
            cluster.crash(data.draw(st.sampled_from(cluster.alive)))
        elif action == "arm_crash":
            pid = data.draw(st.sampled_from(cluster.alive))
            cluster.arm_crash(pid, data.draw(st.integers(1, 4)))
        elif action == "restart":
            cluster.restart(data.draw(st.sampled_from(cluster.dead)))
        else:
            cluster.take_over(data.draw(st.sampled_from(cluster.leaders)))
    return cluster


def check(data: st.DataObject, impl: Impl) -> None:
    cluster = run_schedule(data, impl)
    budget = [data.draw(st.integers(0, 40), label="shuffled heal steps")]

    def choose(k: int) -> int:
        if budget[0] <= 0:
            return 0
        budget[0] -= 1
        return data.draw(st.integers(0, k - 1))

    survivor = data.draw(st.integers(0, len(cluster.leaders) - 1), label="surviving leader")
    try:
        cluster.heal_and_finish(survivor, choose)
    finally:
        note("\n".join(cluster.trace))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_paxos_commit_keeps_agreement_and_validity_under_faults_and_finishes_once_healed(
    data: st.DataObject,
) -> None:
    check(data, Impl())


# -- planted bugs -----------------------------------------------------------------------


def _force_after_send(effects: list[Effect]) -> list[Effect]:
    forced = [e for e in effects if isinstance(e, ForceLog)]
    return [e for e in effects if not isinstance(e, ForceLog)] + forced


class AnswersBeforeForcing(PaxosAcceptor):
    """Sends its phase 1b/2b first and forces its state after (ForceLog after Send)."""

    def receive(self, message: Message) -> list[Effect]:
        return _force_after_send(super().receive(message))


class SkipsPhase1(PaxosLeader):
    """On timeout, proposes ABORTED at its new ballot without asking the acceptors first."""

    def _new_ballot(self) -> list[Effect]:
        effects = super()._new_ballot()
        assert self.ballot is not None
        for instance in self.participants:
            if instance not in self.learner.chosen:
                self.proposed.add(instance)
                proposal = Phase2a(
                    self.txid,
                    self.me,
                    instance,
                    self.ballot,
                    InstanceValue.ABORTED,
                    self._learners(),
                )
                effects.extend(e for a in self.acceptors for e in self._send(a, proposal))
        return effects

    def _send(self, to: str, message: Message) -> list[Effect]:
        from dtxn.protocols.effects import Send

        return [Send(to, message)]


class CollidingBallots(PaxosLeader):
    """Every leader numbers its ballots by round alone, so two leaders share a ballot."""

    def make_ballot(self, round_: int) -> Ballot:
        return Ballot(round_, "")


class LearnsFromF(PaxosLeader):
    """Takes F phase 2b messages (not F+1) as a choice."""

    @property
    def quorum(self) -> int:
        return quorum_of(self.acceptors) - 1


class ParticipantLearnsFromF(PaxosParticipant):
    @property
    def quorum(self) -> int:
        return quorum_of(self.acceptors) - 1


MUTANTS: dict[str, Impl] = {
    "acceptor answers before forcing": Impl(acceptor=AnswersBeforeForcing),
    "leader skips phase 1": Impl(leader=SkipsPhase1),
    "two leaders' ballots collide": Impl(leader=CollidingBallots),
    "learner decides on F 2b messages": Impl(
        leader=LearnsFromF, participant=ParticipantLearnsFromF
    ),
}


def finds_a_counterexample(impl: Impl, max_examples: int) -> str | None:
    found: list[str] = []

    @settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        try:
            check(data, impl)
        except Violated as error:
            found.append(str(error))
            raise

    try:
        prop()
    except Violated:
        return found[0]
    return None


@pytest.mark.parametrize("bug", list(MUTANTS))
def test_the_property_catches_a_planted_bug(bug: str) -> None:
    counterexample = finds_a_counterexample(MUTANTS[bug], max_examples=3000)
    assert counterexample is not None, f"the property missed the bug: {bug}"


def test_the_correct_machines_pass_the_same_derandomized_search() -> None:
    assert finds_a_counterexample(Impl(), max_examples=300) is None


_unused: Callable[..., object] = Message  # keep the import for the mutants' signatures
