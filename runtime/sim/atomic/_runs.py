"""Running simulated atomic-commit scenarios: once, checked and shrunk, or as a sweep.

One seed derives every random choice through separate streams (network,
per-node clocks), and the event trace is hashed so a test can assert that a
seed replays exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import msgspec
from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime.resource import Resource
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
    "FinalCheck",
    "SweepStatistics",
    "UserChecks",
    "check",
    "failing",
    "minimize",
    "run",
    "schedule_seed",
    "sweep",
]


FinalCheck = Callable[[Mapping[str, Resource], SimResult], object]
"""`final_check(resources, result)`, called after the liveness phase of a run.

`resources` maps each participant node ("p1", ...) to the object your
`resource_factory` made for it (still started); `result` is the run's
`SimResult` (`result.decisions` says what committed, `result.scenario.txns`
what each transaction's payloads were). Assert on your resources' own state:
an `AssertionError` is reported as violation U. It may be `async` (it then
runs on your resources' loop).
"""


class UserChecks(msgspec.Struct, frozen=True):
    """What `check` verifies of your own resources, besides the protocol invariants.

    - `final_check`: see `FinalCheck`.
    - `prepare_errors`: the exception types your `prepare` may raise to refuse
      (a raising prepare counts as a NO vote). Any other exception is a bug,
      reported as violation U, as is a prepare that returns no `Vote`.
    - `allow_all_aborted`: with False (the default) a run in which every
      prepare your resources were asked raised (declared or not) and nothing
      committed is violation V: it tested nothing (a resource that was never
      set up, say). Pass True where that is right. A NO vote is an answer,
      so it never counts here.
    """

    final_check: FinalCheck | None = None
    prepare_errors: tuple[type[BaseException], ...] = ()
    allow_all_aborted: bool = False


def run(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    raise_on_violation: bool = True,
    hash_trace: bool = True,
    user: UserChecks | None = None,
) -> SimResult:
    """Run `scenario` on a fresh virtual-time loop; raise `SimulationFailure` on a violation.

    `hash_trace=False` leaves `trace_hash` empty: a sweep, which never reads
    it, saves formatting every trace entry (about 5% of a schedule).
    Resources with an `async def start()` are started before the nodes boot
    (and closed after the run, with `close()` if they have one); they run on
    a real event loop of their own, each call ending before the simulation
    goes on. With a `resource_factory` (or `user`) your resources are checked
    too (see `UserChecks`).
    """
    quiet_logs()
    sim = SimCluster(scenario, resource_factory, runtime_hook, machine_factory)
    try:
        virtual_s = run_virtually(sim.main)
        answers = sim.prepare_answers
        raised = sum(1 for *_, answer in answers if isinstance(answer, Exception))
        result = SimResult(
            scenario,
            trace_hash(sim.trace) if hash_trace else "",
            len(sim.trace),
            dict(sim.outcomes),
            list(sim.checker.violations),
            virtual_s,
            sim.trace,
            sim.checker.decisions(),
            len(answers) - raised,
            raised,
        )
        if resource_factory is not None or user is not None:
            _check_user(sim, result, user or UserChecks())
    finally:
        sim.release()
    if raise_on_violation and result.violations:
        raise SimulationFailure(scenario, result.violations)
    return result


def _check_user(sim: SimCluster, result: SimResult, user: UserChecks) -> None:
    """Add violations U (your resources' bugs) and V (a run that tested nothing)."""
    end_s = result.virtual_s
    answered = False
    refusals: list[str] = []
    for pid, txid, _payload, answer in sim.prepare_answers:
        if isinstance(answer, Exception):
            refusals.append(f"{txid} at {pid} raised {answer!r}")
            if not isinstance(answer, user.prepare_errors):
                result.violations.append(Violation(
                    "U", end_s, txid,
                    f"prepare at {pid} raised {answer!r}, which prepare_errors does not name: "
                    "a bug, not a refusal (a raising prepare votes NO, so the transaction "
                    "aborted)"))
        elif not isinstance(answer, Vote):
            result.violations.append(Violation(
                "U", end_s, txid, f"prepare at {pid} returned {answer!r}, not a Vote"))
        else:
            answered = True
    if (not user.allow_all_aborted and refusals and not answered
            and "committed" not in result.decisions.values()):
        result.violations.append(Violation(
            "V", end_s, "-",
            f"every transaction aborted: all {len(refusals)} prepare call(s) your resources "
            f"got raised and nothing committed, so the run tested nothing (first: "
            f"{refusals[0]}); pass allow_all_aborted=True if refusing is right here"))
    if user.final_check is None or result.violations:
        return
    try:
        outcome = user.final_check(MappingProxyType(dict(sim.user_resources)), result)
        if inspect.isawaitable(outcome):
            if sim.resource_loop is not None:
                sim.resource_loop.call(_awaited(outcome))
            else:
                run_virtually(lambda: _awaited(outcome))
    except AssertionError as exc:
        result.violations.append(Violation("U", end_s, "-", f"final_check failed: {exc}"))


async def _awaited(awaitable: Any) -> None:
    await awaitable


def failing(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    user: UserChecks | None = None,
) -> list[Violation]:
    """The violations of one run of `scenario` (empty when it keeps every invariant)."""
    result = run(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                 machine_factory=machine_factory, raise_on_violation=False, user=user)
    return result.violations


def minimize(
    scenario: Scenario,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    runs_max: int = 200,
    user: UserChecks | None = None,
) -> tuple[Scenario, list[Violation]]:
    """Shrink a failing scenario greedily: drop faults and transactions, calm the network.

    Each candidate is kept only if it still breaks an invariant with one of the
    codes the original broke, so the result fails for the same reason.
    `runs_max` bounds the work.
    """
    violations = failing(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                         machine_factory=machine_factory, user=user)
    if not violations:
        return scenario, []

    def fails(candidate: Scenario) -> list[Violation]:
        return failing(candidate, resource_factory=resource_factory,
                       runtime_hook=runtime_hook, machine_factory=machine_factory, user=user)

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
    scenario: Scenario | str,
    *,
    resource_factory: ResourceFactory | None = None,
    runtime_hook: RuntimeHook | None = None,
    machine_factory: MachineFactory | None = None,
    shrink: bool | None = None,
    final_check: FinalCheck | None = None,
    prepare_errors: tuple[type[BaseException], ...] = (),
    allow_all_aborted: bool = False,
) -> SimResult:
    """Run `scenario`; on a violation raise `SimulationFailure` with a minimal replayable one.

    `scenario` may be the one line a failure printed (`Scenario.parse`).
    With a `resource_factory` your resources are checked as well as the
    protocol: `final_check`, `prepare_errors` and `allow_all_aborted` as
    `UserChecks` says. `shrink` defaults to on outside a hypothesis test and
    off inside one, where hypothesis shrinks the scenario itself.
    """
    if isinstance(scenario, str):
        scenario = Scenario.parse(scenario)
    user = None
    if resource_factory is not None or final_check is not None:
        user = UserChecks(final_check, tuple(prepare_errors), allow_all_aborted)
    result = run(scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
                 machine_factory=machine_factory, raise_on_violation=False, user=user)
    if not result.violations:
        return result
    if shrink is None:
        shrink = not _in_hypothesis_test()
    if shrink:
        small, violations = minimize(
            scenario, resource_factory=resource_factory, runtime_hook=runtime_hook,
            machine_factory=machine_factory, user=user,
        )
        raise SimulationFailure(small, violations, user=resource_factory is not None)
    raise SimulationFailure(scenario, result.violations, user=resource_factory is not None)


def _in_hypothesis_test() -> bool:
    # hypothesis is an optional dependency (the `testing` extra): `dtxn simulate` runs without it.
    try:
        from hypothesis import currently_in_test_context
    except ImportError:
        return False
    return currently_in_test_context()


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
