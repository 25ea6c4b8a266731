"""`ChoreographyParticipant`: one service's steps, its own WAL, replay after a crash."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import msgspec
from anyio.abc import TaskGroup
from dtxn.actors import Actor
from dtxn.protocols.errors import ConfigError, DtxnError, TransactionError
from dtxn.protocols.saga.definition import RetryPolicy, backoff_ms
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.choreography._records import (
    _ENCODER,
    ChoreographyStatistics,
    ChoreoStep,
    SagaEvent,
    StepStatus,
    _Done,
    _kind,
    _Published,
    _Record,
    _Started,
)
from dtxn.runtime.hosting import StepCall, StepError, StepFn
from dtxn.runtime.wal import WalStore

if TYPE_CHECKING:
    from dtxn.runtime.choreography._host import Choreography

log = logging.getLogger("dtxn.choreography")


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


