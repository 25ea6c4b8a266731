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
from typing import TYPE_CHECKING, Any, Protocol

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

if TYPE_CHECKING:
    from dtxn.runtime.stats import Counters

log = logging.getLogger("dtxn.txn")

FINISHED_REMEMBERED = 100_000


class LogEntry(msgspec.Struct, frozen=True, array_like=True):
    """What the runtime writes to the WAL: which actor wrote the protocol record."""

    actor: str
    record: AtomicRecord


LOG_ENCODER = msgspec.msgpack.Encoder()
LOG_DECODER = msgspec.msgpack.Decoder(LogEntry)
MESSAGE_DECODER = msgspec.msgpack.Decoder(AtomicMessage)


class Machine(Protocol):
    txid: str

    def handle(self, event: Event) -> list[Effect]: ...


class HostServices(Protocol):
    """What a host needs from its runtime."""

    counters: Counters

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
        txn = self.txns.get(txid)
        if txn is None or txn.machine is None:
            effects = self.answer_unknown(message)
            if effects is None:
                return
            self._run(txid, txn, effects)
            return
        self.dispatch(txid, Received(message))

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
        # Ordered by frequency; isinstance narrows for mypy at no extra cost.
        for index, effect in enumerate(effects):
            if isinstance(effect, Send):
                counters.messages_sent += 1
                services.send_nowait(effect.to, effect.message)
            elif isinstance(effect, SetTimer):
                if txn is None:
                    raise TypeError(f"SetTimer for {txid!r} without a machine")
                timers = txn.timers
                old = timers.pop(effect.name, None)
                if old is not None:
                    old.cancel()
                timers[effect.name] = services.call_later(
                    effect.delay_s, _TimerCallback(self, txid, effect.name)
                )
            elif isinstance(effect, CancelTimer):
                if txn is not None:
                    old = txn.timers.pop(effect.name, None)
                    if old is not None:
                        old.cancel()
            elif isinstance(effect, ForceLog):
                if txn is None:
                    # An answer about an unknown transaction that must be forced
                    # first: park its remaining effects on a placeholder entry.
                    txn = _Txn(None)
                    self.txns[txid] = txn
                txn.blocked = True
                txn.backlog = effects[index + 1 :]
                counters.forces += 1
                record = effect.record
                services.trace(txid, self.me, "force", record)
                services.log_force(
                    txid, kind_of(record), self._encode(record), _Forced(self, txid, record)
                )
                return
            elif isinstance(effect, Decide):
                self.remember(txid, effect.outcome)
                services.trace(txid, self.me, "decide", effect.outcome.value)
                self.on_decide(txid, effect.outcome, effect.reason)
            elif isinstance(effect, Forget):
                if txn is not None:
                    for timer in txn.timers.values():
                        timer.cancel()
                    if self.txns.get(txid) is txn:
                        del self.txns[txid]
                    txn = None
            elif isinstance(effect, InvokeResource):
                self.on_invoke(txid, effect)
            elif isinstance(effect, Log):
                record = effect.record
                services.trace(txid, self.me, "log", record)
                services.log_append(txid, kind_of(record), self._encode(record))
            elif isinstance(effect, Ignored):
                counters.ignored += 1
                if effect.violation:
                    counters.violations += 1
                    log.warning("txid=%s %s: protocol violation: %s", txid, self.me, effect.reason)
                else:
                    log.debug("txid=%s %s: ignored: %s", txid, self.me, effect.reason)
            else:  # pragma: no cover - every effect type is handled above
                raise TypeError(f"unknown effect {effect!r}")
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
        self.services.trace(txid, self.me, "forced", record)
        txn.blocked = False
        backlog, txn.backlog = txn.backlog, []
        self._run(txid, txn, backlog)

    def _timer_fired(self, txid: str, name: str) -> None:
        txn = self.txns.get(txid)
        if txn is None or txn.timers.pop(name, None) is None:
            return
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
        self.host._forced(self.txid, self.record)


class _TimerCallback:
    """A timer's callback; a small class rather than a closure, to keep it cheap."""

    __slots__ = ("host", "name", "txid")

    def __init__(self, host: MachineHost, txid: str, name: str) -> None:
        self.host = host
        self.txid = txid
        self.name = name

    def __call__(self) -> None:
        self.host._timer_fired(self.txid, self.name)
