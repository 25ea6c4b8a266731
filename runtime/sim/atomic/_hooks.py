"""What a test plugs into a simulated cluster: resources, runtime hooks, machine factories.

`ScriptedResource` is the default resource (it votes what the workload says);
`RecordingResource` wraps any resource so the checkers see every applied
commit and abort; a `MachineFactory` swaps each protocol machine for another
(how mutation tests run deliberately broken protocol variants).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from dtxn.protocols.messages import Vote
from dtxn.runtime._runtime import Runtime, UnknownTransaction
from dtxn.runtime.hosting import Machine
from dtxn.runtime.hosting.coordinator import CoordinatorHost
from dtxn.runtime.resource import Recoverable, Resource

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

    def held(self, pid: str, txid: str) -> None: ...

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
    before the vote reaches its participant machine.
    """

    def __init__(self, inner: Resource, pid: str, sim: AppliedSink) -> None:
        self.inner = inner
        self.pid = pid
        self.sim = sim

    async def prepare(self, txid: str, payload: Any) -> Vote:
        vote = await self.inner.prepare(txid, payload)
        if vote is Vote.YES:
            self.sim.held(self.pid, txid)
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
            await self.inner.recover(runtime)
            return
        for txid in self.sim.holding(self.pid):
            try:
                runtime.status(txid)
            except UnknownTransaction:
                await self.abort(txid)

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


class SimCoordinatorHost(CoordinatorHost):
    """A coordinator host that passes each new machine through a `MachineFactory`."""

    def __init__(self, services: Runtime, node: str, factory: MachineFactory) -> None:
        super().__init__(services, node)
        self.factory = factory

    def add(self, txid: str, machine: Machine) -> None:
        super().add(txid, self.factory(machine))


