"""Hosting protocol machines: run their effects against the WAL, the clock and the transport.

A `MachineHost` keeps one machine per live transaction and interprets the
effects a machine returns, in order:

- `ForceLog` hands the record to the group-committed WAL and *parks* the rest
  of that transaction's effects until the record is durable; events that
  arrive meanwhile still run their machine and queue behind it. Other
  transactions are never held up (the host does not await the fsync).
- `Log` appends lazily; `Send` goes out through the transport without waiting
  (a full mailbox or a down node drops the message, which the protocols'
  timers recover); `SetTimer`/`CancelTimer` go to the host's `TimerWheel`
  (`dtxn.runtime.hosting._timer_wheel`), which keeps them all on one loop timer of the
  runtime's clock.
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
from dtxn.actors.timing import Cancellable, Timekeeper
from dtxn.protocols.effects import (
    CancelTimer,
    Compact,
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
from dtxn.protocols.paxos_messages import PaxosMessage
from dtxn.protocols.paxos_records import PaxosRecord
from dtxn.protocols.records import AtomicRecord, Record, kind_of
from dtxn.protocols.saga.records import SagaRecord
from dtxn.runtime.hosting._timer_wheel import Timer, TimerWheel

if TYPE_CHECKING:
    from dtxn.runtime._stats import Counters
    from dtxn.runtime.wal import WalError

log = logging.getLogger("dtxn.txn")

FINISHED_REMEMBERED = 100_000


class LogEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What the runtime writes to the WAL: which actor wrote the protocol record.

    gc=False: it holds only a str and a record (itself gc=False), so it can
    take part in no cycle, and one is built per record written.
    """

    actor: str
    record: AtomicRecord | SagaRecord | PaxosRecord


LOG_ENCODER = msgspec.msgpack.Encoder()
LOG_DECODER = msgspec.msgpack.Decoder(LogEntry)
MESSAGE_DECODER = msgspec.msgpack.Decoder(AtomicMessage | PaxosMessage)


class Machine(Protocol):
    txid: str

    def handle(self, event: Event) -> list[Effect]: ...


class _Receiver(Machine, Protocol):
    """A machine that also takes a message directly: `receive(m)` is `handle(Received(m))`."""

    def receive(self, message: Message) -> list[Effect]: ...


class HostServices(Protocol):
    """What a host needs from its runtime."""

    counters: Counters
    # Whether `trace` has any hook to call; hosts skip building its arguments otherwise.
    tracing: bool
    # Set once the node has crashed or stopped: continuations of forces must not run.
    halted: bool

    @property
    def clock(self) -> Timekeeper: ...

    @property
    def log_may_be_short(self) -> str | None:
        """Why this node's log may have lost forced records (a damaged WAL sidecar), or
        None: while set, a coordinator presumes no abort for what it does not know."""
        ...

    def send_nowait(self, to: str, message: Message) -> None: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable: ...

    def log_append(self, txid: str, kind: str, data: bytes) -> int:
        """Append a lazy record; return its LSN (0 when nothing is written: a halted node)."""
        ...

    def log_force(
        self, txid: str, kind: str, data: bytes, done: Callable[[WalError | None], None]
    ) -> int:
        """Force a record; `done(None)` once durable, `done(error)` if the WAL failed.

        Returns its LSN (0 when nothing is written: a halted node).
        """
        ...

    def log_drop(self, lsns: list[int]) -> None:
        """Delete the records at these LSNs in the next commit (WalStore.drop)."""
        ...

    def force_failed(self, error: WalError | None) -> None:
        """A force's `done` saw an error or a halted node: stop the node on an error."""
        ...

    def trace(self, txid: str, actor: str, what: str, detail: Any) -> None: ...


# The backlog of a transaction that is not parked on a force. Shared and never
# mutated: a parked transaction gets a list of its own (see `_run`), so most
# transactions never allocate one.
_NO_BACKLOG: list[Effect] = []


# As `_NO_BACKLOG`, for the records riding on a force and a transaction's LSNs.
_NO_RECORDS: list[Record] = []
_NO_LSNS: list[int] = []


def _forced_later(effects: list[Effect], start: int) -> bool:
    """Whether `effects[start:]` begins with log records up to and including a forced one."""
    for index in range(start, len(effects)):
        kind = type(effects[index])
        if kind is ForceLog:
            return True
        if kind is not Log:
            return False
    return False


# Machine type -> whether it has `receive`: a few protocol classes in practice.
_RECEIVES: dict[type, bool] = {}


class _Txn:
    """One live transaction of a host; also the continuation of its forced record.

    Being its own continuation saves an object per forced record (the WAL keeps
    the callback until the commit), which the garbage collector would otherwise
    scan while the commit is in flight.
    """

    __slots__ = (
        "backlog",
        "blocked",
        "forcing",
        "host",
        "lsns",
        "machine",
        "receives",
        "riding",
        "timers",
        "txid",
    )

    def __init__(self, host: MachineHost, txid: str, machine: Machine | None) -> None:
        self.host = host
        self.txid = txid
        self.machine = machine
        # Whether the machine has `receive` (see `_Receiver`), looked up once per type.
        kind = type(machine)
        receives = _RECEIVES.get(kind)
        if receives is None:
            receives = _RECEIVES[kind] = callable(getattr(kind, "receive", None))
        self.receives = receives
        self.blocked = False
        self.backlog = _NO_BACKLOG
        self.timers: dict[str, Cancellable] = {}
        # The record being forced, and the records forced with it (for the
        # "forced" trace events).
        self.forcing: Record | None = None
        self.riding: list[Record] = _NO_RECORDS
        # The LSNs of the records this host wrote for the transaction (recovered
        # ones included): `Compact` drops all but the last. Never by txid: the
        # node's other hosts write under the same txid in the same log.
        self.lsns: list[int] = _NO_LSNS

    def note_lsn(self, lsn: int) -> None:
        if self.lsns is _NO_LSNS:
            self.lsns = [lsn]
        else:
            self.lsns.append(lsn)

    def __call__(self, error: WalError | None = None) -> None:
        """The forced record is durable: carry out the effects parked behind it."""
        host = self.host
        services = host.services
        if error is not None or services.halted:
            # After a crash or a stop nothing after the force runs (recovery
            # finishes the transaction); a WAL error stops the node.
            services.force_failed(error)
            return
        # Looked up again, as a crash or a stop may have dropped the transaction.
        txid = self.txid
        txn = host.txns.get(txid)
        if txn is None:
            return
        if services.tracing:
            for record in self.riding:
                services.trace(txid, host.me, "forced", record)
            services.trace(txid, host.me, "forced", self.forcing)
        txn.blocked = False
        backlog, txn.backlog = txn.backlog, _NO_BACKLOG
        host._run(txid, txn, backlog)


class MachineHost:
    """Base of the coordinator and participant hosts of one node."""

    role = "host"

    def __init__(self, services: HostServices, name: str, node: str) -> None:
        self.services = services
        self.name = name
        self.me = f"{name}@{node}"
        self.txns: dict[str, _Txn] = {}
        self.finished: OrderedDict[str, Outcome] = OrderedDict()
        # txid -> the LSN of its tombstone, for the ended transactions remembered.
        self.tombstones: dict[str, int] = {}
        # How many ended transactions are remembered (`Runtime(remember_ended=)`).
        self.finished_max = FINISHED_REMEMBERED
        self.timers = TimerWheel(services, self._timer_fired)

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
        if txn.receives:
            # The atomic-commit machines take a message without a `Received`
            # event around it (one allocation and one type test less).
            receiver: _Receiver = txn.machine  # type: ignore[assignment]
            effects = receiver.receive(message)
        else:
            effects = txn.machine.handle(Received(message))
        # Many messages change only the machine (all votes but the last, say):
        # with a live machine, `_run` of no effects would do nothing.
        if effects:
            self._run(txid, txn, effects)

    def dispatch(self, txid: str, event: Event) -> None:
        """Hand `event` to the transaction's machine and carry out its effects."""
        txn = self.txns.get(txid)
        if txn is None or txn.machine is None:
            self.services.counters.ignored += 1
            log.debug("txid=%s %s: %s for a transaction no longer held", txid, self.me, event)
            return
        effects = txn.machine.handle(event)
        if effects:  # see `_deliver`
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
        """Remember how `txid` ended; beyond `finished_max`, forget the oldest, log and all.

        A forgotten transaction's tombstone (the record `Compact` kept) is
        deleted too. A transaction still live has none yet (a coordinator
        decides before its acks are in): its records stay until it ends.
        """
        finished = self.finished
        finished[txid] = outcome
        while len(finished) > self.finished_max:
            forgotten, _ = finished.popitem(last=False)
            self.forget_tombstone(forgotten)

    def forget_tombstone(self, txid: str) -> None:
        lsn = self.tombstones.pop(txid, None)
        if lsn is not None:
            self.services.log_drop([lsn])

    def compact(self, txid: str, lsns: list[int], *, keep: bool | None = None) -> None:
        """Keep the last of `lsns` as the transaction's tombstone; drop the others.

        The tombstone is kept while the outcome is remembered (`keep` None:
        `remembers(txid)`). An outcome already pushed out of the window (a
        coordinator whose acks took long, or a window of 0) is forgotten in
        the log too: keeping its record would leak it, and disagree with the
        memory that lets its txid be used again.
        """
        if not lsns:
            return
        if keep is None:
            keep = self.remembers(txid)
        if not keep:
            self.services.log_drop(lsns)
            return
        if len(lsns) > 1:
            self.services.log_drop(lsns[:-1])
        self.tombstones[txid] = lsns[-1]

    def remembers(self, txid: str) -> bool:
        """Whether the outcome of `txid` is in the remember window (decided, not evicted)."""
        return txid in self.finished

    def add(self, txid: str, machine: Machine) -> None:
        self.txns[txid] = _Txn(self, txid, machine)

    def cancel_all_timers(self) -> None:
        for txn in self.txns.values():
            for timer in txn.timers.values():
                timer.cancel()
            txn.timers.clear()
        self.timers.close()

    # -- effects -----------------------------------------------------------------

    def _run(self, txid: str, txn: _Txn | None, effects: list[Effect]) -> None:
        if txn is not None and txn.blocked:
            txn.backlog.extend(effects)
            return
        services = self.services
        counters = services.counters
        # Records forced by a later record of this run (traced "forced" with it).
        riding = _NO_RECORDS
        # Dispatch on the exact type, ordered by frequency: an identity test is
        # a fraction of an isinstance call, and this loop runs for every effect
        # of every transaction. Effect types are not subclassed (the final
        # `else` would catch one). mypy does not narrow through `kind`, so each
        # branch rebinds the effect with its type (no `cast` call: it is a
        # function call per effect at run time).
        for index, effect in enumerate(effects, 1):
            kind = type(effect)
            if kind is Send:
                send: Send = effect  # type: ignore[assignment]
                counters.messages_sent += 1
                services.send_nowait(send.to, send.message)
            elif kind is SetTimer:
                set_timer: SetTimer = effect  # type: ignore[assignment]
                if txn is None:
                    raise TypeError(f"SetTimer for {txid!r} without a machine")
                timers = txn.timers
                name = set_timer.name
                old = timers.pop(name, None)
                if old is not None:
                    old.cancel()
                timers[name] = self.timers.arm(set_timer.delay_s, txid, name)
            elif kind is CancelTimer:
                if txn is not None:
                    cancel: CancelTimer = effect  # type: ignore[assignment]
                    old = txn.timers.pop(cancel.name, None)
                    if old is not None:
                        old.cancel()
            elif kind is ForceLog:
                if _forced_later(effects, index):
                    # Another forced record follows with only log records in
                    # between: the log commits in order, so forcing that one
                    # makes this one durable too, for one fsync instead of two
                    # (a saga's start and its first step's start, say).
                    counters.forces += 1
                    rider: ForceLog = effect  # type: ignore[assignment]
                    record = rider.record
                    if services.tracing:
                        services.trace(txid, self.me, "force", record)
                        if riding is _NO_RECORDS:
                            riding = []
                        riding.append(record)
                    lsn = services.log_append(
                        txid,
                        kind_of(record),
                        LOG_ENCODER.encode(LogEntry(self.name, record)),  # type: ignore[arg-type]
                    )
                    if txn is not None and lsn:
                        txn.note_lsn(lsn)
                    continue
                if txn is None:
                    # An answer about an unknown transaction that must be forced
                    # first: park its remaining effects on a placeholder entry.
                    txn = _Txn(self, txid, None)
                    self.txns[txid] = txn
                txn.blocked = True
                txn.backlog = effects[index:]
                counters.forces += 1
                force: ForceLog = effect  # type: ignore[assignment]
                record = force.record
                txn.forcing = record
                txn.riding = riding
                if services.tracing:
                    services.trace(txid, self.me, "force", record)
                lsn = services.log_force(
                    txid,
                    kind_of(record),
                    LOG_ENCODER.encode(LogEntry(self.name, record)),  # type: ignore[arg-type]
                    txn,
                )
                if lsn:
                    txn.note_lsn(lsn)
                return
            elif kind is InvokeResource:
                self.on_invoke(txid, effect)  # type: ignore[arg-type]
            elif kind is Decide:
                decide: Decide = effect  # type: ignore[assignment]
                self.remember(txid, decide.outcome)
                if services.tracing:
                    services.trace(txid, self.me, "decide", decide.outcome.value)
                self.on_decide(txid, decide.outcome, decide.reason)
            elif kind is Compact:
                # Nothing logged by this incarnation (a replayed end): recovery
                # compacts such logs itself, knowing their LSNs.
                if txn is not None:
                    self.compact(txid, txn.lsns)
                    txn.lsns = _NO_LSNS
            elif kind is Forget:
                if txn is not None:
                    for timer in txn.timers.values():
                        timer.cancel()
                    if self.txns.get(txid) is txn:
                        del self.txns[txid]
                    txn = None
            elif kind is Log:
                lazy: Log = effect  # type: ignore[assignment]
                record = lazy.record
                if services.tracing:
                    services.trace(txid, self.me, "log", record)
                lsn = services.log_append(
                    txid,
                    kind_of(record),
                    LOG_ENCODER.encode(LogEntry(self.name, record)),  # type: ignore[arg-type]
                )
                if txn is not None and lsn:
                    txn.note_lsn(lsn)
            elif kind is Ignored:
                ignored: Ignored = effect  # type: ignore[assignment]
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
            # What it forced (a unilateral abort) is its tombstone now.
            self.compact(txid, txn.lsns)

    def _encode(self, record: Record) -> bytes:
        return LOG_ENCODER.encode(LogEntry(self.name, record))  # type: ignore[arg-type]

    def _timer_fired(self, timer: Timer) -> None:
        txid = timer.txid
        txn = self.txns.get(txid)
        if txn is None or txn.timers.get(timer.name) is not timer:
            return
        del txn.timers[timer.name]
        if self.services.tracing:
            self.services.trace(txid, self.me, "timer", timer.name)
        self.dispatch(txid, TimerFired(timer.name))
