"""The simulated step services of a saga run: definitions, barrier rows, effects, duplicates.

The orchestrator's step callables deliver to `StepServices`: in-memory
resources behind the idempotency barrier (`dtxn.protocols.saga.barrier.decide`),
whose rows, effect journal and pending marks survive orchestrator crashes.
Every effect that gets past the barrier feeds the simulation's `SagaChecker`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.saga import SagaDefinition
from dtxn.protocols.saga.barrier import BarrierDecision, BarrierRow, recorded_result, row_to_write
from dtxn.protocols.saga.definition import RetryPolicy, SagaStep
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.clock import Clock
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.sim._harness import derive_seed
from dtxn.runtime.sim.invariants import SagaShape
from dtxn.runtime.sim.sagas._scenario import SagaSpec
from dtxn.runtime.sim.sagas._variants import BarrierFn

if TYPE_CHECKING:
    from dtxn.runtime.sim.sagas._cluster import SagaCluster

__all__ = ["STEP_TIMEOUT_S", "StepFunction", "StepServices", "definition_of", "saga_id",
           "shape_of"]

STEP_TIMEOUT_S = 1.0


def saga_id(index: int) -> str:
    return f"s{index}"


def shape_of(spec: SagaSpec) -> SagaShape:
    return SagaShape(spec.deps, spec.pivot, spec.stuck)


def definition_of(index: int, spec: SagaSpec) -> SagaDefinition:
    """The saga definition a spec describes (step names are "k0", "k1", ...)."""
    shape = shape_of(spec)
    after = shape.after_pivot()
    steps = []
    for k, deps in enumerate(spec.deps):
        post = k in after
        steps.append(SagaStep(
            f"k{k}",
            f"s{index}.T{k}",
            None if post or k == spec.pivot else f"s{index}.C{k}",
            tuple(f"k{d}" for d in deps),
            retry=RetryPolicy(max_attempts=None) if post else RetryPolicy(),
            compensation_retry=RetryPolicy(max_attempts=None),
            timeout_s=STEP_TIMEOUT_S,
        ))
    pivot = f"k{spec.pivot}" if spec.pivot >= 0 else None
    return SagaDefinition(f"s{index}", tuple(steps), pivot)


# -- the step services ---------------------------------------------------------------


class StepServices:
    """Every step's resource: barrier rows, the effect journal and pending marks.

    Owned by the simulation, not the orchestrator, so all of it survives an
    orchestrator crash. `decide` is the barrier's decision table (a mutation
    test swaps in a broken one).
    """

    def __init__(self, sim: SagaCluster, decide_fn: BarrierFn) -> None:
        self.sim = sim
        self.decide = decide_fn
        self.rows: dict[tuple[str, str], dict[StepOp, BarrierRow]] = {}
        self.pending: dict[str, bool] = {}  # saga id -> pending mark set
        self.rng = Clock(seed=derive_seed(sim.scenario.seed, "services")).rng("services")

    def script(self, saga: str, step: int, op: StepOp, attempt: int) -> str:
        """The scripted answer of one delivery: the same for every copy of an attempt."""
        spec = self.sim.specs[saga]
        if op is StepOp.ACTION and step == spec.fail:
            return "fail"
        if op is StepOp.COMPENSATION and step == spec.stuck:
            return "fail"
        if step == spec.pivot:
            return "ok"
        draw = derive_seed(self.sim.scenario.seed, f"flaky:{saga}:{step}:{op.value}:{attempt}")
        return "flaky" if (draw % 10_000) / 10_000 < self.sim.scenario.flaky else "ok"

    async def deliver(self, call: StepCall, step: int, duplicate: bool) -> Any:
        sim = self.sim
        await asyncio.sleep(self.rng.uniform(0, sim.scenario.jitter_s))  # noqa: TID251 - virtual
        saga = call.saga_id
        answer = self.script(saga, step, call.op, call.attempt)
        if answer != "ok":
            if answer == "fail" and call.op is StepOp.COMPENSATION:
                sim.checker.on_compensation_refused(saga, step)
            raise StepError(f"{call.op.value} of {saga}/k{step} {answer}",
                            retriable=answer == "flaky")
        rows = self.rows.setdefault((saga, call.step), {})
        try:
            decision = self.decide(list(rows.values()), call.op)
        except ProtocolError as exc:
            # A corrupt barrier: the orchestrator would only see a retriable failure.
            sim.checker.now_s = sim.now()
            sim.checker.on_error(f"barrier of {saga}/{call.step}", exc)
            raise
        result: Any = None
        if decision is BarrierDecision.RUN:
            result = f"{saga}.{call.step}.{call.op.value}"
            self._apply(saga, step, call.op, duplicate)
        elif decision is BarrierDecision.DUPLICATE:
            result = recorded_result(rows.values(), call.op)
        elif decision is BarrierDecision.REFUSE:
            sim.note("refused", (saga, call.step, call.op.value))
            raise StepError(f"{saga}/{call.step}: action refused after compensation",
                            retriable=False)
        row = row_to_write(decision, call.op, result)
        if row is not None:
            rows[row.op] = row
        if decision is BarrierDecision.RECORD_NULL:
            sim.note("null", (saga, call.step))
        await asyncio.sleep(self.rng.uniform(0, sim.scenario.jitter_s))  # noqa: TID251 - virtual
        return result

    def _apply(self, saga: str, step: int, op: StepOp, duplicate: bool) -> None:
        sim = self.sim
        sim.note("effect", (saga, f"k{step}", op.value, "dup" if duplicate else "call"))
        sim.checker.now_s = sim.now()
        sim.checker.on_effect(saga, step, op, duplicate=duplicate)
        last = len(sim.specs[saga].deps) - 1
        # The semantic lock: the first step sets it, the last step (completion)
        # or the first step's compensation (the end of backward recovery) clears it.
        if op is StepOp.ACTION and step == 0:
            self.pending[saga] = True
        if (op is StepOp.ACTION and step == last) or (op is StepOp.COMPENSATION and step == 0):
            self.pending[saga] = False


class StepFunction:
    """The callable registered for one action or compensation."""

    def __init__(self, services: StepServices, step: int) -> None:
        self.services = services
        self.step = step

    async def __call__(self, call: StepCall) -> Any:
        sim = self.services.sim
        if not sim.healed and sim.dup_rng.random() < sim.scenario.duplicate:
            sim.duplicate(call, self.step)
        return await self.services.deliver(call, self.step, False)
