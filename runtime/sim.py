"""The deterministic simulator: a whole dtxn cluster on one virtual-time loop.

A `Scenario` is everything a run depends on: the protocol, the number of
participant nodes, the seed, the workload (transactions with scripted votes)
and the fault schedule (crash, restart, partition, heal at virtual times, plus
network fault rates). `run(scenario)` builds a coordinator node "c" and
participant nodes "p1".."pN" - real `Runtime`s on `MemoryWal`s, joined by a
`SimTransport` - on a `SimLoop`, and runs two phases:

- safety: the workload and the faults run; every event feeds the checkers;
- liveness: the network heals, fault rates drop to zero, crashed nodes
  restart, and every transaction must finish within `LIVENESS_BOUND_S` of
  virtual time.

A crash is `rt.crash()` plus `wal.crash()` (the WAL keeps exactly the forced
prefix); a restart is a fresh `Runtime` on the same `MemoryWal` and the same
resource objects, so it runs the production recovery path. One seed derives
every random choice through separate streams (network, per-node clocks), and
the event trace is hashed so a test can assert that a seed replays exactly.

A scenario prints as one line of text (`Scenario.text()`), and
`Scenario.parse` reads it back: that line is what a failure reports and what
`dtxn replay` takes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from dtxn.protocols.errors import DtxnError
from dtxn.protocols.messages import Protocol, Timeouts, Vote
from dtxn.runtime.clock import Clock
from dtxn.runtime.coordinator import CoordinatorHost, TxnOutcome
from dtxn.runtime.hosting import LOG_DECODER, Machine
from dtxn.runtime.invariants import Checker, Violation
from dtxn.runtime.participant import ParticipantHost
from dtxn.runtime.resource import Resource
from dtxn.runtime.runtime import Runtime
from dtxn.runtime.simloop import SimLoop
from dtxn.runtime.simnet import NetworkFaults, Rng, SimTransport, TraceEntry, describe
from dtxn.runtime.wal import WalError
from dtxn.runtime.wal_memory import MemoryWal

__all__ = [
    "FAULT_KINDS",
    "LIVENESS_BOUND_S",
    "NODE_FAULTS",
    "Fault",
    "MachineFactory",
    "Scenario",
    "ScriptedResource",
    "SimResult",
    "SimulationFailure",
    "SteppedCluster",
    "SweepStatistics",
    "TxnSpec",
    "check",
    "failing",
    "minimize",
    "random_scenario",
    "run",
    "schedule_seed",
    "sweep",
    "trace_hash",
]

COORDINATOR_NODE = "c"
RESOURCE = "r"
SIM_TIMEOUTS = Timeouts(votes_s=1.0, acks_s=0.3, decision_s=0.5, retry_max_s=2.0)
LIVENESS_BOUND_S = 120.0
SETTLE_S = 1.0
POLL_S = 0.25

VOTE_CODES = {"y": Vote.YES, "n": Vote.NO, "r": Vote.READ_ONLY}
VOTE_LETTERS = {vote: code for code, vote in VOTE_CODES.items()}
# Faults aimed at nodes: process crash/restart, and storage faults - a slow
# fsync (`stall` holds every commit until `resume`, a crash or the liveness
# phase) and a failing one (`fsyncfail`: the next commit fails, and the node
# stops, fail-stop, until it is restarted).
# `crashforce` and `crashforced` arm a crash at a boundary: when the node next
# asks for a forced write (the record is lost), or right after one becomes
# durable (before the effects that follow it, such as sends, run).
NODE_FAULTS = ("crash", "restart", "stall", "resume", "fsyncfail", "crashforce", "crashforced")
FAULT_KINDS = (*NODE_FAULTS, "part", "heal")


class SimulationFailure(DtxnError):
    """Raised when a simulated run breaks an invariant; the message says how to replay it."""

    def __init__(self, scenario: Scenario, violations: list[Violation]) -> None:
        self.scenario = scenario
        self.violations = violations
        text = scenario.text()
        lines = [
            f"simulation seed={scenario.seed} broke {len(violations)} invariant(s):",
            *(f"  {v}" for v in violations[:10]),
            f"schedule: {text}",
            f"replay with: dtxn replay '{text}'",
        ]
        super().__init__("\n".join(lines))


class TxnSpec(msgspec.Struct, frozen=True):
    """One transaction of a workload: when it is submitted, to whom, and their votes."""

    at_s: float
    participants: tuple[int, ...]
    votes: tuple[Vote, ...]


class Fault(msgspec.Struct, frozen=True):
    """One timed fault: one of `NODE_FAULTS` on nodes, a partition into groups, or heal."""

    at_s: float
    kind: str
    nodes: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()


class Scenario(msgspec.Struct, frozen=True):
    """A complete, replayable simulated run."""

    protocol: Protocol = Protocol.TWO_PC
    participants: int = 3
    seed: int = 0
    txns: tuple[TxnSpec, ...] = ()
    faults: tuple[Fault, ...] = ()
    network: NetworkFaults = NetworkFaults()

    def text(self) -> str:
        net = self.network
        parts = [
            f"{self.protocol.value} n={self.participants} seed={self.seed} "
            f"drop={net.drop:g} dup={net.duplicate:g} delay={net.delay_s:g} "
            f"jitter={net.jitter_s:g}"
        ]
        for txn in self.txns:
            members = ",".join(
                f"p{p}={VOTE_LETTERS[v]}" for p, v in zip(txn.participants, txn.votes, strict=True)
            )
            parts.append(f"tx@{txn.at_s:g} {members}")
        for fault in self.faults:
            if fault.kind == "part":
                parts.append(f"part@{fault.at_s:g} " + "|".join(",".join(g) for g in fault.groups))
            elif fault.kind == "heal":
                parts.append(f"heal@{fault.at_s:g}")
            else:
                parts.append(f"{fault.kind}@{fault.at_s:g} {','.join(fault.nodes)}")
        return " ; ".join(parts)

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """Read back what `text()` printed (raises `ValueError` on anything else)."""
        head, *items = [part.strip() for part in text.strip().split(";")]
        words = head.split()
        if not words:
            raise ValueError("empty schedule")
        protocol = Protocol(words[0])
        opts = dict(word.split("=", 1) for word in words[1:])
        network = NetworkFaults(
            drop=float(opts.get("drop", 0)),
            duplicate=float(opts.get("dup", 0)),
            delay_s=float(opts.get("delay", 0.001)),
            jitter_s=float(opts.get("jitter", 0)),
        )
        txns: list[TxnSpec] = []
        faults: list[Fault] = []
        for item in items:
            if not item:
                continue
            what, _, rest = item.partition(" ")
            kind, at, when = what.partition("@")
            if not at:
                raise ValueError(f"schedule item {item!r} has no '@time'")
            at_s = float(when)
            rest = rest.strip()
            if kind == "tx":
                pairs = [pair.split("=") for pair in rest.split(",")]
                txns.append(TxnSpec(
                    at_s,
                    tuple(int(p.removeprefix("p")) for p, _ in pairs),
                    tuple(VOTE_CODES[v] for _, v in pairs),
                ))
            elif kind == "part":
                groups = tuple(tuple(g.split(",")) for g in rest.split("|"))
                faults.append(Fault(at_s, "part", groups=groups))
            elif kind == "heal":
                faults.append(Fault(at_s, "heal"))
            elif kind in NODE_FAULTS:
                faults.append(Fault(at_s, kind, nodes=tuple(rest.split(","))))
            else:
                raise ValueError(f"unknown schedule item {item!r}")
        return cls(protocol, int(opts.get("n", 3)), int(opts.get("seed", 0)),
                   tuple(txns), tuple(faults), network)


class SimResult(msgspec.Struct):
    """What one simulated run did."""

    scenario: Scenario
    trace_hash: str
    events: int
    outcomes: dict[str, str]
    violations: list[Violation]
    virtual_s: float
    trace: list[TraceEntry]


class ScriptedResource:
    """The default simulated resource: votes what the workload says, remembers everything.

    Its state stands for a database, so it survives its node's crashes.
    """

    def __init__(self) -> None:
        self.prepared: dict[str, Vote] = {}
        self.committed: list[str] = []
        self.aborted: list[str] = []

    async def prepare(self, txid: str, payload: Any) -> Vote:
        vote = payload if isinstance(payload, Vote) else Vote(payload)
        self.prepared[txid] = vote
        return vote

    async def commit(self, txid: str) -> None:
        if txid not in self.committed:
            self.committed.append(txid)

    async def abort(self, txid: str) -> None:
        if txid not in self.aborted:
            self.aborted.append(txid)


class _Recording:
    """Wraps a node's resource so the checkers see every applied commit and abort."""

    def __init__(self, inner: Resource, pid: str, sim: _Sim) -> None:
        self.inner = inner
        self.pid = pid
        self.sim = sim

    async def prepare(self, txid: str, payload: Any) -> Vote:
        return await self.inner.prepare(txid, payload)

    async def commit(self, txid: str) -> None:
        await self.inner.commit(txid)
        self.sim.applied(self.pid, txid, "commit")

    async def abort(self, txid: str) -> None:
        await self.inner.abort(txid)
        self.sim.applied(self.pid, txid, "abort")


ResourceFactory = Callable[[str], Resource]
# Called with each Runtime before it is entered (to add trace hooks, say).
RuntimeHook = Callable[[Runtime], None]
# Given every freshly created protocol machine, returns the machine to run instead:
# how mutation tests plug deliberately broken protocol variants into a cluster.
MachineFactory = Callable[[Any], Any]


class _SimCoordinatorHost(CoordinatorHost):
    """A coordinator host that passes each new machine through a `MachineFactory`."""

    def __init__(self, services: Runtime, node: str, factory: MachineFactory) -> None:
        super().__init__(services, node)
        self.factory = factory

    def add(self, txid: str, machine: Machine) -> None:
        super().add(txid, self.factory(machine))


class _NewMachine:
    """`ParticipantHost.new_machine` passed through a `MachineFactory`."""

    def __init__(self, host: ParticipantHost, factory: MachineFactory) -> None:
        self.original = host.new_machine
        self.factory = factory

    def __call__(self, txid: str, protocol: Protocol) -> Any:
        return self.factory(self.original(txid, protocol))


def _install_machine_factory(rt: Runtime, factory: MachineFactory) -> None:
    # Participant hosts are built inside `Runtime.__aenter__` with no hook to
    # choose their class, so their factory method is wrapped on the instance,
    # right after entering and before any message can reach them.
    for host in rt.participants.values():
        host.new_machine = _NewMachine(host, factory)  # type: ignore[method-assign]


class _Node:
    """One simulated machine: its disk (WAL) and resources outlive its runtimes."""

    def __init__(self, name: str, wal: MemoryWal, resources: dict[str, Resource]) -> None:
        self.name = name
        self.wal = wal
        self.resources = resources
        self.rt: Runtime | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.incarnation = 0
        self.fsync_failures = 0
        # "force" or "forced": crash at that trace point of this node (armed fault).
        self.crash_at: str | None = None

    @property
    def up(self) -> bool:
        return self.rt is not None


class _Sim:
    """One simulated cluster on the running loop: nodes, network, checkers, clients."""

    def __init__(
        self,
        scenario: Scenario,
        resource_factory: ResourceFactory | None,
        runtime_hook: RuntimeHook | None,
        machine_factory: MachineFactory | None = None,
    ) -> None:
        self.scenario = scenario
        self.runtime_hook = runtime_hook
        self.machine_factory = machine_factory
        self.trace: list[TraceEntry] = []
        self.rng = _stream(scenario.seed, "net")
        self.net = SimTransport(self.rng, trace=self.trace)
        self.net.on_send.append(self._on_send)
        self.net.on_deliver.append(self._on_deliver)
        self.txids = [f"t{i}" for i in range(len(scenario.txns))]
        members = {
            txid: tuple(f"{RESOURCE}@p{p}" for p in spec.participants)
            for txid, spec in zip(self.txids, scenario.txns, strict=True)
        }
        self.checker = Checker({t: scenario.protocol for t in self.txids}, members)
        self.members = members
        factory = resource_factory or (lambda node: ScriptedResource())
        self.nodes: dict[str, _Node] = {
            COORDINATOR_NODE: _Node(COORDINATOR_NODE, MemoryWal(node=COORDINATOR_NODE), {})
        }
        for i in range(1, scenario.participants + 1):
            name = f"p{i}"
            pid = f"{RESOURCE}@{name}"
            self.nodes[name] = _Node(
                name, MemoryWal(node=name), {RESOURCE: _Recording(factory(name), pid, self)}
            )
        self.outcomes: dict[str, str] = {}
        self.clients: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- hooks ------------------------------------------------------------------

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def note(self, what: str, detail: Any) -> None:
        self.trace.append((self.now(), what, detail))

    def _on_send(self, sender: str, to: Any, message: object) -> None:
        self.checker.now_s = self.now()
        self.checker.on_send(message)

    def _on_deliver(self, to: Any, message: object) -> None:
        self.checker.now_s = self.now()
        self.checker.on_deliver(f"{to.actor}@{to.node}", message)

    def applied(self, pid: str, txid: str, op: str) -> None:
        self.note("apply", (op, txid, "at", pid))
        self.checker.now_s = self.now()
        self.checker.on_applied(pid, txid, op)

    def _tracer(self, txid: str, actor: str, what: str, detail: Any) -> None:
        if what == "timer":
            self.note("timer", (actor, txid, detail))
            return
        self.note(what, (actor, txid, detail))
        checker = self.checker
        checker.now_s = self.now()
        if what == "forced":
            checker.on_forced(actor, txid, detail)
        elif what == "decide":
            checker.on_decide(actor, txid, str(detail))
        if what in ("force", "forced"):
            node = self.nodes.get(actor.rpartition("@")[2])
            if node is not None and node.crash_at == what:
                node.crash_at = None
                self.crash(node, deferred_disk=True)

    # -- nodes ------------------------------------------------------------------

    async def start(self, node: _Node) -> None:
        if node.up:
            return
        if node.task is not None:
            await asyncio.wait([node.task])
        node.incarnation += 1
        for entry in node.wal.entries():
            actor = LOG_DECODER.decode(entry.data).actor
            self.checker.on_durable(f"{actor}@{node.name}", entry.txid, entry.kind)
        clock = Clock(seed=_derive(self.scenario.seed, f"clock:{node.name}:{node.incarnation}"))
        rt = Runtime(
            node.name,
            clock=clock,
            transport=self.net,
            wal=node.wal,
            resources=node.resources,
            timeouts=SIM_TIMEOUTS,
            resource_concurrency=1,
        )
        rt.on_trace(self._tracer)
        if self.machine_factory is not None:
            rt.coordinator = _SimCoordinatorHost(rt, node.name, self.machine_factory)
        if self.runtime_hook is not None:
            self.runtime_hook(rt)
        node.stop = asyncio.Event()
        started = asyncio.Event()
        node.task = asyncio.get_running_loop().create_task(self._host(node, rt, started))
        await started.wait()
        self.note("start", f"{node.name} incarnation {node.incarnation}")

    async def _host(self, node: _Node, rt: Runtime, started: asyncio.Event) -> None:
        try:
            async with rt:
                if self.machine_factory is not None:
                    _install_machine_factory(rt, self.machine_factory)
                node.rt = rt
                started.set()
                await node.stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported as a violation with the schedule
            leaf = _leaf(exc)
            if isinstance(leaf, WalError) and node.fsync_failures:
                # The injected fsync error: the node stopped itself, as it must.
                node.fsync_failures -= 1
                self.note("fail-stop", (node.name, str(leaf)))
            else:
                self.checker.now_s = self.now()
                self.checker.on_error(node.name, leaf)
        finally:
            node.rt = None
            started.set()

    def crash(self, node: _Node, *, deferred_disk: bool = False) -> None:
        rt = node.rt
        if rt is None:
            return
        node.rt = None
        node.crash_at = None
        rt.crash()
        if deferred_disk:
            # Called from inside the WAL's own callbacks: the crashed runtime
            # writes nothing more, so the disk may lose its unforced tail a
            # moment later without changing what survives.
            asyncio.get_running_loop().call_soon(node.wal.crash)
        else:
            node.wal.crash()
        self.note("crash", node.name)

    # -- clients ----------------------------------------------------------------

    def submit(self, index: int) -> None:
        self.submit_spec(self.scenario.txns[index], self.txids[index])

    def submit_spec(self, spec: TxnSpec, txid: str) -> None:
        """Hand one transaction to the coordinator node, if it is up."""
        members = tuple(f"{RESOURCE}@p{p}" for p in spec.participants)
        self.members[txid] = members
        self.checker.members[txid] = members
        self.checker.protocols[txid] = self.scenario.protocol
        coord = self.nodes[COORDINATOR_NODE].rt
        if coord is None:
            self.outcomes[txid] = "not-submitted"
            self.note("submit", f"{txid} refused: coordinator down")
            return
        participants = dict(zip(members, spec.votes, strict=True))
        self.note("submit", f"{txid} {self.scenario.protocol.value} {participants}")
        self.outcomes[txid] = "info"
        task = asyncio.get_running_loop().create_task(self._client(coord, txid, participants))
        self.clients.append(task)

    async def _client(self, coord: Runtime, txid: str, participants: dict[str, Vote]) -> None:
        try:
            outcome: TxnOutcome = await coord.transact(
                participants, protocol=self.scenario.protocol, txid=txid
            )
        except asyncio.CancelledError:
            # The coordinator crashed under the caller: the outcome is unknown ("info").
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return
        except DtxnError as exc:
            self.note("client", f"{txid} failed: {exc}")
            return
        self.outcomes[txid] = outcome.outcome.value
        self.note("client", f"{txid} {outcome.outcome.value}")

    # -- the run ------------------------------------------------------------------

    async def main(self) -> None:
        await self.boot()
        scenario = self.scenario
        steps: list[tuple[float, int, Callable[[], Any]]] = []
        for index, spec in enumerate(scenario.txns):
            steps.append((spec.at_s, len(steps), _bind_submit(self, index)))
        for fault in scenario.faults:
            steps.append((fault.at_s, len(steps), _bind_fault(self, fault)))
        steps.sort(key=lambda step: (step[0], step[1]))
        start_s = self.now()
        for at_s, _, step in steps:
            wait_s = start_s + at_s - self.now()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # noqa: TID251 - virtual time, this is the scheduler
            result = step()
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(SETTLE_S)  # noqa: TID251 - virtual time
        await self.liveness()
        await self.shutdown()

    async def boot(self) -> None:
        self.loop = asyncio.get_running_loop()
        # Concurrently: the boots share loop iterations (FIFO, so still deterministic).
        await asyncio.gather(*(self.start(node) for node in self.nodes.values()))
        self.net.faults = self.scenario.network

    async def liveness(self) -> None:
        """Heal everything, restart every node, require convergence; then check the end."""
        self.note("liveness", "heal, zero fault rates, restart crashed nodes")
        self.net.heal()
        self.net.faults = NetworkFaults(delay_s=self.scenario.network.delay_s)
        for node in self.nodes.values():
            node.wal.resume_commits()
        down = [node for node in self.nodes.values() if not node.up]
        if down:
            await asyncio.gather(*(self.start(node) for node in down))
        deadline_s = self.now() + LIVENESS_BOUND_S
        while self.unfinished() and self.now() < deadline_s:
            await asyncio.sleep(POLL_S)  # noqa: TID251 - virtual time
            for node in self.nodes.values():
                # An fsync failure injected earlier may still stop a node now.
                if not node.up and (node.task is None or node.task.done()):
                    await self.start(node)
        unfinished = self.unfinished()
        committed = [t for t, o in self.outcomes.items() if o == "committed"]
        self.checker.now_s = self.now()
        self.checker.finish(committed, unfinished)

    async def shutdown(self) -> None:
        for node in self.nodes.values():
            self.crash(node)  # teardown: cheaper than draining, nothing left to check
        for task in self.clients:
            task.cancel()
        pending = [n.task for n in self.nodes.values() if n.task is not None] + self.clients
        if pending:
            await asyncio.wait(pending)

    def unfinished(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for node in self.nodes.values():
            rt = node.rt
            if rt is None:
                continue
            for host in (rt.coordinator, *rt.participants.values()):
                for txid in host.txns:
                    found.setdefault(txid, []).append(host.me)
        return found


def _bind_submit(sim: _Sim, index: int) -> Callable[[], None]:
    return lambda: sim.submit(index)


def _bind_fault(sim: _Sim, fault: Fault) -> Callable[[], Any]:
    def apply() -> Any:
        if fault.kind == "crash":
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None:
                    sim.crash(node)
            return None
        if fault.kind == "restart":
            return _restart_all(sim, fault.nodes)
        if fault.kind in ("crashforce", "crashforced"):
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None and node.up:
                    sim.note(fault.kind, name)
                    node.crash_at = "force" if fault.kind == "crashforce" else "forced"
            return None
        if fault.kind in ("stall", "resume", "fsyncfail"):
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is None or not node.up:
                    continue
                sim.note(fault.kind, name)
                if fault.kind == "stall":
                    node.wal.stall_commits()
                elif fault.kind == "resume":
                    node.wal.resume_commits()
                else:
                    node.fsync_failures += 1
                    node.wal.fail_next_commit()
            return None
        if fault.kind == "part":
            sim.net.partition(*fault.groups)
            return None
        if fault.kind == "heal":
            sim.net.heal()
            return None
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    return apply


async def _restart_all(sim: _Sim, names: tuple[str, ...]) -> None:
    for name in names:
        node = sim.nodes.get(name)
        if node is not None:
            await sim.start(node)


def _fail_stop(events: list[Fault], specs: list[TxnSpec]) -> list[Fault]:
    """Keep 3PC inside its model: crashes without restarts, never every process of a txn."""
    kept: list[Fault] = []
    down: set[str] = set()
    groups = [{COORDINATOR_NODE, *(f"p{p}" for p in spec.participants)} for spec in specs]
    for fault in events:
        if fault.kind in ("restart", "stall", "resume"):
            continue
        if fault.kind in ("crash", "fsyncfail", "crashforce", "crashforced"):
            after = down | set(fault.nodes)
            if any(group <= after for group in groups):
                continue
            down = after
        kept.append(fault)
    return kept


def _leaf(exc: BaseException) -> BaseException:
    """The first innermost exception of a nest of exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _derive(seed: int, stream: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _stream(seed: int, name: str) -> Rng:
    return Clock(seed=seed).rng(name)


def trace_hash(trace: list[TraceEntry]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for at_s, what, detail in trace:
        digest.update(f"{at_s:.9f} {what} {describe(detail)}\n".encode())
    return digest.hexdigest()


_quieted = False


def _quiet_logs() -> None:
    # Simulated faults make nodes log warnings by the thousand; with no handler
    # configured they would all reach stderr through logging's last resort.
    global _quieted
    if not _quieted:
        logging.getLogger("dtxn").addHandler(logging.NullHandler())
        _quieted = True


def run(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    raise_on_violation: bool = True,
    hash_trace: bool = True,
) -> SimResult:
    """Run `scenario` on a fresh virtual-time loop; raise `SimulationFailure` on a violation.

    `hash_trace=False` leaves `trace_hash` empty: a sweep, which never reads
    it, saves formatting every trace entry (about 5% of a schedule).
    """
    _quiet_logs()
    sim = _Sim(scenario, resource_factory, runtime_hook, machine_factory)
    loop = SimLoop()
    try:
        loop.run_until_complete(sim.main())
        virtual_s = loop.time()
    finally:
        loop.close()
    result = SimResult(
        scenario,
        trace_hash(sim.trace) if hash_trace else "",
        len(sim.trace),
        dict(sim.outcomes),
        list(sim.checker.violations),
        virtual_s,
        sim.trace,
    )
    if raise_on_violation and result.violations:
        raise SimulationFailure(scenario, result.violations)
    return result


def random_scenario(
    seed: int,
    *,
    protocol: Protocol | str = Protocol.TWO_PC,
    participants: int = 3,
    txns: int = 2,
    faults: int = 3,
    partitions: bool | None = None,
    storage: bool | None = None,
) -> Scenario:
    """A random scenario drawn from `seed` (swarm testing: fault rates are drawn too).

    By default 3PC gets neither partitions, message loss nor storage faults:
    its model is fail-stop with reliable links and accurate timeouts, which a
    lost message or a stalled fsync (a paused node) breaks. Message loss comes
    with `partitions`.
    """
    proto = Protocol(protocol)
    rng = _stream(seed, "scenario")
    if partitions is None:
        partitions = proto is Protocol.TWO_PC
    if storage is None:
        storage = proto is Protocol.TWO_PC
    names = [COORDINATOR_NODE, *(f"p{i}" for i in range(1, participants + 1))]
    specs = []
    for _ in range(txns):
        count = rng.randint(1, participants)
        chosen = tuple(sorted(rng.sample(range(1, participants + 1), count)))
        votes = tuple(
            rng.choices([Vote.YES, Vote.NO, Vote.READ_ONLY], weights=[8, 1, 1])[0]
            for _ in chosen
        )
        specs.append(TxnSpec(round(rng.uniform(0, 0.5), 3), chosen, votes))
    events: list[Fault] = []
    for _ in range(faults):
        at_s = round(rng.uniform(0, 2.0), 3)
        kinds = ["crash", "crash", "crashforce", "crashforced", "restart"]
        kinds += ["part", "heal"] if partitions else []
        if storage:
            kinds += ["stall", "resume", "fsyncfail"]
        kind = rng.choice(kinds)
        if kind in NODE_FAULTS:
            events.append(Fault(at_s, kind, nodes=(rng.choice(names),)))
        elif kind == "part":
            shuffled = names[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(names) - 1)
            events.append(Fault(at_s, "part", groups=(
                tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:]))
            )))
        else:
            events.append(Fault(at_s, "heal"))
    events.sort(key=lambda f: f.at_s)
    if proto is Protocol.THREE_PC:
        events = _fail_stop(events, specs)
    network = NetworkFaults(
        # 3PC assumes reliable links: a lost PRE-COMMIT looks like a failed
        # participant, and the coordinator commits while it aborts alone (TR3).
        drop=rng.choice([0.0, 0.0, 0.02, 0.1]) if partitions else 0.0,
        duplicate=rng.choice([0.0, 0.05, 0.2]),
        delay_s=0.001,
        jitter_s=rng.choice([0.0, 0.005, 0.05]),
    )
    return Scenario(proto, participants, seed, tuple(specs), tuple(events), network)




def failing(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
) -> list[Violation]:
    """The violations of one run of `scenario` (empty when it keeps every invariant)."""
    result = run(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                 machine_factory=machine_factory, raise_on_violation=False)
    return result.violations


def minimize(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    runs_max: int = 200,
) -> tuple[Scenario, list[Violation]]:
    """Shrink a failing scenario greedily: drop faults and transactions, calm the network.

    Each candidate is kept only if it still breaks an invariant with one of the
    codes the original broke, so the result fails for the same reason.
    `runs_max` bounds the work.
    """
    violations = failing(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                         machine_factory=machine_factory)
    if not violations:
        return scenario, []
    codes = {v.code for v in violations}
    runs = 1

    def still_fails(candidate: Scenario) -> list[Violation] | None:
        nonlocal runs
        if runs >= runs_max:
            return None
        runs += 1
        found = failing(candidate, resource_factory=resource_factory,
                        runtime_hook=runtime_hook, machine_factory=machine_factory)
        return found if any(v.code in codes for v in found) else None

    progress = True
    while progress:
        progress = False
        candidates: list[Scenario] = []
        net = scenario.network
        if net != NetworkFaults(delay_s=net.delay_s):
            candidates.append(msgspec.structs.replace(
                scenario, network=NetworkFaults(delay_s=net.delay_s)))
        for index in range(len(scenario.faults)):
            faults = scenario.faults[:index] + scenario.faults[index + 1:]
            candidates.append(msgspec.structs.replace(scenario, faults=faults))
        if len(scenario.txns) > 1:
            for index in range(len(scenario.txns)):
                txns = scenario.txns[:index] + scenario.txns[index + 1:]
                candidates.append(msgspec.structs.replace(scenario, txns=txns))
        for candidate in candidates:
            found = still_fails(candidate)
            if found is not None:
                scenario, violations, progress = candidate, found, True
                break
    return scenario, violations


def check(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    shrink: bool = True,
) -> SimResult:
    """Run `scenario`; on a violation raise `SimulationFailure` with a minimal replayable one."""
    result = run(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                 machine_factory=machine_factory, raise_on_violation=False)
    if not result.violations:
        return result
    if shrink:
        small, violations = minimize(
            scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
            machine_factory=machine_factory,
        )
        raise SimulationFailure(small, violations)
    raise SimulationFailure(scenario, result.violations)


class SweepStatistics(msgspec.Struct):
    """What `sweep` did: schedules run, trace events, failing schedules, the first failure."""

    schedules: int = 0
    events: int = 0
    violations: int = 0
    first_failure: Scenario | None = None


def schedule_seed(seed: int, index: int) -> int:
    """The seed of schedule `index` of a sweep started with `seed`."""
    return _derive(seed, f"schedule:{index}") % 2**32


def sweep(
    protocol: Protocol | str,
    schedules: int,
    seed: int,
    *,
    participants: int = 3,
    txns: int = 2,
    faults: int = 3,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SweepStatistics:
    """Run schedules `start`..`start + schedules - 1` of the sweep seeded by `seed`.

    Each schedule is a `random_scenario` with its own derived seed, so any
    slice of a sweep can run in another process and give the same results.
    """
    stats = SweepStatistics()
    for index in range(start, start + schedules):
        scenario = random_scenario(
            schedule_seed(seed, index), protocol=protocol, participants=participants,
            txns=txns, faults=faults,
        )
        result = run(scenario, raise_on_violation=False, hash_trace=False)
        stats.schedules += 1
        stats.events += result.events
        if result.violations:
            stats.violations += 1
            if stats.first_failure is None:
                stats.first_failure = scenario
        if progress is not None:
            progress(stats.schedules)
    return stats


class SteppedCluster:
    """The simulated cluster driven step by step from synchronous code.

    Hypothesis rules are synchronous, so each call runs the virtual-time loop
    just long enough for its step; between calls nothing runs. Every step is
    also recorded as a `Scenario` (`scenario()`), so a failure found this way
    prints as a schedule that `run` and `dtxn replay` accept.
    """

    def __init__(
        self,
        protocol: Protocol | str = Protocol.TWO_PC,
        participants: int = 3,
        seed: int = 0,
        *,
        network: NetworkFaults | None = None,
        resource_factory: ResourceFactory | None = None,
        machine_factory: MachineFactory | None = None,
    ) -> None:
        base = Scenario(Protocol(protocol), participants, seed,
                        network=network or NetworkFaults())
        self._sim = _Sim(base, resource_factory, None, machine_factory)
        self._txns: list[TxnSpec] = []
        self._faults: list[Fault] = []
        self._loop = SimLoop()
        self._closed = False
        self._loop.run_until_complete(self._sim.boot())
        self._start_s = self._loop.time()

    @property
    def now_s(self) -> float:
        """Virtual seconds since the cluster started."""
        return round(self._loop.time() - self._start_s, 6)

    @property
    def nodes(self) -> list[str]:
        return list(self._sim.nodes)

    @property
    def violations(self) -> list[Violation]:
        return self._sim.checker.violations

    def up(self, node: str) -> bool:
        return self._sim.nodes[node].up

    def would_fail_totally(self, node: str) -> bool:
        """Whether crashing `node` leaves every process of some transaction down."""
        down = {name for name, n in self._sim.nodes.items() if not n.up} | {node}
        return any(
            {COORDINATOR_NODE, *(f"p{p}" for p in spec.participants)} <= down
            for spec in self._txns
        )

    def submit(self, participants: tuple[int, ...], votes: tuple[Vote, ...]) -> str:
        spec = TxnSpec(self.now_s, participants, votes)
        txid = f"t{len(self._txns)}"
        self._txns.append(spec)
        self._inside(lambda: self._sim.submit_spec(spec, txid))
        return txid

    def _inside(self, step: Callable[[], None]) -> None:
        # Runtime and anyio calls expect a running loop, so steps run on it.
        async def call() -> None:
            step()

        self._loop.run_until_complete(call())

    def run_for(self, duration_s: float) -> None:
        """Let `duration_s` virtual seconds pass (deliveries, timers, forces run)."""
        self._loop.run_until_complete(asyncio.sleep(duration_s))  # noqa: TID251 - virtual

    def crash(self, node: str) -> None:
        self._faults.append(Fault(self.now_s, "crash", nodes=(node,)))
        self._inside(lambda: self._sim.crash(self._sim.nodes[node]))

    def restart(self, node: str) -> None:
        self._faults.append(Fault(self.now_s, "restart", nodes=(node,)))
        self._loop.run_until_complete(self._sim.start(self._sim.nodes[node]))

    def partition(self, *groups: tuple[str, ...]) -> None:
        self._faults.append(Fault(self.now_s, "part", groups=tuple(groups)))
        self._inside(lambda: self._sim.net.partition(*groups))

    def heal(self) -> None:
        self._faults.append(Fault(self.now_s, "heal"))
        self._inside(self._sim.net.heal)

    def node_fault(self, kind: str, node: str) -> None:
        """A storage or boundary-crash fault on `node`: one of `NODE_FAULTS` but crash/restart."""
        if kind not in NODE_FAULTS or kind in ("crash", "restart"):
            raise ValueError(f"unknown node fault {kind!r}; use crash() or restart()")
        fault = Fault(self.now_s, kind, nodes=(node,))
        self._faults.append(fault)
        self._inside(lambda: _bind_fault(self._sim, fault)())

    def scenario(self) -> Scenario:
        """Everything done so far, as a replayable scenario."""
        return msgspec.structs.replace(
            self._sim.scenario, txns=tuple(self._txns), faults=tuple(self._faults)
        )

    def finish(self) -> list[Violation]:
        """Run the liveness phase and the end checks, stop the cluster, return violations."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.run_until_complete(self._sim.liveness())
                self._loop.run_until_complete(self._sim.shutdown())
            finally:
                self._loop.close()
        return self.violations

    def close(self) -> None:
        """Stop without the liveness checks."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.run_until_complete(self._sim.shutdown())
            finally:
                self._loop.close()
