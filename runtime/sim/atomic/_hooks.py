"""What a test plugs into a simulated cluster: resources, runtime hooks, machine factories.

`ScriptedResource` is the default resource (it votes what the workload says);
`RecordingResource` wraps any resource so the checkers see every applied
commit and abort; a `MachineFactory` swaps each protocol machine for another
(how mutation tests run deliberately broken protocol variants).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol

from dtxn.protocols.messages import Vote
from dtxn.runtime._runtime import Runtime, UnknownTransaction
from dtxn.runtime.hosting import Machine
from dtxn.runtime.hosting.coordinator import CoordinatorHost
from dtxn.runtime.resource import Recoverable, Resource
from dtxn.runtime.sim.atomic._offload import ResourceLoop

T = TypeVar("T")

__all__ = [
    "MachineFactory",
    "RecordingResource",
    "ResourceFactory",
    "RuntimeHook",
    "ScriptedResource",
    "SimCoordinatorHost",
]


class AppliedSink(TypingProtocol):
    """Where a `RecordingResource` reports what it applied (the simulation)."""

    def applied(self, pid: str, txid: str, op: str) -> None: ...

    def prepared(self, pid: str, txid: str, payload: Any, answer: object) -> None:
        """What a prepare answered: its return value, or the exception it raised."""
        ...

    def crash_after_apply(self, pid: str, txid: str, op: str) -> bool:
        """Fire an armed redelivery fault after `op` applied at `pid`: whether it crashed."""
        ...

    def held(self, pid: str, txid: str) -> None: ...

    def kept_branch(self, pid: str) -> str | None:
        """The txid whose branch `pid` keeps as it restarts from a `crashprepare`, if any."""
        ...

    def crash_after_prepare(self, pid: str) -> float | None:
        """How long a prepare at `pid` lingers before its node crashes, if armed (disarms)."""
        ...

    def crash_pid(self, pid: str) -> None: ...

    def holding(self, pid: str) -> list[str]:
        """The txids whose prepared branch `pid`'s resource still holds."""
        ...


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


class RecordingResource:
    """Wraps a node's resource so the checkers see every applied prepare, commit and abort.

    It is also where the `crashvote` fault strikes: a prepare that applied
    lingers (its peers time out and ask this node) and then the node crashes
    before the vote reaches its participant machine; and where the redelivery
    faults (`crashprepare`, `crashcommit`, `crashabort`) strike: the node
    crashes right after the resource applied, before its participant logged
    it, so recovery calls the resource again for the same txid.
    With `offload`, each call runs to its end on that real event loop (a
    resource doing real IO on threads, such as `SqliteResource`) while the
    simulation waits: the call takes no virtual time, so runs stay
    deterministic.
    """

    def __init__(self, inner: Resource, pid: str, sim: AppliedSink,
                 offload: ResourceLoop | None = None) -> None:
        self.inner = inner
        self.pid = pid
        self.sim = sim
        self.offload = offload

    async def _call(self, call: Coroutine[Any, Any, T]) -> T:
        if self.offload is None:
            return await call
        return self.offload.call(call)

    async def _crash_after(self, txid: str, op: str) -> None:
        if self.sim.crash_after_apply(self.pid, txid, op):
            await asyncio.sleep(0)  # noqa: TID251 - the crash cancels this call here

    async def prepare(self, txid: str, payload: Any) -> Vote:
        try:
            vote = await self._call(self.inner.prepare(txid, payload))
        except Exception as exc:
            self.sim.prepared(self.pid, txid, payload, exc)
            raise
        self.sim.prepared(self.pid, txid, payload, vote)
        if vote is Vote.YES:
            self.sim.held(self.pid, txid)
        await self._crash_after(txid, "prepare")
        linger_s = self.sim.crash_after_prepare(self.pid)
        if linger_s is not None:
            await asyncio.sleep(linger_s)  # noqa: TID251 - virtual time
            self.sim.crash_pid(self.pid)
            await asyncio.sleep(0)  # noqa: TID251 - the crash cancels this call here
        return vote

    async def recover(self, runtime: Runtime) -> None:
        """What a durable resource owes at start (`Recoverable`): roll back every branch
        it holds that `runtime` knows nothing of (prepared before PREPARED was forced,
        so never voted YES). A wrapped resource with a `recover` of its own runs that."""
        if isinstance(self.inner, Recoverable):
            await self._call(self.inner.recover(runtime))
            return
        # The branch a `crashprepare` struck stays, as a resource without
        # `recover` leaves it in production: the redelivered PREPARE finds it.
        kept = self.sim.kept_branch(self.pid)
        for txid in self.sim.holding(self.pid):
            if txid == kept:
                continue
            try:
                runtime.status(txid)
            except UnknownTransaction:
                await self.abort(txid)

    async def commit(self, txid: str) -> None:
        await self._call(self.inner.commit(txid))
        self.sim.applied(self.pid, txid, "commit")
        await self._crash_after(txid, "commit")

    async def abort(self, txid: str) -> None:
        await self._call(self.inner.abort(txid))
        self.sim.applied(self.pid, txid, "abort")
        await self._crash_after(txid, "abort")


ResourceFactory = Callable[[str], Resource]
# Called with each Runtime before it is entered (to add trace hooks, say).
RuntimeHook = Callable[[Runtime], None]
# Given every freshly created protocol machine, returns the machine to run instead:
# how mutation tests plug deliberately broken protocol variants into a cluster.
MachineFactory = Callable[[Any], Any]


class SimCoordinatorHost(CoordinatorHost):
    """A coordinator host that passes each new machine through a `MachineFactory`."""

    def __init__(self, services: Runtime, node: str, factory: MachineFactory) -> None:
        super().__init__(services, node)
        self.factory = factory

    def add(self, txid: str, machine: Machine) -> None:
        super().add(txid, self.factory(machine))


