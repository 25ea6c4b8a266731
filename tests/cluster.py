"""A synchronous, in-memory cluster for the atomic-commit machines (a test helper).

One coordinator process and N participant processes host one machine per
transaction each, wired the way the runtime wires them, with no event loop:

- effects run in order, one `handle` call (plus its effects) is one *step*;
- `Send` puts an `Envelope` on the network; the test delivers, drops,
  duplicates or reorders envelopes (delivering any in-flight one is a reorder);
- timers fire only when the test fires them (`fire`, or `fire_next` for the
  earliest deadline on a virtual clock), and only if set and not cancelled;
- `InvokeResource` queues `Work`; it completes at once (`auto_resources`)
  unless the participant is held, with the vote scripted per participant;
- a crash (`crash`, or `arm_crash` at a chosen effect) loses machines,
  timers, finished-outcome memory, queued work and unforced log records
  (optionally keeping the flushed prefix, or all); `restart` replays the
  surviving records of each transaction (`RecordRecovered` per record, then
  `RecoveryDone`) into fresh machines, choosing the machine class the way
  `dtxn.runtime.hosting.recovery` does;
- a message for a transaction with no machine goes to `answer_for_finished`
  if the process decided it and forgot, to a new participant machine if it
  is a Prepare, and otherwise to `answer_for_unknown_coordinator` /
  `answer_for_unknown_participant`.

After every effect and step the cluster checks the invariants of
PROTOCOLS.md section 1 from the test's omniscient view (the history below
survives crashes, unlike the processes' own memory):

S1 no process decided committed while another decided aborted;
S2 commit (and, in 3PC, a pre-commit record) only if every participant voted
   yes or read-only and none voted no;
S3 a process never decides two outcomes for one transaction, across crashes;
S4 log before send: a coordinator's COMMIT follows its forced CoordCommitted
   (or a backup's forced commit it adopted); a yes vote follows a forced
   PartPrepared; PRE-COMMIT and its ack follow a forced pre-commit record; a
   participant relays COMMIT only once a commit is forced somewhere (or it is
   the 3PC backup that decided it);
S5 a participant that forced PREPARED aborts only after a Decision(abort)
   reached it or it ran the termination protocol itself.

With `strict=True` (default) a violation raises `InvariantViolation` with the
recent trace; otherwise it is collected in `cluster.violations`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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
    SetTimer,
    TimerFired,
)
from dtxn.protocols.messages import (
    Decision,
    Message,
    PreCommit,
    PreCommitAck,
    Prepare,
    Protocol,
    StateRequest,
    Timeouts,
    Vote,
    VoteCast,
)
from dtxn.protocols.records import (
    CoordCommitted,
    CoordPreCommitted,
    PartCommitted,
    PartPreCommitted,
    PartPrepared,
    Record,
)
from dtxn.protocols.threepc import Part3State, ThreePCCoordinator, ThreePCParticipant
from dtxn.protocols.twopc import (
    TwoPCCoordinator,
    TwoPCParticipant,
    answer_for_finished,
    answer_for_unknown_coordinator,
    answer_for_unknown_participant,
)

Machine = TwoPCCoordinator | TwoPCParticipant | ThreePCCoordinator | ThreePCParticipant

COORDINATOR = "coord@n1"
MAX_STEPS = 10_000
TRACE_SHOWN = 40


class InvariantViolation(AssertionError):
    """Raised when a step breaks one of S1-S5 and the cluster is strict."""


@dataclass(frozen=True)
class Envelope:
    seq: int
    src: str
    dst: str
    message: Message

    def __str__(self) -> str:
        return f"#{self.seq} {self.src}->{self.dst} {short(self.message)}"


def short(message: Message) -> str:
    """A message without the fields that never matter in a trace."""
    skip = ("txid", "sender", "payload", "timeouts", "participants", "cooperative")
    fields = [
        f"{name}={getattr(message, name)!r}"
        for name in message.__struct_fields__
        if name not in skip
    ]
    return f"{type(message).__name__}({message.txid}{', ' if fields else ''}{', '.join(fields)})"


@dataclass(frozen=True)
class Work:
    """A resource call in progress at a participant."""

    pid: str
    txid: str
    op: ResourceOp
    payload: Any


@dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str


@dataclass(frozen=True)
class Compaction:
    """A `Compact` carried out, as the runtime logs it: a lazy delete, after the
    tombstone, of the transaction's earlier records. Applied to what a crash
    keeps (so it never outlives the record it keeps); `records()` skips it."""

    txid: str


@dataclass
class Process:
    pid: str
    is_coordinator: bool
    alive: bool = True
    # What the process itself holds; all of it is lost on a crash except the
    # forced entries of `log`.
    machines: dict[str, Machine] = field(default_factory=dict)
    finished: dict[str, Outcome] = field(default_factory=dict)
    decided: dict[str, Outcome] = field(default_factory=dict)  # Decide seen, Forget not yet
    timers: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)  # deadline, seq
    log: list[tuple[Record | Compaction, bool]] = field(default_factory=list)
    crash_before: Callable[[Effect], bool] | None = None
    crash_after: Callable[[Effect], bool] | None = None
    crash_keep: str = "forced"
    # The test's history of this process; survives crashes.
    decisions: list[tuple[str, Outcome, str]] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    ignored: list[tuple[str, Ignored]] = field(default_factory=list)
    crashes: int = 0

    def records(self, txid: str | None = None, *, forced: bool | None = None) -> list[Record]:
        return [
            r
            for r, f in self.log
            if not isinstance(r, Compaction)
            and (txid is None or r.txid == txid)
            and (forced is None or f is forced)
        ]

    def has_forced(self, txid: str, kind: type[Record]) -> bool:
        return any(isinstance(r, kind) and f and r.txid == txid for r, f in self.log)


class _Crashed(Exception):
    """Unwinds the effects of a step when an armed crash point is reached."""


def _compacted(
    log: list[tuple[Record | Compaction, bool]],
) -> list[tuple[Record | Compaction, bool]]:
    """Carry out the compactions a crash kept: each leaves its transaction's last
    record before it (the tombstone) and drops the earlier ones."""
    out: list[tuple[Record | Compaction, bool]] = []
    for entry, forced in log:
        if not isinstance(entry, Compaction):
            out.append((entry, forced))
            continue
        mine = [i for i, (r, _) in enumerate(out) if r.txid == entry.txid]
        drop = set(mine[:-1])
        out = [e for i, e in enumerate(out) if i not in drop]
    return out


def recovered_machine(is_coordinator: bool, txid: str, me: str, records: list[Record]) -> Machine:
    """The machine class the runtime rebuilds a transaction into: the first record
    that names a protocol decides, else 2PC (mirrors `dtxn.runtime.hosting.recovery.rebuild`)."""
    protocol = Protocol.TWO_PC
    for record in records:
        found = getattr(record, "protocol", None)
        if isinstance(found, Protocol):
            protocol = found
            break
    if is_coordinator:
        if protocol is Protocol.TWO_PC:
            return TwoPCCoordinator(txid, me)
        return ThreePCCoordinator(txid, me)
    if protocol is Protocol.TWO_PC:
        return TwoPCParticipant(txid, me)
    return ThreePCParticipant(txid, me)


class Cluster:
    """One coordinator and N participants, driven step by step by a test."""

    def __init__(
        self,
        protocol: Protocol = Protocol.TWO_PC,
        participants: int | Iterable[str] = 2,
        *,
        timeouts: Timeouts | None = None,
        cooperative: bool = True,
        strict: bool = True,
        auto_resources: bool = True,
    ) -> None:
        self.protocol = protocol
        self.coordinator = COORDINATOR
        if isinstance(participants, int):
            self.participants = tuple(f"p{i}@n{i + 1}" for i in range(1, participants + 1))
        else:
            self.participants = tuple(participants)
        self.timeouts = timeouts or Timeouts()
        self.cooperative = cooperative
        self.strict = strict
        self.auto_resources = auto_resources
        self.processes: dict[str, Process] = {self.coordinator: Process(self.coordinator, True)}
        for pid in self.participants:
            self.processes[pid] = Process(pid, False)
        self.network: list[Envelope] = []
        self.work: list[Work] = []
        self.held: list[str] = []
        self.dropped: list[Envelope] = []
        self.violations: list[Violation] = []
        self.trace: list[str] = []
        self.txns: dict[str, tuple[str, ...]] = {}
        self._votes: dict[tuple[str, str | None], Vote] = {}
        self._votes_sent: dict[str, dict[str, list[Vote]]] = {}
        self._abort_told: set[tuple[str, str]] = set()
        self._seq = 0
        self._pumping = False
        # Virtual time: it moves only when `fire_next` fires the earliest timer.
        self.now_s = 0.0

    # -- scripting ---------------------------------------------------------------

    def script(self, pid: str, vote: Vote, txid: str | None = None) -> None:
        """What `pid`'s resource answers to prepare (for `txid`, or for every transaction)."""
        self._votes[(pid, txid)] = vote

    def hold(self, *pids: str) -> None:
        """Resource calls at these participants wait for `complete` (a slow resource)."""
        self.held.extend(p for p in pids if p not in self.held)

    def release(self, *pids: str) -> None:
        self.held = [p for p in self.held if p not in pids]
        self._pump()

    def begin(
        self,
        txid: str = "t1",
        participants: Iterable[str] | None = None,
        payloads: Iterable[Any] | None = None,
    ) -> None:
        parts = tuple(participants) if participants is not None else self.participants
        pays = tuple(payloads) if payloads is not None else tuple(f"op-{p}" for p in parts)
        coord = self.processes[self.coordinator]
        machine: Machine
        if self.protocol is Protocol.TWO_PC:
            machine = TwoPCCoordinator(
                txid, self.coordinator, self.timeouts, cooperative=self.cooperative
            )
        else:
            machine = ThreePCCoordinator(txid, self.coordinator, self.timeouts)
        coord.machines[txid] = machine
        self.txns[txid] = parts
        self._votes_sent[txid] = {}
        self._step(coord, txid, Begin(parts, pays), "begin")
        self._pump()

    # -- the network -------------------------------------------------------------

    def in_flight(
        self,
        kind: type[Message] | None = None,
        *,
        src: str | None = None,
        dst: str | None = None,
        txid: str | None = None,
    ) -> list[Envelope]:
        return [
            e
            for e in self.network
            if (kind is None or isinstance(e.message, kind))
            and (src is None or e.src == src)
            and (dst is None or e.dst == dst)
            and (txid is None or e.message.txid == txid)
        ]

    def _one(self, kind: type[Message] | None, **where: str | None) -> Envelope:
        found = self.in_flight(kind, **where)
        if not found:
            name = kind.__name__ if kind else "message"
            raise LookupError(f"no {name} in flight matching {where}: {self.network}")
        return found[0]

    def deliver(
        self,
        kind: type[Message] | None = None,
        *,
        src: str | None = None,
        dst: str | None = None,
        txid: str | None = None,
    ) -> Envelope:
        """Deliver the oldest in-flight message that matches."""
        envelope = self._one(kind, src=src, dst=dst, txid=txid)
        self.deliver_envelope(envelope)
        return envelope

    def drop(
        self,
        kind: type[Message] | None = None,
        *,
        src: str | None = None,
        dst: str | None = None,
        txid: str | None = None,
    ) -> Envelope:
        envelope = self._one(kind, src=src, dst=dst, txid=txid)
        self.drop_envelope(envelope)
        return envelope

    def drop_all(
        self, kind: type[Message] | None = None, *, src: str | None = None, dst: str | None = None
    ) -> None:
        for envelope in self.in_flight(kind, src=src, dst=dst):
            self.drop_envelope(envelope)

    def duplicate(
        self,
        kind: type[Message] | None = None,
        *,
        src: str | None = None,
        dst: str | None = None,
        txid: str | None = None,
    ) -> Envelope:
        return self.duplicate_envelope(self._one(kind, src=src, dst=dst, txid=txid))

    def inject(self, src: str, dst: str, message: Message) -> Envelope:
        """Put a message on the network as if `src` had sent it (late, forged or replayed)."""
        envelope = Envelope(self._next_seq(), src, dst, message)
        self.network.append(envelope)
        self.trace.append(f"inject {envelope}")
        return envelope

    def drop_envelope(self, envelope: Envelope) -> None:
        self.network.remove(envelope)
        self.dropped.append(envelope)
        self.trace.append(f"drop {envelope}")

    def duplicate_envelope(self, envelope: Envelope) -> Envelope:
        copy = Envelope(self._next_seq(), envelope.src, envelope.dst, envelope.message)
        self.network.append(copy)
        self.trace.append(f"duplicate {envelope} as #{copy.seq}")
        return copy

    def deliver_envelope(self, envelope: Envelope) -> None:
        self.network.remove(envelope)
        proc = self.processes[envelope.dst]
        if not proc.alive:
            self.dropped.append(envelope)
            self.trace.append(f"lost (destination down) {envelope}")
            return
        message = envelope.message
        txid = message.txid
        self.trace.append(f"deliver {envelope}")
        proc.received.append(message)
        if isinstance(message, Decision) and not message.commit:
            self._abort_told.add((proc.pid, txid))
        if txid in proc.machines:
            self._step(proc, txid, Received(message))
        elif txid in proc.finished:
            effects = answer_for_finished(txid, proc.pid, proc.finished[txid], message)
            self._run(proc, txid, effects)
        elif not proc.is_coordinator and isinstance(message, Prepare):
            machine: Machine
            if message.protocol is Protocol.TWO_PC:
                machine = TwoPCParticipant(txid, proc.pid)
            else:
                machine = ThreePCParticipant(txid, proc.pid)
            proc.machines[txid] = machine
            self._step(proc, txid, Received(message))
        elif proc.is_coordinator:
            self._run(proc, txid, answer_for_unknown_coordinator(txid, proc.pid, message))
        else:
            self._run(proc, txid, answer_for_unknown_participant(txid, proc.pid, message))
        self._pump()

    def deliver_until(self, kind: type[Message], max_steps: int = MAX_STEPS) -> None:
        """Deliver oldest first until a `kind` message is in flight (not delivered)."""
        for _ in range(max_steps):
            if self.in_flight(kind):
                return
            if self._runnable_work():
                self.complete()
            elif self.network:
                self.deliver_envelope(self.network[0])
            else:
                raise LookupError(f"quiet before any {kind.__name__} was sent")
        raise AssertionError(f"no {kind.__name__} after {max_steps} steps")

    def settle(self, max_steps: int = MAX_STEPS) -> None:
        """Complete unheld resource calls and deliver messages, oldest first, until quiet."""
        for _ in range(max_steps):
            if self._runnable_work():
                self.complete()
            elif self.network:
                self.deliver_envelope(self.network[0])
            else:
                return
        raise AssertionError(f"no quiescence after {max_steps} steps (a message storm?)")

    @property
    def quiet(self) -> bool:
        return not self.network

    # -- timers ------------------------------------------------------------------

    def timers(self, pid: str) -> list[tuple[str, str]]:
        """(txid, name) of every timer set and not cancelled at `pid`."""
        return list(self.processes[pid].timers)

    def fire_next(self) -> bool:
        """Fire the timer with the earliest deadline anywhere (as a clock would);
        False if none is set."""
        pending = [
            (deadline, seq, pid, key)
            for pid, proc in self.processes.items()
            if proc.alive
            for key, (deadline, seq) in proc.timers.items()
        ]
        if not pending:
            return False
        _, _, pid, (txid, name) = min(pending)
        self.fire(pid, name, txid)
        return True

    def has_timer(self, pid: str, name: str, txid: str | None = None) -> bool:
        return any(n == name and (txid is None or t == txid) for t, n in self.processes[pid].timers)

    def fire(self, pid: str, name: str, txid: str | None = None) -> None:
        proc = self.processes[pid]
        keys = [k for k in proc.timers if k[1] == name and (txid is None or k[0] == txid)]
        if len(keys) != 1:
            raise LookupError(f"{pid} has {len(keys)} timers {name!r} set (txid={txid})")
        (key,) = keys
        deadline_s, _ = proc.timers.pop(key)
        self.now_s = max(self.now_s, deadline_s)
        self.trace.append(f"fire {pid} {key[1]} ({key[0]}) at {self.now_s:g}s")
        self._step(proc, key[0], TimerFired(name))
        self._pump()

    # -- resources ---------------------------------------------------------------

    def pending_work(self, pid: str | None = None) -> list[Work]:
        return [w for w in self.work if pid is None or w.pid == pid]

    def _runnable_work(self) -> list[Work]:
        return [w for w in self.work if w.pid not in self.held]

    def complete(self, pid: str | None = None, txid: str | None = None) -> Work:
        """Finish the oldest resource call (at `pid`, of `txid`), feeding its result back."""
        candidates = [
            w
            for w in (self.work if pid is not None else self._runnable_work())
            if (pid is None or w.pid == pid) and (txid is None or w.txid == txid)
        ]
        if not candidates:
            raise LookupError(f"no resource call in progress at {pid} (txid={txid})")
        self.complete_work(candidates[0])
        return candidates[0]

    def complete_work(self, work: Work) -> None:
        self.work.remove(work)
        proc = self.processes[work.pid]
        if work.txid not in proc.machines:
            self.trace.append(f"resource result for a forgotten machine dropped: {work}")
            return
        event: Event
        if work.op is ResourceOp.PREPARE:
            vote = self._votes.get((work.pid, work.txid), self._votes.get((work.pid, None)))
            event = LocalVoteCast(vote or Vote.YES)
        else:
            event = ResourceApplied(work.op)
        self.trace.append(f"resource {work.pid} {work.op.value} ({work.txid}) -> {event}")
        self._step(proc, work.txid, event)
        self._pump()

    def _pump(self) -> None:
        if not self.auto_resources or self._pumping:
            return
        self._pumping = True
        try:
            for _ in range(MAX_STEPS):
                if not self._runnable_work():
                    return
                self.complete()
            raise AssertionError("resource calls never settle")
        finally:
            self._pumping = False

    # -- crashes -----------------------------------------------------------------

    def arm_crash(
        self,
        pid: str,
        *,
        before: Callable[[Effect], bool] | None = None,
        after: Callable[[Effect], bool] | None = None,
        keep: str = "forced",
    ) -> None:
        """Crash `pid` just before / just after it carries out the next matching effect;
        the rest of that step's effects never run. `keep` as for `crash`."""
        proc = self.processes[pid]
        proc.crash_before, proc.crash_after, proc.crash_keep = before, after, keep

    def crash(self, pid: str, keep: str = "forced") -> None:
        """Crash `pid`. Which log records survive:

        "forced"  only the forced ones (the lazy ones were all still buffered);
        "flushed" everything up to the last forced record (a WAL fsyncs a prefix);
        "all"     every record (the lazy ones happened to reach the disk).
        """
        proc = self.processes[pid]
        if not proc.alive:
            raise AssertionError(f"{pid} is already down")
        proc.alive = False
        proc.crashes += 1
        proc.machines.clear()
        proc.finished.clear()
        proc.decided.clear()
        proc.timers.clear()
        if keep == "forced":
            kept = [(r, True) for r, forced in proc.log if forced]
        elif keep == "flushed":
            last = max((i for i, (_, forced) in enumerate(proc.log) if forced), default=-1)
            kept = [(r, True) for r, _ in proc.log[: last + 1]]
        elif keep == "all":
            kept = [(r, True) for r, _ in proc.log]
        else:
            raise ValueError(f"keep must be 'forced', 'flushed' or 'all', not {keep!r}")
        proc.log = _compacted(kept)
        proc.crash_before = proc.crash_after = None
        self.work = [w for w in self.work if w.pid != pid]
        self.trace.append(f"crash {pid} (keeping {keep} records)")

    def restart(self, pid: str) -> None:
        """Bring `pid` back and replay its forced records, as the runtime's recovery does."""
        proc = self.processes[pid]
        if proc.alive:
            raise AssertionError(f"{pid} is up")
        proc.alive = True
        self.trace.append(f"restart {pid}")
        groups: dict[str, list[Record]] = {}
        for record, _ in proc.log:
            groups.setdefault(record.txid, []).append(record)
        for txid, records in groups.items():
            proc.machines[txid] = recovered_machine(proc.is_coordinator, txid, pid, records)
            for record in records:
                if not proc.alive or txid not in proc.machines:
                    break
                self._step(proc, txid, RecordRecovered(record))
        for txid in groups:
            if proc.alive and txid in proc.machines:
                self._step(proc, txid, RecoveryDone())
        self._pump()

    @property
    def alive(self) -> list[str]:
        return [pid for pid, p in self.processes.items() if p.alive]

    # -- inspection ----------------------------------------------------------------

    def machine(self, pid: str, txid: str = "t1") -> Machine:
        return self.processes[pid].machines[txid]

    def outcome(self, pid: str, txid: str = "t1") -> Outcome | None:
        """The last outcome `pid` decided for `txid`, in any incarnation."""
        found = [o for t, o, _ in self.processes[pid].decisions if t == txid]
        return found[-1] if found else None

    def outcomes(self, txid: str = "t1") -> dict[str, Outcome | None]:
        return {pid: self.outcome(pid, txid) for pid in self.processes}

    def forced(self, pid: str, txid: str | None = None) -> list[Record]:
        return self.processes[pid].records(txid, forced=True)

    def lazy(self, pid: str, txid: str | None = None) -> list[Record]:
        return self.processes[pid].records(txid, forced=False)

    def sent(self, pid: str, kind: type[Message] | None = None) -> list[Message]:
        return [m for m in self.processes[pid].sent if kind is None or isinstance(m, kind)]

    def received(self, pid: str, kind: type[Message] | None = None) -> list[Message]:
        return [m for m in self.processes[pid].received if kind is None or isinstance(m, kind)]

    def ignored(self, pid: str, *, violation: bool | None = None) -> list[Ignored]:
        return [
            i
            for _, i in self.processes[pid].ignored
            if violation is None or i.violation is violation
        ]

    def in_doubt(self, pid: str, txid: str = "t1") -> bool:
        machine = self.processes[pid].machines.get(txid)
        return isinstance(machine, TwoPCParticipant | ThreePCParticipant) and machine.in_doubt

    # -- running effects -----------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _step(self, proc: Process, txid: str, event: Event, label: str = "") -> None:
        machine = proc.machines[txid]
        effects = machine.handle(event)
        if label:
            self.trace.append(f"{label} {proc.pid} ({txid})")
        self._run(proc, txid, effects)

    def _run(self, proc: Process, txid: str, effects: list[Effect]) -> None:
        try:
            for effect in effects:
                if proc.crash_before is not None and proc.crash_before(effect):
                    raise _Crashed
                self._apply(proc, txid, effect)
                if proc.crash_after is not None and proc.crash_after(effect):
                    raise _Crashed
        except _Crashed:
            self.crash(proc.pid, proc.crash_keep)

    def _apply(self, proc: Process, txid: str, effect: Effect) -> None:
        pid = proc.pid
        match effect:
            case Send(to=to, message=message):
                self._check_send(proc, txid, message)
                proc.sent.append(message)
                if isinstance(message, VoteCast) and txid in self._votes_sent:
                    self._votes_sent[txid].setdefault(pid, []).append(message.vote)
                if isinstance(message, StateRequest):
                    self._abort_told.add((pid, txid))
                self.network.append(Envelope(self._next_seq(), pid, to, message))
            case ForceLog(record=record):
                self._check_force(proc, txid, record)
                proc.log.append((record, True))
                self.trace.append(f"force {pid} {record}")
            case Log(record=record):
                proc.log.append((record, False))
                self.trace.append(f"log {pid} {record}")
            case SetTimer(name=name, delay_s=delay_s):
                proc.timers[(txid, name)] = (self.now_s + delay_s, self._next_seq())
            case CancelTimer(name=name):
                proc.timers.pop((txid, name), None)
            case Decide(outcome=outcome, reason=reason):
                self._check_decide(proc, txid, outcome)
                proc.decisions.append((txid, outcome, reason))
                if txid in proc.machines:
                    proc.decided[txid] = outcome
                else:
                    proc.finished[txid] = outcome
                self.trace.append(f"decide {pid} {outcome.value} ({txid}) {reason}")
            case InvokeResource(op=op, payload=payload):
                self.work.append(Work(pid, txid, op, payload))
            case Compact():
                proc.log.append((Compaction(txid), False))
                self.trace.append(f"compact {pid} ({txid})")
            case Forget():
                proc.machines.pop(txid, None)
                for key in [k for k in proc.timers if k[0] == txid]:
                    del proc.timers[key]
                self.work = [w for w in self.work if (w.pid, w.txid) != (pid, txid)]
                if txid in proc.decided:
                    proc.finished[txid] = proc.decided.pop(txid)
            case Ignored():
                proc.ignored.append((txid, effect))
                self.trace.append(f"ignored {pid} ({txid}) {effect}")
            case _:
                raise AssertionError(f"unknown effect {effect!r}")

    # -- invariants ----------------------------------------------------------------

    def _violate(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(invariant, detail))
        if self.strict:
            shown = "\n  ".join(self.trace[-TRACE_SHOWN:])
            raise InvariantViolation(f"{invariant}: {detail}\nrecent trace:\n  {shown}")

    def _yes_voters(self, txid: str) -> tuple[list[str], list[str]]:
        """(participants with a yes/read-only vote and none no, the others)."""
        votes = self._votes_sent.get(txid, {})
        good, bad = [], []
        for p in self.txns.get(txid, ()):
            cast = votes.get(p, [])
            if cast and Vote.NO not in cast:
                good.append(p)
            else:
                bad.append(p)
        return good, bad

    def _commit_forced_somewhere(self, txid: str) -> bool:
        return any(
            p.has_forced(txid, CoordCommitted) or p.has_forced(txid, PartCommitted)
            for p in self.processes.values()
        )

    def _check_decide(self, proc: Process, txid: str, outcome: Outcome) -> None:
        mine = [o for t, o, _ in proc.decisions if t == txid]
        if any(o is not outcome for o in mine):
            self._violate("S3", f"{proc.pid} decided {outcome.value} after {mine[0].value}")
        for other in self.processes.values():
            if other is proc:
                continue
            for t, o, _ in other.decisions:
                if t == txid and o is not outcome:
                    self._violate(
                        "S1",
                        f"{proc.pid} decided {outcome.value} but {other.pid} decided {o.value}",
                    )
        if outcome is Outcome.COMMITTED and txid in self.txns:
            _, bad = self._yes_voters(txid)
            if bad:
                self._violate("S2", f"{proc.pid} committed {txid} without yes votes from {bad}")
        if (
            outcome is Outcome.ABORTED
            and not proc.is_coordinator
            and proc.has_forced(txid, PartPrepared)
            and (proc.pid, txid) not in self._abort_told
        ):
            self._violate("S5", f"prepared {proc.pid} aborted {txid} on its own")

    def _check_force(self, proc: Process, txid: str, record: Record) -> None:
        if isinstance(record, CoordPreCommitted | PartPreCommitted) and txid in self.txns:
            _, bad = self._yes_voters(txid)
            if bad:
                self._violate("S2", f"{proc.pid} pre-committed {txid}; no yes vote from {bad}")

    def _check_send(self, proc: Process, txid: str, message: Message) -> None:
        pid = proc.pid
        if isinstance(message, VoteCast) and message.vote is Vote.YES:
            if not proc.has_forced(txid, PartPrepared):
                self._violate("S4", f"{pid} voted yes on {txid} before forcing PREPARED")
        elif isinstance(message, PreCommit):
            kind = CoordPreCommitted if proc.is_coordinator else PartPreCommitted
            if not proc.has_forced(txid, kind):
                self._violate("S4", f"{pid} sent PRE-COMMIT for {txid} before forcing it")
        elif isinstance(message, PreCommitAck):
            if not proc.has_forced(txid, PartPreCommitted):
                self._violate("S4", f"{pid} acked PRE-COMMIT of {txid} before forcing it")
        elif isinstance(message, Decision) and message.commit:
            if proc.is_coordinator:
                if not (
                    proc.has_forced(txid, CoordCommitted) or self._commit_forced_somewhere(txid)
                ):
                    self._violate("S4", f"{pid} sent COMMIT for {txid} before forcing it")
            elif not self._commit_forced_somewhere(txid):
                machine = proc.machines.get(txid)
                backup = (
                    isinstance(machine, ThreePCParticipant)
                    and machine.broadcast
                    and machine.state is Part3State.COMMITTING
                )
                if not backup:
                    self._violate("S4", f"{pid} relayed COMMIT for {txid}; no commit is forced")

    def converged(self) -> bool:
        return (
            not self.network
            and not self.work
            and not any(p.machines for p in self.processes.values())
        )

    def check_converged(self) -> None:
        """Everything finished: no machine left, nothing in flight, and every
        participant that voted yes decided the outcome the others decided."""
        leftover = {p.pid: list(p.machines) for p in self.processes.values() if p.machines}
        assert not leftover, f"machines still running: {leftover}"
        assert not self.network, f"messages still in flight: {self.network}"
        for txid, parts in self.txns.items():
            votes = self._votes_sent.get(txid, {})
            for p in parts:
                if Vote.YES in votes.get(p, []):
                    assert self.outcome(p, txid) is not None, f"{p} never decided {txid}"
