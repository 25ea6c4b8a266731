"""`Runtime`: one node. Hosts actors, owns the clock, the WAL and a transport.

    async with Runtime("bank-a", wal_path="bank-a.db", resources={"ledger": Ledger()}) as rt:
        ...

A runtime always hosts a coordinator actor (named "coordinator"), a Paxos
Commit acceptor actor ("acceptor") and one participant actor per configured
`Resource`. Entering the block opens the
WAL, rebuilds every unfinished transaction from it (recovery) and only then
attaches to the transport. Leaving it normally drains the actors' mailboxes
and stops; in-flight transactions keep their durable state and are finished
by recovery at the next start. `crash()` models a process crash: everything
stops at once and records not yet forced are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from anyio import CancelScope
from dtxn.actors import (
    Actor,
    ActorRef,
    ActorSystem,
    ActorSystemStatistics,
    Directive,
    MailboxFull,
    SupervisionPolicy,
)
from dtxn.actors.errors import ActorError
from dtxn.actors.mailbox import Mailbox, MailboxClosed
from dtxn.actors.timing import Cancellable
from dtxn.protocols.choose import Capabilities, Choice, Requirements, choose_protocol
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Message, Prepare, Protocol, Timeouts
from dtxn.protocols.paxos_messages import PaxosPrepare
from dtxn.protocols.records import CoordChose
from dtxn.protocols.saga import SagaDefinition, SagaReport
from dtxn.runtime import otel
from dtxn.runtime._stats import Counters, TxnStatistics
from dtxn.runtime.caps import (
    MAX_TIMEOUT_S,
    check_max_timeout,
    check_payloads,
    check_timeouts,
    check_txid,
    parse_pid,
    participant_items,
    participant_pid,
    paxos_placement,
)
from dtxn.runtime.clock import Clock
from dtxn.runtime.hosting import (
    FINISHED_REMEMBERED,
    LOG_ENCODER,
    HostActor,
    LogEntry,
    MachineHost,
    WorkerPool,
)
from dtxn.runtime.hosting.acceptor import ACCEPTOR_ACTOR, AcceptorHost
from dtxn.runtime.hosting.coordinator import COORDINATOR_ACTOR, CoordinatorHost, TxnOutcome
from dtxn.runtime.hosting.participant import ParticipantHost
from dtxn.runtime.hosting.recovery import rebuild, resume
from dtxn.runtime.hosting.saga_steps import ActorStep, step_function
from dtxn.runtime.hosting.sagas import SAGA_ACTOR, SagaHost, SagaOutcome, StepFn
from dtxn.runtime.observe import TraceEvent, TraceStream, describe
from dtxn.runtime.resource import Recoverable, Resource
from dtxn.runtime.transport import Address, InProcessTransport, Transport, UnknownNode
from dtxn.runtime.transport.limits import Budget, LogLimiter
from dtxn.runtime.wal import Durability, WalError, WalStore, make_wal, parse_durability

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

M = TypeVar("M")

log = logging.getLogger("dtxn.runtime")

HOST_MAILBOX = 65536
# Per sending node, messages about transactions no host here holds: a burst,
# then so many a second (docs/nats.md). Far below HOST_MAILBOX, so that no
# one sender can fill a host's mailbox with them.
UNKNOWN_BURST = 1000
UNKNOWN_PER_S = 1000.0
CHECKED_PIDS_MAX = 1024


class UnknownTransaction(TransactionError):
    """Raised by `status` for a transaction id this node holds nothing about."""


class TxnStatus(msgspec.Struct, frozen=True):
    """What a node knows about one transaction, per local role."""

    txid: str
    roles: dict[str, str]  # actor name -> machine state or final outcome
    in_doubt: bool
    outcome: str | None


class RuntimeStatistics(msgspec.Struct, frozen=True):
    """An immutable snapshot of one node's counters."""

    node: str
    actors: ActorSystemStatistics
    txn: TxnStatistics
    undeliverable: int


# Below this many remembered outcomes per host, `Runtime` warns (docs/wal.md).
REMEMBER_ENDED_SAFE = 10_000


class Runtime:
    """A node: actors, a clock, a WAL, resources and a transport, as an async context manager."""

    def __init__(
        self,
        node: str = "node",
        *,
        clock: Clock | None = None,
        transport: Transport | None = None,
        wal_path: str | os.PathLike[str] | None = None,
        durability: Durability | str | None = None,
        wal: WalStore | None = None,
        resources: Mapping[str, Resource] | None = None,
        timeouts: Timeouts | None = None,
        resource_concurrency: int = 64,
        telemetry: bool | None = None,
        tracer_provider: TracerProvider | None = None,
        remember_ended: int = FINISHED_REMEMBERED,
        max_timeout_s: float = MAX_TIMEOUT_S,
    ) -> None:
        if not isinstance(node, str) or not node or "@" in node:
            raise ConfigError(f"node name must be a non-empty str without '@', got {node!r}")
        self.node = node
        self.clock = clock if clock is not None else Clock()
        self.transport: Transport = transport if transport is not None else InProcessTransport()
        if wal is None:
            mode = parse_durability(
                durability if durability is not None else ("full" if wal_path else "memory")
            )
            wal = make_wal(wal_path, durability=mode, node=node)
        self.wal: WalStore = wal
        # No transaction started here may ask for a longer timeout (`transact`).
        self.max_timeout_s = check_max_timeout(max_timeout_s, "max_timeout_s")
        self.timeouts = Timeouts() if timeouts is None else timeouts
        try:
            check_timeouts(self.timeouts, self.max_timeout_s, "timeouts")
        except TypeError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(resource_concurrency, int) or resource_concurrency < 1:
            raise ConfigError(
                f"resource_concurrency must be an int >= 1, got {resource_concurrency!r}"
            )
        self.resource_concurrency = resource_concurrency
        self.resources = dict(resources or {})
        for name, resource in self.resources.items():
            if not name or "@" in name or name in (COORDINATOR_ACTOR, SAGA_ACTOR, ACCEPTOR_ACTOR):
                raise ConfigError(f"resource name {name!r} must be non-empty, without '@', "
                                  f"and not {COORDINATOR_ACTOR!r}, {SAGA_ACTOR!r} or "
                                  f"{ACCEPTOR_ACTOR!r}")
            if not isinstance(resource, Resource):
                raise ConfigError(
                    f"resource {name!r} is a {type(resource).__name__}, which lacks "
                    "async prepare/commit/abort"
                )
        self.system = ActorSystem(self.clock, name=node)
        self.counters = Counters()
        self.coordinator = CoordinatorHost(self, node)
        self.acceptor = AcceptorHost(self, node)
        self.sagas = SagaHost(
            self,
            node,
            WorkerPool("saga steps", workers=resource_concurrency),
            self.clock.rng("saga-jitter").random,
        )
        if (
            isinstance(remember_ended, bool)
            or not isinstance(remember_ended, int)
            or remember_ended < 0
        ):
            raise ConfigError(f"remember_ended must be an int >= 0, got {remember_ended!r}")
        # Per host, how many ended transactions and sagas keep their outcome in
        # memory and one tombstone record in the WAL; see docs/wal.md.
        if remember_ended < REMEMBER_ENDED_SAFE:
            # Not an error (tests use tiny windows), but a hazard: see docs/wal.md.
            log.warning(
                "node %s: remember_ended=%d is small; an outcome forgotten while a "
                "message about it is still in flight is answered by presumption",
                node, remember_ended,
            )
        self.remember_ended = remember_ended
        # Given each participant machine this node builds (new or recovered),
        # returns the machine to run: how the simulator's mutation tests plug
        # in broken protocol variants. Set before entering; None in production.
        self.machine_factory: Callable[[Any], Any] | None = None
        self.sagas.ended_max = self.coordinator.finished_max = remember_ended
        self.acceptor.finished_max = remember_ended
        self.participants: dict[str, ParticipantHost] = {}
        self._refs: dict[str, ActorRef[Any]] = {}
        self._addresses: dict[str, Address] = {}
        # Participant lists already found well formed (callers repeat them),
        # each as given -> as pids.
        self._checked_pids: dict[tuple[Any, ...], tuple[str, ...]] = {}
        # Direct routes to host actors' mailboxes on this in-process transport,
        # by pid (see `send_nowait`); emptied by the transport whenever a node
        # attaches or detaches or faults or encoding change.
        self._routes: dict[str, _Route] = {}
        self._direct: InProcessTransport | None = None
        self._undeliverable = 0
        # The hosts that take atomic-commit messages, by actor name (set at start).
        self._atomic_hosts: dict[str, MachineHost] = {}
        # Txids of PREPAREs let into a mailbox lately: what follows a PREPARE
        # still queued is not about an unknown transaction.
        self._prepared: dict[str, None] = {}
        #: Messages about transactions not held here, by sending node (see `_unwanted`).
        self.unknown_budget = Budget(self.clock, burst=UNKNOWN_BURST, per_s=UNKNOWN_PER_S)
        self._drop_log = LogLimiter(self.clock, burst=1, interval_s=10.0)
        self._exit: contextlib.AsyncExitStack | None = None
        self._scope: CancelScope | None = None
        self._pools: list[WorkerPool] = []
        self._crashed = False
        # Set by a crash, or once a stopping node has drained its mailboxes:
        # from then on nothing more is sent or logged, and continuations of
        # forced records are dropped (recovery finishes those transactions).
        self.halted = False
        # Transaction ids are `<node>-<incarnation>-<serial>`: the random
        # incarnation keeps them unique across restarts, and the fixed-width
        # serial keeps one incarnation's ids in order, so the WAL's txid index
        # grows at its end instead of dirtying a random page per record (with
        # a random id per transaction, throughput halved as the log grew).
        self._incarnation = self.clock.rng("txid").getrandbits(48)
        self._serial = 0
        self._tracers: list[Callable[[str, str, str, Any], None]] = []
        self._streams: list[TraceStream] = []
        # `tracing`: someone wants force/log/decide/timer/chose events;
        # `_wire`: someone wants sends and receives too (streams, OpenTelemetry).
        self.tracing = False
        self._wire = False
        self._otel: otel.Telemetry | None = None
        # None: spans if opentelemetry-api is importable; they go to
        # `tracer_provider`, or to the global provider when none is given.
        if telemetry is None or telemetry:
            self._otel = otel.load(tracer_provider)
            if self._otel is None and telemetry:
                raise ConfigError(
                    "telemetry=True needs the opentelemetry-api package "
                    "(pip install 'dtxn[otel]'); pass telemetry=None to use it only if present"
                )
        self._wal_error: WalError | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._scope = stack.enter_context(CancelScope())
            await stack.enter_async_context(self.wal)
            entries = await self.wal.read_all()
            await stack.enter_async_context(self.system)
            hosts: dict[str, MachineHost] = {
                COORDINATOR_ACTOR: self.coordinator,
                SAGA_ACTOR: self.sagas,
                ACCEPTOR_ACTOR: self.acceptor,
            }
            # Each pool is its workers' task group (see workers.py).
            self.sagas.pool.on_failure = self._worker_failed
            self._pools = [await stack.enter_async_context(self.sagas.pool)]
            for name, resource in self.resources.items():
                pool = WorkerPool(f"resource {name!r}", workers=self.resource_concurrency)
                pool.on_failure = self._worker_failed
                self._pools.append(await stack.enter_async_context(pool))
                participant = ParticipantHost(
                    self, name, self.node, resource, pool, self.clock.sleep
                )
                participant.finished_max = self.remember_ended
                hosts[name] = self.participants[name] = participant
            policy = SupervisionPolicy(directive=Directive.ESCALATE)
            for name, host in hosts.items():
                self._refs[name] = await self.system.spawn(
                    _host_factory(host), name=name, mailbox_size=HOST_MAILBOX, policy=policy
                )
            self._atomic_hosts = {n: h for n, h in hosts.items() if n != SAGA_ACTOR}
            pending = rebuild(entries, hosts, str(getattr(self.wal, "where", self.node)))
            self.transport.attach(self)
            transport = self.transport
            if isinstance(transport, InProcessTransport) and transport.watch(
                self.node, self._routes.clear
            ):
                self._direct = transport
            resume(pending)
            # Resources that keep their own prepared state (PostgreSQL gids,
            # SQLite markers) reconcile it now that the WAL is rebuilt: a branch
            # prepared before its PREPARED record was forced is unknown here and
            # can only be rolled back (presumed abort).
            for resource in self.resources.values():
                if isinstance(resource, Recoverable):
                    await resource.recover(self)
        except BaseException as exc:
            try:
                await stack.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                # Task groups wrap the start-up error; callers should see it plainly.
                if _only(group) is exc:
                    raise exc from None
                raise
            raise
        self._exit = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._exit = self._exit, None
        assert stack is not None
        self.transport.detach(self.node)
        self._direct = None
        self._routes.clear()
        for host in self._hosts():
            host.cancel_all_timers()
        interrupted: BaseException | None = None
        try:
            if exc is not None:
                # The actors' tasks are not under our cancel scope: stop them now.
                self.system.cancel_all()
            elif not self._crashed:
                await self.system.aclose(drain=True)
        except BaseException as error:  # noqa: BLE001 - re-raised after the stack is left
            # Cancelled while draining (a sibling runtime crashed): the stack
            # below must still be left, or its cancel scope and the WAL's
            # writer outlive the block (a hang, then a cancel-scope RuntimeError).
            self.system.cancel_all()
            interrupted = error
            exc_type, exc, tb = type(error), error, error.__traceback__
        self.halted = True
        # Resource calls still running belong to transactions that recovery
        # will finish at the next start; they are cancelled, not awaited.
        for pool in self._pools:
            pool.cancel_all()
        waiting: list[asyncio.Future[Any]] = [
            *self.coordinator.waiting.values(),
            *self.sagas.waiting.values(),
        ]
        self._fail_waiting(waiting)
        for stream in self._streams:
            stream.close()
        try:
            result = await stack.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # Task groups wrap the WAL's error; callers should see it plainly.
            leaf = _only(group)
            if self._wal_error is not None and isinstance(leaf, WalError):
                raise self._fresh_wal_error() from None
            if leaf is not None and leaf is exc:
                # The block's own error (a sibling's WalError, say), only wrapped.
                if interrupted is not None:
                    raise leaf from None
                return None
            raise
        except WalError:
            if self._wal_error is not None:
                raise self._fresh_wal_error() from None
            raise
        if self._wal_error is not None:
            raise self._fresh_wal_error()
        if interrupted is not None and not result:
            raise interrupted
        return result

    def _fresh_wal_error(self) -> WalError:
        """The error that stopped this node, raised afresh (with its cause) to each caller."""
        error = self._wal_error
        assert error is not None
        fresh = WalError(str(error))
        fresh.__cause__ = error.__cause__
        return fresh

    def _fail_waiting(self, waiting: list[asyncio.Future[Any]]) -> None:
        """Settle every caller still waiting: with the WAL's error if it stopped the node."""
        for future in waiting:
            if not future.done():
                if self._wal_error is not None:
                    future.set_exception(self._fresh_wal_error())
                else:
                    future.cancel()

    def crash(self) -> None:
        """Stop this node at once, as a process crash would (for tests and the demo).

        Timers, mailboxes and in-flight calls are dropped and the WAL loses every
        record not yet forced. The `async with` block is cancelled.
        """
        self._halt()
        if self._scope is not None:
            self._scope.cancel()

    def _halt(self) -> None:
        """Everything `crash` does but cancelling the block."""
        self._crashed = True
        self.halted = True
        self.wal.lose_buffered()
        self.transport.detach(self.node)
        self._direct = None
        self._routes.clear()
        for host in self._hosts():
            host.cancel_all_timers()
        # The actors and the resource calls first, at once: their tasks belong
        # to the actor system and the pools, outside the cancel scope below
        # (which stops the WAL and the block).
        self.system.cancel_all()
        for pool in self._pools:
            pool.cancel_all()

    def _cancel_block(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    def _worker_failed(self, error: BaseException) -> None:
        """A worker raised (a bug): stop the node; the pool raises it from the block."""
        log.critical("node %s: a resource worker failed, stopping: %r", self.node, error)
        self.crash()

    def _hosts(self) -> list[MachineHost]:
        return [self.coordinator, self.sagas, self.acceptor, *self.participants.values()]

    # -- transactions --------------------------------------------------------------

    def new_txid(self) -> str:
        self._serial += 1
        return f"{self.node}-{self._incarnation:012x}-{self._serial:010x}"

    async def transact(
        self,
        participants: Mapping[str, Any] | Iterable[tuple[str, Any]],
        *,
        protocol: str | Protocol = "2pc",
        timeouts: Timeouts | None = None,
        txid: str | None = None,
        cooperative: bool = True,
        requirements: Requirements | None = None,
        capabilities: Mapping[str, Capabilities] | None = None,
        fault_tolerance: int | None = None,
        acceptors: Iterable[str] | None = None,
    ) -> TxnOutcome:
        """Run one atomic transaction and return its outcome.

        `participants` maps each participant, written `resource@node`, to the
        payload its `prepare` receives. `protocol` is "2pc", "3pc" or "auto":
        with "auto", `choose_protocol(requirements, capabilities)` picks one
        (`capabilities` maps every participant pid to its `Capabilities`), and
        the choice and its reason go to the WAL (a `CoordChose` record), the
        log and the trace. The outcome is returned once the decision is
        durable at the coordinator.

        "paxos" runs Paxos Commit, which survives the coordinator's loss:
        2F+1 acceptors (`fault_tolerance=F`, default 1) on the nodes named
        by `acceptors`, or by default on the participants' nodes and then
        this one; any participant's node takes over a transaction whose
        coordinator went silent. Its outcome is returned once chosen by the
        acceptors (F+1 of them forced it). See docs/protocols.md.
        """
        if self._exit is None:
            raise TransactionError(f"runtime {self.node!r} is not running; use `async with`")
        if self._wal_error is not None:
            raise self._fresh_wal_error()
        if self.halted:
            raise TransactionError(f"runtime {self.node!r} has crashed; it starts nothing more")
        auto = protocol == "auto"
        if not auto:
            if requirements is not None or capabilities is not None:
                raise ConfigError(
                    "requirements and capabilities choose a protocol, so they need "
                    f"protocol='auto' (got protocol={protocol!r})"
                )
            try:
                proto = Protocol(protocol)
            except ValueError:
                raise ConfigError(
                    f"unknown protocol {protocol!r}; choose '2pc', '3pc', 'paxos' or 'auto'"
                ) from None
        # Everything is checked before anything is sent or logged: a call that
        # raises here has changed nothing (no PREPARE out, no lock anywhere).
        given: tuple[Any, ...]
        if type(participants) is dict:
            # The usual call: a dict, read without building its items.
            given = tuple(participants)
            payloads = tuple(participants.values())
        else:
            given, payloads = participant_items(participants)
        if not given:
            raise TransactionError("a transaction needs at least one participant")
        checked = self._checked_pids.get(given)
        if checked is not None:
            pids = checked
        else:
            pids = tuple(participant_pid(pid) for pid in given)
            if len(set(pids)) != len(pids):
                raise TransactionError(f"participants listed twice in {list(pids)!r}")
            self._check_nodes_known(pids)
            if len(self._checked_pids) >= CHECKED_PIDS_MAX:
                self._checked_pids.clear()
            self._checked_pids[given] = pids
        choice: Choice | None = None
        if auto:
            choice = _choose(pids, requirements, capabilities)
            proto = Protocol(choice.protocol)
        paxos_acceptors: tuple[str, ...] = ()
        paxos_leaders: tuple[str, ...] = ()
        if proto is Protocol.PAXOS:
            paxos_acceptors, paxos_leaders = paxos_placement(
                self.node,
                pids,
                fault_tolerance,
                acceptors,
                getattr(self.transport, "knows_node", None),
            )
        elif fault_tolerance is not None or acceptors is not None:
            raise ConfigError(
                "fault_tolerance and acceptors place Paxos Commit's acceptors, so they need "
                f"protocol='paxos' (got protocol={proto.value!r})"
            )
        if timeouts is not None:
            check_timeouts(timeouts, self.max_timeout_s, "timeouts")
        if txid is None:
            txid = self.new_txid()
        else:
            check_txid(txid)
            if txid in self.coordinator.txns or txid in self.coordinator.finished:
                raise TransactionError(
                    f"transaction id {txid!r} was already used on {self.node!r}"
                )
        if not isinstance(cooperative, bool):
            raise TypeError(f"cooperative must be a bool, got {cooperative!r}")
        if getattr(self.transport, "encode", True) is not False:
            # Only where payloads cross a wire codec (NATS, an encoding
            # in-process transport): without one any object may be a payload.
            check_payloads(pids, payloads)
        telemetry = self._otel
        if telemetry is not None and not telemetry.live():
            # No SDK provider: the spans would be no-ops, so none are started.
            telemetry = None
        if telemetry is not None:
            telemetry.begin(
                txid, self.node, proto.value, pids, None if choice is None else choice.rule
            )
            self._retrace()
        chose_lsn = 0
        if choice is not None:
            chose_lsn = self._record_choice(txid, proto, choice)
        reply: asyncio.Future[TxnOutcome] = asyncio.get_running_loop().create_future()
        # The coordinator host is started right here rather than through its
        # actor's mailbox (`StartTxn`): hosts never await, so the loop
        # serialises this call with the actor's messages all the same, and a
        # transaction saves a trip round the loop and a mailbox hand-over.
        if telemetry is None:
            self.coordinator.begin(
                txid, proto, pids, payloads, timeouts or self.timeouts, cooperative, reply,
                acceptors=paxos_acceptors, leaders=paxos_leaders,
            )
            if choice is not None:
                self._owns_choice(txid, chose_lsn)
            return await reply
        try:
            self.coordinator.begin(
                txid, proto, pids, payloads, timeouts or self.timeouts, cooperative, reply,
                acceptors=paxos_acceptors, leaders=paxos_leaders,
            )
            if choice is not None:
                self._owns_choice(txid, chose_lsn)
            outcome = await reply
        except BaseException as exc:
            telemetry.end(txid, None, "", exc)
            self._retrace()
            raise
        telemetry.end(txid, outcome.outcome.value, outcome.reason, None)
        self._retrace()
        return outcome

    def _check_nodes_known(self, pids: tuple[str, ...]) -> None:
        """Raise `UnknownNode` for a participant's node the transport knows is not there.

        Only where the transport can know: an in-process transport knows every
        node ever attached to it, NATS its configured peers; others say nothing.
        """
        knows = getattr(self.transport, "knows_node", None)
        if knows is None:
            return
        for pid in pids:
            node = pid.partition("@")[2]
            if knows(node) is False:
                raise UnknownNode(
                    f"participant {pid!r}: node {node!r} is unknown to this node's transport "
                    f"({type(self.transport).__name__}); nothing was sent"
                )

    def _owns_choice(self, txid: str, lsn: int) -> None:
        """Count the choice record among the coordinator's, so compaction drops it."""
        txn = self.coordinator.txns.get(txid)
        if txn is not None and lsn:
            txn.lsns = [lsn, *txn.lsns]

    def _record_choice(self, txid: str, proto: Protocol, choice: Choice) -> int:
        record = CoordChose(txid, proto, choice.rule, choice.reason)
        # Lazy: losing it in a crash loses only the explanation (the outcome
        # is presumed abort either way until a decision record is forced).
        lsn = self.log_append(
            txid, "c-chose", LOG_ENCODER.encode(LogEntry(COORDINATOR_ACTOR, record))
        )
        log.info(
            "txid=%s node %s: protocol auto chose %s (rule %d): %s",
            txid, self.node, proto.value, choice.rule, choice.reason,
            extra={"txid": txid},
        )
        if self.tracing:
            self.trace(txid, self.pid(COORDINATOR_ACTOR), "chose", record)
        return lsn

    @property
    def log_may_be_short(self) -> str | None:
        """Why this node's WAL may have lost forced records (a damaged sidecar), or None.

        While it is set, this node's coordinator presumes no abort for a
        transaction it does not know: such inquiries are answered "unknown"
        and their askers stay in doubt for an operator (docs/wal.md).
        """
        reason = getattr(self.wal, "log_may_be_short", None)
        return reason if isinstance(reason, str) else None

    def status(self, txid: str) -> TxnStatus:
        """What this node knows of `txid` (raises `UnknownTransaction` if nothing)."""
        roles: dict[str, str] = {}
        in_doubt = False
        outcome: str | None = None
        for host in self._hosts():
            txn = host.txns.get(txid)
            if txn is not None and txn.machine is not None:
                state = getattr(txn.machine, "state", None)
                roles[host.name] = getattr(state, "value", str(state))
                in_doubt = in_doubt or bool(getattr(txn.machine, "in_doubt", False))
            elif txid in host.finished:
                roles[host.name] = host.finished[txid].value
                if host is self.coordinator or outcome is None:
                    outcome = host.finished[txid].value
        if not roles:
            raise UnknownTransaction(f"node {self.node!r} knows no transaction {txid!r}")
        return TxnStatus(txid, roles, in_doubt, outcome)

    # -- sagas -------------------------------------------------------------------

    def register_saga(
        self, definition: SagaDefinition, steps: Mapping[str, StepFn | ActorStep | str | Any]
    ) -> None:
        """Make a saga runnable (and recoverable) here: its definition and its steps.

        `steps` maps each action and compensation name to an async callable
        or a participant actor (`ActorStep`, "actor@node", an `Address` or an
        `ActorRef`; see `dtxn.runtime.hosting.saga_steps`). Register every definition
        before entering the runtime, so that recovery can resume sagas of it
        that a crash interrupted.
        """
        if not isinstance(steps, Mapping):
            raise ConfigError(f"saga steps must be a mapping of names to steps, got {steps!r}")
        self.sagas.register(
            definition,
            {
                name: step_function(
                    name, given, node=self.node, actors=self.system, transport=self.transport
                )
                for name, given in steps.items()
            },
        )

    async def run_saga(
        self,
        definition: str | SagaDefinition,
        payload: Any = None,
        *,
        saga_id: str | None = None,
        version: int | None = None,
    ) -> SagaOutcome:
        """Run an orchestrated saga; return when it completed, compensated or got stuck."""
        if self._exit is None:
            raise TransactionError(f"runtime {self.node!r} is not running; use `async with`")
        if self._wal_error is not None:
            raise self._fresh_wal_error()
        if self.halted:
            raise TransactionError(f"runtime {self.node!r} has crashed; it starts nothing more")
        found = self._definition(definition, version)
        if saga_id is None:
            saga_id = f"saga-{self.new_txid()}"
        elif saga_id in self.sagas.txns or saga_id in self.sagas.ended:
            raise TransactionError(f"saga id {saga_id!r} was already used on {self.node!r}")
        reply: asyncio.Future[SagaOutcome] = asyncio.get_running_loop().create_future()
        # Started right here, as `transact` starts its coordinator: hosts never
        # await, so the loop serialises this with the saga actor's messages.
        self.sagas.begin(saga_id, found, payload, reply)
        return await reply

    def _definition(self, definition: str | SagaDefinition, version: int | None) -> SagaDefinition:
        if isinstance(definition, SagaDefinition):
            key = (definition.name, definition.version)
        else:
            versions = [v for (n, v) in self.sagas.definitions if n == definition]
            if not versions:
                raise ConfigError(f"no saga named {definition!r} is registered on {self.node!r}")
            key = (definition, version if version is not None else max(versions))
        found = self.sagas.definitions.get(key)
        if found is None:
            raise ConfigError(f"saga {key[0]!r} v{key[1]} is not registered on {self.node!r}")
        return found

    def saga_ids(self) -> list[str]:
        """Ids of the sagas running (or stuck) on this node."""
        return [txid for txid, txn in self.sagas.txns.items() if txn.machine is not None]

    def saga_status(self, saga_id: str) -> SagaReport | SagaOutcome:
        """The live report of a saga (steps, state, stuck error) or its final outcome."""
        report = self.sagas.report(saga_id)
        if report is not None:
            return report
        ended = self.sagas.ended.get(saga_id)
        if ended is None:
            raise UnknownTransaction(f"node {self.node!r} knows no saga {saga_id!r}")
        return ended

    async def resume_saga(self, saga_id: str) -> SagaOutcome:
        """Operator: retry what a stuck saga is stuck on; return its next outcome."""
        return await self._operate(saga_id, lambda: self.sagas.resume(saga_id))

    async def force_saga(self, saga_id: str, result: Any = None, reason: str = "") -> SagaOutcome:
        """Operator: declare what a stuck saga is stuck on done (e.g. undone by hand)."""
        return await self._operate(saga_id, lambda: self.sagas.force(saga_id, result, reason))

    async def _operate(self, saga_id: str, action: Callable[[], None]) -> SagaOutcome:
        reply: asyncio.Future[SagaOutcome] = asyncio.get_running_loop().create_future()
        self.sagas.waiting[saga_id] = reply
        try:
            action()
        except BaseException:
            self.sagas.waiting.pop(saga_id, None)
            raise
        return await reply

    def on_trace(self, hook: Callable[[str, str, str, Any], None]) -> None:
        """Call `hook(txid, actor, what, detail)` for forces, logs, timers, decisions, choices.

        `detail` is the record, outcome, timer name or `CoordChose` itself (not
        text). Sends and receives go only to `trace_events` streams.
        """
        self._tracers.append(hook)
        self._retrace()

    def off_trace(self, hook: Callable[[str, str, str, Any], None]) -> None:
        """Stop calling `hook` (raises `ConfigError` if it was not subscribed)."""
        try:
            self._tracers.remove(hook)
        except ValueError:
            raise ConfigError(f"{hook!r} is not a trace hook of node {self.node!r}") from None
        self._retrace()

    @contextlib.asynccontextmanager
    async def trace_events(self, max_buffered: int = 1000) -> AsyncIterator[TraceStream]:
        """A stream of `TraceEvent`s for every transaction on this node, read by `async for`.

        At most `max_buffered` events wait in the stream: when it is full the
        oldest event is dropped and `stream.dropped` counts it; the runtime
        never waits for the reader. The iteration ends when this block exits
        or the runtime stops.
        """
        if not isinstance(max_buffered, int) or max_buffered < 1:
            raise ConfigError(f"max_buffered must be an int >= 1, got {max_buffered!r}")
        stream = TraceStream(max_buffered)
        self._streams.append(stream)
        self._retrace()
        try:
            yield stream
        finally:
            stream.close()
            self._streams.remove(stream)
            self._retrace()

    def _retrace(self) -> None:
        spans = self._otel is not None and bool(self._otel.txns)
        self._wire = bool(self._streams) or spans
        self.tracing = self._wire or bool(self._tracers)

    def _trace_wire(self, txid: str, actor: str, what: str, message: object, peer: str) -> None:
        if self._streams:
            arrow = "to" if what == "send" else "from"
            event = TraceEvent(
                self.clock.now(), self.node, txid, actor, what,
                f"{describe(message)} {arrow} {peer}",
            )
            for stream in self._streams:
                stream.push(event)
        if self._otel is not None:
            self._otel.trace(txid, actor, what, message)

    # -- HostServices ----------------------------------------------------------------

    def send_nowait(self, to: str, message: Message) -> None:
        if self.halted:
            return
        route = self._routes.get(to)
        if route is None:
            self._send_unrouted(to, message)
            return
        # What `InProcessTransport.send_nowait` and `deliver_nowait` do for a
        # host actor, written out: 12 messages per 2PC transaction come here.
        if self._wire:
            self._trace_wire(message.txid, message.sender, "send", message, to)
        route.transport.direct_messages += 1
        target = route.target
        try:
            queued = route.mailbox.try_send((message, None))
        except MailboxClosed:
            # Counted as received afterwards, as `deliver_nowait` does.
            target.system.dead_letter(route.actor, message, "actor stopped")
            queued = True
        if not queued:
            target._mailbox_full(route.actor, message)
            return
        target.counters.messages_received += 1
        if target._wire:
            target._trace_received(route.actor, message)

    def _send_unrouted(self, to: str, message: Message) -> None:
        address = self._addresses.get(to)
        if address is None:
            address = parse_pid(to)
            self._addresses[to] = address
        direct = self._direct
        if direct is not None and direct.routable():
            # Next time straight to the mailbox, if it is a host actor of a
            # running node here (other actors can stop and be spawned again).
            target = direct.port(address.node)
            if isinstance(target, Runtime) and not target.halted:
                ref = target._refs.get(address.actor)
                if ref is not None:
                    self._routes[to] = _Route(direct, target, address.actor, ref.mailbox)
        if self._wire:
            self._trace_wire(message.txid, message.sender, "send", message, to)
        self.transport.send_nowait(address, message)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        return self.clock.call_later(delay_s, callback)

    def log_append(self, txid: str, kind: str, data: bytes) -> int:
        if self.halted:
            return 0
        return self.wal.append(txid, kind, data)

    def log_force(
        self, txid: str, kind: str, data: bytes, done: Callable[[WalError | None], None]
    ) -> int:
        # After a crash nothing more reaches the disk. `done` goes to the WAL
        # as it is (no wrapper per force): it checks `halted` itself and hands
        # an error to `force_failed`, so nothing after the force runs once halted.
        if self.halted:
            return 0
        return self.wal.force_nowait(txid, kind, data, done)

    def log_drop(self, lsns: list[int]) -> None:
        if not self.halted:
            self.wal.drop(lsns)

    def force_failed(self, error: WalError | None) -> None:
        if self.halted or error is None:
            return
        # A node that cannot log must stop (fail-stop); the error is raised
        # when the runtime's block exits, never swallowed.
        log.critical("node %s: WAL failed, stopping: %s", self.node, error)
        self._wal_error = error
        self._halt()
        # Every caller waiting for an outcome gets the WAL's error (never an
        # outcome that was not forced, nor a bare CancelledError); the block is
        # cancelled only after they have been woken with it.
        self._fail_waiting([*self.coordinator.waiting.values(), *self.sagas.waiting.values()])
        asyncio.get_running_loop().call_soon(self._cancel_block)

    def trace(self, txid: str, actor: str, what: str, detail: Any) -> None:
        for hook in self._tracers:
            hook(txid, actor, what, detail)
        if self._streams:
            event = TraceEvent(self.clock.now(), self.node, txid, actor, what, describe(detail))
            for stream in self._streams:
                stream.push(event)
        if self._otel is not None:
            self._otel.trace(txid, actor, what, detail)

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

    def pid(self, actor: str) -> str:
        """The process id (`actor@node`) used in transactions for actor `actor` here."""
        return f"{actor}@{self.node}"

    async def send(self, to: Address, message: object) -> None:
        """Send `message` to the actor at `to`, on this node or another, via the transport."""
        await self.transport.send(to, message)

    # -- the transport's view of this node (NodePort) ---------------------------

    async def deliver(self, actor: str, message: object) -> None:
        if isinstance(message, Message) and self._unwanted(actor, message):
            return
        try:
            ref = self.system.ref(actor)
        except ActorError:
            self.system.dead_letter(actor, message, f"no actor {actor!r} on node {self.node!r}")
            return
        await ref.tell(message)

    def deliver_nowait(self, actor: str, message: object) -> None:
        if isinstance(message, Message) and self._unwanted(actor, message):
            return
        ref = self._refs.get(actor)
        if ref is None:
            try:
                ref = self.system.ref(actor)
            except ActorError:
                self.system.dead_letter(
                    actor, message, f"no actor {actor!r} on node {self.node!r}"
                )
                return
        try:
            ref.tell_nowait(message)
        except MailboxFull:
            self._mailbox_full(actor, message)
        else:
            self.counters.messages_received += 1
            if self._wire:
                self._trace_received(actor, message)

    def _unwanted(self, actor: str, message: Message) -> bool:
        """Whether to drop `message`, about a transaction no host here holds, unseen.

        Nobody can be shown a member of a transaction this node does not hold,
        so such messages (all but PREPARE, which starts one) are let in only
        within their sending node's `unknown_budget`: a flood from one node
        costs no mailbox slot, host lookup, WAL record or log line beyond it,
        and starves no other sender. A drop is a lost message, which every
        protocol already survives (they re-send and ask on their timers).
        """
        host = self._atomic_hosts.get(actor)
        if host is None:
            return False
        txid = message.txid
        if type(message) is Prepare or type(message) is PaxosPrepare:
            prepared = self._prepared
            prepared[txid] = None
            if len(prepared) > HOST_MAILBOX:
                del prepared[next(iter(prepared))]
            return False
        if txid in host.txns or txid in host.finished or txid in self._prepared:
            return False
        sender = message.sender.rpartition("@")[2]
        if self.unknown_budget.take(sender):
            return False
        self.counters.unknown_dropped += 1
        held = self._drop_log.allow(f"unknown from {sender}")
        if held is not None:
            log.warning(
                "node %s: node %r sends more than %g messages a second about transactions "
                "not held here; dropping them unseen (first: %s for %r; %d more dropped since "
                "the last such line)", self.node, sender, self.unknown_budget.per_s,
                type(message).__name__, txid, held,
            )
        return True

    def _mailbox_full(self, actor: str, message: object) -> None:
        # Like a network drop: protocols re-send on their timers.
        self.counters.dropped += 1
        held = self._drop_log.allow(f"full {actor}")
        if held is None:
            return
        txid = getattr(message, "txid", None)
        log.warning(
            "txid=%s node %s: mailbox of %r full, dropped %s (%d more dropped since the last "
            "such line)", txid, self.node, actor, type(message).__name__, held,
            extra={"txid": txid} if isinstance(txid, str) else None,
        )

    def _trace_received(self, actor: str, message: object) -> None:
        txid = getattr(message, "txid", None)
        if isinstance(txid, str):
            self._trace_wire(
                txid, f"{actor}@{self.node}", "receive", message,
                str(getattr(message, "sender", "?")),
            )

    def message_type(self, actor: str) -> Any:
        try:
            return self.system.message_type_of(actor)
        except ActorError:
            return Any

    async def ask(self, actor: str, message: object, timeout_s: float | None = None) -> Any:
        """Ask local actor `actor` and return its reply (a transport serving a remote ask
        calls this); `ActorNotFound` if there is no such actor here."""
        return await self.system.ref(actor).ask(message, timeout_s=timeout_s)

    def report_undeliverable(self, actor: str, data: bytes, reason: str) -> None:
        self._undeliverable += 1
        self.system.dead_letter(actor, data, reason)

    def statistics(self) -> RuntimeStatistics:
        c = self.counters
        wal = self.wal.statistics()
        in_doubt = sum(host.in_doubt() for host in self.participants.values())
        active = sum(len(host.txns) for host in self._hosts())
        txn = TxnStatistics(
            started=c.started,
            committed=c.committed,
            aborted=c.aborted,
            in_doubt=in_doubt,
            active=active,
            messages_sent=c.messages_sent,
            messages_received=c.messages_received,
            messages_dropped=c.dropped,
            forces=c.forces,
            ignored=c.ignored,
            violations=c.violations,
            resource_retries=c.resource_retries,
            stuck=c.stuck,
            wal_commits=wal.commits,
            wal_records=wal.records_committed,
            wal_largest_batch=wal.largest_batch,
            wal_mean_batch=wal.mean_batch,
            unknown_dropped=c.unknown_dropped,
            presumptions_refused=c.presumptions_refused,
            log_may_be_short=self.log_may_be_short,
            takeovers=c.takeovers,
        )
        return RuntimeStatistics(self.node, self.system.statistics(), txn, self._undeliverable)


class _Route:
    """A cached way from `Runtime.send_nowait` to a host actor's mailbox on the same transport."""

    __slots__ = ("actor", "mailbox", "target", "transport")

    def __init__(
        self, transport: InProcessTransport, target: Runtime, actor: str, mailbox: Mailbox
    ) -> None:
        self.transport = transport
        self.target = target
        self.actor = actor
        self.mailbox = mailbox


def _choose(
    pids: tuple[str, ...],
    requirements: Requirements | None,
    capabilities: Mapping[str, Capabilities] | None,
) -> Choice:
    if requirements is None or capabilities is None:
        missing = " and ".join(
            name
            for name, value in (("requirements", requirements), ("capabilities", capabilities))
            if value is None
        )
        raise ConfigError(
            f"protocol='auto' needs {missing}: requirements=Requirements(...) and "
            "capabilities={pid: Capabilities(...)} for every participant"
        )
    if not isinstance(capabilities, Mapping):
        raise ConfigError(f"capabilities must map participant pids to Capabilities, "
                          f"got {capabilities!r}")
    unknown = sorted(set(capabilities) - set(pids))
    if unknown:
        raise ConfigError(f"capabilities name {unknown!r}, which are not participants "
                          f"of this transaction ({list(pids)!r})")
    lacking = [pid for pid in pids if pid not in capabilities]
    if lacking:
        raise ConfigError(f"protocol='auto' needs the capabilities of every participant; "
                          f"none given for {lacking!r}")
    choice = choose_protocol(requirements, {pid: capabilities[pid] for pid in pids})
    if choice.protocol == "saga":
        raise ConfigError(
            f"protocol='auto' chose a saga (rule {choice.rule}: {choice.reason}); "
            "Runtime.transact runs 2PC, 3PC and Paxos Commit: define the steps with their "
            "compensations and call Runtime.run_saga, or require strong consistency"
        )
    return choice


def _host_factory(host: MachineHost) -> Callable[[], HostActor]:
    return lambda: HostActor(host)


def _only(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The single leaf exception of a nest of one-member groups, else None."""
    current: BaseException = group
    while isinstance(current, BaseExceptionGroup):
        if len(current.exceptions) != 1:
            return None
        current = current.exceptions[0]
    return current
