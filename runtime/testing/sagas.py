"""Property-test your own saga steps and compensations in the saga simulator.

You bring a `SagaDefinition` and a factory for its step callables (the same
`async def fn(call: StepCall)` you register with `Runtime.register_saga`);
the factory is called once per run, with a fresh `SagaEffects`, so every run
starts from empty resources. Your resources call `effects.record(call)` each
time an action or compensation really changes their state - after their own
idempotency check - which is what G1-G5 are checked on:

    def make_steps(effects: SagaEffects) -> dict[str, StepFn]:
        hotel = Hotel(effects)          # calls effects.record(call) on a change
        return {"book_hotel": hotel.book, "cancel_hotel": hotel.cancel, ...}

    @given(saga_scenarios(TRIP))
    def test_trip_compensates(scenario):
        check_saga(TRIP, make_steps, scenario)

The simulator delivers some calls twice (a duplicate the orchestrator never
hears about), loses some replies after the step ran (the orchestrator retries
it), fails the scripted step for good and crashes the orchestrator at times
or at force boundaries, so your steps must be idempotent: a repeated call
with the same `(saga_id, step, op)` must not take effect twice. `check_saga`
raises `SagaSimulationFailure` with a shrunk schedule, one line that
`SagaScenario.parse` reads back, when a run breaks G1-G5 or liveness (every
saga ends completed or compensated after the faults stop) or when your
`final_check` (say, "a compensated trip holds no booking") raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.saga import SagaDefinition
from dtxn.protocols.saga.definition import RetryPolicy
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.hosting import StepCall, StepError, StepFn
from dtxn.runtime.sim import (
    ScheduleFailure,
    derive_seed,
    quiet_logs,
    run_virtually,
    shrink_greedily,
    trace_hash,
)
from dtxn.runtime.sim.invariants import Violation
from dtxn.runtime.sim.sagas import (
    SagaCluster,
    SagaFault,
    SagaScenario,
    SagaSimResult,
    SagaSimulationFailure,
    SagaSpec,
    correct_orchestrator,
    smaller_scenarios,
)
from hypothesis import currently_in_test_context
from hypothesis import strategies as st

__all__ = [
    "FinalCheck",
    "SagaEffects",
    "StepsFactory",
    "UserSagaFailure",
    "check_saga",
    "run_saga_scenario",
    "saga_fault_schedules",
    "saga_scenarios",
    "saga_workloads",
]

StepsFactory = Callable[["SagaEffects"], Mapping[str, StepFn]]
FinalCheck = Callable[[Mapping[str, str]], None]
"""Called after the liveness phase with each saga's end ("completed", "compensated", ...)."""

_DUPLICATE: contextvars.ContextVar[bool] = contextvars.ContextVar("dtxn_saga_duplicate",
                                                                  default=False)


class SagaEffects:
    """Where your resources report each action or compensation that took effect."""

    def __init__(self) -> None:
        self._sim: _UserSagaSim | None = None

    def record(self, call: StepCall) -> None:
        """`call`'s action or compensation changed your resource's state: once per change."""
        sim = self._sim
        if sim is None:
            raise ConfigError("SagaEffects.record called outside a check_saga run")
        index = sim.index_of[call.step]
        duplicate = _DUPLICATE.get()
        sim.note("effect", (call.saga_id, call.step, call.op.value,
                            "dup" if duplicate else "call"))
        sim.checker.now_s = sim.now()
        sim.checker.on_effect(call.saga_id, index, call.op, duplicate=duplicate)


class UserSagaFailure(SagaSimulationFailure):
    """Raised by `check_saga` when your steps break an invariant; says how to replay it."""

    def __init__(self, definition: SagaDefinition, scenario: SagaScenario,
                 violations: list[Violation]) -> None:
        self.definition = definition
        name = definition.name.upper()
        # Skips SagaSimulationFailure's own message: this one replays with check_saga.
        ScheduleFailure.__init__(
            self, scenario, violations, f"saga {definition.name!r}",
            lambda text: f"check_saga({name}, make_steps, {text!r})", note=" (shrunk schedule)",
        )


# -- the workload and schedule as data ---------------------------------------------------


def _deps_of(definition: SagaDefinition) -> tuple[tuple[int, ...], ...]:
    index = {step.name: k for k, step in enumerate(definition.steps)}
    return tuple(tuple(sorted(index[d] for d in step.depends_on)) for step in definition.steps)


def _pivot_of(definition: SagaDefinition) -> int:
    names = [step.name for step in definition.steps]
    return names.index(definition.pivot) if definition.pivot is not None else -1


def _failable(definition: SagaDefinition) -> list[int]:
    """Steps whose action may fail for good: those with a compensation before the pivot."""
    pivot = _pivot_of(definition)
    return [k for k, step in enumerate(definition.steps)
            if step.compensation is not None and (pivot < 0 or k < pivot)]


@st.composite
def _saga(draw: st.DrawFn, definition: SagaDefinition) -> SagaSpec:
    fail = draw(st.sampled_from([-1, *_failable(definition)]))
    at_s = draw(st.integers(0, 300)) / 1000
    return SagaSpec(at_s, _deps_of(definition), _pivot_of(definition), fail)


def saga_workloads(definition: SagaDefinition, *,
                   max_sagas: int = 3) -> st.SearchStrategy[tuple[SagaSpec, ...]]:
    """1..max_sagas runs of `definition`: when each starts, which step (if any) fails for good."""
    return st.lists(_saga(definition), min_size=1, max_size=max_sagas).map(tuple)


def saga_fault_schedules(*, max_faults: int = 3) -> st.SearchStrategy[tuple[SagaFault, ...]]:
    """Orchestrator crashes and restarts at times, and crashes at the next force / forced record."""
    fault = st.builds(SagaFault, st.integers(0, 1000).map(lambda ms: ms / 1000),
                      st.sampled_from(["crash", "restart", "crashforce", "crashforced"]))
    return st.lists(fault, max_size=max_faults).map(
        lambda faults: tuple(sorted(faults, key=lambda f: f.at_s)))


@st.composite
def saga_scenarios(draw: st.DrawFn, definition: SagaDefinition, *, max_sagas: int = 3,
                   max_faults: int = 3) -> SagaScenario:
    """A whole saga scenario for `definition`: workload, faults, duplicate and transient rates."""
    return SagaScenario(
        draw(st.integers(0, 2**32 - 1)),
        draw(saga_workloads(definition, max_sagas=max_sagas)),
        draw(saga_fault_schedules(max_faults=max_faults)),
        duplicate=draw(st.sampled_from([0.0, 0.1, 0.3])),
        flaky=draw(st.sampled_from([0.0, 0.1, 0.3])),
        jitter_s=draw(st.sampled_from([0.001, 0.01, 0.05])),
    )


# -- the run -----------------------------------------------------------------------------


class _UserStep:
    """Wraps one of your callables: scripted failures, lost replies, duplicates, jitter."""

    def __init__(self, sim: _UserSagaSim, name: str, fn: StepFn) -> None:
        self.sim = sim
        self.name = name
        self.fn = fn

    def _policy(self, call: StepCall) -> RetryPolicy:
        step = self.sim.definition.steps[self.sim.index_of[call.step]]
        return step.retry if call.op is StepOp.ACTION else step.compensation_retry

    def _script(self, call: StepCall) -> str:
        sim = self.sim
        index = sim.index_of[call.step]
        if call.op is StepOp.ACTION and index == sim.specs[call.saga_id].fail:
            return "fail"
        limit = self._policy(call).max_attempts
        if limit is not None and call.attempt >= limit:
            return "ok"  # never exhaust a budget with injected transient failures
        draw = derive_seed(sim.scenario.seed, f"flaky:{call.saga_id}:{call.step}:"
                                          f"{call.op.value}:{call.attempt}")
        fraction = (draw % 10_000) / 10_000
        if fraction < sim.scenario.flaky / 2:
            return "flaky"
        return "lost" if fraction < sim.scenario.flaky else "ok"

    async def __call__(self, call: StepCall) -> Any:
        sim = self.sim
        if not sim.healed and sim.dup_rng.random() < sim.scenario.duplicate:
            sim.note("duplicate", (call.saga_id, call.step, call.op.value, call.attempt))
            sim.tasks.append(asyncio.get_running_loop().create_task(self._duplicate(call)))
        jitter_s = sim.scenario.jitter_s
        await asyncio.sleep(sim.services.rng.uniform(0, jitter_s))  # noqa: TID251 - virtual
        answer = self._script(call)
        if answer == "fail":
            raise StepError(f"{call.saga_id}/{call.step} fails for good (scripted)",
                            retriable=False)
        if answer == "flaky":
            raise StepError(f"{call.saga_id}/{call.step} failed (transient, scripted)")
        result = await self.fn(call)
        await asyncio.sleep(sim.services.rng.uniform(0, jitter_s))  # noqa: TID251 - virtual
        if answer == "lost":
            sim.note("lost", (call.saga_id, call.step, call.op.value, call.attempt))
            raise StepError(f"{call.saga_id}/{call.step}: reply lost after it ran (scripted)")
        return result

    async def _duplicate(self, call: StepCall) -> None:
        await asyncio.sleep(self.sim.dup_rng.uniform(0, 0.2))  # noqa: TID251 - virtual time
        if self._script(call) in ("fail", "flaky"):
            return  # every copy of an attempt gets the same scripted answer
        token = _DUPLICATE.set(True)
        try:
            # The answer to a duplicate goes nowhere, whatever it is.
            with contextlib.suppress(Exception):
                await self.fn(call)
        finally:
            _DUPLICATE.reset(token)


class _UserSagaSim(SagaCluster):
    """The saga simulation with your definition and steps instead of the scripted ones."""

    def __init__(self, scenario: SagaScenario, definition: SagaDefinition,
                 make_steps: StepsFactory) -> None:
        deps, pivot = _deps_of(definition), _pivot_of(definition)
        # The shape comes from the definition, whatever the schedule text says.
        scenario = msgspec.structs.replace(scenario, sagas=tuple(
            msgspec.structs.replace(spec, deps=deps, pivot=pivot, stuck=-1)
            for spec in scenario.sagas))
        super().__init__(scenario, correct_orchestrator, _never_called)
        self.definition = definition
        self.index_of = {step.name: k for k, step in enumerate(definition.steps)}
        effects = SagaEffects()
        effects._sim = self
        user = make_steps(effects)
        names = {s.action for s in definition.steps}
        names |= {s.compensation for s in definition.steps if s.compensation is not None}
        missing = sorted(names - set(user))
        if missing:
            raise ConfigError(f"saga {definition.name!r}: no callable for {missing}")
        by_name = {s.action: s.name for s in definition.steps}
        by_name |= {s.compensation: s.name for s in definition.steps if s.compensation}
        self.definitions = [definition]
        self.steps = {fn_name: _UserStep(self, by_name[fn_name], user[fn_name])
                      for fn_name in sorted(names)}

    def definition_name(self, saga_id: str) -> str:
        return self.definition.name


def _never_called(rows: Any, op: StepOp) -> Any:
    raise AssertionError("user steps run without the simulator's barrier")


def run_saga_scenario(definition: SagaDefinition, make_steps: StepsFactory,
                      scenario: SagaScenario, *,
                      final_check: FinalCheck | None = None) -> SagaSimResult:
    """Run `scenario` once with your steps; return the result (violations included)."""
    _check_definition(definition)
    quiet_logs()
    sim = _UserSagaSim(scenario, definition, make_steps)
    virtual_s = run_virtually(sim.main)
    violations = list(sim.checker.violations)
    if final_check is not None and not violations:
        try:
            final_check(dict(sim.ends))
        except AssertionError as exc:
            violations.append(Violation("U", virtual_s, "-", f"final_check failed: {exc}"))
    return SagaSimResult(sim.scenario, trace_hash(sim.trace), len(sim.trace), dict(sim.ends),
                         violations, virtual_s, sim.trace)


def _check_definition(definition: SagaDefinition) -> None:
    pivot = _pivot_of(definition)
    for k, step in enumerate(definition.steps):
        if pivot >= 0 and k >= pivot and step.retry.max_attempts is not None:
            raise ConfigError(f"saga {definition.name!r}: step {step.name!r} is at or after "
                              f"the pivot, so it must retry until it succeeds "
                              f"(RetryPolicy(max_attempts=None))")


def check_saga(definition: SagaDefinition, make_steps: StepsFactory,
               scenario: SagaScenario | str, *, final_check: FinalCheck | None = None,
               shrink: bool | None = None, runs_max: int = 100) -> SagaSimResult:
    """Run one scenario with your steps; on a violation raise with a shrunk, replayable schedule.

    `scenario` may be the one-line text a failure printed. The failure's
    schedule replays with `check_saga(definition, make_steps, "<schedule>")`.
    `shrink` defaults to on outside a hypothesis test and off inside one,
    where hypothesis shrinks the scenario itself (at most `runs_max` runs).
    """
    if isinstance(scenario, str):
        scenario = SagaScenario.parse(scenario)
    result = run_saga_scenario(definition, make_steps, scenario, final_check=final_check)
    if not result.violations:
        return result
    if shrink is None:
        shrink = not currently_in_test_context()
    if not shrink:
        raise UserSagaFailure(definition, result.scenario, result.violations)
    small, violations = _minimize(definition, make_steps, result.scenario, result.violations,
                                  final_check, runs_max)
    raise UserSagaFailure(definition, small, violations)


def _minimize(definition: SagaDefinition, make_steps: StepsFactory, scenario: SagaScenario,
              violations: list[Violation], final_check: FinalCheck | None,
              runs_max: int) -> tuple[SagaScenario, list[Violation]]:
    """Greedy shrinking: calm the rates, drop faults and trailing sagas, keep the failure."""

    def failing(candidate: SagaScenario) -> list[Violation]:
        return run_saga_scenario(definition, make_steps, candidate,
                                 final_check=final_check).violations

    return shrink_greedily(scenario, violations, smaller_scenarios, failing,
                           runs=0, runs_max=runs_max)

