"""Running simulated atomic-commit scenarios: once, checked and shrunk, or as a sweep.

One seed derives every random choice through separate streams (network,
per-node clocks), and the event trace is hashed so a test can assert that a
seed replays exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from dtxn.protocols.messages import Protocol
from dtxn.runtime.sim._harness import (
    derive_seed,
    quiet_logs,
    run_virtually,
    shrink_greedily,
    sweep_schedules,
    trace_hash,
    without_each,
)
from dtxn.runtime.sim._net import NetworkFaults
from dtxn.runtime.sim.atomic._cluster import SimCluster
from dtxn.runtime.sim.atomic._hooks import MachineFactory, ResourceFactory, RuntimeHook
from dtxn.runtime.sim.atomic._scenario import (
    Scenario,
    SimResult,
    SimulationFailure,
    random_scenario,
)
from dtxn.runtime.sim.invariants import Violation

__all__ = [
    "SweepStatistics",
    "check",
    "failing",
    "minimize",
    "run",
    "schedule_seed",
    "sweep",
]


def run(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    raise_on_violation: bool = True,
    hash_trace: bool = True,
) -> SimResult:
    """Run `scenario` on a fresh virtual-time loop; raise `SimulationFailure` on a violation.

    `hash_trace=False` leaves `trace_hash` empty: a sweep, which never reads
    it, saves formatting every trace entry (about 5% of a schedule).
    """
    quiet_logs()
    sim = SimCluster(scenario, resource_factory, runtime_hook, machine_factory)
    virtual_s = run_virtually(sim.main)
    result = SimResult(
        scenario,
        trace_hash(sim.trace) if hash_trace else "",
        len(sim.trace),
        dict(sim.outcomes),
        list(sim.checker.violations),
        virtual_s,
        sim.trace,
    )
    if raise_on_violation and result.violations:
        raise SimulationFailure(scenario, result.violations)
    return result


def failing(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
) -> list[Violation]:
    """The violations of one run of `scenario` (empty when it keeps every invariant)."""
    result = run(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                 machine_factory=machine_factory, raise_on_violation=False)
    return result.violations


def minimize(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    runs_max: int = 200,
) -> tuple[Scenario, list[Violation]]:
    """Shrink a failing scenario greedily: drop faults and transactions, calm the network.

    Each candidate is kept only if it still breaks an invariant with one of the
    codes the original broke, so the result fails for the same reason.
    `runs_max` bounds the work.
    """
    violations = failing(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                         machine_factory=machine_factory)
    if not violations:
        return scenario, []

    def fails(candidate: Scenario) -> list[Violation]:
        return failing(candidate, resource_factory=resource_factory,
                       runtime_hook=runtime_hook, machine_factory=machine_factory)

    return shrink_greedily(scenario, violations, _smaller, fails, runs=1, runs_max=runs_max)


def _smaller(scenario: Scenario) -> list[Scenario]:
    """One step smaller each: a calm network, one fault fewer, one transaction fewer."""
    candidates: list[Scenario] = []
    net = scenario.network
    if net != NetworkFaults(delay_s=net.delay_s):
        candidates.append(msgspec.structs.replace(
            scenario, network=NetworkFaults(delay_s=net.delay_s)))
    for faults in without_each(scenario.faults):
        candidates.append(msgspec.structs.replace(scenario, faults=faults))
    if len(scenario.txns) > 1:
        for txns in without_each(scenario.txns):
            candidates.append(msgspec.structs.replace(scenario, txns=txns))
    return candidates


def check(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    shrink: bool = True,
) -> SimResult:
    """Run `scenario`; on a violation raise `SimulationFailure` with a minimal replayable one."""
    result = run(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                 machine_factory=machine_factory, raise_on_violation=False)
    if not result.violations:
        return result
    if shrink:
        small, violations = minimize(
            scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
            machine_factory=machine_factory,
        )
        raise SimulationFailure(small, violations)
    raise SimulationFailure(scenario, result.violations)


class SweepStatistics(msgspec.Struct):
    """What `sweep` did: schedules run, trace events, failing schedules, the first failure."""

    schedules: int = 0
    events: int = 0
    violations: int = 0
    first_failure: Scenario | None = None


def schedule_seed(seed: int, index: int) -> int:
    """The seed of schedule `index` of a sweep started with `seed`."""
    return derive_seed(seed, f"schedule:{index}") % 2**32


def sweep(
    protocol: Protocol | str,
    schedules: int,
    seed: int,
    *,
    participants: int = 3,
    txns: int = 2,
    faults: int = 3,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> SweepStatistics:
    """Run schedules `start`..`start + schedules - 1` of the sweep seeded by `seed`.

    Each schedule is a `random_scenario` with its own derived seed, so any
    slice of a sweep can run in another process and give the same results.
    """
    stats = SweepStatistics()

    def scenario_of(index: int) -> Scenario:
        return random_scenario(
            schedule_seed(seed, index), protocol=protocol, participants=participants,
            txns=txns, faults=faults,
        )

    def run_one(scenario: Scenario) -> SimResult:
        return run(scenario, raise_on_violation=False, hash_trace=False)

    sweep_schedules(stats, range(start, start + schedules), scenario_of, run_one, progress)
    return stats
