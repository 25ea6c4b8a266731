"""Properties of the atomic-commit machines, h2 style, and random schedules over a `Cluster`.

1. Every (state, event) pair: each machine is driven to every reachable state
   by a short scripted path, then handed every event of a sampled set
   (messages of every type from members and strangers, every timer, local
   votes, resource results, recovered records). It must return a list of
   effects, or raise `ProtocolError` leaving `vars(machine)` untouched.
   The pairs are enumerated exhaustively; hypothesis adds random sequences.
2. Random schedules (deliver, drop, duplicate, reorder, crash at any effect,
   restart, fire timers, finish resource calls) checked against S1-S5 after
   every step, then a liveness phase: heal, and everything must converge.

   2PC gets every fault. 3PC gets its failure model (PROTOCOLS.md section 3):
   crashes and restarts but reliable links (no drop, no duplicate), and
   accurate timeouts, modelled by firing a timer only when no message is in
   flight and no resource call is running (a timer that fires while a vote or
   an abort is merely slow is a false suspicion, under which 3PC may split
   just as under a partition; `test_threepc` shows that limit).
"""

from __future__ import annotations

import contextlib
import copy
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pytest
from cluster import COORDINATOR, Cluster
from dtxn.protocols.effects import (
    Begin,
    Effect,
    Event,
    Forget,
    LocalVoteCast,
    Received,
    RecordRecovered,
    RecoveryDone,
    ResourceApplied,
    ResourceOp,
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
    Coord3State,
    Part3State,
    ThreePCCoordinator,
    ThreePCParticipant,
)
from dtxn.protocols.twopc import CoordState, PartState, TwoPCCoordinator, TwoPCParticipant
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

TX = "t1"
C = COORDINATOR
P1, P2, P3 = "p1@n2", "p2@n3", "p3@n4"
STRANGER = "mallory@n9"
TWO, THREE = Protocol.TWO_PC, Protocol.THREE_PC
Machine = TwoPCCoordinator | TwoPCParticipant | ThreePCCoordinator | ThreePCParticipant
T = TypeVar("T")

# -- the sampled events ---------------------------------------------------------------


def _messages() -> list[Message]:
    senders = (C, P1, P2, P3, STRANGER)
    found: list[Message] = []
    for protocol in (TWO, THREE):
        for parts in ((P1, P2), (P1, P2, P3), (P2, P3), ()):
            found += [Prepare(TX, C, protocol, parts, "x"), Prepare(TX, STRANGER, protocol, parts)]
    for s in senders:
        found += [VoteCast(TX, s, v) for v in Vote]
        found += [PreCommit(TX, s), PreCommitAck(TX, s), Ack(TX, s), DecisionRequest(TX, s)]
        found += [Decision(TX, s, True), Decision(TX, s, False)]
    for s in (P2, STRANGER):
        found += [StatusReply(TX, s, state) for state in PeerState]
    for s in (P1, P2, P3, STRANGER):
        found += [StateRequest(TX, s, r) for r in (0, 1, 5)]
    for s in (P2, P3, STRANGER):
        found += [StateReport(TX, s, r, state) for r in (0, 1) for state in PeerState]
    return found


def _records() -> list[Record]:
    found: list[Record] = []
    for protocol in (TWO, THREE):
        found += [
            CoordPreCommitted(TX, protocol, (P1, P2)),
            CoordCommitted(TX, protocol, (P1, P2)),
            PartPrepared(TX, protocol, C, (P1, P2, P3)),
        ]
    found += [CoordAborted(TX, "r"), CoordEnded(TX), PartPreCommitted(TX)]
    found += [PartCommitted(TX), PartAborted(TX)]
    return found


TIMERS = ("votes", "acks", "decision", "precommit-acks", "inquiry", "termination", "bogus")

EVENTS: list[Event] = [
    *(Received(m) for m in _messages()),
    *(TimerFired(name) for name in TIMERS),
    *(LocalVoteCast(v) for v in Vote),
    *(ResourceApplied(op) for op in ResourceOp),
    *(RecordRecovered(r) for r in _records()),
    RecoveryDone(),
    Begin((P1, P2), ("a", "b")),
    Begin((), ()),
    Begin((P1, P1), ("a", "b")),
    Begin((P1, P2), ("a",)),
]

# -- scripted paths to every reachable state ----------------------------------------------


@dataclass(frozen=True)
class Path:
    name: str
    make: Callable[[], Machine]
    events: tuple[Event, ...]

    def build(self) -> Machine:
        """Apply the events; one that is illegal by then raises and changes nothing."""
        machine = self.make()
        for event in self.events:
            with contextlib.suppress(ProtocolError):
                machine.handle(event)
        return machine


def rx(message: Message) -> Received:
    return Received(message)


def two_coordinator_paths() -> list[Path]:
    def make() -> Machine:
        return TwoPCCoordinator(TX, C)

    begin = Begin((P1, P2), ("a", "b"))
    yes1, yes2 = rx(VoteCast(TX, P1, Vote.YES)), rx(VoteCast(TX, P2, Vote.YES))
    committed = (begin, yes1, yes2)
    return [
        Path("init", make, ()),
        Path("waiting", make, (begin,)),
        Path("waiting-one-yes", make, (begin, yes1)),
        Path("committed", make, committed),
        Path("committed-one-ack", make, (*committed, rx(Ack(TX, P1)))),
        Path("ended", make, (*committed, rx(Ack(TX, P1)), rx(Ack(TX, P2)))),
        Path(
            "ended-read-only",
            make,
            (begin, rx(VoteCast(TX, P1, Vote.READ_ONLY)), rx(VoteCast(TX, P2, Vote.READ_ONLY))),
        ),
        Path("aborted-no", make, (begin, rx(VoteCast(TX, P1, Vote.NO)))),
        Path("aborted-timeout", make, (begin, TimerFired("votes"))),
        Path("recovering", make, (RecordRecovered(CoordCommitted(TX, TWO, (P1, P2))),)),
        Path(
            "recovered-committed",
            make,
            (RecordRecovered(CoordCommitted(TX, TWO, (P1, P2))), RecoveryDone()),
        ),
        Path("recovered-aborted", make, (RecordRecovered(CoordAborted(TX)), RecoveryDone())),
    ]


def two_participant_paths() -> list[Path]:
    def make() -> Machine:
        return TwoPCParticipant(TX, P1)

    prepare = rx(Prepare(TX, C, TWO, (P1, P2), "x"))
    prepared = (prepare, LocalVoteCast(Vote.YES))
    recovered = (RecordRecovered(PartPrepared(TX, TWO, C, (P1, P2))),)
    return [
        Path("init", make, ()),
        Path("preparing", make, (prepare,)),
        Path("prepared", make, prepared),
        Path("prepared-asking", make, (*prepared, TimerFired("decision"))),
        Path("committing", make, (*prepared, rx(Decision(TX, C, True)))),
        Path(
            "committed",
            make,
            (*prepared, rx(Decision(TX, C, True)), ResourceApplied(ResourceOp.COMMIT)),
        ),
        Path("aborting", make, (*prepared, rx(Decision(TX, C, False)))),
        Path(
            "aborted-after-yes",
            make,
            (*prepared, rx(Decision(TX, C, False)), ResourceApplied(ResourceOp.ABORT)),
        ),
        Path("aborted-no", make, (prepare, LocalVoteCast(Vote.NO))),
        Path("read-only", make, (prepare, LocalVoteCast(Vote.READ_ONLY))),
        Path("aborted-before-vote", make, (prepare, rx(Decision(TX, C, False)))),
        Path("aborted-on-inquiry", make, (prepare, rx(DecisionRequest(TX, P2)))),
        Path("recovering", make, recovered),
        Path("recovered-prepared", make, (*recovered, RecoveryDone())),
    ]


def three_coordinator_paths() -> list[Path]:
    def make() -> Machine:
        return ThreePCCoordinator(TX, C)

    begin = Begin((P1, P2), ("a", "b"))
    yes1, yes2 = rx(VoteCast(TX, P1, Vote.YES)), rx(VoteCast(TX, P2, Vote.YES))
    pre = (begin, yes1, yes2)
    acked = (*pre, rx(PreCommitAck(TX, P1)), rx(PreCommitAck(TX, P2)))
    recovering = (RecordRecovered(CoordPreCommitted(TX, THREE, (P1, P2))),)
    return [
        Path("init", make, ()),
        Path("waiting", make, (begin,)),
        Path("waiting-one-yes", make, (begin, yes1)),
        Path("precommitting", make, pre),
        Path("precommitting-one-ack", make, (*pre, rx(PreCommitAck(TX, P1)))),
        Path("committed", make, acked),
        Path("committed-by-timeout", make, (*pre, TimerFired("precommit-acks"))),
        Path("ended", make, (*acked, rx(Ack(TX, P1)), rx(Ack(TX, P2)))),
        Path("aborted-no", make, (begin, rx(VoteCast(TX, P2, Vote.NO)))),
        Path("aborted-timeout", make, (begin, TimerFired("votes"))),
        Path("adopted-abort", make, (*pre, rx(Decision(TX, P1, False)))),
        Path("adopted-commit", make, (*pre, rx(Decision(TX, P2, True)))),
        Path("recovering-mid-replay", make, recovering),
        Path("recovering", make, (*recovering, RecoveryDone())),
        Path("recovering-asking", make, (*recovering, RecoveryDone(), TimerFired("inquiry"))),
        Path(
            "recovered-committed",
            make,
            (*recovering, RecordRecovered(CoordCommitted(TX, THREE, (P1, P2))), RecoveryDone()),
        ),
    ]


def three_participant_paths() -> list[Path]:
    def make() -> Machine:
        return ThreePCParticipant(TX, P1)

    prepare = rx(Prepare(TX, C, THREE, (P1, P2, P3), "x"))
    uncertain = (prepare, LocalVoteCast(Vote.YES))
    committable = (*uncertain, rx(PreCommit(TX, C)))
    leading = (*uncertain, TimerFired("decision"))  # round 0: P1 is the backup
    tr4 = (
        *leading,
        rx(StateReport(TX, P2, 0, PeerState.COMMITTABLE)),
        rx(StateReport(TX, P3, 0, PeerState.UNCERTAIN)),
    )
    recovered = (RecordRecovered(PartPrepared(TX, THREE, C, (P1, P2, P3))),)
    return [
        Path("init", make, ()),
        Path("preparing", make, (prepare,)),
        Path("uncertain", make, uncertain),
        Path("committable", make, committable),
        Path("committing", make, (*committable, rx(Decision(TX, C, True)))),
        Path(
            "committed",
            make,
            (*committable, rx(Decision(TX, C, True)), ResourceApplied(ResourceOp.COMMIT)),
        ),
        Path("aborting", make, (*uncertain, rx(Decision(TX, C, False)))),
        Path(
            "aborted",
            make,
            (*uncertain, rx(Decision(TX, C, False)), ResourceApplied(ResourceOp.ABORT)),
        ),
        Path("aborted-no", make, (prepare, LocalVoteCast(Vote.NO))),
        Path("aborted-before-vote", make, (prepare, rx(Decision(TX, C, False)))),
        Path("aborted-on-state-request", make, (prepare, rx(StateRequest(TX, P2, 0)))),
        Path("following", make, (*uncertain, rx(StateRequest(TX, P2, 1)))),
        Path("leading", make, leading),
        Path(
            "leading-one-report", make, (*leading, rx(StateReport(TX, P2, 0, PeerState.UNCERTAIN)))
        ),
        Path("leading-tr4", make, tr4),
        Path("backup-committing", make, (*tr4, rx(PreCommitAck(TX, P3)))),
        Path(
            "backup-aborting",
            make,
            (
                *leading,
                rx(StateReport(TX, P2, 0, PeerState.UNCERTAIN)),
                rx(StateReport(TX, P3, 0, PeerState.UNCERTAIN)),
            ),
        ),
        # A PREPARE that does not list this participant is refused; if it were
        # taken, the participant would vote and later elect from a wrong list.
        Path(
            "prepare-unlisted", make, (rx(Prepare(TX, C, THREE, (P2, P3))), LocalVoteCast(Vote.YES))
        ),
        Path("prepare-empty", make, (rx(Prepare(TX, C, THREE, ())), LocalVoteCast(Vote.YES))),
        Path("recovering", make, recovered),
        Path("recovered-uncertain", make, (*recovered, RecoveryDone())),
        Path(
            "recovered-committable",
            make,
            (*recovered, RecordRecovered(PartPreCommitted(TX)), RecoveryDone()),
        ),
        Path("recovered-leading", make, (*recovered, RecoveryDone(), TimerFired("decision"))),
    ]


PATHS: dict[str, tuple[list[Path], type[enum.Enum]]] = {
    "2pc-coordinator": (two_coordinator_paths(), CoordState),
    "2pc-participant": (two_participant_paths(), PartState),
    "3pc-coordinator": (three_coordinator_paths(), Coord3State),
    "3pc-participant": (three_participant_paths(), Part3State),
}


def check_step(machine: Machine, event: Event, where: str) -> None:
    """The contract of `handle`: effects, or ProtocolError with nothing changed."""
    before = copy.deepcopy(vars(machine))
    try:
        effects = machine.handle(event)
    except ProtocolError as error:
        assert vars(machine) == before, f"{where}: {event} changed state, then raised {error}"
        assert TX in str(error), f"{where}: error does not name the transaction: {error}"
        return
    assert isinstance(effects, list), f"{where}: {event} returned {effects!r}"
    assert all(isinstance(e, Effect) for e in effects), f"{where}: {event} -> {effects}"
    forgets = [i for i, e in enumerate(effects) if isinstance(e, Forget)]
    assert forgets in ([], [len(effects) - 1]), f"{where}: effects after Forget: {effects}"


@pytest.mark.parametrize("kind", list(PATHS))
def test_the_paths_reach_every_state(kind: str) -> None:
    paths, states = PATHS[kind]
    reached = {path.build().state for path in paths}
    assert reached == set(states), f"unreached: {set(states) - reached}"


@pytest.mark.parametrize("kind", list(PATHS))
def test_every_state_event_pair_returns_effects_or_raises_protocol_error_unchanged(
    kind: str,
) -> None:
    paths, _ = PATHS[kind]
    for path in paths:
        for event in EVENTS:
            check_step(path.build(), event, f"{kind} {path.name}")


ALL_PATHS = [(kind, path) for kind, (paths, _) in PATHS.items() for path in paths]


@settings(max_examples=1000, deadline=None)
@given(
    start=st.sampled_from(ALL_PATHS),
    events=st.lists(st.sampled_from(EVENTS), min_size=1, max_size=10),
)
def test_random_event_sequences_keep_the_handle_contract(
    start: tuple[str, Path], events: list[Event]
) -> None:
    kind, path = start
    machine = path.build()
    for i, event in enumerate(events):
        check_step(machine, event, f"{kind} {path.name} +{i}")


# -- random schedules over a cluster -------------------------------------------------------

KEEPS = ("forced", "flushed", "all")
ACTIONS = ("deliver", "drop", "duplicate", "complete", "fire", "crash", "arm_crash", "restart")
LIVENESS_STEPS = 400


def countdown(k: int) -> Callable[[Effect], bool]:
    """A crash point: true at the k-th effect it is shown."""
    left = [k]

    def hit(_: Effect) -> bool:
        left[0] -= 1
        return left[0] == 0

    return hit


def pick(data: st.DataObject, items: Sequence[T]) -> T:
    return data.draw(st.sampled_from(items))


def run_schedule(data: st.DataObject, protocol: Protocol, max_steps: int) -> Cluster:
    three = protocol is THREE
    n = data.draw(st.integers(2, 3), label="participants")
    txids = [f"t{i}" for i in range(1, data.draw(st.integers(1, 2), label="transactions") + 1)]
    cluster = Cluster(
        protocol,
        n,
        cooperative=data.draw(st.booleans(), label="cooperative"),
        auto_resources=False,
    )
    for txid in txids:
        for p in cluster.participants:
            vote = data.draw(st.sampled_from([Vote.YES] * 4 + [Vote.NO, Vote.READ_ONLY]))
            cluster.script(p, vote, txid)
    # Swarm testing: each run draws its own mix of actions.
    weights = data.draw(
        st.fixed_dictionaries({a: st.integers(0, 4) for a in ACTIONS}), label="weights"
    )
    if three:
        weights["drop"] = weights["duplicate"] = 0
    for txid in txids:
        cluster.begin(txid)
    for _ in range(data.draw(st.integers(0, max_steps), label="steps")):
        timers = [(pid, t, name) for pid in cluster.alive for t, name in cluster.timers(pid)]
        dead = [pid for pid, proc in cluster.processes.items() if not proc.alive]
        enabled = {
            "deliver": bool(cluster.network),
            "drop": bool(cluster.network),
            "duplicate": bool(cluster.network),
            "complete": bool(cluster.work),
            "fire": bool(timers) and (not three or (cluster.quiet and not cluster.work)),
            "crash": bool(cluster.alive),
            "arm_crash": bool(cluster.alive),
            "restart": bool(dead),
        }
        choices = [a for a in ACTIONS if enabled[a] for _ in range(weights[a])]
        if not choices:
            break
        action = pick(data, choices)
        if action == "deliver":
            cluster.deliver_envelope(pick(data, cluster.network))
        elif action == "drop":
            cluster.drop_envelope(pick(data, cluster.network))
        elif action == "duplicate":
            cluster.duplicate_envelope(pick(data, cluster.network))
        elif action == "complete":
            cluster.complete_work(pick(data, cluster.work))
        elif action == "fire":
            pid, txid, name = pick(data, timers)
            cluster.fire(pid, name, txid)
        elif action == "crash":
            cluster.crash(pick(data, cluster.alive), pick(data, KEEPS))
        elif action == "arm_crash":
            cluster.arm_crash(
                pick(data, cluster.alive),
                after=countdown(data.draw(st.integers(1, 5))),
                keep=pick(data, KEEPS),
            )
        elif action == "restart":
            cluster.restart(pick(data, dead))
    return cluster


def heal_and_converge(cluster: Cluster) -> None:
    """Liveness: restart everyone, stop injecting faults, then deliver everything
    and fire timers in deadline order until no transaction is left."""
    for pid, proc in cluster.processes.items():
        proc.crash_before = proc.crash_after = None
        if not proc.alive:
            cluster.restart(pid)
    for _ in range(LIVENESS_STEPS):
        cluster.settle()
        if cluster.converged() or not cluster.fire_next():
            break  # done, or stuck for good (check_converged says where)
    cluster.check_converged()


SCHEDULES = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SCHEDULES
@given(st.data())
def test_2pc_keeps_s1_to_s5_under_random_faults_and_converges_once_healed(
    data: st.DataObject,
) -> None:
    cluster = run_schedule(data, TWO, max_steps=100)
    note("\n".join(cluster.trace))
    heal_and_converge(cluster)


@SCHEDULES
@given(st.data())
def test_3pc_keeps_s1_to_s5_under_crashes_with_reliable_links_and_accurate_timeouts(
    data: st.DataObject,
) -> None:
    cluster = run_schedule(data, THREE, max_steps=100)
    note("\n".join(cluster.trace))
    heal_and_converge(cluster)
