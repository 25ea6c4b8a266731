"""What a test plugs into a simulated cluster: resources, runtime hooks, machine factories.

`ScriptedResource` is the default resource (it votes what the workload says);
`RecordingResource` wraps any resource so the checkers see every applied
commit and abort; a `MachineFactory` swaps each protocol machine for another
(how mutation tests run deliberately broken protocol variants).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import Protocol as TypingProtocol

from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime._runtime import Runtime
from dtxn.runtime.hosting import Machine
from dtxn.runtime.hosting.coordinator import CoordinatorHost
from dtxn.runtime.hosting.participant import ParticipantHost
from dtxn.runtime.resource import Resource

__all__ = [
    "MachineFactory",
    "RecordingResource",
    "ResourceFactory",
    "RuntimeHook",
    "ScriptedResource",
    "SimCoordinatorHost",
    "install_machine_factory",
]


class AppliedSink(TypingProtocol):
    """Where a `RecordingResource` reports what it applied (the simulation)."""

    def applied(self, pid: str, txid: str, op: str) -> None: ...


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
    """Wraps a node's resource so the checkers see every applied commit and abort."""

    def __init__(self, inner: Resource, pid: str, sim: AppliedSink) -> None:
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


class SimCoordinatorHost(CoordinatorHost):
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


def install_machine_factory(rt: Runtime, factory: MachineFactory) -> None:
    # Participant hosts are built inside `Runtime.__aenter__` with no hook to
    # choose their class, so their factory method is wrapped on the instance,
    # right after entering and before any message can reach them.
    for host in rt.participants.values():
        host.new_machine = _NewMachine(host, factory)  # type: ignore[method-assign]


