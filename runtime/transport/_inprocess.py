"""Transports: how a message reaches an actor on a node, by address.

`InProcessTransport` connects runtimes in one process. With `encode=True`
every message is encoded with msgspec msgpack and decoded again with the
receiving actor's declared message type, exactly as a network transport
would, so codecs are exercised by ordinary tests, within the same bounds of
size and nesting (`dtxn.runtime.transport.limits`). Undecodable bytes are a
`CodecError`, counted and reported as a dead letter; the receiver keeps running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import msgspec
from dtxn.protocols.errors import CodecError, DtxnError
from dtxn.runtime.transport.limits import decode_bounded

log = logging.getLogger("dtxn.transport")


class Address(msgspec.Struct, frozen=True, array_like=True):
    """Where an actor lives: a node name and the actor's name on that node."""

    node: str
    actor: str

    def __str__(self) -> str:
        return f"{self.actor}@{self.node}"


class UnknownNode(DtxnError):
    """Raised when a message is addressed to a node the transport does not know."""


class RemoteError(DtxnError):
    """An ask reached the other node and failed there: the error's type name and text.

    `retriable` is what the remote error said of itself (`StepError.retriable`;
    True when it said nothing), so a saga step failed on purpose on another
    node is not retried in vain.
    """

    def __init__(self, message: str, *, error_type: str = "", error: str = "",
                 retriable: bool = True) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.error = error
        self.retriable = retriable


class NodePort(Protocol):
    """What a runtime gives a transport so the transport can deliver to it."""

    node: str

    async def deliver(self, actor: str, message: object) -> None:
        """Hand a decoded message to the named actor (dead-lettering if it is gone)."""
        ...

    def deliver_nowait(self, actor: str, message: object) -> None:
        """Hand a message over without waiting; a full mailbox drops it (counted)."""
        ...

    def message_type(self, actor: str) -> Any:
        """The type to decode messages for `actor` with (`object` if untyped)."""
        ...

    def report_undeliverable(self, actor: str, data: bytes, reason: str) -> None:
        """Report bytes that could not become a message."""
        ...

    async def ask(self, actor: str, message: object, timeout_s: float | None = None) -> Any:
        """Ask the named local actor and return its reply (remote asks end here)."""
        ...


class Transport(Protocol):
    """Moves messages between nodes; implementations: in-process, NATS (later), simulated."""

    def attach(self, port: NodePort) -> None: ...

    def detach(self, node: str) -> None: ...

    async def send(self, to: Address, message: object) -> None: ...

    def send_nowait(self, to: Address, message: object) -> None: ...


class TransportStatistics(msgspec.Struct, frozen=True):
    messages: int
    bytes: int
    undeliverable: int
    dropped: int


class InProcessTransport:
    """Delivers between runtimes of one process, optionally through the msgpack codec."""

    def __init__(self, *, encode: bool = False) -> None:
        self._encode = encode
        self._ports: dict[str, NodePort] = {}
        self._known: set[str] = set()  # every node ever attached (see `knows_node`)
        # Runtimes on this transport cache routes straight to the mailboxes of
        # local actors (see `Runtime.send_nowait`); each registers a hook here
        # that empties its cache, called whenever a node attaches or detaches
        # or faults or encoding change, so that no route outlives what it assumed.
        self._watchers: dict[str, Callable[[], None]] = {}
        #: Messages runtimes delivered on such routes (counted in `statistics`).
        self.direct_messages = 0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        self._messages = 0
        self._bytes = 0
        self._undeliverable = 0
        # Fault injection for tests and the demo: return False to drop a
        # message, or an int n > 1 to deliver it n times (duplicates).
        self._fault: Callable[[Address, object], bool | int] | None = None
        self._dropped = 0

    @property
    def encode(self) -> bool:
        """Whether messages go through the msgpack codec, as on a wire."""
        return self._encode

    @encode.setter
    def encode(self, value: bool) -> None:
        self._encode = value
        self._changed()

    @property
    def fault(self) -> Callable[[Address, object], bool | int] | None:
        """Fault injection for tests and the demo: called per `send_nowait`; return
        False to drop the message, or an int n > 1 to deliver it n times."""
        return self._fault

    @fault.setter
    def fault(self, hook: Callable[[Address, object], bool | int] | None) -> None:
        self._fault = hook
        self._changed()

    def attach(self, port: NodePort) -> None:
        if port.node in self._ports:
            raise DtxnError(f"node {port.node!r} is already attached to this transport")
        self._ports[port.node] = port
        self._known.add(port.node)
        self._changed()

    def detach(self, node: str) -> None:
        self._ports.pop(node, None)
        hook = self._watchers.pop(node, None)
        if hook is not None:
            hook()
        self._changed()

    def port(self, node: str) -> NodePort | None:
        """The attached node named `node`, if any."""
        return self._ports.get(node)

    def knows_node(self, node: str) -> bool:
        """Whether `node` was ever attached here (a crashed node is still known:
        it may restart); a transaction with a participant on a node never seen
        here fails at once (`UnknownNode`) instead of waiting for votes."""
        return node in self._known

    def routable(self) -> bool:
        """Whether a message may bypass `send_nowait` now (no fault hook, no codec)."""
        return self._fault is None and not self._encode

    def watch(self, node: str, hook: Callable[[], None]) -> bool:
        """Call `hook` whenever routes cached by attached node `node` may have gone stale.

        Returns False, registering nothing, when this transport must see every
        message (a subclass that overrides `send_nowait`, e.g. to record it).
        The hook is dropped when `node` detaches.
        """
        if type(self).send_nowait is not InProcessTransport.send_nowait:
            return False
        if node not in self._ports:
            raise DtxnError(f"node {node!r} is not attached to this transport")
        self._watchers[node] = hook
        return True

    def _changed(self) -> None:
        for hook in list(self._watchers.values()):
            hook()

    def nodes(self) -> list[str]:
        return list(self._ports)

    async def send(self, to: Address, message: object) -> None:
        """Deliver `message` to `to`; waits if the receiving mailbox is full."""
        port = self._ports.get(to.node)
        if port is None:
            raise UnknownNode(
                f"cannot send {type(message).__name__} to {to}: node {to.node!r} is not attached"
            )
        self._messages += 1
        if not self._encode:
            await port.deliver(to.actor, message)
            return
        try:
            data = self._encoder.encode(message)
        except (TypeError, msgspec.EncodeError) as exc:
            raise CodecError(
                f"cannot encode {type(message).__name__} for {to}: {exc}"
            ) from exc
        await self.deliver_bytes(to, data)

    def send_nowait(self, to: Address, message: object) -> None:
        """Deliver without waiting; to a detached node the message is lost (counted)."""
        self._messages += 1
        if self._fault is None and not self._encode:
            # The hot path of in-process protocol traffic.
            port = self._ports.get(to.node)
            if port is None:
                self._undeliverable += 1
            else:
                port.deliver_nowait(to.actor, message)
            return
        copies = 1
        if self._fault is not None:
            verdict = self._fault(to, message)
            if verdict is False:
                self._dropped += 1
                return
            if verdict is not True:
                copies = int(verdict)
        for _ in range(copies):
            self._send_one_nowait(to, message)

    def _send_one_nowait(self, to: Address, message: object) -> None:
        port = self._ports.get(to.node)
        if port is None:
            self._undeliverable += 1
            return
        if not self._encode:
            port.deliver_nowait(to.actor, message)
            return
        data = self._encoder.encode(message)
        self._bytes += len(data)
        message_type = port.message_type(to.actor)
        decoder = self._decoders.get(message_type)
        if decoder is None:
            decoder = msgspec.msgpack.Decoder(message_type)
            self._decoders[message_type] = decoder
        try:
            decoded = decode_bounded(decoder, data)
        except CodecError as exc:
            self._undeliverable += 1
            port.report_undeliverable(to.actor, data, f"malformed message for {to}: {exc}")
            return
        port.deliver_nowait(to.actor, decoded)

    async def deliver_bytes(self, to: Address, data: bytes) -> None:
        """Decode bytes for `to` and deliver them; bad bytes are reported, not raised."""
        port = self._ports.get(to.node)
        if port is None:
            raise UnknownNode(f"cannot deliver bytes to {to}: node {to.node!r} is not attached")
        self._bytes += len(data)
        message_type = port.message_type(to.actor)
        decoder = self._decoders.get(message_type)
        if decoder is None:
            decoder = msgspec.msgpack.Decoder(message_type)
            self._decoders[message_type] = decoder
        try:
            message = decode_bounded(decoder, data)
        except CodecError as exc:
            self._undeliverable += 1
            error = CodecError(f"malformed message for {to} ({len(data)} bytes): {exc}")
            log.warning("%s", error)
            port.report_undeliverable(to.actor, data, str(error))
            return
        await port.deliver(to.actor, message)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            self._messages + self.direct_messages, self._bytes, self._undeliverable, self._dropped
        )

