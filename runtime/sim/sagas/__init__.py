"""The deterministic simulator for orchestrated sagas: one orchestrator, many step services.

A `SagaScenario` is everything a run depends on: the seed, the sagas (each a
small linear chain or DAG of steps, with an optional pivot, an optional step
whose action fails for good and an optional step whose compensation fails
for good) and the fault schedule (orchestrator crash and restart at virtual
times, a crash armed at the next force or right after the next forced
record, plus a rate of duplicate deliveries and of transient step failures).

`run(scenario)` builds one orchestrator node - a real `Runtime` on a
`MemoryWal` - on a `SimLoop`. Its step callables deliver to `StepServices`:
in-memory resources behind the pure idempotency barrier
(`dtxn.protocols.saga.barrier.decide`), whose rows, effect journal and pending
marks survive orchestrator crashes. The simulator also delivers some calls a
second time, later (duplicates the orchestrator never hears about). Every
effect that gets past the barrier feeds a `SagaChecker` (G1-G5).

Two phases, as for atomic commit: safety (faults on), then liveness (the
orchestrator restarts, duplicates stop, and every saga must end completed or
compensated within `LIVENESS_BOUND_S`, or stuck when a compensation is
scripted to fail for good). A scenario prints as one line (`text()`), which
`parse` reads back and `dtxn replay` takes.

The simulator is split by job: `_scenario` (what a run is made of),
`_services` (the step services), `_variants` (the
orchestrator and barrier under test), `_cluster` (the simulated
node) and this module (run, sweep, shrink); `dtxn.runtime.sim._harness` holds what it
shares with the atomic-commit simulator.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from dtxn.runtime.sim._harness import derive_seed as _derive
from dtxn.runtime.sim._harness import quiet_logs as _quiet_logs
from dtxn.runtime.sim._harness import (
    run_virtually,
    shrink_greedily,
    sweep_schedules,
    trace_hash,
)
from dtxn.runtime.sim.invariants import Violation
from dtxn.runtime.sim.sagas._cluster import LIVENESS_BOUND_S, NODE, POLL_S, SETTLE_S, SagaCluster
from dtxn.runtime.sim.sagas._cluster import SagaCluster as _SagaSim
from dtxn.runtime.sim.sagas._scenario import (
    FAULT_KINDS,
    STEPS_MAX,
    SagaFault,
    SagaScenario,
    SagaSimResult,
    SagaSimulationFailure,
    SagaSpec,
    random_scenario,
    smaller_scenarios,
)
from dtxn.runtime.sim.sagas._services import (
    STEP_TIMEOUT_S,
    StepServices,
    definition_of,
    shape_of,
)
from dtxn.runtime.sim.sagas._variants import (
    BARRIERS,
    ORCHESTRATORS,
    BarrierFn,
    ForwardCompensatingOrchestrator,
    OrchestratorFactory,
    correct_orchestrator,
    ignoring_duplicates,
)
from dtxn.runtime.sim.sagas._variants import correct_orchestrator as _orchestrator

__all__ = [
    "BARRIERS",
    "FAULT_KINDS",
    "LIVENESS_BOUND_S",
    "NODE",
    "ORCHESTRATORS",
    "POLL_S",
    "SETTLE_S",
    "STEPS_MAX",
    "STEP_TIMEOUT_S",
    "BarrierFn",
    "ForwardCompensatingOrchestrator",
    "OrchestratorFactory",
    "SagaCluster",
    "SagaFault",
    "SagaScenario",
    "SagaSimResult",
    "SagaSimulationFailure",
    "SagaSpec",
    "StepServices",
    "SweepStatistics",
    "_SagaSim",
    "_derive",
    "_orchestrator",
    "_quiet_logs",
    "correct_orchestrator",
    "definition_of",
    "ignoring_duplicates",
    "minimize",
    "random_scenario",
    "run",
    "schedule_seed",
    "shape_of",
    "smaller_scenarios",
    "sweep",
]


def run(
    scenario: SagaScenario,
    *,
    orchestrator: str | OrchestratorFactory = "correct",
    barrier: str | BarrierFn = "correct",
    raise_on_violation: bool = True,
    hash_trace: bool = True,
) -> SagaSimResult:
    """Run `scenario` on a fresh virtual-time loop; raise on a violation unless told not to.

    `hash_trace=False` leaves `trace_hash` empty (a sweep never reads it).

    `orchestrator` and `barrier` name (or are) the variants under test: the
    mutation tests pass `"forward"` and `"ignore-duplicates"`.
    """
    _quiet_logs()
    make = ORCHESTRATORS[orchestrator] if isinstance(orchestrator, str) else orchestrator
    decide_fn = BARRIERS[barrier] if isinstance(barrier, str) else barrier
    sim = _SagaSim(scenario, make, decide_fn)
    virtual_s = run_virtually(sim.main)
    digest = trace_hash(sim.trace) if hash_trace else ""
    result = SagaSimResult(scenario, digest, len(sim.trace), dict(sim.ends),
                           list(sim.checker.violations), virtual_s, sim.trace)
    if raise_on_violation and result.violations:
        raise SagaSimulationFailure(scenario, result.violations)
    return result



class SweepStatistics(msgspec.Struct):
    """What `sweep` did: schedules run, trace events, failing schedules, the first failure."""

    schedules: int = 0
    events: int = 0
    violations: int = 0
    first_failure: SagaScenario | None = None


def schedule_seed(seed: int, index: int) -> int:
    return _derive(seed, f"saga-schedule:{index}") % 2**32


def sweep(
    schedules: int,
    seed: int,
    *,
    sagas: int = 3,
    faults: int = 3,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
    orchestrator: str | OrchestratorFactory = "correct",
    barrier: str | BarrierFn = "correct",
) -> SweepStatistics:
    """Run schedules `start`..`start + schedules - 1` of the saga sweep seeded by `seed`."""
    stats = SweepStatistics()

    def scenario_of(index: int) -> SagaScenario:
        return random_scenario(schedule_seed(seed, index), sagas=sagas, faults=faults)

    def run_one(scenario: SagaScenario) -> SagaSimResult:
        return run(scenario, orchestrator=orchestrator, barrier=barrier,
                   raise_on_violation=False, hash_trace=False)

    sweep_schedules(stats, range(start, start + schedules), scenario_of, run_one, progress)
    return stats



def minimize(
    scenario: SagaScenario,
    *,
    orchestrator: str | OrchestratorFactory = "correct",
    barrier: str | BarrierFn = "correct",
    runs_max: int = 200,
) -> tuple[SagaScenario, list[Violation]]:
    """Shrink a failing scenario greedily (drop faults and sagas, calm the rates)."""

    def failing(candidate: SagaScenario) -> list[Violation]:
        return run(candidate, orchestrator=orchestrator, barrier=barrier,
                   raise_on_violation=False, hash_trace=False).violations

    violations = failing(scenario)
    if not violations:
        return scenario, []
    return shrink_greedily(scenario, violations, smaller_scenarios, failing,
                           runs=1, runs_max=runs_max)
