"""`Runtime`: one node. Hosts actors, owns the clock and routes through a transport.

    async with Runtime("node-a") as rt:
        ref = await rt.spawn(Counter, name="counter")
        await rt.send(rt.address("counter"), Increment(1))

Leaving the block drains every actor (see `dtxn.actors.system`); an exception
in the block or an escalated actor failure cancels them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import msgspec
from dtxn.actors import Actor, ActorRef, ActorSystem, ActorSystemStatistics, SupervisionPolicy
from dtxn.actors.errors import ActorError
from dtxn.runtime.clock import Clock
from dtxn.runtime.transport import Address, InProcessTransport, Transport

M = TypeVar("M")


class RuntimeStatistics(msgspec.Struct, frozen=True):
    """An immutable snapshot of one node's counters."""

    node: str
    actors: ActorSystemStatistics
    undeliverable: int


class Runtime:
    """A node: an actor system, a clock and a transport, as an async context manager."""

    def __init__(
        self,
        node: str = "node",
        *,
        clock: Clock | None = None,
        transport: Transport | None = None,
    ) -> None:
        if not node or "@" in node:
            raise ActorError(f"node name must be non-empty and contain no '@', got {node!r}")
        self.node = node
        self.clock = clock if clock is not None else Clock()
        self.transport: Transport = transport if transport is not None else InProcessTransport()
        self.system = ActorSystem(self.clock, name=node)
        self._undeliverable = 0
        self._running = False

    async def __aenter__(self) -> Runtime:
        await self.system.__aenter__()
        self.transport.attach(self)
        self._running = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._running = False
        self.transport.detach(self.node)
        return await self.system.__aexit__(exc_type, exc, tb)

    # -- actors ----------------------------------------------------------------

    async def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str | None = None,
        mailbox_size: int = 1024,
        policy: SupervisionPolicy | None = None,
    ) -> ActorRef[M]:
        """Start an actor on this node; see `ActorSystem.spawn`."""
        return await self.system.spawn(
            factory, name=name, mailbox_size=mailbox_size, policy=policy
        )

    def ref(self, name: str) -> ActorRef[Any]:
        return self.system.ref(name)

    def address(self, actor: str) -> Address:
        """The transport address of actor `actor` on this node."""
        return Address(self.node, actor)

    async def send(self, to: Address, message: object) -> None:
        """Send `message` to the actor at `to`, on this node or another, via the transport."""
        await self.transport.send(to, message)

    # -- the transport's view of this node (NodePort) ---------------------------

    async def deliver(self, actor: str, message: object) -> None:
        try:
            ref = self.system.ref(actor)
        except ActorError:
            self.system.dead_letter(actor, message, f"no actor {actor!r} on node {self.node!r}")
            return
        await ref.tell(message)

    def message_type(self, actor: str) -> Any:
        try:
            self.system.ref(actor)
        except ActorError:
            return Any
        return self.system.message_type_of(actor)

    def report_undeliverable(self, actor: str, data: bytes, reason: str) -> None:
        self._undeliverable += 1
        self.system.dead_letter(actor, data, reason)

    def statistics(self) -> RuntimeStatistics:
        return RuntimeStatistics(self.node, self.system.statistics(), self._undeliverable)
