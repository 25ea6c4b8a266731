"""Choreographed sagas: participants react to each other's events; no orchestrator.

Theory of operation
-------------------
A `Choreography` hosts `ChoreographyParticipant` actors on one runtime. Each
participant declares `ChoreoStep`s: "on topic T run my action, then publish S
(or F if it failed for good); on any of topics C undo it and publish U". A
publish sends the `SagaEvent` to every address the explicit `Topics` table
lists for its topic, through the runtime's transport. The saga's shape is
the event chain itself (OrderCreated -> StockReserved -> ... ; PaymentFailed
-> StockReleased -> OrderRejected), so compensation runs in reverse order
because each undo is triggered by the undo (or failure) just downstream (G1).

Each participant keeps its progress in its *own* WAL (not the node's), per
(saga id, step, op), like the idempotency barrier (G4):

- `started` is forced before an action or compensation runs;
- `done` (succeeded, failed or a null compensation, with the event to publish)
  is forced before that event is published;
- `published` is appended lazily after the publish.

A trigger for a (saga, step) already started is a duplicate and has no
effect; an action trigger after the step was compensated is refused. After a
crash the participant replays its WAL: an operation started but not done is
run again (its handler must be idempotent: use `SqliteBarrier`), and an event
whose publish was not recorded is published again. Delivery is therefore
at-least-once and receivers drop the duplicates.

A compensation that keeps failing leaves its step `stuck`, listed by
`ChoreographyParticipant.stuck()`, for an operator (`resume`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio import CancelScope
from anyio.abc import TaskGroup, TaskStatus
from dtxn.actors import Actor, Directive, SupervisionPolicy
from dtxn.protocols.errors import ConfigError, DtxnError, TransactionError
from dtxn.protocols.saga.definition import RetryPolicy, backoff_ms
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime._runtime import Runtime
from dtxn.runtime.hosting import StepCall, StepError, StepFn
from dtxn.runtime.transport import Address
from dtxn.runtime.wal import Durability, WalStore, make_wal, parse_durability

__all__ = [
    "ChoreoStep",
    "Choreography",
    "ChoreographyParticipant",
    "SagaEvent",
    "StepStatus",
    "Topics",
]

log = logging.getLogger("dtxn.choreography")

OUTCOMES_ACTOR = "choreography-outcomes"


# -- messages and records ------------------------------------------------------------


class ChoreographyMessage(msgspec.Struct, frozen=True, array_like=True, tag_field="type"):
    """Base of the messages participants exchange (a tagged union, one member so far)."""


class SagaEvent(ChoreographyMessage, frozen=True, tag="saga-event"):
    """A past-tense fact about one saga, published to the subscribers of `topic`."""

    topic: str
    saga_id: str
    payload: Any = None
    # Results of the actions done so far, by step name (grows along the chain).
    results: dict[str, Any] = msgspec.field(default_factory=dict)
    reason: str = ""


class _Record(msgspec.Struct, frozen=True, array_like=True, tag_field="kind"):
    saga_id: str
    step: str
    op: StepOp


class _Started(_Record, frozen=True, tag="started"):
    trigger: SagaEvent


class _Done(_Record, frozen=True, tag="done"):
    outcome: str  # "succeeded", "failed" or "null"
    result: Any = None
    event: SagaEvent | None = None


class _Published(_Record, frozen=True, tag="published"):
    pass


def _kind(record: _Record) -> str:
    return str(type(record).__struct_config__.tag)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Started | _Done | _Published)


# -- configuration ---------------------------------------------------------------------


class Topics:
    """The subscription table: topic -> the addresses a publish of it is sent to."""

    def __init__(self, table: Mapping[str, Sequence[Address]] | None = None) -> None:
        # Lists, not sets: publish order must not depend on hash randomization.
        self._table: dict[str, list[Address]] = {}
        for topic, addresses in (table or {}).items():
            for address in addresses:
                self.subscribe(topic, address)

    def subscribe(self, topic: str, address: Address) -> None:
        found = self._table.setdefault(topic, [])
        if address not in found:
            found.append(address)

    def subscribers(self, topic: str) -> tuple[Address, ...]:
        return tuple(self._table.get(topic, ()))


_RETRY = RetryPolicy()
_COMPENSATION_RETRY = RetryPolicy(max_attempts=5)


@dataclass(frozen=True)
class ChoreoStep:
    """One local step of a participant: what triggers it, what it publishes.

    `fails_with=None` makes the step retried until it succeeds (a step after
    the pivot); `compensation=None` makes it uncompensatable (the pivot, or
    after it), in which case `compensate_on` must be empty.
    """

    name: str
    on: str
    action: StepFn
    emits: str
    fails_with: str | None = None
    compensation: StepFn | None = None
    compensate_on: tuple[str, ...] = ()
    compensated: str | None = None
    retry: RetryPolicy = _RETRY
    compensation_retry: RetryPolicy = _COMPENSATION_RETRY

    def __post_init__(self) -> None:
        where = f"choreography step {self.name!r}"
        if self.compensate_on and (self.compensation is None or self.compensated is None):
            raise ConfigError(f"{where}: compensate_on needs a compensation and a compensated "
                              "topic")
        if self.fails_with is None and self.retry.max_attempts is not None:
            raise ConfigError(f"{where}: a step without a failure topic must retry forever "
                              "(retry=FOREVER)")


class StepStatus(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    NULL_COMPENSATED = "null_compensated"
    STUCK = "stuck"


class ChoreographyStatistics(msgspec.Struct, frozen=True):
    actions: int
    compensations: int
    duplicates: int
    refused: int
    republished: int


# -- the participant ---------------------------------------------------------------------


class ChoreographyParticipant(Actor[SagaEvent]):
    """An actor that runs its steps when their events arrive; hosted by a `Choreography`.

    The participant does no IO of its own in `receive`: it decides from its
    in-memory progress (rebuilt from its WAL) and hands the step to a task
    of the choreography, so a slow action or an fsync never blocks events
    of other sagas.
    """

    def __init__(self, name: str, steps: Sequence[ChoreoStep]) -> None:
        if not name or "@" in name:
            raise ConfigError(f"participant name must be non-empty without '@', got {name!r}")
        names = [step.name for step in steps]
        if not steps or len(set(names)) != len(names):
            raise ConfigError(f"participant {name!r} needs steps with distinct names: {names}")
        self.name = name
        self.steps = {step.name: step for step in steps}
        self.progress: dict[tuple[str, str], StepStatus] = {}
        self._results: dict[tuple[str, str], Any] = {}
        self._triggers: dict[tuple[str, str], SagaEvent] = {}
        self._deferred: dict[tuple[str, str], SagaEvent] = {}
        self._stuck: dict[tuple[str, str], str] = {}
        self._wal: WalStore | None = None
        self._tg: TaskGroup | None = None
        self._choreo: Choreography | None = None
        self._in_flight = 0
        self._counts = {"actions": 0, "compensations": 0, "duplicates": 0, "refused": 0,
                        "republished": 0}

    # -- what the actor receives ---------------------------------------------------

    async def receive(self, message: SagaEvent) -> None:
        self.receive_nowait(message)

    def receive_nowait(self, message: SagaEvent) -> None:
        for step in self.steps.values():
            key = (message.saga_id, step.name)
            if message.topic == step.on:
                self._on_trigger(step, key, message)
            if message.topic in step.compensate_on:
                self._on_compensate(step, key, message)

    def _on_trigger(self, step: ChoreoStep, key: tuple[str, str], event: SagaEvent) -> None:
        status = self.progress.get(key)
        if status is None:
            self.progress[key] = StepStatus.RUNNING
            self._triggers[key] = event
            self._spawn(self._act(step, key, event, recovered=False))
        elif status in (StepStatus.COMPENSATED, StepStatus.NULL_COMPENSATED):
            self._counts["refused"] += 1  # a late action after its saga was undone
        else:
            self._counts["duplicates"] += 1

    def _on_compensate(self, step: ChoreoStep, key: tuple[str, str], event: SagaEvent) -> None:
        status = self.progress.get(key)
        if status is None:
            # The undo overtook the action: record a null compensation so the
            # late action is refused, and pass the undo on upstream.
            self.progress[key] = StepStatus.NULL_COMPENSATED
            self._spawn(self._null(step, key, event))
        elif status is StepStatus.RUNNING:
            self._deferred[key] = event  # undone as soon as the action has an outcome
        elif status is StepStatus.SUCCEEDED:
            self.progress[key] = StepStatus.COMPENSATING
            self._spawn(self._compensate(step, key, event, recovered=False))
        else:
            self._counts["duplicates"] += 1  # already undone, never done, or undoing

    # -- queries and operator actions ------------------------------------------------

    def status(self, saga_id: str, step: str) -> StepStatus | None:
        return self.progress.get((saga_id, step))

    def stuck(self) -> dict[tuple[str, str], str]:
        """Steps whose compensation gave up: (saga id, step) -> last error."""
        return dict(self._stuck)

    def resume(self, saga_id: str, step: str) -> None:
        """Operator: try a stuck compensation again with a fresh attempt budget."""
        key = (saga_id, step)
        if key not in self._stuck:
            raise TransactionError(f"saga {saga_id!r} step {step!r} of {self.name!r} is not stuck"
                                   f" (it is {self.progress.get(key)})")
        del self._stuck[key]
        self.progress[key] = StepStatus.COMPENSATING
        self._spawn(self._compensate(self.steps[step], key, self._triggers[key], recovered=True))

    async def before_publish(self, event: SagaEvent) -> None:
        """Called once `event` is durable in the WAL, just before it is sent.

        A no-op; tests override it to crash a participant at that boundary.
        """

    def statistics(self) -> ChoreographyStatistics:
        return ChoreographyStatistics(**self._counts)

    # -- the work, in the choreography's task group ----------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._tg is None:
            work.close()
            raise DtxnError(f"participant {self.name!r} is not hosted by a running Choreography")
        self._in_flight += 1
        self._tg.start_soon(self._run_work, work)

    async def _run_work(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        finally:
            self._in_flight -= 1

    def idle(self) -> bool:
        """No step, compensation or publish of this participant is in flight."""
        return self._in_flight == 0

    async def _act(self, step: ChoreoStep, key: tuple[str, str], event: SagaEvent,
                   *, recovered: bool) -> None:
        saga_id = key[0]
        if not recovered:
            await self._force(_Started(saga_id, step.name, StepOp.ACTION, event))
        call = StepCall(saga_id, step.name, StepOp.ACTION, 1, event.payload, dict(event.results))
        ok, result, error = await self._attempts(step.action, call, step.retry)
        self._counts["actions"] += 1
        if ok:
            out = SagaEvent(step.emits, saga_id, event.payload,
                            {**event.results, step.name: result})
            done = _Done(saga_id, step.name, StepOp.ACTION, "succeeded", result, out)
        else:
            assert step.fails_with is not None  # FOREVER steps only end in success
            out = SagaEvent(step.fails_with, saga_id, event.payload, dict(event.results), error)
            done = _Done(saga_id, step.name, StepOp.ACTION, "failed", None, out)
        await self._force(done)
        self._results[key] = result
        self.progress[key] = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
        await self._publish(done)
        deferred = self._deferred.pop(key, None)
        if deferred is not None:
            self._on_compensate(step, key, deferred)

    async def _compensate(self, step: ChoreoStep, key: tuple[str, str], event: SagaEvent,
                          *, recovered: bool) -> None:
        saga_id = key[0]
        assert step.compensation is not None and step.compensated is not None
        if not recovered:
            await self._force(_Started(saga_id, step.name, StepOp.COMPENSATION, event))
        call = StepCall(saga_id, step.name, StepOp.COMPENSATION, 1, event.payload,
                        {step.name: self._results.get(key)})
        ok, _, error = await self._attempts(step.compensation, call, step.compensation_retry)
        if not ok:
            self._triggers[key] = event
            self._stuck[key] = error
            self.progress[key] = StepStatus.STUCK
            log.error("choreography %s: compensation of %r for saga %r is stuck: %s",
                      self.name, step.name, saga_id, error)
            return
        self._counts["compensations"] += 1
        out = SagaEvent(step.compensated, saga_id, event.payload, dict(event.results),
                        event.reason)
        done = _Done(saga_id, step.name, StepOp.COMPENSATION, "succeeded", None, out)
        await self._force(done)
        self.progress[key] = StepStatus.COMPENSATED
        await self._publish(done)

    async def _null(self, step: ChoreoStep, key: tuple[str, str], event: SagaEvent) -> None:
        assert step.compensated is not None
        out = SagaEvent(step.compensated, key[0], event.payload, dict(event.results),
                        event.reason)
        done = _Done(key[0], step.name, StepOp.COMPENSATION, "null", None, out)
        await self._force(done)
        await self._publish(done)

    async def _attempts(self, fn: StepFn, call: StepCall,
                        policy: RetryPolicy) -> tuple[bool, Any, str]:
        choreo = self._choreography()
        attempt = 0
        while True:
            attempt += 1
            try:
                return True, await fn(msgspec.structs.replace(call, attempt=attempt)), ""
            except StepError as exc:
                error, retriable = str(exc) or type(exc).__name__, exc.retriable
            except Exception as exc:  # noqa: BLE001 - a step's failure is data: retried or published
                error, retriable = f"{type(exc).__name__}: {exc}", True
            if policy.max_attempts is None:
                pass  # after the pivot: forward recovery only, whatever the error
            elif not retriable or attempt >= policy.max_attempts:
                return False, None, error
            delay_ms = backoff_ms(policy, attempt, choreo.rng.random())
            await choreo.rt.clock.sleep(delay_ms / 1000.0)

    async def _force(self, record: _Record) -> None:
        assert self._wal is not None
        await self._wal.force(record.saga_id, _kind(record), _ENCODER.encode(record))

    async def _publish(self, done: _Done) -> None:
        assert done.event is not None and self._wal is not None
        await self.before_publish(done.event)
        await self._choreography().publish(done.event)
        record = _Published(done.saga_id, done.step, done.op)
        self._wal.append(done.saga_id, _kind(record), _ENCODER.encode(record))

    def _choreography(self) -> Choreography:
        if self._choreo is None:
            raise DtxnError(f"participant {self.name!r} is not hosted by a running Choreography")
        return self._choreo

    # -- recovery ----------------------------------------------------------------------

    def _replay(self, records: list[_Record]) -> list[Callable[[], None]]:
        """Rebuild progress from the WAL; return the work to restart once hosted."""
        started: dict[tuple[str, str, StepOp], _Started] = {}
        done: dict[tuple[str, str, StepOp], _Done] = {}
        published: set[tuple[str, str, StepOp]] = set()
        for record in records:
            if record.step not in self.steps:
                raise ConfigError(f"participant {self.name!r}: WAL names step {record.step!r},"
                                  f" which is not among its steps {list(self.steps)}")
            op_key = (record.saga_id, record.step, record.op)
            if isinstance(record, _Started):
                started[op_key] = record
            elif isinstance(record, _Done):
                done[op_key] = record
            else:
                published.add(op_key)
        work: list[Callable[[], None]] = []
        for (saga_id, name, op), first in started.items():
            key, step = (saga_id, name), self.steps[name]
            self._triggers[key] = first.trigger
            if (saga_id, name, op) not in done:
                if op is StepOp.ACTION:
                    self.progress[key] = StepStatus.RUNNING
                    work.append(partial(self._resume, self._act, step, key, first.trigger))
                else:
                    self.progress[key] = StepStatus.COMPENSATING
                    work.append(
                        partial(self._resume, self._compensate, step, key, first.trigger)
                    )
        for op_key, record in done.items():
            key = (record.saga_id, record.step)
            if record.op is StepOp.ACTION:
                self._results[key] = record.result
                if self.progress.get(key) is None:
                    ok = record.outcome == "succeeded"
                    self.progress[key] = StepStatus.SUCCEEDED if ok else StepStatus.FAILED
            elif record.outcome == "null":
                self.progress[key] = StepStatus.NULL_COMPENSATED
            else:
                self.progress[key] = StepStatus.COMPENSATED
            if op_key not in published:
                work.append(partial(self._resume, self._republish, record))
        return work

    def _resume(self, fn: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        if fn == self._republish:
            self._spawn(fn(*args))
        else:
            self._spawn(fn(*args, recovered=True))

    async def _republish(self, record: _Done) -> None:
        self._counts["republished"] += 1
        await self._publish(record)


# -- the host ----------------------------------------------------------------------------


class _Outcomes(Actor[SagaEvent]):
    """Subscribed to the terminal topics: remembers each saga's final event."""

    def __init__(self, choreo: Choreography) -> None:
        self.choreo = choreo

    async def receive(self, message: SagaEvent) -> None:
        self.receive_nowait(message)

    def receive_nowait(self, message: SagaEvent) -> None:
        if message.saga_id not in self.choreo.outcomes:
            self.choreo.outcomes[message.saga_id] = message
        waiter = self.choreo._waiters.pop(message.saga_id, None)
        if waiter is not None:
            waiter.set()


class _Hosted:
    """A running participant and what stops it."""

    def __init__(self, participant: ChoreographyParticipant, scope: CancelScope,
                 closed: anyio.Event) -> None:
        self.participant = participant
        self.scope = scope  # cancelled by a crash
        self.closed = closed  # set once its WAL is closed
        self.stopping = anyio.Event()  # set by a clean stop


class Choreography:
    """Hosts choreography participants on `rt`, each with its own WAL under `wal_dir`.

        async with Choreography(rt, topics, wal_dir=d, terminal=("OrderApproved",)) as ch:
            await ch.start(lambda: Inventory(...))
            await ch.publish(SagaEvent("OrderPlaced", "order-1", {...}))
            final = await ch.wait("order-1")

    `terminal` topics end a saga; their events are collected in `outcomes`
    (the choreography subscribes itself to them on this node).
    """

    def __init__(
        self,
        rt: Runtime,
        topics: Topics,
        *,
        wal_dir: str | os.PathLike[str] | None = None,
        durability: Durability | str = Durability.FULL,
        terminal: Sequence[str] = (),
    ) -> None:
        if wal_dir is None and parse_durability(durability) is not Durability.MEMORY:
            raise ConfigError("a durable choreography needs wal_dir for its participants' WALs")
        self.rt = rt
        self.topics = topics
        self.wal_dir = Path(wal_dir) if wal_dir is not None else None
        self.durability = durability
        self.terminal = tuple(terminal)
        self.rng = rt.clock.rng("choreography")
        self.outcomes: dict[str, SagaEvent] = {}
        self._waiters: dict[str, anyio.Event] = {}
        self._factories: dict[str, Callable[[], ChoreographyParticipant]] = {}
        self._hosted: dict[str, _Hosted] = {}
        self._wals: dict[str, WalStore] = {}
        self._hooks: list[Callable[[SagaEvent], None]] = []
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Choreography:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self.rt.spawn(lambda: _Outcomes(self), name=OUTCOMES_ACTOR)
            for topic in self.terminal:
                self.topics.subscribe(topic, self.rt.address(OUTCOMES_ACTOR))
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        for name in list(self._hosted):
            await self.stop(name)
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await stack.__aexit__(exc_type, exc, tb)

    def participant(self, name: str) -> ChoreographyParticipant:
        found = self._hosted.get(name)
        if found is None:
            raise ConfigError(f"no participant {name!r} is running in this choreography")
        return found.participant

    def running(self) -> list[str]:
        """Names of the participants hosted now (a crashed one is absent until restarted)."""
        return list(self._hosted)

    def on_event(self, hook: Callable[[SagaEvent], None]) -> None:
        """Call `hook(event)` for every event published (to trace the flow)."""
        self._hooks.append(hook)

    async def start(self, factory: Callable[[], ChoreographyParticipant]) -> None:
        """Open a participant's WAL, replay it, start its actor and resume its work."""
        if self._tg is None:
            raise DtxnError("the choreography is not running; use `async with`")
        participant = factory()
        address = self.rt.address(participant.name)
        for step in participant.steps.values():
            for topic in (step.on, *step.compensate_on):
                if address not in self.topics.subscribers(topic):
                    raise ConfigError(
                        f"participant {participant.name!r} step {step.name!r} reacts to"
                        f" {topic!r} but is not subscribed to it in the topics"
                    )
        self._factories[participant.name] = factory
        await self._tg.start(self._host, participant)

    async def _host(self, participant: ChoreographyParticipant,
                    *, task_status: TaskStatus[None]) -> None:
        path = None if self.wal_dir is None else self.wal_dir / f"{participant.name}.wal.db"
        closed = anyio.Event()
        try:
            await self._run_hosted(participant, path, closed, task_status)
        finally:
            closed.set()

    async def _run_hosted(self, participant: ChoreographyParticipant, path: Path | None,
                          closed: anyio.Event, task_status: TaskStatus[None]) -> None:
        wal = self._wals.get(participant.name)
        if wal is None:
            wal = make_wal(path, durability=self.durability,
                           node=f"{self.rt.node}/{participant.name}")
            if parse_durability(self.durability) is Durability.MEMORY:
                # A memory WAL is the participant's "disk": kept across restarts.
                self._wals[participant.name] = wal
        with CancelScope() as scope:
            async with wal, anyio.create_task_group() as tg:
                records = [_DECODER.decode(entry.data) for entry in await wal.read_all()]
                work = participant._replay(records)
                participant._wal, participant._tg, participant._choreo = wal, tg, self
                policy = SupervisionPolicy(directive=Directive.ESCALATE)
                await self.rt.spawn(lambda: participant, name=participant.name, policy=policy)
                hosted = _Hosted(participant, scope, closed)
                self._hosted[participant.name] = hosted
                task_status.started()
                for resume in work:
                    resume()
                await hosted.stopping.wait()
                # A clean stop: steps in flight are resumed from the WAL at the
                # next start; the WAL itself closes normally (lazy records kept).
                tg.cancel_scope.cancel()

    async def stop(self, name: str) -> None:
        """Stop a participant: its actor (draining), then its running steps, then its WAL."""
        hosted = self._pop(name)
        await self.rt.system.stop(name, drain=True)
        hosted.participant._tg = None
        hosted.stopping.set()
        await hosted.closed.wait()

    async def crash(self, name: str) -> None:
        """Model a crash of one participant: work in flight and unforced records are lost."""
        hosted = self._pop(name)
        wal_crash = getattr(hosted.participant._wal, "crash", None)
        if wal_crash is not None:
            wal_crash()
        hosted.participant._tg = None
        await self.rt.system.stop(name, drain=False)
        hosted.scope.cancel()
        await hosted.closed.wait()  # raises Cancelled at once when a participant crashes itself

    def _pop(self, name: str) -> _Hosted:
        hosted = self._hosted.pop(name, None)
        if hosted is None:
            raise ConfigError(f"no participant {name!r} is running in this choreography")
        return hosted

    async def restart(self, name: str) -> None:
        """Start a fresh instance of a stopped or crashed participant from its WAL."""
        await self.start(self._factories[name])

    async def publish(self, event: SagaEvent) -> None:
        """Send `event` to every subscriber of its topic (none: logged, dropped)."""
        for hook in self._hooks:
            hook(event)
        addresses = self.topics.subscribers(event.topic)
        if not addresses:
            log.warning("choreography: nobody subscribes to %r (saga %r)", event.topic,
                        event.saga_id)
        for address in addresses:
            await self.rt.send(address, event)

    def settled(self) -> bool:
        """Nothing in flight: every participant idle and every mailbox empty."""
        depths = self.rt.system.statistics().mailbox_depths
        return all(
            hosted.participant.idle() and not depths.get(name, 0)
            for name, hosted in self._hosted.items()
        ) and not depths.get(OUTCOMES_ACTOR, 0)

    async def settle(self, *, poll_s: float = 0.005) -> None:
        """Wait until `settled()` holds twice in a row (wrap in a timeout)."""
        calm = 0
        while calm < 2:
            calm = calm + 1 if self.settled() else 0
            await self.rt.clock.sleep(poll_s)

    async def wait(self, saga_id: str) -> SagaEvent:
        """The terminal event of `saga_id`, once published (wrap in a timeout)."""
        while saga_id not in self.outcomes:
            event = self._waiters.setdefault(saga_id, anyio.Event())
            await event.wait()
        return self.outcomes[saga_id]
