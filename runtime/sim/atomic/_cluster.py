"""A simulated atomic-commit cluster on the running loop: nodes, network, checkers, clients.

`SimCluster` builds a coordinator node "c" and participant nodes "p1".."pN" - real
`Runtime`s on `MemoryWal`s, joined by a `SimTransport` - and drives them
through two phases:

- safety: the workload and the faults run; every event feeds the checkers;
- liveness: the network heals, fault rates drop to zero, crashed nodes
  restart, and every transaction must finish within `LIVENESS_BOUND_S` of
  virtual time.

A crash is `rt.crash()` plus `wal.crash()` (the WAL keeps exactly the forced
prefix); a restart is a fresh `Runtime` on the same `MemoryWal` and the same
resource objects, so it runs the production recovery path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from dtxn.protocols.errors import DtxnError
from dtxn.protocols.messages import Decision, Prepare, Timeouts
from dtxn.runtime._runtime import Runtime, UnknownTransaction
from dtxn.runtime.hosting import LOG_DECODER
from dtxn.runtime.hosting.coordinator import TxnOutcome
from dtxn.runtime.resource import Resource
from dtxn.runtime.sim._harness import (
    PausableClock,
    SimNode,
    TracedRun,
    cancelled_by_crash,
    play_timeline,
    stream,
)
from dtxn.runtime.sim._net import NetworkFaults, SimTransport
from dtxn.runtime.sim.atomic._hooks import (
    MachineFactory,
    RecordingResource,
    ResourceFactory,
    RuntimeHook,
    ScriptedResource,
    SimCoordinatorHost,
)
from dtxn.runtime.sim.atomic._offload import ResourceLoop, needs_real_loop
from dtxn.runtime.sim.atomic._scenario import (
    COORDINATOR_NODE,
    REDELIVERY_FAULTS,
    Fault,
    Scenario,
    TxnSpec,
)
from dtxn.runtime.sim.invariants import Checker
from dtxn.runtime.transport import Address
from dtxn.runtime.wal import MemoryWal, WalError

__all__ = ["LIVENESS_BOUND_S", "SimCluster", "bind_fault"]

RESOURCE = "r"
SIM_TIMEOUTS = Timeouts(votes_s=1.0, acks_s=0.3, decision_s=0.5, retry_max_s=2.0)
LIVENESS_BOUND_S = 120.0
SETTLE_S = 1.0
# `pause`: how long a node stays frozen; past every timeout (SIM_TIMEOUTS,
# retry_max_s included), so its peers give up on it and its own timers are
# stale when it resumes.
PAUSE_S = 3.0
# `crashvote`: how long an applied prepare lingers before its node crashes;
# past the decision timeout, so prepared peers ask it (and it answers "abort").
CRASH_VOTE_LINGER_S = 0.8
POLL_S = 0.25


class _Node(SimNode):
    """A simulated machine whose resources, like its disk, outlive its runtimes."""

    def __init__(self, name: str, wal: MemoryWal, resources: dict[str, Resource]) -> None:
        super().__init__(name, wal)
        self.resources = resources
        self.fsync_failures = 0
        self.paused = False
        # Armed redelivery faults: crash right after the resource next applies
        # each of these ops ("prepare", "commit", "abort").
        self.crash_after: set[str] = set()
        # The txid whose PREPARE comes again while the node restarts from a `crashprepare`.
        self.bouncing: str | None = None
        # Txids whose branch a `crashprepare` restart kept for the redelivered PREPARE.
        self.kept: set[str] = set()
        self.booting: asyncio.Event | None = None


class SimCluster(TracedRun):
    """One simulated cluster on the running loop: nodes, network, checkers, clients."""

    def __init__(
        self,
        scenario: Scenario,
        resource_factory: ResourceFactory | None,
        runtime_hook: RuntimeHook | None,
        machine_factory: MachineFactory | None = None,
    ) -> None:
        super().__init__()
        self.scenario = scenario
        self.runtime_hook = runtime_hook
        self.machine_factory = machine_factory
        self.rng = stream(scenario.seed, "net")
        self.net = SimTransport(self.rng, trace=self.trace)
        self.net.on_send.append(self._on_send)
        self.net.on_deliver.append(self._on_deliver)
        self.net.on_forged.append(self._on_forged)
        self.forge_rng = stream(scenario.seed, "forge")
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
        # Resources with a lifecycle (`async def start()`) do real IO: they run
        # on a real loop, started before the nodes boot and closed at the end.
        self.resource_loop: ResourceLoop | None = None
        self.user_resources: dict[str, Resource] = {}
        self._started: list[Any] = []
        for i in range(1, scenario.participants + 1):
            name = f"p{i}"
            pid = f"{RESOURCE}@{name}"
            inner = self.user_resources[name] = factory(name)
            offload = None
            if needs_real_loop(inner):
                if self.resource_loop is None:
                    self.resource_loop = ResourceLoop()
                offload = self.resource_loop
            self.nodes[name] = _Node(
                name, MemoryWal(node=name),
                {RESOURCE: RecordingResource(inner, pid, self, offload)},
            )
        self.outcomes: dict[str, str] = {}
        self.clients: list[asyncio.Task[None]] = []
        # What each prepare was given and answered: (pid, txid, payload, vote or exception).
        self.prepare_answers: list[tuple[str, str, Any, object]] = []
        # The PREPARE each participant got, by (pid, txid): what `crashprepare` sends again.
        self.prepares_seen: dict[tuple[str, str], tuple[Any, Prepare]] = {}

    # -- hooks ------------------------------------------------------------------

    def _on_send(self, sender: str, to: Any, message: object) -> None:
        self.checker.now_s = self.now()
        self.checker.on_send(message)

    def _on_deliver(self, to: Any, message: object) -> None:
        self.checker.now_s = self.now()
        self.checker.on_deliver(f"{to.actor}@{to.node}", message)
        if isinstance(message, Prepare):
            self.prepares_seen[(f"{to.actor}@{to.node}", message.txid)] = (to, message)

    def _on_forged(self, to: Any, message: object) -> None:
        self.checker.now_s = self.now()
        self.checker.on_forged(f"{to.actor}@{to.node}", message)

    def forge(self, name: str) -> None:
        """Node `name`, compromised, sends decisions nobody made (the `forge` fault)."""
        rng = self.forge_rng
        coordinator = f"coordinator@{COORDINATOR_NODE}"
        for txid, members in list(self.members.items()):
            for target in (*members, coordinator):
                if target.rpartition("@")[2] == name:
                    continue
                others = [m for m in members if m != target]
                for claimed in (f"{RESOURCE}@{name}", coordinator, *others):
                    decision = Decision(txid, claimed, rng.random() < 0.5)
                    actor, _, node = target.partition("@")
                    self.net.send_as(name, Address(node, actor), decision)

    def applied(self, pid: str, txid: str, op: str) -> None:
        self.note("apply", (op, txid, "at", pid))
        self.checker.now_s = self.now()
        self.checker.on_applied(pid, txid, op)

    def prepared(self, pid: str, txid: str, payload: Any, answer: object) -> None:
        self.prepare_answers.append((pid, txid, payload, answer))
        if isinstance(answer, Exception):
            self.note("prepare-raised", (txid, "at", pid, repr(answer)))

    def crash_after_apply(self, pid: str, txid: str, op: str) -> bool:
        node = self.nodes.get(pid.rpartition("@")[2])
        if node is None or op not in node.crash_after or not node.up:
            return False
        node.crash_after.discard(op)
        self.note(f"crash{op}", (node.name, txid))
        self.crash(node)
        if op == "prepare":
            # Nothing resends a PREPARE, but the network may duplicate one: the
            # copy reaches the restarted node, whose resource still holds the
            # branch (only a `Recoverable` resource rolls it back at start).
            seen = self.prepares_seen.get((pid, txid))
            task = asyncio.get_running_loop().create_task(self._bounce(node, seen))
            self.clients.append(task)
        return True

    async def _bounce(self, node: _Node, seen: tuple[Any, Prepare] | None) -> None:
        # The branch is kept only if its PREPARE is sure to come again: a copy
        # that never arrives would leave a hold no protocol step ever ends.
        if seen is not None and self.net.connected(seen[1].sender.rpartition("@")[2], node.name):
            node.bouncing = seen[1].txid
        try:
            await self.start(node)
        finally:
            keep, node.bouncing = node.bouncing, None
        if seen is not None and keep is not None and node.up:
            self.note("redeliver", (node.name, seen[1].txid))
            node.kept.add(seen[1].txid)
            self.net.redeliver(*seen)

    def kept_branch(self, pid: str) -> str | None:
        node = self.nodes.get(pid.rpartition("@")[2])
        return node.bouncing if node is not None else None

    def held(self, pid: str, txid: str) -> None:
        self.checker.on_held(pid, txid)

    def holding(self, pid: str) -> list[str]:
        return self.checker.holding(pid)

    def crash_after_prepare(self, pid: str) -> float | None:
        node = self.nodes.get(pid.rpartition("@")[2])
        if node is None or node.crash_at != "vote":
            return None
        node.crash_at = None
        return CRASH_VOTE_LINGER_S

    def crash_pid(self, pid: str) -> None:
        node = self.nodes.get(pid.rpartition("@")[2])
        if node is not None:
            self.note("crashvote", node.name)
            self.crash(node)

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
        if node.booting is not None:
            # Another start of this node is under way (a redelivery fault's restart).
            await node.booting.wait()
            return
        node.booting = asyncio.Event()
        try:
            await self._start(node)
        finally:
            node.booting.set()
            node.booting = None

    async def _start(self, node: _Node) -> None:
        if node.task is not None:
            await asyncio.wait([node.task])
        for entry in node.wal.entries():
            actor = LOG_DECODER.decode(entry.data).actor
            self.checker.on_durable(f"{actor}@{node.name}", entry.txid, entry.kind)
        clock = node.next_clock(self.scenario.seed)
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
            rt.coordinator = SimCoordinatorHost(rt, node.name, self.machine_factory)
            rt.machine_factory = self.machine_factory  # participants, recovered ones too
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
        if node.crash(deferred_disk=deferred_disk):
            self.note("crash", node.name)
        if node.paused:
            # What waited for the paused process dies with it.
            node.paused = False
            self.net.release(node.name, deliver=False)

    def pause(self, node: _Node) -> None:
        """Freeze `node` for PAUSE_S: its inbox, timers and fsyncs wait (SIGSTOP)."""
        if node.paused or node.clock is None:
            return
        node.paused = True
        self.note("pause", node.name)
        self.net.hold(node.name)
        node.clock.pause()
        node.wal.stall_commits()
        clock = node.clock
        asyncio.get_running_loop().call_later(PAUSE_S, self.unpause, node, clock)

    def unpause(self, node: _Node, clock: PausableClock | None) -> None:
        """SIGCONT: fsyncs finish; the queued messages and the stale timers both go,
        in an order the seed picks (a resumed process may read its sockets or run its
        expired timers first), or the messages are lost (a broker drops a client that
        stopped answering its pings, and with it what was in flight)."""
        if not node.paused or clock is None or node.clock is not clock:
            return  # crashed (and maybe restarted) meanwhile
        node.paused = False
        node.wal.resume_commits()
        order = self.rng.choice(("messages first", "timers first", "messages lost"))
        self.note("resume", (node.name, order))
        if order == "messages first":
            self.net.release(node.name)
            clock.resume()
        else:
            clock.resume()
            # "messages lost": the broker dropped the stopped client's connection
            # (NATS core delivers at most once) and what was in flight with it.
            self.net.release(node.name, deliver=order == "timers first")

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
        participants = dict(zip(members, spec.prepare_payloads(), strict=True))
        self.note("submit", f"{txid} {self.scenario.protocol.value} {participants}")
        self.outcomes[txid] = "info"
        task = asyncio.get_running_loop().create_task(self._client(coord, txid, participants))
        self.clients.append(task)

    async def _client(self, coord: Runtime, txid: str, participants: dict[str, Any]) -> None:
        try:
            outcome: TxnOutcome = await coord.transact(
                participants, protocol=self.scenario.protocol, txid=txid
            )
        except asyncio.CancelledError:
            # The coordinator crashed under the caller: the outcome is unknown ("info").
            if not cancelled_by_crash():
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
        steps: list[tuple[float, Callable[[], Any]]] = []
        for index, spec in enumerate(scenario.txns):
            steps.append((spec.at_s, _bind_submit(self, index)))
        for fault in scenario.faults:
            steps.append((fault.at_s, bind_fault(self, fault)))
        await play_timeline(self.now, steps)
        await asyncio.sleep(SETTLE_S)  # noqa: TID251 - virtual time
        while any(node.paused for node in self.nodes.values()):
            # A pause runs its full length in the safety phase (then it settles).
            await asyncio.sleep(POLL_S)  # noqa: TID251 - virtual time
            if not any(node.paused for node in self.nodes.values()):
                await asyncio.sleep(SETTLE_S)  # noqa: TID251 - virtual time
        await self.liveness()
        await self.shutdown()

    async def boot(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self.resource_loop is not None:
            for resource in self.user_resources.values():
                if needs_real_loop(resource):
                    self.resource_loop.call(resource.start())  # type: ignore[attr-defined]
                    self._started.append(resource)
        # Concurrently: the boots share loop iterations (FIFO, so still deterministic).
        await asyncio.gather(*(self.start(node) for node in self.nodes.values()))
        self.net.faults = self.scenario.network

    async def liveness(self) -> None:
        """Heal everything, restart every node, require convergence; then check the end."""
        self.note("liveness", "heal, zero fault rates, restart crashed nodes")
        self.net.heal()
        self.net.faults = NetworkFaults(delay_s=self.scenario.network.delay_s)
        for node in self.nodes.values():
            if node.paused:
                self.unpause(node, node.clock)
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
        await self._reconcile_kept()
        unfinished = self.unfinished()
        committed = [t for t, o in self.outcomes.items() if o == "committed"]
        self.checker.now_s = self.now()
        self.checker.finish(committed, unfinished, self.for_an_operator(unfinished))

    async def _reconcile_kept(self) -> None:
        """Roll back a kept branch its node's log never heard of, as a restart would.

        A `crashprepare` restart keeps the branch for the PREPARE it redelivers;
        when the transaction ended before that copy was processed, the log
        does not know it, and only the resource's own reconciliation (what
        `RecordingResource.recover` stands in for at start) can end it.
        """
        for node in self.nodes.values():
            rt = node.rt
            if rt is None or not node.kept:
                continue
            pid = f"{RESOURCE}@{node.name}"
            for txid in sorted(node.kept):
                if txid not in self.checker.holding(pid):
                    continue
                try:
                    rt.status(txid)
                except UnknownTransaction:
                    self.note("reconcile", (pid, txid))
                    await node.resources[RESOURCE].abort(txid)
            node.kept.clear()

    async def shutdown(self) -> None:
        for node in self.nodes.values():
            self.crash(node)  # teardown: cheaper than draining, nothing left to check
        for task in self.clients:
            task.cancel()
        pending = [n.task for n in self.nodes.values() if n.task is not None] + self.clients
        if pending:
            await asyncio.wait(pending)

    def for_an_operator(self, unfinished: dict[str, list[str]]) -> set[str]:
        """Unfinished txids left in doubt on purpose: their coordinator's log was cut
        (and knows it), and it does not know them, so it presumes nothing."""
        coord = self.nodes[COORDINATOR_NODE]
        if coord.wal.log_may_be_short is None or coord.rt is None:
            return set()
        host = coord.rt.coordinator
        return {t for t in unfinished if t not in host.txns and t not in host.finished}

    def release(self) -> None:
        """Close the resources that were started and stop their loop (idempotent)."""
        loop, self.resource_loop = self.resource_loop, None
        if loop is None:
            return
        try:
            while self._started:
                close = getattr(self._started.pop(), "close", None)
                if close is not None:
                    loop.call(close())
        finally:
            loop.close()

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


def _bind_submit(sim: SimCluster, index: int) -> Callable[[], None]:
    return lambda: sim.submit(index)


def bind_fault(sim: SimCluster, fault: Fault) -> Callable[[], Any]:
    def apply() -> Any:
        if fault.kind == "crash":
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None:
                    sim.crash(node)
            return None
        if fault.kind == "restart":
            return _restart_all(sim, fault.nodes)
        if fault.kind == "pause":
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None and node.up:
                    sim.pause(node)
            return None
        if fault.kind == "walcut":
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None:
                    sim.crash(node)
                    lost = node.wal.lose_tail()
                    sim.note("walcut", (name, f"{lost} committed record(s) lost, detected"))
            return None
        if fault.kind in REDELIVERY_FAULTS:
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None and node.resources and node.up:
                    sim.note(fault.kind, name)
                    node.crash_after.add(fault.kind.removeprefix("crash"))
            return None
        if fault.kind in ("crashforce", "crashforced", "crashvote"):
            armed = {"crashforce": "force", "crashforced": "forced", "crashvote": "vote"}
            for name in fault.nodes:
                node = sim.nodes.get(name)
                if node is not None and node.up:
                    sim.note(fault.kind, name)
                    node.crash_at = armed[fault.kind]
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
        if fault.kind == "forge":
            return _forge(sim, fault.nodes)
        if fault.kind == "part":
            sim.net.partition(*fault.groups)
            return None
        if fault.kind == "heal":
            sim.net.heal()
            return None
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    return apply


# When a compromised node forges again after the fault strikes: the
# transactions it knows are then at different stages.
FORGE_AT_S = (0.0, 0.2, 0.5, 1.0, 2.0)


async def _forge(sim: SimCluster, names: tuple[str, ...]) -> None:
    start_s = sim.now()
    for at_s in FORGE_AT_S:
        delay_s = start_s + at_s - sim.now()
        if delay_s > 0:
            await asyncio.sleep(delay_s)  # noqa: TID251 - virtual time
        for name in names:
            if name != COORDINATOR_NODE and name in sim.nodes:
                sim.note("forge", name)
                sim.forge(name)


async def _restart_all(sim: SimCluster, names: tuple[str, ...]) -> None:
    for name in names:
        node = sim.nodes.get(name)
        if node is not None:
            await sim.start(node)



def _leaf(exc: BaseException) -> BaseException:
    """The first innermost exception of a nest of exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
