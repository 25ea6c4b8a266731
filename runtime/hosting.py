"""Hosting protocol machines: run their effects against the WAL, the clock and the transport.

A `MachineHost` keeps one machine per live transaction and interprets the
effects a machine returns, in order:

- `ForceLog` hands the record to the group-committed WAL and *parks* the rest
  of that transaction's effects until the record is durable; events that
  arrive meanwhile still run their machine and queue behind it. Other
  transactions are never held up (the host does not await the fsync).
- `Log` appends lazily; `Send` goes out through the transport without waiting
  (a full mailbox or a down node drops the message, which the protocols'
  timers recover); `SetTimer`/`CancelTimer` use the runtime's clock.
- Messages for transactions the host does not hold are answered from the
  finished-outcome memory or by the protocol's presumption.

`dispatch` never awaits, so the event loop itself serialises it: the actor's
`receive`, timer callbacks and completions of forces and resource calls all
re-enter it without interleaving.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec
from dtxn.actors.timing import Cancellable
from dtxn.protocols.effects import (
    CancelTimer,
    Decide,
    Effect,
    Event,
    ForceLog,
    Forget,
    Ignored,
    InvokeResource,
    Log,
    Outcome,
    Received,
    Send,
    SetTimer,
    TimerFired,
)
from dtxn.protocols.messages import AtomicMessage, Message
from dtxn.protocols.records import AtomicRecord, Record, kind_of
from dtxn.protocols.saga_records import SagaRecord

if TYPE_CHECKING:
    from dtxn.runtime.stats import Counters

log = logging.getLogger("dtxn.txn")

FINISHED_REMEMBERED = 100_000


class LogEntry(msgspec.Struct, frozen=True, array_like=True):
    """What the runtime writes to the WAL: which actor wrote the protocol record."""

    actor: str
    record: AtomicRecord | SagaRecord


LOG_ENCODER = msgspec.msgpack.Encoder()
LOG_DECODER = msgspec.msgpack.Decoder(LogEntry)
MESSAGE_DECODER = msgspec.msgpack.Decoder(AtomicMessage)


class Machine(Protocol):
    txid: str

    def handle(self, event: Event) -> list[Effect]: ...


class HostServices(Protocol):
    """What a host needs from its runtime."""

    counters: Counters
    # Whether `trace` has any hook to call; hosts skip building its arguments otherwise.
    tracing: bool

    def send_nowait(self, to: str, message: Message) -> None: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable: ...

    def log_append(self, txid: str, kind: str, data: bytes) -> None: ...

    def log_force(self, txid: str, kind: str, data: bytes, done: Callable[[], None]) -> None: ...

    def trace(self, txid: str, actor: str, what: str, detail: Any) -> None: ...


class _Txn:
    __slots__ = ("backlog", "blocked", "machine", "timers")

    def __init__(self, machine: Machine | None) -> None:
        self.machine = machine
        self.blocked = False
        self.backlog: list[Effect] = []
        self.timers: dict[str, Cancellable] = {}


class MachineHost:
    """Base of the coordinator and participant hosts of one node."""

    role = "host"

    def __init__(self, services: HostServices, name: str, node: str) -> None:
        self.services = services
        self.name = name
        self.me = f"{name}@{node}"
        self.txns: dict[str, _Txn] = {}
        self.finished: OrderedDict[str, Outcome] = OrderedDict()

    # -- entry points ------------------------------------------------------------

    def deliver(self, message: Message) -> None:
        """A protocol message arrived for this host."""
        txid = message.txid
        self._deliver(txid, self.txns.get(txid), message)

    def _deliver(self, txid: str, txn: _Txn | None, message: Message) -> None:
        """`deliver` with the transaction already looked up (None if not held)."""
        if txn is None or txn.machine is None:
            effects = self.answer_unknown(message)
            if effects is None:
                return
            self._run(txid, txn, effects)
            return
        self._run(txid, txn, txn.machine.handle(Received(message)))

    def dispatch(self, txid: str, event: Event) -> None:
        """Hand `event` to the transaction's machine and carry out its effects."""
        txn = self.txns.get(txid)
        if txn is None or txn.machine is None:
            self.services.counters.ignored += 1
            log.debug("txid=%s %s: %s for a transaction no longer held", txid, self.me, event)
            return
        effects = txn.machine.handle(event)
        self._run(txid, txn, effects)

    def answer_unknown(self, message: Message) -> list[Effect] | None:
        """Effects answering a message about a transaction without a live machine."""
        raise NotImplementedError

    def on_decide(self, txid: str, outcome: Outcome, reason: str) -> None:
        """A machine decided (coordinator: tell the caller; participant: count)."""

    def on_invoke(self, txid: str, effect: InvokeResource) -> None:
        raise NotImplementedError(f"{self.role} hosts do not invoke resources")

    def on_effect(self, txid: str, effect: Effect) -> bool:
        """Carry out an effect of a host-specific kind (sagas); False if unknown."""
        return False

    def remember(self, txid: str, outcome: Outcome) -> None:
        finished = self.finished
        finished[txid] = outcome
        if len(finished) > FINISHED_REMEMBERED:
            finished.popitem(last=False)

    def add(self, txid: str, machine: Machine) -> None:
        self.txns[txid] = _Txn(machine)

    def cancel_all_timers(self) -> None:
        for txn in self.txns.values():
            for timer in txn.timers.values():
                timer.cancel()
            txn.timers.clear()

    # -- effects -----------------------------------------------------------------

    def _run(self, txid: str, txn: _Txn | None, effects: list[Effect]) -> None:
        if txn is not None and txn.blocked:
            txn.backlog.extend(effects)
            return
        services = self.services
        counters = services.counters
        # Dispatch on the exact type, ordered by frequency: an identity test is
        # a fraction of an isinstance call, and this loop runs for every effect
        # of every transaction. Effect types are not subclassed (the final
        # `else` would catch one). mypy does not narrow through `kind`, hence
        # the casts.
        for index, effect in enumerate(effects, 1):
            kind = type(effect)
            if kind is Send:
                send = cast(Send, effect)
                counters.messages_sent += 1
                services.send_nowait(send.to, send.message)
            elif kind is SetTimer:
                set_timer = cast(SetTimer, effect)
                if txn is None:
                    raise TypeError(f"SetTimer for {txid!r} without a machine")
                timers = txn.timers
                old = timers.pop(set_timer.name, None)
                if old is not None:
                    old.cancel()
                timers[set_timer.name] = services.call_later(
                    set_timer.delay_s, _TimerCallback(self, txid, set_timer.name)
                )
            elif kind is CancelTimer:
                if txn is not None:
                    old = txn.timers.pop(cast(CancelTimer, effect).name, None)
                    if old is not None:
                        old.cancel()
            elif kind is ForceLog:
                if txn is None:
                    # An answer about an unknown transaction that must be forced
                    # first: park its remaining effects on a placeholder entry.
                    txn = _Txn(None)
                    self.txns[txid] = txn
                txn.blocked = True
                txn.backlog = effects[index:]
                counters.forces += 1
                record = cast(ForceLog, effect).record
                if services.tracing:
                    services.trace(txid, self.me, "force", record)
                services.log_force(
                    txid, kind_of(record), self._encode(record), _Forced(self, txid, record)
                )
                return
            elif kind is InvokeResource:
                self.on_invoke(txid, cast(InvokeResource, effect))
            elif kind is Decide:
                decide = cast(Decide, effect)
                self.remember(txid, decide.outcome)
                if services.tracing:
                    services.trace(txid, self.me, "decide", decide.outcome.value)
                self.on_decide(txid, decide.outcome, decide.reason)
            elif kind is Forget:
                if txn is not None:
                    for timer in txn.timers.values():
                        timer.cancel()
                    if self.txns.get(txid) is txn:
                        del self.txns[txid]
                    txn = None
            elif kind is Log:
                record = cast(Log, effect).record
                if services.tracing:
                    services.trace(txid, self.me, "log", record)
                services.log_append(txid, kind_of(record), self._encode(record))
            elif kind is Ignored:
                ignored = cast(Ignored, effect)
                counters.ignored += 1
                if ignored.violation:
                    counters.violations += 1
                    log.warning(
                        "txid=%s %s: protocol violation: %s", txid, self.me, ignored.reason
                    )
                else:
                    log.debug("txid=%s %s: ignored: %s", txid, self.me, ignored.reason)
            elif not self.on_effect(txid, effect):
                raise TypeError(f"{self.role} host cannot carry out effect {effect!r}")
        # A placeholder whose forced answer went out: nothing is held any more.
        if (
            txn is not None
            and txn.machine is None
            and not txn.blocked
            and self.txns.get(txid) is txn
        ):
            del self.txns[txid]

    def _encode(self, record: Record) -> bytes:
        return LOG_ENCODER.encode(LogEntry(self.name, record))  # type: ignore[arg-type]

    def _forced(self, txid: str, record: Record) -> None:
        txn = self.txns.get(txid)
        if txn is None:
            return
        if self.services.tracing:
            self.services.trace(txid, self.me, "forced", record)
        txn.blocked = False
        backlog, txn.backlog = txn.backlog, []
        self._run(txid, txn, backlog)

    def _timer_fired(self, txid: str, name: str) -> None:
        txn = self.txns.get(txid)
        if txn is None or txn.timers.pop(name, None) is None:
            return
        if self.services.tracing:
            self.services.trace(txid, self.me, "timer", name)
        self.dispatch(txid, TimerFired(name))


class _Forced:
    """Continuation of a forced record: resumes its transaction's effects."""

    __slots__ = ("host", "record", "txid")

    def __init__(self, host: MachineHost, txid: str, record: Record) -> None:
        self.host = host
        self.txid = txid
        self.record = record

    def __call__(self) -> None:
        # MachineHost._forced, written out: it runs for every forced record.
        host = self.host
        txid = self.txid
        txn = host.txns.get(txid)
        if txn is None:
            return
        if host.services.tracing:
            host.services.trace(txid, host.me, "forced", self.record)
        txn.blocked = False
        backlog, txn.backlog = txn.backlog, []
        host._run(txid, txn, backlog)


class _TimerCallback:
    """A timer's callback; a small class rather than a closure, to keep it cheap."""

    __slots__ = ("host", "name", "txid")

    def __init__(self, host: MachineHost, txid: str, name: str) -> None:
        self.host = host
        self.txid = txid
        self.name = name

    def __call__(self) -> None:
        self.host._timer_fired(self.txid, self.name)
