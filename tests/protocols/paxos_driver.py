"""A pure, deterministic, in-memory driver for the Paxos Commit machines (no asyncio).

N participants, 2F+1 acceptors and one or two leaders exchange messages
through a list the test reorders, drops and duplicates at will; any process
may crash (it keeps only its forced records; lazy ones, timers, resource
calls in flight and in-memory state are lost) and restart, rebuilt from its
forced records through `RecordRecovered` / `RecoveryDone`. A crash can be
armed to strike in the middle of a `handle`'s effects. Invariants are
checked as effects happen: agreement (no two outcomes anywhere), validity
(commit only if every participant voted yes), no protocol violation, and two
of Paxos's own safety rules, checked where they are broken rather than where
their (rare, many-step) consequences would show: an acceptor answers only
from state it has forced, and each ballot of an instance has one proposer
and one value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dtxn.protocols.effects import (
    Begin,
    CancelTimer,
    Decide,
    Effect,
    Event,
    ForceLog,
    Ignored,
    InvokeResource,
    LocalVoteCast,
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
from dtxn.protocols.messages import Message, Vote
from dtxn.protocols.paxos import (
    LeaderState,
    PartState,
    PaxosAcceptor,
    PaxosLeader,
    PaxosParticipant,
    TakeOver,
)
from dtxn.protocols.paxos_messages import Ballot, InstanceValue, Phase1a, Phase1b, Phase2a, Phase2b
from dtxn.protocols.paxos_records import PaxosAcceptorState
from dtxn.protocols.records import Record

TX = "t1"
Machine = PaxosParticipant | PaxosAcceptor | PaxosLeader


class Violated(AssertionError):
    """An invariant broke."""


@dataclass(frozen=True)
class Impl:
    """Which classes play each role: the real ones, or a planted bug."""

    participant: Callable[[str, str], PaxosParticipant] = PaxosParticipant
    acceptor: Callable[[str, str], PaxosAcceptor] = PaxosAcceptor
    leader: type[PaxosLeader] = PaxosLeader


@dataclass
class Proc:
    pid: str
    role: str
    machine: Machine
    alive: bool = True
    forced: list[Record] = field(default_factory=list)
    crash_in: int | None = None  # crash before the k-th effect from now


@dataclass
class Stats:
    sends: dict[str, int] = field(default_factory=dict)
    forces: int = 0

    @property
    def messages(self) -> int:
        return sum(self.sends.values())


class PaxosCluster:
    def __init__(
        self,
        n: int,
        f: int,
        votes: dict[str, Vote] | None = None,
        *,
        leaders: int = 1,
        faster: bool = False,
        impl: Impl | None = None,
    ) -> None:
        self.impl = impl or Impl()
        self.participants = tuple(f"p{i}" for i in range(1, n + 1))
        self.acceptors = tuple(f"a{i}" for i in range(1, 2 * f + 2))
        self.leaders = tuple(f"l{i}" for i in range(1, leaders + 1))
        self.faster = faster
        self.votes = votes or dict.fromkeys(self.participants, Vote.YES)
        self.procs: dict[str, Proc] = {}
        for p in self.participants:
            self.procs[p] = Proc(p, "participant", self._fresh("participant", p))
        for a in self.acceptors:
            self.procs[a] = Proc(a, "acceptor", self._fresh("acceptor", a))
        for leader in self.leaders:
            self.procs[leader] = Proc(leader, "leader", self._fresh("leader", leader))
        self.network: list[tuple[str, str, Message]] = []
        self.timers: list[tuple[str, str]] = []
        self.work: list[tuple[str, ResourceOp]] = []
        self.outcomes: list[tuple[str, Outcome]] = []
        self.stats = Stats()
        self.trace: list[str] = []
        self.proposers: dict[tuple[str, Ballot], str] = {}  # phase 1a/2a sender per ballot
        self.proposals: dict[tuple[str, Ballot], InstanceValue] = {}

    def _fresh(self, role: str, pid: str) -> Machine:
        if role == "participant":
            return self.impl.participant(TX, pid)
        if role == "acceptor":
            return self.impl.acceptor(TX, pid)
        return self.impl.leader(TX, pid, self.acceptors, backups=self.leaders, faster=self.faster)

    # -- running machines ------------------------------------------------------------

    def run(self, pid: str, event: Event) -> None:
        proc = self.procs[pid]
        self.trace.append(f"{pid} <- {event}")
        effects = proc.machine.handle(event)
        for effect in effects:
            if proc.crash_in is not None:
                proc.crash_in -= 1
                if proc.crash_in <= 0:
                    self.trace.append(f"{pid} crashes before {effect}")
                    self.crash(pid)
                    return
            self._execute(proc, effect)

    def _execute(self, proc: Proc, effect: Effect) -> None:
        pid = proc.pid
        if isinstance(effect, Send):
            self._check_send(proc, effect.message)
            self.network.append((pid, effect.to, effect.message))
            kind = type(effect.message).__name__
            self.stats.sends[kind] = self.stats.sends.get(kind, 0) + 1
        elif isinstance(effect, ForceLog):
            proc.forced.append(effect.record)
            self.stats.forces += 1
        elif isinstance(effect, SetTimer):
            if (pid, effect.name) not in self.timers:
                self.timers.append((pid, effect.name))
        elif isinstance(effect, CancelTimer):
            if (pid, effect.name) in self.timers:
                self.timers.remove((pid, effect.name))
        elif isinstance(effect, Decide):
            self._outcome(pid, effect.outcome)
        elif isinstance(effect, InvokeResource):
            self.work.append((pid, effect.op))
            if effect.op is not ResourceOp.PREPARE:
                commit = effect.op is ResourceOp.COMMIT
                self._outcome(pid, Outcome.COMMITTED if commit else Outcome.ABORTED)
        elif isinstance(effect, Ignored) and effect.violation:
            raise Violated(f"{pid}: protocol violation: {effect.reason}")

    def _check_send(self, proc: Proc, message: Message) -> None:
        if isinstance(message, (Phase1a, Phase2a)):
            key = (message.instance, message.ballot)
            first = self.proposers.setdefault(key, proc.pid)
            if first != proc.pid:
                raise Violated(f"ballot {message.ballot} used by {first} and {proc.pid}")
        if isinstance(message, Phase2a):
            key = (message.instance, message.ballot)
            value = self.proposals.setdefault(key, message.value)
            if value is not message.value:
                raise Violated(f"two values proposed for {key}: {value} and {message.value}")
        if proc.role == "acceptor" and isinstance(message, (Phase1b, Phase2b)):
            held = [
                r
                for r in proc.forced
                if isinstance(r, PaxosAcceptorState) and r.instance == message.instance
            ]
            last = held[-1] if held else None
            if isinstance(message, Phase1b):
                backed = (
                    last is not None
                    and last.promised >= message.ballot
                    and (last.accepted_ballot, last.accepted_value)
                    == (message.accepted_ballot, message.accepted_value)
                )
            else:
                backed = (
                    last is not None
                    and last.accepted_ballot == message.ballot
                    and last.accepted_value is message.value
                )
            if not backed:
                raise Violated(f"{proc.pid} answers {message} from state it has not forced")

    def _outcome(self, pid: str, outcome: Outcome) -> None:
        self.trace.append(f"{pid} decides {outcome.value}")
        self.outcomes.append((pid, outcome))
        if len({o for _, o in self.outcomes}) > 1:
            raise Violated(f"agreement: two outcomes {self.outcomes}")
        if outcome is Outcome.COMMITTED and any(v is not Vote.YES for v in self.votes.values()):
            raise Violated(f"validity: {pid} commits although votes were {self.votes}")

    # -- actions -----------------------------------------------------------------------

    def begin(self, payloads: tuple[Any, ...] | None = None) -> None:
        payloads = payloads or tuple(f"w{p}" for p in self.participants)
        self.run(self.leaders[0], Begin(self.participants, payloads))

    def deliver(self, i: int) -> None:
        _sender, to, message = self.network.pop(i)
        if self.procs[to].alive:
            self.run(to, Received(message))
        else:
            self.trace.append(f"{to} is down: lost {message}")

    def drop(self, i: int) -> None:
        self.trace.append(f"dropped {self.network.pop(i)}")

    def duplicate(self, i: int) -> None:
        self.network.append(self.network[i])

    def complete(self, i: int) -> None:
        pid, op = self.work.pop(i)
        if op is ResourceOp.PREPARE:
            self.run(pid, LocalVoteCast(self.votes[pid]))
        else:
            self.run(pid, ResourceApplied(op))

    def fire(self, i: int) -> None:
        pid, name = self.timers.pop(i)
        self.run(pid, TimerFired(name))

    def crash(self, pid: str) -> None:
        proc = self.procs[pid]
        proc.alive = False
        proc.crash_in = None
        self.timers = [t for t in self.timers if t[0] != pid]
        self.work = [w for w in self.work if w[0] != pid]
        self.trace.append(f"{pid} crashed")

    def arm_crash(self, pid: str, after: int) -> None:
        self.procs[pid].crash_in = after

    def restart(self, pid: str) -> None:
        proc = self.procs[pid]
        proc.machine = self._fresh(proc.role, pid)
        proc.alive = True
        self.trace.append(f"{pid} restarts with {len(proc.forced)} forced records")
        if proc.forced:
            for record in proc.forced:
                proc.machine.handle(RecordRecovered(record))
            self.run(pid, RecoveryDone())

    def take_over(self, pid: str) -> bool:
        """A leader with nothing to go on is told to finish the transaction."""
        proc = self.procs[pid]
        machine = proc.machine
        if not proc.alive or not isinstance(machine, PaxosLeader):
            return False
        if machine.state is not LeaderState.INIT:
            return False
        self.run(pid, TakeOver(self.participants))
        return True

    # -- liveness --------------------------------------------------------------------

    @property
    def alive(self) -> list[str]:
        return [pid for pid, proc in self.procs.items() if proc.alive]

    @property
    def dead(self) -> list[str]:
        return [pid for pid, proc in self.procs.items() if not proc.alive]

    def settle(self, choose: Callable[[int], int] | None = None) -> None:
        """Deliver every message and finish every resource call, FIFO or in `choose`'s order.

        `choose(k)` picks one of k pending steps (messages, then resource calls).
        """
        while self.network or self.work:
            i = choose(len(self.network) + len(self.work)) if choose else 0
            if i < len(self.network):
                self.deliver(i)
            else:
                self.complete(i - len(self.network))

    def finished(self, leader_id: str | None = None) -> bool:
        leader = self.procs[leader_id or self.leaders[0]].machine
        assert isinstance(leader, PaxosLeader)
        if leader.state not in (LeaderState.COMMITTED, LeaderState.ABORTED):
            return False
        for p in self.participants:
            part = self.procs[p].machine
            assert isinstance(part, PaxosParticipant)
            if part.state is PartState.INIT and leader.state is LeaderState.ABORTED:
                continue  # never prepared: nothing to apply
            if part.state not in (PartState.COMMITTED, PartState.ABORTED) or part.vote_pending:
                return False
        return True

    def heal_and_finish(
        self, survivor: int = 0, choose: Callable[[int], int] | None = None, max_rounds: int = 200
    ) -> None:
        """Restart everyone, stop faults, keep one leader, and run to the end.

        Messages are still delivered in any order `choose` picks, but none is
        lost any more, and timers fire only when nothing else is pending.
        """
        for proc in self.procs.values():
            proc.crash_in = None
        for pid in self.dead:
            self.restart(pid)
        leader = self.leaders[survivor]
        for other in self.leaders:
            if other != leader:
                self.crash(other)  # one leader runs
        self.take_over(leader)
        for _ in range(max_rounds):
            self.settle(choose)
            if self.finished(leader):
                return
            if not self.timers:
                break
            self.fire(0)
        states = {pid: proc.machine.state.value for pid, proc in self.procs.items()}
        raise Violated(f"liveness: not finished after healing: {states}")
