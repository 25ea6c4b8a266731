"""What a simulated saga run is made of: the replayable `SagaScenario` and its parts.

A `SagaScenario` is everything a run depends on: the seed, the sagas (each a
small linear chain or DAG of steps, with an optional pivot, an optional step
whose action fails for good and an optional step whose compensation fails
for good) and the fault schedule of the orchestrator node, plus a rate of
duplicate deliveries and of transient step failures. It prints as one line
(`text()`), which `parse` reads back and `dtxn replay` takes.
"""

from __future__ import annotations

import msgspec
from dtxn.runtime.clock import Clock
from dtxn.runtime.sim._harness import (
    ScheduleFailure,
    dtxn_replay,
    schedule_items,
    schedule_options,
    without_each,
)
from dtxn.runtime.sim._net import TraceEntry
from dtxn.runtime.sim.invariants import Violation

__all__ = [
    "FAULT_KINDS",
    "STEPS_MAX",
    "SagaFault",
    "SagaScenario",
    "SagaSimResult",
    "SagaSimulationFailure",
    "SagaSpec",
    "random_scenario",
    "smaller_scenarios",
]

FAULT_KINDS = ("crash", "restart", "crashforce", "crashforced")
STEPS_MAX = 6


class SagaSimulationFailure(ScheduleFailure["SagaScenario"]):
    """Raised when a simulated saga run breaks an invariant; the message says how to replay it."""

    def __init__(self, scenario: SagaScenario, violations: list[Violation]) -> None:
        super().__init__(scenario, violations, "saga simulation", dtxn_replay)


class SagaSpec(msgspec.Struct, frozen=True):
    """One saga of a workload: when it starts, its DAG, its pivot and scripted failures.

    `deps[i]` are the indexes (all < i) step i depends on. `fail` is the step
    whose action fails for good, `stuck` the step whose compensation does; -1
    for none.
    """

    at_s: float
    deps: tuple[tuple[int, ...], ...]
    pivot: int = -1
    fail: int = -1
    stuck: int = -1


class SagaFault(msgspec.Struct, frozen=True):
    """One timed fault of the orchestrator node: one of `FAULT_KINDS`."""

    at_s: float
    kind: str


class SagaScenario(msgspec.Struct, frozen=True):
    """A complete, replayable simulated saga run."""

    seed: int = 0
    sagas: tuple[SagaSpec, ...] = ()
    faults: tuple[SagaFault, ...] = ()
    duplicate: float = 0.0
    flaky: float = 0.0
    jitter_s: float = 0.01

    def text(self) -> str:
        parts = [f"saga seed={self.seed} dup={self.duplicate:g} flaky={self.flaky:g} "
                 f"jitter={self.jitter_s:g}"]
        for spec in self.sagas:
            deps = ",".join("+".join(map(str, d)) or "-" for d in spec.deps)
            parts.append(f"saga@{spec.at_s:g} deps={deps} pivot={spec.pivot} "
                         f"fail={spec.fail} stuck={spec.stuck}")
        parts.extend(f"{f.kind}@{f.at_s:g}" for f in self.faults)
        return " ; ".join(parts)

    @classmethod
    def parse(cls, text: str) -> SagaScenario:
        """Read back what `text()` printed (raises `ValueError` on anything else)."""
        words, items = schedule_items(text)
        if not words or words[0] != "saga":
            raise ValueError("a saga schedule starts with 'saga'")
        opts = schedule_options(words)
        sagas: list[SagaSpec] = []
        faults: list[SagaFault] = []
        for item, kind, when, rest in items:
            if kind == "saga":
                fields = dict(word.split("=", 1) for word in rest.split())
                deps = tuple(
                    () if d == "-" else tuple(int(x) for x in d.split("+"))
                    for d in fields["deps"].split(",")
                )
                sagas.append(SagaSpec(float(when), deps, int(fields.get("pivot", -1)),
                                      int(fields.get("fail", -1)), int(fields.get("stuck", -1))))
            elif kind in FAULT_KINDS:
                faults.append(SagaFault(float(when), kind))
            else:
                raise ValueError(f"unknown schedule item {item!r}")
        return cls(int(opts.get("seed", 0)), tuple(sagas), tuple(faults),
                   float(opts.get("dup", 0)), float(opts.get("flaky", 0)),
                   float(opts.get("jitter", 0.01)))


class SagaSimResult(msgspec.Struct):
    """What one simulated saga run did."""

    scenario: SagaScenario
    trace_hash: str
    events: int
    outcomes: dict[str, str]
    violations: list[Violation]
    virtual_s: float
    trace: list[TraceEntry]

def random_scenario(seed: int, *, sagas: int = 3, faults: int = 3) -> SagaScenario:
    """A random saga scenario drawn from `seed` (fault rates are drawn too: swarm testing)."""
    rng = Clock(seed=seed).rng("saga-scenario")
    specs: list[SagaSpec] = []
    for _ in range(sagas):
        n = rng.randint(1, STEPS_MAX)
        deps: list[tuple[int, ...]] = [()]
        linear = n <= 2 or rng.random() < 0.5
        for k in range(1, n):
            deps.append((k - 1,) if linear else (rng.randrange(k),))
        if not linear:
            # One sink: the last step joins every branch, so the DAG ends in one step.
            used = {d for ds in deps[:-1] for d in ds}
            sinks = tuple(k for k in range(n - 1) if k not in used)
            deps[-1] = sinks
        if rng.random() < 0.4:
            pivot = rng.randrange(n) if linear else rng.choice([0, n - 1])
        else:
            pivot = -1
        fail = -1
        if rng.random() < 0.5:
            limit = pivot if pivot >= 0 else n
            fail = rng.randrange(limit) if limit > 0 else -1
        stuck = -1
        compensatable = [k for k in range(n) if pivot < 0 or k < pivot]
        if not linear and pivot >= 0:
            compensatable = [] if pivot == 0 else list(range(n - 1))
        if compensatable and rng.random() < 0.15:
            stuck = rng.choice(compensatable)
        specs.append(SagaSpec(round(rng.uniform(0, 0.3), 3), tuple(deps), pivot, fail, stuck))
    events = []
    for _ in range(faults):
        kind = rng.choice(["crash", "crash", "restart", "restart", "crashforce", "crashforced"])
        events.append(SagaFault(round(rng.uniform(0, 1.0), 3), kind))
    events.sort(key=lambda f: f.at_s)
    return SagaScenario(
        seed,
        tuple(specs),
        tuple(events),
        duplicate=rng.choice([0.0, 0.1, 0.3]),
        flaky=rng.choice([0.0, 0.1, 0.3]),
        jitter_s=rng.choice([0.001, 0.01, 0.05]),
    )



def smaller_scenarios(scenario: SagaScenario) -> list[SagaScenario]:
    """One step smaller each: a rate calmed, one fault fewer, the last saga dropped.

    Sagas are trimmed from the end so the remaining ones keep their ids.
    """
    candidates: list[SagaScenario] = []
    if scenario.flaky:
        candidates.append(msgspec.structs.replace(scenario, flaky=0.0))
    if scenario.duplicate:
        candidates.append(msgspec.structs.replace(scenario, duplicate=0.0))
    for faults in without_each(scenario.faults):
        candidates.append(msgspec.structs.replace(scenario, faults=faults))
    if len(scenario.sagas) > 1:
        candidates.append(msgspec.structs.replace(scenario, sagas=scenario.sagas[:-1]))
    return candidates
