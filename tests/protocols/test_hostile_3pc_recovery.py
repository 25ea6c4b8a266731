"""A recovering 3PC coordinator that learns "committed" from a participant.

Found by `dtxn simulate --protocol 3pc --schedules 3000 --seed 1` (issue 14,
finding 8): the coordinator crashed while forcing its c-commit, came back
with only its pre-commit record, learnt "committed" from a participant whose
commit was durable, wrote a lazy c-end, forgot the transaction and answered
COMMIT from memory to a participant still in doubt, with no decision record
of its own (S4). That c-end is the tombstone of a finished commit ("every ack
is in"), so the outcome then lived only as long as the `remember_ended`
window, while a participant still had to ask for it. A coordinator that
adopts a commit now forces its c-commit first and stays committed until
every participant acknowledged, as after a commit of its own
(docs/protocols.md, "Recovery").
"""

from __future__ import annotations

from dtxn.protocols.effects import (
    ForceLog,
    Received,
    RecordRecovered,
    RecoveryDone,
    Send,
    SetTimer,
)
from dtxn.protocols.messages import (
    Ack,
    Decision,
    DecisionRequest,
    PeerState,
    Protocol,
    StatusReply,
)
from dtxn.protocols.records import CoordCommitted, CoordPreCommitted
from dtxn.protocols.threepc import ACKS_TIMER, Coord3State, ThreePCCoordinator
from dtxn.runtime import Runtime
from dtxn.runtime.sim import Scenario, describe, run

FOUND_BY_SEED_1 = (
    "3pc n=3 seed=2028500097 drop=0 dup=0.05 delay=0.001 jitter=0.05 ; "
    "tx@0.164 p1=y,p2=y,p3=y ; crashforce@0.284 c ; crashforced@0.466 p1 ; "
    "crashforce@1.198 p3"
)

PARTICIPANTS = ("r@p1", "r@p2", "r@p3")


def test_the_schedule_seed_1_found_keeps_every_invariant_and_commits_everywhere() -> None:
    result = run(Scenario.parse(FOUND_BY_SEED_1))
    # p3 crashed while committing and commits again on recovery: a set.
    applied = {describe(d) for _, what, d in result.trace if what == "apply"}
    assert applied == {"commit t0 at r@p1", "commit t0 at r@p2", "commit t0 at r@p3"}


def test_the_coordinator_forces_c_commit_before_it_relays_a_commit_it_learnt() -> None:
    result = run(Scenario.parse(FOUND_BY_SEED_1))
    forced_at = next(
        i for i, (_, what, detail) in enumerate(result.trace)
        if what == "forced" and "CoordCommitted" in describe(detail)
    )
    first_commit = next(
        i for i, (_, what, detail) in enumerate(result.trace)
        if what == "send" and "sender='coordinator@c', commit=True" in describe(detail)
    )
    assert forced_at < first_commit


def _forget_every_outcome_at_the_coordinator_node(rt: Runtime) -> None:
    # An outcome window of 0 at node c: a finished transaction is forgotten,
    # tombstone and all, as soon as it ends, so only a live machine answers.
    if rt.node == "c":
        rt.coordinator.finished_max = 0


def test_the_adopted_commit_outlives_the_outcome_window_until_every_ack_is_in() -> None:
    # Before the fix the coordinator ended the transaction on adopting the
    # commit; with nothing remembered it answered the participant still in
    # doubt by presumption (abort) while the others had committed (S6, S1).
    result = run(
        Scenario.parse(FOUND_BY_SEED_1), runtime_hook=_forget_every_outcome_at_the_coordinator_node
    )
    # p3 crashed while committing and commits again on recovery: a set.
    applied = {describe(d) for _, what, d in result.trace if what == "apply"}
    assert applied == {"commit t0 at r@p1", "commit t0 at r@p2", "commit t0 at r@p3"}


def test_a_recovering_coordinator_adopting_a_commit_forces_it_and_waits_for_every_ack() -> None:
    coordinator = ThreePCCoordinator("t", "coordinator@c")
    assert coordinator.handle(
        RecordRecovered(CoordPreCommitted("t", Protocol.THREE_PC, PARTICIPANTS))
    ) == []
    coordinator.handle(RecoveryDone())
    assert coordinator.state is Coord3State.RECOVERING

    effects = coordinator.handle(Received(Decision("t", "r@p1", True)))

    force = next(i for i, e in enumerate(effects) if isinstance(e, ForceLog))
    assert effects[force] == ForceLog(CoordCommitted("t", Protocol.THREE_PC, PARTICIPANTS))
    sends = [(i, e.to) for i, e in enumerate(effects) if isinstance(e, Send)]
    assert sends and min(i for i, _ in sends) > force
    assert sorted(to for _, to in sends) == list(PARTICIPANTS)
    assert SetTimer(ACKS_TIMER, coordinator.timeouts.acks_s) in effects
    assert coordinator.state is Coord3State.COMMITTED

    # Still in doubt, p3 asks: the coordinator answers from its live machine.
    asked = coordinator.handle(Received(DecisionRequest("t", "r@p3")))
    assert asked == [Send("r@p3", Decision("t", "coordinator@c", True))]
    coordinator.handle(Received(StatusReply("t", "r@p2", PeerState.COMMITTABLE)))
    for p in PARTICIPANTS[:-1]:
        coordinator.handle(Received(Ack("t", p)))
    assert coordinator.state is Coord3State.COMMITTED
    coordinator.handle(Received(Ack("t", PARTICIPANTS[-1])))
    assert coordinator.state is Coord3State.ENDED
