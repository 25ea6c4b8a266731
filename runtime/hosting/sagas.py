"""The saga host of a node: runs orchestrated sagas on the node's WAL.

A `SagaHost` keeps one `SagaOrchestrator` per live saga and carries out its
effects like every other host (forces park only that saga; timers on the
runtime's clock). Step invocations run on a bounded worker pool: each step's
action or compensation is an async callable registered under its name:

    async def book_hotel(call: StepCall) -> Any: ...

`call.payload` is the saga's input, `call.results` the results of the steps
it depends on (for a compensation: its own action's result). Raise
`StepError(retriable=False)` when another attempt cannot help; any other
exception is retried by the step's policy. Invocations may be repeated after
a crash or a timeout: make them idempotent (see the idempotency barrier).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
from dtxn.actors import Rejected
from dtxn.protocols.effects import Effect
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Message
from dtxn.protocols.saga import SagaDefinition, SagaOrchestrator, SagaReport
from dtxn.protocols.saga.events import (
    ForceRequested,
    InvokeStep,
    ReportStuck,
    ResumeRequested,
    SagaFinished,
    Start,
    StepFailed,
    StepSucceeded,
)
from dtxn.protocols.saga.records import SagaState, StepOp
from dtxn.runtime.hosting._host import FINISHED_REMEMBERED, HostServices, MachineHost
from dtxn.runtime.hosting._workers import WorkerPool

log = logging.getLogger("dtxn.saga")

SAGA_ACTOR = "sagas"


class StepError(Rejected):
    """Raised by a step to fail it; `retriable=False` skips the remaining attempts.

    A `Rejected`: raised by a participant actor's `receive`, it goes back to
    the orchestrator without counting as the actor's failure (no restart).
    """

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        super().__init__(message)
        self.retriable = retriable


class StepCall(msgspec.Struct, frozen=True):
    """What a step's action or compensation is called with."""

    saga_id: str
    step: str
    op: StepOp
    attempt: int
    payload: Any = None
    results: dict[str, Any] = msgspec.field(default_factory=dict)


StepFn = Callable[[StepCall], Awaitable[Any]]


class SagaOutcome(msgspec.Struct, frozen=True):
    """What a caller of `run_saga` gets back: completed, compensated or stuck."""

    saga_id: str
    state: SagaState
    reason: str = ""
    results: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.state is SagaState.COMPLETED


class SagaHost(MachineHost):
    role = "saga orchestrator"

    def __init__(
        self,
        services: HostServices,
        node: str,
        pool: WorkerPool,
        random: Callable[[], float],
    ) -> None:
        super().__init__(services, SAGA_ACTOR, node)
        self.pool = pool
        self.random = random
        self.definitions: dict[tuple[str, int], SagaDefinition] = {}
        # Per definition (name, version): each action and compensation name ->
        # its callable. Two sagas, or two versions of one, may use one name
        # for different code, and each runs its own.
        self.step_tables: dict[tuple[str, int], dict[str, StepFn]] = {}
        self.waiting: dict[str, asyncio.Future[SagaOutcome]] = {}
        self.ended: OrderedDict[str, SagaOutcome] = OrderedDict()
        # How many ended sagas are remembered (and keep a tombstone record in
        # the WAL): status queries answer for them and their ids stay used.
        self.ended_max = FINISHED_REMEMBERED
        # Bound once: the pool calls it for every step (no closure per call).
        self._invoke_bound = self._invoke

    # -- registration --------------------------------------------------------------

    def check_definition(self, definition: SagaDefinition) -> None:
        """Raise `ConfigError` if `definition` is malformed."""
        SagaOrchestrator("validate", definition)

    def register(self, definition: SagaDefinition, steps: Mapping[str, StepFn]) -> None:
        """Make `definition` runnable here, with a callable for every action/compensation.

        A name `steps` leaves out is taken from earlier registrations on this
        node if they all agree on its callable. Nothing changes on an error.
        """
        if not isinstance(definition, SagaDefinition):
            raise TypeError(f"a saga definition must be a SagaDefinition, got {definition!r}")
        self.check_definition(definition)  # raises ConfigError if it is malformed
        key = (definition.name, definition.version)
        where = f"saga {definition.name!r} v{definition.version}"
        known = self.definitions.get(key)
        if known is not None and known != definition:
            raise ConfigError(
                f"{where} is already registered here with other steps; a changed "
                "definition needs a new version (register both while old sagas run)"
            )
        names = {s.action for s in definition.steps}
        names |= {s.compensation for s in definition.steps if s.compensation}
        table = {name: steps[name] for name in names if name in steps}
        missing: list[str] = []
        for name in sorted(names - set(table)):
            earlier = {id(t[name]): t[name] for t in self.step_tables.values() if name in t}
            if len(earlier) > 1:
                raise ConfigError(
                    f"{where}: {name!r} is registered with {len(earlier)} different "
                    "callables by other sagas here; give this saga its own"
                )
            if earlier:
                table[name] = next(iter(earlier.values()))
            else:
                missing.append(name)
        if missing:
            raise ConfigError(
                f"{where}: no callable registered for {', '.join(map(repr, missing))}"
            )
        self.definitions[key] = definition
        self.step_tables[key] = table

    def machine_for(self, saga_id: str, name: str, version: int) -> SagaOrchestrator:
        definition = self.definitions.get((name, version))
        if definition is None:
            raise ConfigError(
                f"saga {saga_id!r} was logged for definition {name!r} v{version}, which is "
                "not registered on this runtime; register it before starting"
            )
        return SagaOrchestrator(saga_id, definition, random=self.random)

    # -- running -------------------------------------------------------------------

    def begin(
        self,
        saga_id: str,
        definition: SagaDefinition,
        payload: Any,
        reply: asyncio.Future[SagaOutcome] | None,
    ) -> None:
        if saga_id in self.txns or saga_id in self.ended:
            raise TransactionError(f"saga id {saga_id!r} was already used")
        self.add(saga_id, self.machine_for(saga_id, definition.name, definition.version))
        if reply is not None:
            self.waiting[saga_id] = reply
        self.services.counters.started += 1
        self.dispatch(saga_id, Start(payload))

    def report(self, saga_id: str) -> SagaReport | None:
        txn = self.txns.get(saga_id)
        machine = txn.machine if txn is not None else None
        if isinstance(machine, SagaOrchestrator):
            return machine.report()
        return None

    def resume(self, saga_id: str) -> None:
        self._operator(saga_id, ResumeRequested())

    def force(self, saga_id: str, result: Any, reason: str) -> None:
        self._operator(saga_id, ForceRequested(result, reason))

    def _operator(self, saga_id: str, event: ResumeRequested | ForceRequested) -> None:
        if self.report(saga_id) is None:
            raise TransactionError(f"no live saga {saga_id!r} on this node")
        self.dispatch(saga_id, event)

    def answer_unknown(self, message: Message) -> list[Effect] | None:
        return None  # sagas take no protocol messages from other nodes

    def on_effect(self, txid: str, effect: Effect) -> bool:
        if isinstance(effect, InvokeStep):
            self.pool.submit_call(self._invoke_bound, effect, self._step_fn(txid, effect.name))
            return True
        if isinstance(effect, ReportStuck):
            self.services.counters.stuck += 1
            log.error(
                "txid=%s saga stuck on %s of step %r: %s; resume or force it",
                txid,
                effect.op.value,
                effect.step,
                effect.error,
            )
            self._answer(txid, SagaOutcome(txid, SagaState.STUCK, effect.error))
            return True
        if isinstance(effect, SagaFinished):
            if effect.state is SagaState.COMPLETED:
                self.services.counters.committed += 1
            else:
                self.services.counters.aborted += 1
            outcome = SagaOutcome(txid, effect.state, effect.reason, effect.results)
            self._answer(txid, outcome)
            self.remember_ended(outcome)
            txn = self.txns.pop(txid, None)
            if txn is not None:
                for timer in txn.timers.values():
                    timer.cancel()
            return True
        return False

    def remembers(self, saga_id: str) -> bool:
        # A saga compacts just before `remember_ended` takes its outcome in
        # (and evicts the oldest, tombstones included): keep it until then.
        return True

    def remember_ended(self, outcome: SagaOutcome) -> None:
        """Remember how a saga ended; the oldest beyond `ended_max` are forgotten, log and all."""
        ended = self.ended
        ended[outcome.saga_id] = outcome
        while len(ended) > self.ended_max:
            forgotten, _ = ended.popitem(last=False)
            # Its tombstone (the saga-finished record `Compact` kept) goes too.
            self.forget_tombstone(forgotten)

    def _answer(self, saga_id: str, outcome: SagaOutcome) -> None:
        reply = self.waiting.pop(saga_id, None)
        if reply is not None and not reply.done():
            reply.set_result(outcome)

    def _step_fn(self, saga_id: str, name: str) -> StepFn:
        """The callable the definition of live saga `saga_id` registered for `name`."""
        machine = self.txns[saga_id].machine
        assert isinstance(machine, SagaOrchestrator)
        definition = machine.definition
        return self.step_tables[(definition.name, definition.version)][name]

    async def _invoke(self, effect: InvokeStep, fn: StepFn) -> None:
        call = StepCall(
            effect.saga_id, effect.step, effect.op, effect.attempt, effect.payload, effect.results
        )
        try:
            result = await fn(call)
        except StepError as exc:
            event: StepSucceeded | StepFailed = StepFailed(
                effect.step, str(exc), exc.retriable, effect.op, effect.attempt
            )
        except Exception as exc:  # noqa: BLE001 - reported to the machine, which retries or fails
            log.warning(
                "txid=%s %s of step %r raised %r", effect.saga_id, effect.op.value, effect.step, exc
            )
            event = StepFailed(effect.step, repr(exc), True, effect.op, effect.attempt)
        else:
            event = StepSucceeded(effect.step, result, effect.op, effect.attempt)
        self.dispatch(effect.saga_id, event)
