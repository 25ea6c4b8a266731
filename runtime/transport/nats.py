"""`NatsTransport`: runtimes in different processes or hosts, over NATS subjects.

Every message goes to the subject `<prefix>.<to node>.<to actor>.<from node>`
as msgpack (the same msgspec codec the in-process transport uses in
`encode=True` mode). A node subscribes to `<prefix>.<node>.*.*` and to
nothing else. The last token names the sending node, and NATS permissions
can make it true: allow node X to publish only to `<prefix>.*.*.X` (and to
`_INBOX.>` for replies), and the subject becomes an authenticated sender
(docs/nats.md has the permission block per node). On that basis a receiving
node checks, before a message reaches any actor:

- the sending node is one of its configured `peers` (when configured);
- a message that names its sender (`actor@node`, every protocol message
  does) names the node it came from: a node cannot speak for another;
- a PREPARE (2PC/3PC or Paxos Commit's) comes from one of the configured
  `coordinators` (when configured).

Anything else is rejected: counted and reported as a dead letter; it never
reaches a protocol machine. Bytes are bounded before they are decoded (at
most `max_message_bytes`, nested at most `max_nesting` deep; see
`dtxn.runtime.transport.limits`), and whatever fails to decode is one dropped
message, never a dead node. Dead letters and their log lines are
rate-limited per sending node (`LogLimiter`); every drop is counted. Inside a transaction the
machines then apply a decision only from its coordinator (2PC) or from the
coordinator or the elected backup of a termination round (3PC), so with
authenticated senders no one else can decide (docs/protocols.md, "Who may
decide").

Loss is allowed: a full outbox or a publish during a NATS outage drops the
message (counted); nats-py reconnects by itself and the protocols re-send
on their timers, so no transaction splits. Request-reply carries `ask`:
`await transport.ask(Address(node, actor), message)` asks an actor on
another node, and `serve(node, name, handler)` answers requests with an
async function (the `dtxn node` transaction gateway uses it).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from dtxn.actors.errors import AskTimeout
from dtxn.actors.timing import Timekeeper
from dtxn.protocols.errors import CodecError, ConfigError, DtxnError
from dtxn.protocols.messages import Prepare
from dtxn.protocols.paxos_messages import PaxosPrepare
from dtxn.runtime.clock import Clock
from dtxn.runtime.extras import missing
from dtxn.runtime.transport._inprocess import Address, NodePort, RemoteError, UnknownNode
from dtxn.runtime.transport.limits import (
    MAX_MESSAGE_BYTES,
    MAX_NESTING,
    LogLimiter,
    check_limits,
    decode_bounded,
)

try:
    import nats
    import nats.errors
    from nats.aio.client import Client as NATS
except ModuleNotFoundError as _error:
    raise missing(_error, package="nats", extra="nats",
                  feature="NatsTransport (dtxn.runtime.transport.nats)") from None

log = logging.getLogger("dtxn.nats")

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64})*")

Handler = Callable[[Any], Awaitable[Any]]


class NatsStatistics(msgspec.Struct, frozen=True):
    messages: int
    bytes: int
    undeliverable: int
    dropped: int
    rejected: int
    received: int
    reconnects: int


class _Reply(msgspec.Struct, frozen=True, array_like=True):
    """The answer to a request: the value (msgpack) or the error's type and text."""

    ok: bool
    value: msgspec.Raw = msgspec.Raw(b"\xc0")
    error_type: str = ""
    error: str = ""
    # Whether another attempt may help (an error's own `retriable`, e.g. StepError's).
    retriable: bool = True


class NotAllowed(DtxnError):
    """Raised (to the asker) when a node asks a service that does not serve it."""

    retriable = False


class _Service:
    __slots__ = ("clients", "decoder", "handler")

    def __init__(
        self, handler: Handler, request_type: Any, clients: frozenset[str] | None
    ) -> None:
        self.handler = handler
        self.decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(request_type)
        self.clients = clients


def subject_token(kind: str, value: str) -> str:
    """Check that `value` (a node or actor name) is one NATS subject token."""
    if not isinstance(value, str) or not _TOKEN_RE.fullmatch(value):
        raise ConfigError(
            f"{kind} name {value!r} cannot travel over NATS: use 1-128 of letters, digits, "
            "'_' and '-' (no dots, spaces or wildcards)"
        )
    return value


class NatsTransport:
    """A `Transport` over a NATS server or cluster (`async with` it around the runtimes).

    Authentication is passed through to NATS: `token=`, `user=`/`password=`,
    or `nkeys_seed=` (a path to an nkey seed file; needs the `nkeys`
    package), and `tls=` (an `ssl.SSLContext`; `tls_context()` builds one).
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        *,
        prefix: str = "dtxn",
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        nkeys_seed: str | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        peers: Iterable[str] | None = None,
        coordinators: Iterable[str] | None = None,
        outbox_size: int = 65536,
        max_requests: int = 256,
        connect_timeout_s: float = 5.0,
        reconnect_wait_s: float = 0.25,
        name: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_nesting: int = MAX_NESTING,
        clock: Timekeeper | None = None,
    ) -> None:
        if isinstance(servers, str):
            servers = [servers]
        if not servers:
            raise ConfigError("NatsTransport needs at least one server URL")
        if not _PREFIX_RE.fullmatch(prefix):
            raise ConfigError(f"subject prefix {prefix!r} must be dot-separated tokens")
        if token is not None and (user is not None or nkeys_seed is not None):
            raise ConfigError("give one NATS authentication: token, user/password or nkeys_seed")
        if (user is None) != (password is None):
            raise ConfigError("NATS user and password go together")
        if outbox_size < 1 or max_requests < 1:
            raise ConfigError("outbox_size and max_requests must be >= 1")
        check_limits(max_message_bytes, max_nesting)
        self.max_message_bytes = max_message_bytes
        self.max_nesting = max_nesting
        # Dead letters and log lines per sending node (the rest are only counted).
        self._log_limit = LogLimiter(clock if clock is not None else Clock())
        self.servers = list(servers)
        self.prefix = prefix
        self._connect_options: dict[str, Any] = {
            "servers": self.servers,
            "name": name,
            "token": token,
            "user": user,
            "password": password,
            "tls": tls,
            "tls_hostname": tls_hostname,
            "connect_timeout": connect_timeout_s,
            "reconnect_time_wait": reconnect_wait_s,
            # The first connection gets one try, so a wrong URL, credential or
            # certificate fails the start; after it, reconnect forever (below).
            "max_reconnect_attempts": 1,
            "allow_reconnect": False,
        }
        if nkeys_seed is not None:
            try:
                import nkeys  # type: ignore[import-untyped]  # noqa: F401
            except ImportError:
                raise ConfigError(
                    "nkeys_seed needs the nkeys package: pip install 'dtxn[nats]'"
                ) from None
            self._connect_options["nkeys_seed"] = nkeys_seed
        self.peers = None if peers is None else {subject_token("peer", p) for p in peers}
        self.coordinators = (
            None if coordinators is None else {subject_token("node", c) for c in coordinators}
        )
        self.outbox_size = outbox_size
        self.max_requests = max_requests
        self._nc: Any = None
        self._tg: TaskGroup | None = None
        self._ports: dict[str, NodePort] = {}
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._subscribed: dict[str, anyio.Event] = {}
        self._local_nodes: set[str] = set()  # every node ever attached here
        self._services: dict[tuple[str, str], _Service] = {}
        self._out_send: MemoryObjectSendStream[tuple[str, bytes]] | None = None
        self._out_receive: MemoryObjectReceiveStream[tuple[str, bytes]] | None = None
        self._in_progress = 0  # requests being answered (at most max_requests)
        self._closing = False
        self._drained = anyio.Event()
        self.drain_timeout_s = 5.0
        self._encoder = msgspec.msgpack.Encoder()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        self._reply_decoder = msgspec.msgpack.Decoder(_Reply)
        self._messages = self._bytes = self._undeliverable = self._dropped = 0
        self._rejected = self._received = self._reconnects = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> NatsTransport:
        nc = NATS()
        try:
            await nc.connect(
                **self._connect_options,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
            )
            self._nc = nc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            self._closing = True
            # After a failed TLS handshake nats-py's close can wait forever on
            # the half-open stream: give it a bounded moment.
            with anyio.move_on_after(2.0, shield=True):
                await nc.close()
            raise ConfigError(
                f"cannot connect to NATS at {', '.join(self.servers)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        # Once connected, the protocols wait out any outage: nats-py reads this
        # option at each reconnect (there is no public setter).
        self._nc.options["allow_reconnect"] = True
        self._nc.options["max_reconnect_attempts"] = -1
        self._out_send, self._out_receive = anyio.create_memory_object_stream[
            tuple[str, bytes]
        ](self.outbox_size)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._publisher, self._out_receive)
        for port in self._ports.values():
            self._tg.start_soon(self._subscriber, port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        self._closing = True
        if self._out_send is not None:
            await self._out_send.aclose()
            self._out_send = None
        if exc is None:
            # A clean stop publishes what is queued and flushes it to the server.
            with anyio.move_on_after(self.drain_timeout_s):
                await self._drained.wait()
                if self._connection().is_connected:
                    try:
                        await self._connection().flush()
                    except nats.errors.Error as flush_error:
                        log.warning("NATS: final flush failed, queued messages lost: %s",
                                    flush_error)
        tg.cancel_scope.cancel()
        try:
            return await tg.__aexit__(exc_type, exc, tb)
        finally:
            nc, self._nc = self._nc, None
            if nc is not None and not nc.is_closed:
                with anyio.CancelScope(shield=True):
                    try:
                        await nc.close()
                    except (RuntimeError, ConnectionError) as close_error:
                        # nats-py 2.x writes its pending buffer into a socket an
                        # outage already closed (RuntimeError on uvloop,
                        # BrokenPipeError on asyncio); those messages are lost
                        # (the protocols re-send), the connection is closed.
                        log.warning("NATS: closed while disconnected, unsent messages lost: %s",
                                    close_error)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS: %s: %s", type(exc).__name__, exc)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("NATS: disconnected; reconnecting (messages meanwhile may be lost)")

    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        log.warning("NATS: reconnected to %s", self._nc.connected_url.netloc)

    # -- Transport -------------------------------------------------------------------

    def attach(self, port: NodePort) -> None:
        subject_token("node", port.node)
        if port.node in self._ports:
            raise DtxnError(f"node {port.node!r} is already attached to this transport")
        self._ports[port.node] = port
        self._local_nodes.add(port.node)
        if self._tg is not None:
            self._tg.start_soon(self._subscriber, port)

    async def wait_subscribed(self) -> None:
        """Return once every attached node's subscription is in force at the server
        (until then, messages to a just-started node are lost and re-sent)."""
        for node in list(self._ports):
            await self._subscribed.setdefault(node, anyio.Event()).wait()
        await self._connection().flush()

    def detach(self, node: str) -> None:
        self._ports.pop(node, None)
        self._subscribed.pop(node, None)
        scope = self._scopes.pop(node, None)
        if scope is not None:
            scope.cancel()

    def knows_node(self, node: str) -> bool | None:
        """Whether `node` can take part: True for a node attached here, else whether it
        is a configured peer; None (cannot know) without `peers`."""
        if node in self._local_nodes:
            return True
        return None if self.peers is None else node in self.peers

    def serve(
        self,
        node: str,
        name: str,
        handler: Handler,
        request_type: Any = Any,
        *,
        clients: Iterable[str] | None = None,
    ) -> None:
        """Answer requests to `name@node` with `await handler(request)` (concurrently).

        With `clients`, only requests from those nodes (the subject's sending
        node, which NATS permissions make true) reach the handler; any other
        gets a `NotAllowed` error reply, is counted as rejected, and runs nothing.
        """
        subject_token("node", node)
        subject_token("service", name)
        allowed = None if clients is None else frozenset(
            subject_token("client", c) for c in clients
        )
        self._services[(node, name)] = _Service(handler, request_type, allowed)

    def subject(self, to: Address, from_node: str) -> str:
        return f"{self.prefix}.{to.node}.{to.actor}.{from_node}"

    def send_nowait(self, to: Address, message: object) -> None:
        """Queue `message` for publishing; a full outbox drops it (counted)."""
        out = self._out_send
        if out is None:
            self._dropped += 1
            return
        data = self._encode(to, message)
        try:
            out.send_nowait((self.subject(to, self._from_node(message)), data))
        except anyio.WouldBlock:
            self._dropped += 1
            log.warning("NATS outbox full (%d): dropped %s to %s",
                        self.outbox_size, type(message).__name__, to)
        else:
            self._messages += 1
            self._bytes += len(data)

    async def send(self, to: Address, message: object) -> None:
        """Publish `message` now (waits while nats-py's own buffer is full)."""
        data = self._encode(to, message)
        await self._connection().publish(self.subject(to, self._from_node(message)), data)
        self._messages += 1
        self._bytes += len(data)

    async def ask(
        self,
        to: Address,
        message: object,
        *,
        timeout_s: float = 5.0,
        reply_type: Any = Any,
        from_node: str | None = None,
    ) -> Any:
        """Ask the actor (or service) at `to` on another node; return its decoded reply.

        Raises `AskTimeout` without an answer within `timeout_s`, `UnknownNode`
        when no node `to.node` is subscribed, and `RemoteError` with the
        remote error's type and text when the receiver failed.
        """
        sender = from_node if from_node is not None else self._from_node(message)
        data = self._encode(to, message)
        try:
            msg = await self._connection().request(
                self.subject(to, sender), data, timeout=timeout_s
            )
        except nats.errors.NoRespondersError:
            raise UnknownNode(f"no node {to.node!r} is listening on NATS for {to}") from None
        except nats.errors.TimeoutError:
            raise AskTimeout(f"no answer from {to} within {timeout_s} s") from None
        reply = self._decode_reply(to, self._reply_decoder, msg.data)
        if not reply.ok:
            raise RemoteError(
                f"{to} failed: {reply.error_type}: {reply.error}",
                error_type=reply.error_type,
                error=reply.error,
                retriable=reply.retriable,
            )
        decoder = self._decoders.get(reply_type)
        if decoder is None:
            decoder = self._decoders[reply_type] = msgspec.msgpack.Decoder(reply_type)
        return self._decode_reply(to, decoder, bytes(reply.value))

    def statistics(self) -> NatsStatistics:
        return NatsStatistics(
            self._messages, self._bytes, self._undeliverable, self._dropped,
            self._rejected, self._received, self._reconnects,
        )

    # -- internals ---------------------------------------------------------------------

    def _connection(self) -> Any:
        if self._nc is None:
            raise DtxnError("NatsTransport is not connected: use `async with transport`")
        return self._nc

    def _from_node(self, message: object) -> str:
        sender = getattr(message, "sender", None)
        if isinstance(sender, str):
            node = sender.rpartition("@")[2]
            # Also a node already detached: a stopping runtime drains its
            # mailboxes after detaching, and its last acks still go out.
            if node in self._local_nodes:
                return node
        if len(self._ports) == 1:
            return next(iter(self._ports))
        raise DtxnError(
            f"cannot tell which local node sends {type(message).__name__}: "
            f"{len(self._ports)} nodes are attached and the message names none of them"
        )

    def _encode(self, to: Address, message: object) -> bytes:
        try:
            return self._encoder.encode(message)
        except (TypeError, msgspec.EncodeError) as exc:
            raise CodecError(f"cannot encode {type(message).__name__} for {to}: {exc}") from exc

    async def _publisher(self, outbox: MemoryObjectReceiveStream[tuple[str, bytes]]) -> None:
        nc = self._connection()
        async with outbox:
            async for subject, data in outbox:
                if nc.is_closed:
                    break
                try:
                    await nc.publish(subject, data)
                except nats.errors.Error as exc:
                    # An outage longer than nats-py's reconnect buffer: like a
                    # network drop, the protocols re-send on their timers.
                    self._dropped += 1
                    log.warning("NATS publish to %s failed, message dropped: %s", subject, exc)
        self._drained.set()

    async def _subscriber(self, port: NodePort) -> None:
        node = port.node
        failed: list[Exception] = []
        stopped = anyio.Event()

        async def on_message(msg: Any) -> None:
            # nats-py calls this from its subscription's own task and would
            # only pass an error to error_cb: it is raised here instead.
            if failed:
                return
            try:
                await self._on_message(port, msg)
            except Exception as exc:  # noqa: BLE001 - raised again below, in our task group
                failed.append(exc)
                stopped.set()

        with anyio.CancelScope() as scope:
            self._scopes[node] = scope
            # A callback rather than `async for msg in sub.messages`: that
            # iterator starts a task and an `asyncio.wait` per message, which
            # cost about 25 us each (a flood of 200,000 fell 7 s behind).
            sub = await self._connection().subscribe(
                f"{self.prefix}.{node}.*.*", cb=on_message
            )
            self._subscribed.setdefault(node, anyio.Event()).set()
            try:
                await stopped.wait()
                raise failed[0]
            finally:
                if not self._connection().is_closed:
                    with anyio.CancelScope(shield=True):
                        await sub.unsubscribe()

    async def _on_message(self, port: NodePort, msg: Any) -> None:
        self._received += 1
        tokens = msg.subject.rsplit(".", 3)
        actor, sender_node = tokens[-2], tokens[-1]
        if self.peers is not None and sender_node not in self.peers:
            self._reject(port, actor, msg, f"from node {sender_node!r}, not a configured peer")
            return
        if msg.reply:
            service = self._services.get((port.node, actor))
            if service is not None:
                if service.clients is not None and sender_node not in service.clients:
                    await self._start_request(self._refuse, msg, port, actor, sender_node)
                    return
                await self._start_request(self._serve, msg, service.handler, service.decoder)
            else:
                await self._start_request(self._answer_ask, msg, port, actor)
            return
        message = self._decode(port, actor, msg.data, sender_node)
        if message is None:
            return
        problem = self._check_sender(sender_node, message)
        if problem is not None:
            self._reject(port, actor, msg, problem)
            return
        port.deliver_nowait(actor, message)

    def _check_sender(self, sender_node: str, message: object) -> str | None:
        sender = getattr(message, "sender", None)
        if isinstance(sender, str) and sender.rpartition("@")[2] != sender_node:
            kind = type(message).__name__
            return f"{kind} claims sender {sender!r} but came from {sender_node!r}"
        if (
            self.coordinators is not None
            and isinstance(message, Prepare | PaxosPrepare)
            and sender_node not in self.coordinators
        ):
            return f"PREPARE from node {sender_node!r}, not a configured coordinator"
        return None

    def _decode(self, port: NodePort, actor: str, data: bytes, sender_node: str) -> Any:
        message_type = port.message_type(actor)
        decoder = self._decoders.get(message_type)
        if decoder is None:
            decoder = self._decoders[message_type] = msgspec.msgpack.Decoder(message_type)
        try:
            return decode_bounded(
                decoder, data, max_bytes=self.max_message_bytes, max_nesting=self.max_nesting
            )
        except CodecError as exc:
            self._undeliverable += 1
            self._report(
                port, actor, data, sender_node,
                f"malformed message for {actor}@{port.node} from node {sender_node!r} "
                f"({len(data)} bytes): {exc}",
            )
            return None

    def _decode_reply(self, to: Address, decoder: msgspec.msgpack.Decoder[Any], data: bytes) -> Any:
        try:
            return decode_bounded(
                decoder, data, max_bytes=self.max_message_bytes, max_nesting=self.max_nesting
            )
        except CodecError as exc:
            raise CodecError(f"malformed reply from {to} ({len(data)} bytes): {exc}") from exc

    def _reject(self, port: NodePort, actor: str, msg: Any, why: str) -> None:
        self._rejected += 1
        sender_node = msg.subject.rsplit(".", 1)[-1]
        self._report(port, actor, msg.data, sender_node,
                     f"node {port.node}: rejected on {msg.subject}: {why}")

    def _report(self, port: NodePort, actor: str, data: bytes, sender_node: str,
                reason: str) -> None:
        """Report a dropped message as a dead letter (its one log line), within the
        sender's log budget; beyond it the drop is only counted."""
        held = self._log_limit.allow(sender_node)
        if held is None:
            return
        if held:
            reason += f" ({held} more from node {sender_node!r} counted, not logged)"
        port.report_undeliverable(actor, data, reason)

    async def _start_request(self, handle: Callable[..., Awaitable[None]], *args: Any) -> None:
        msg = args[0]
        if self._in_progress >= self.max_requests:
            await msg.respond(self._encoder.encode(
                _Reply(False, error_type="Busy", error=f"{self.max_requests} requests in progress")
            ))
            return
        assert self._tg is not None
        self._in_progress += 1
        self._tg.start_soon(self._released, handle, args)

    async def _released(
        self, handle: Callable[..., Awaitable[None]], args: tuple[Any, ...]
    ) -> None:
        try:
            await handle(*args)
        finally:
            self._in_progress -= 1

    async def _serve(
        self, msg: Any, handler: Handler, decoder: msgspec.msgpack.Decoder[Any]
    ) -> None:
        try:
            request = decode_bounded(
                decoder, msg.data, max_bytes=self.max_message_bytes, max_nesting=self.max_nesting
            )
        except CodecError as exc:
            self._undeliverable += 1
            sender_node = msg.subject.rsplit(".", 1)[-1]
            held = self._log_limit.allow(sender_node)
            if held is not None:
                log.warning("NATS: malformed request on %s (%d bytes): %s%s", msg.subject,
                            len(msg.data), exc,
                            f" ({held} more from node {sender_node!r} counted, not logged)"
                            if held else "")
            await self._respond_error(msg, CodecError(f"malformed request: {exc}"))
            return
        await self._respond(msg, handler, request)

    async def _refuse(self, msg: Any, port: NodePort, actor: str, sender_node: str) -> None:
        why = f"{actor}@{port.node} does not serve node {sender_node!r} (not a configured client)"
        self._reject(port, actor, msg, why)
        await self._respond_error(msg, NotAllowed(why))

    async def _answer_ask(self, msg: Any, port: NodePort, actor: str) -> None:
        sender_node = msg.subject.rsplit(".", 1)[-1]
        message = self._decode(port, actor, msg.data, sender_node)
        if message is None:
            await self._respond_error(msg, CodecError(f"malformed message for {actor}"))
            return
        problem = self._check_sender(sender_node, message)
        if problem is not None:
            self._reject(port, actor, msg, problem)
            await self._respond_error(msg, DtxnError(problem))
            return
        await self._respond(msg, lambda m: port.ask(actor, m), message)

    async def _respond(self, msg: Any, handler: Handler, request: Any) -> None:
        try:
            value = await handler(request)
        except DtxnError as exc:
            # The asker gets the error; this node keeps serving.
            await self._respond_error(msg, exc)
            return
        try:
            value_bytes = msgspec.Raw(self._encoder.encode(value))
            await msg.respond(self._encoder.encode(_Reply(True, value_bytes)))
        except nats.errors.Error as exc:
            log.warning("NATS: could not answer %s: %s", msg.subject, exc)

    async def _respond_error(self, msg: Any, exc: Exception) -> None:
        retriable = getattr(exc, "retriable", True)
        reply = _Reply(
            False,
            error_type=type(exc).__name__,
            error=str(exc),
            retriable=retriable if isinstance(retriable, bool) else True,
        )
        try:
            await msg.respond(self._encoder.encode(reply))
        except nats.errors.Error as send_error:
            log.warning("NATS: could not answer %s: %s", msg.subject, send_error)


def tls_context(
    ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """A client TLS context: trust `ca_file`, present `cert_file`/`key_file` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    return context


__all__ = ["NatsStatistics", "NatsTransport", "RemoteError", "subject_token", "tls_context"]
