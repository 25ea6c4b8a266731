"""`SimTransport`: a simulated network that is also the simulator's scheduler.

Every `send_nowait` becomes a delivery event at virtual time `now + delay`,
with the delay drawn from the network's own seeded RNG stream; deliveries are
ordered by (virtual time, sequence number) on the loop's timer heap, so one
seed gives one order. The network drops, duplicates and reorders (delay
jitter) messages with configurable probabilities, cuts nodes apart with
partitions and heals them; a message to a node that is not attached (crashed,
or not yet restarted) is lost when it arrives. Every send, delivery and loss
is appended to the trace, which the simulator hashes.

It implements the `Transport` protocol of `dtxn.runtime.transport._inprocess` and only
works on a running `SimLoop` (or any asyncio loop, for its delays).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec
from dtxn.runtime.transport import Address, NodePort, UnknownNode

__all__ = ["NetworkFaults", "Rng", "SimTransport", "TraceEntry", "describe"]

T = TypeVar("T")


class Rng(Protocol):
    """The part of a seeded `random.Random` stream (from `Clock.rng`) the simulator uses."""

    def random(self) -> float: ...

    def randint(self, a: int, b: int) -> int: ...

    def uniform(self, a: float, b: float) -> float: ...

    def choice(self, seq: Sequence[T]) -> T: ...

    def choices(self, population: Sequence[T], weights: Sequence[float] | None = ...,
                *, cum_weights: Any = ..., k: int = ...) -> list[T]: ...

    def sample(self, population: Sequence[T], k: int, *, counts: Any = ...) -> list[T]: ...

    def shuffle(self, x: list[Any]) -> None: ...

# (virtual time, what, detail): what is "send", "deliver", "drop", "lost", ...
# The detail is kept as objects (formatted only by `describe`, when a trace is
# hashed or shown), because formatting every message would dominate a run.
TraceEntry = tuple[float, str, Any]


def describe(detail: Any) -> str:
    """The readable text of a trace entry's detail."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, Hop):
        return f"{detail.sender}->{detail.to} {detail.message!r}"
    if isinstance(detail, tuple):
        return " ".join(x if isinstance(x, str) else repr(x) for x in detail)
    return repr(detail)


class Hop(NamedTuple):
    """A message on its way: the detail of send, deliver, drop, cut and lost entries."""

    sender: str
    to: Address
    message: object


class NetworkFaults(msgspec.Struct, frozen=True):
    """Fault rates of the simulated network; all zero means reliable, in order per delay."""

    drop: float = 0.0
    duplicate: float = 0.0
    delay_s: float = 0.001
    jitter_s: float = 0.0


class SimTransport:
    """Delivers messages between simulated nodes as timed, seeded, faulty events."""

    def __init__(
        self,
        rng: Rng,
        *,
        faults: NetworkFaults | None = None,
        trace: list[TraceEntry] | None = None,
    ) -> None:
        self.rng = rng
        self.faults = faults if faults is not None else NetworkFaults()
        self.trace: list[TraceEntry] = trace if trace is not None else []
        self._ports: dict[str, NodePort] = {}
        # node -> partition group id; nodes in different groups cannot talk.
        self._groups: dict[str, int] = {}
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.lost = 0
        # Called with (sender node, to, message) before a send is scheduled;
        # the invariant checkers hook in here (log-before-send).
        self.on_send: list[Callable[[str, Address, object], None]] = []
        self.on_deliver: list[Callable[[Address, object], None]] = []
        # Paused nodes: messages that reached them wait here, in order.
        self._held: dict[str, list[tuple[str, Address, object]]] = {}
        # Called with (to, message) when a forged message reaches its node.
        self.on_forged: list[Callable[[Address, object], None]] = []
        self.rejected = 0

    # -- Transport -------------------------------------------------------------

    def attach(self, port: NodePort) -> None:
        self._ports[port.node] = port
        self._note("attach", port.node)

    def detach(self, node: str) -> None:
        if self._ports.pop(node, None) is not None:
            self._note("detach", node)

    async def send(self, to: Address, message: object) -> None:
        if to.node not in self._ports:
            raise UnknownNode(f"cannot send {type(message).__name__} to {to}: not attached")
        self.send_nowait(to, message)

    def send_nowait(self, to: Address, message: object) -> None:
        sender = _sender_node(message)
        self.sent += 1
        for hook in self.on_send:
            hook(sender, to, message)
        faults = self.faults
        rng = self.rng
        if not self.connected(sender, to.node):
            self.dropped += 1
            self._note("cut", Hop(sender, to, message))
            return
        if faults.drop and rng.random() < faults.drop:
            self.dropped += 1
            self._note("drop", Hop(sender, to, message))
            return
        copies = 2 if faults.duplicate and rng.random() < faults.duplicate else 1
        self._note("send" if copies == 1 else "send x2", Hop(sender, to, message))
        loop = asyncio.get_running_loop()
        for _ in range(copies):
            delay_s = faults.delay_s
            if faults.jitter_s:
                delay_s += rng.random() * faults.jitter_s
            loop.call_later(delay_s, self._deliver, sender, to, message)

    def send_as(self, source: str, to: Address, message: object) -> None:
        """A message sent from node `source`, whatever sender it names (the forge fault).

        Like NATS with per-node subject permissions (docs/nats.md), the network
        knows the node a message came from: one that names a sender on another
        node is rejected on arrival, before any actor sees it. It bypasses the
        `on_send` hooks, which check what protocol machines send.
        """
        self.sent += 1
        self._note("forge", Hop(source, to, message))
        loop = asyncio.get_running_loop()
        loop.call_later(self.faults.delay_s, self._deliver_forged, source, to, message)

    def _deliver_forged(self, source: str, to: Address, message: object) -> None:
        if _sender_node(message) != source:
            self.rejected += 1
            self._note("rejected", Hop(source, to, message))
            return
        port = self._ports.get(to.node)
        if port is None or not self.connected(source, to.node):
            self.lost += 1
            self._note("lost", Hop(source, to, message))
            return
        if to.node in self._held:
            # A paused node reads nothing; the forger keeps trying until it resumes.
            asyncio.get_running_loop().call_later(
                0.1, self._deliver_forged, source, to, message)
            return
        self.delivered += 1
        self._note("deliver forged", Hop(source, to, message))
        for hook in self.on_forged:
            hook(to, message)
        port.deliver_nowait(to.actor, message)
    def redeliver(self, to: Address, message: object) -> None:
        """Deliver a copy of `message` now: a duplicate the network made earlier, never dropped.

        A redelivery fault uses it, so the copy it is about reaches the node
        whatever the drop rate (a partition still cuts it).
        """
        sender = _sender_node(message)
        self.sent += 1
        for hook in self.on_send:
            hook(sender, to, message)
        self._deliver(sender, to, message)

    # -- faults ----------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut the network into `groups`; nodes named in no group form one more group."""
        self._groups = {}
        for index, group in enumerate(groups, start=1):
            for node in group:
                self._groups[node] = index
        self._note("partition", " | ".join(",".join(sorted(g)) for g in map(list, groups)))

    def heal(self) -> None:
        self._groups = {}
        self._note("heal", "")

    def hold(self, node: str) -> None:
        """Pause `node`'s inbox: what arrives from now on waits for `release`."""
        self._held.setdefault(node, [])

    def release(self, node: str, *, deliver: bool = True) -> None:
        """Resume `node`'s inbox: hand it what waited, in arrival order (or lose it)."""
        for sender, to, message in self._held.pop(node, []):
            if deliver:
                self._deliver(sender, to, message)
            else:
                self.lost += 1
                self._note("lost", Hop(sender, to, message))

    def connected(self, a: str, b: str) -> bool:
        groups = self._groups
        return not groups or groups.get(a, 0) == groups.get(b, 0)

    def nodes(self) -> list[str]:
        return list(self._ports)

    # -- delivery --------------------------------------------------------------

    def _deliver(self, sender: str, to: Address, message: object) -> None:
        port = self._ports.get(to.node)
        if port is None:
            self.lost += 1
            self._note("lost", Hop(sender, to, message))
            return
        if not self.connected(sender, to.node):
            # A partition that formed while the message was in flight cuts it too.
            self.dropped += 1
            self._note("cut", Hop(sender, to, message))
            return
        held = self._held.get(to.node)
        if held is not None:
            held.append((sender, to, message))
            self._note("held", Hop(sender, to, message))
            return
        self.delivered += 1
        self._note("deliver", Hop(sender, to, message))
        for hook in self.on_deliver:
            hook(to, message)
        port.deliver_nowait(to.actor, message)

    def _note(self, what: str, detail: Any) -> None:
        self.trace.append((asyncio.get_running_loop().time(), what, detail))


def _sender_node(message: object) -> str:
    sender = getattr(message, "sender", None)
    if isinstance(sender, str):
        return sender.rpartition("@")[2]
    return "?"
