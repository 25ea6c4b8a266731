"""The saga driver the orchestrated-saga tests share: a scripted world, a runtime
played by hand, crashes after any forced record and replay (see test_saga_forward.py)."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dtxn.protocols.effects import (
    CancelTimer,
    Compact,
    Effect,
    Event,
    ForceLog,
    Ignored,
    Log,
    RecordRecovered,
    RecoveryDone,
    SetTimer,
    TimerFired,
)
from dtxn.protocols.records import Record
from dtxn.protocols.saga import (
    FOREVER,
    RetryPolicy,
    SagaDefinition,
    SagaOrchestrator,
    SagaStep,
    StepState,
)
from dtxn.protocols.saga.barrier import (
    BarrierDecision,
    BarrierRow,
    decide,
    recorded_result,
    row_to_write,
)
from dtxn.protocols.saga.events import (
    InvokeStep,
    ReportStuck,
    ResumeRequested,
    SagaFinished,
    Start,
    StepFailed,
    StepSucceeded,
)
from dtxn.protocols.saga.records import (
    CompensationStarted,
    SagaFinishedRecord,
    SagaStarted,
    SagaState,
    SagaStuck,
    StepFailedRecord,
    StepOp,
    StepStarted,
    StepSucceededRecord,
)

A, C = StepOp.ACTION, StepOp.COMPENSATION

# -- the driver -------------------------------------------------------------------


@dataclass
class World:
    """The participants: scripted outcomes per (step, op) call, behind a barrier.

    Outcomes: "ok"; "fail" (retriable); "fatal" (not retriable); "lost" (the
    call never ran, the answer never comes); "applied-lost" (it ran, the
    answer was lost). Once a script runs out every call succeeds.
    """

    script: dict[tuple[str, StepOp], list[str]] = field(default_factory=dict)
    rows: dict[str, list[BarrierRow]] = field(default_factory=dict)
    applied: list[tuple[str, StepOp]] = field(default_factory=list)
    calls: Counter[tuple[str, StepOp]] = field(default_factory=Counter)

    def execute(self, inv: InvokeStep) -> Event | None:
        rows = self.rows.setdefault(inv.step, [])
        decision = decide(rows, inv.op)
        if decision is BarrierDecision.DUPLICATE:
            return StepSucceeded(inv.step, recorded_result(rows, inv.op), inv.op, inv.attempt)
        if decision is BarrierDecision.REFUSE:
            return StepFailed(inv.step, "refused by the barrier", False, inv.op, inv.attempt)
        if decision is BarrierDecision.RECORD_NULL:
            row = row_to_write(decision, inv.op)
            assert row is not None
            rows.append(row)
            return StepSucceeded(inv.step, None, inv.op, inv.attempt)
        key = (inv.step, inv.op)
        script = self.script.get(key, [])
        outcome = script[self.calls[key]] if self.calls[key] < len(script) else "ok"
        self.calls[key] += 1
        if outcome in ("ok", "applied-lost"):
            result = f"{inv.step}:{inv.op.value}"
            row = row_to_write(decision, inv.op, result)
            assert row is not None
            rows.append(row)
            self.applied.append(key)
            if outcome == "ok":
                return StepSucceeded(inv.step, result, inv.op, inv.attempt)
            return None
        if outcome == "fail":
            return StepFailed(
                inv.step, f"{inv.step} {inv.op.value} failed", True, inv.op, inv.attempt
            )
        if outcome == "fatal":
            return StepFailed(inv.step, f"{inv.step} refused", False, inv.op, inv.attempt)
        assert outcome == "lost", outcome
        return None

    def by_hand(self, step: str, op: StepOp) -> None:
        """What an operator does before Force: run the operation outside the saga."""
        rows = self.rows.setdefault(step, [])
        if decide(rows, op) is BarrierDecision.RUN:
            rows.append(BarrierRow(op, False, "by hand"))
            self.applied.append((step, op))


class Crash(Exception):
    pass


def draws(values: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it, 0.0)


class Driver:
    def __init__(
        self,
        definition: SagaDefinition,
        world: World | None = None,
        *,
        random: Callable[[], float] | None = None,
        crash_after_records: int | None = None,
        keep_inflight: bool = False,
    ) -> None:
        self.definition = definition
        self.world = world or World()
        self.random = random or (lambda: 0.0)
        self.machine = self._fresh()
        self.log: list[Record] = []
        self.trace: list[Effect] = []  # every effect ever performed, across crashes
        self.issued: list[InvokeStep] = []
        self.queue: list[InvokeStep] = []
        self.timers: dict[str, float] = {}
        self.now_s = 0.0
        self.finished: list[SagaFinished] = []
        self.stuck: list[ReportStuck] = []
        self.ignored: list[Ignored] = []
        self.forces = 0
        self.compactions = 0
        self.records = 0  # forced and lazy: a crash may come after any of them
        self.crash_after_records = crash_after_records
        self.keep_inflight = keep_inflight  # invocations outlive the crashed orchestrator
        self.durable = 0  # the log's forced prefix: what survives a crash (lazy ones die)
        self.crashes = 0
        self.snapshots: list[SagaOrchestrator] = []

    def state(self) -> SagaState:
        """The machine's state, read fresh (no narrowing across handle calls)."""
        return self.machine.state

    def _fresh(self) -> SagaOrchestrator:
        return SagaOrchestrator("s1", self.definition, random=self.random)

    # effects ----------------------------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        effects = self.machine.handle(event)
        self.snapshots.append(copy.deepcopy(self.machine))
        self._perform(effects)
        self._check_machine()
        return effects

    def _succeeded_in_log(self) -> set[str]:
        return {r.step for r in self.log if isinstance(r, StepSucceededRecord)}

    def _perform(self, effects: list[Effect]) -> None:
        for effect in effects:
            self.trace.append(effect)
            if isinstance(effect, ForceLog | Log):
                self.log.append(effect.record)
                self.records += 1
                if isinstance(effect, ForceLog):
                    self.durable = len(self.log)
                    self.forces += 1
                if self.records == self.crash_after_records:
                    raise Crash
            elif isinstance(effect, InvokeStep):
                self._check_invoke(effect)
                self.issued.append(effect)
                self.queue.append(effect)
            elif isinstance(effect, SetTimer):
                self.timers[effect.name] = self.now_s + effect.delay_s
            elif isinstance(effect, CancelTimer):
                self.timers.pop(effect.name, None)
            elif isinstance(effect, SagaFinished):
                # The outcome is durable before the caller hears it.
                assert any(isinstance(r, SagaFinishedRecord) for r in self.log[: self.durable]), (
                    "saga finished reported before its record was forced"
                )
                self.finished.append(effect)
            elif isinstance(effect, ReportStuck):
                assert any(isinstance(r, SagaStuck) for r in self.log[: self.durable])
                self.stuck.append(effect)
            elif isinstance(effect, Ignored):
                self.ignored.append(effect)
            elif isinstance(effect, Compact):
                # Only a finished saga drops its history, keeping the record
                # that says how it ended (forced just before).
                before = self.trace[-2] if len(self.trace) > 1 else None
                assert isinstance(before, ForceLog), f"{effect} not after a forced record"
                assert isinstance(before.record, SagaFinishedRecord), f"{effect} after {before}"
                self.compactions += 1
            else:
                raise AssertionError(f"unexpected effect {effect}")

    def _check_invoke(self, inv: InvokeStep) -> None:
        # G3: the start record of this invocation is in the log already (maybe lazy).
        started = StepStarted if inv.op is A else CompensationStarted
        assert any(
            isinstance(r, started) and r.step == inv.step and r.attempt == inv.attempt
            for r in self.log
        ), f"{inv} issued before its start record was logged"
        durable = self.log[: self.durable]
        # The saga's start is durable before any of its steps runs.
        assert durable and isinstance(durable[0], SagaStarted), f"{inv} before a durable start"
        pivot = self.definition.pivot
        if inv.op is A:
            if inv.step == pivot:
                assert any(isinstance(r, StepStarted) and r.step == pivot for r in durable)
            elif pivot is not None and pivot in self._ancestors(inv.step):
                # G2: passing the pivot is durable before any step after it.
                assert any(isinstance(r, StepSucceededRecord) and r.step == pivot for r in durable)
            # G3: dependencies' results are logged (a lost completion is
            # re-issued after a crash, and the barrier dedupes it).
            done = self._succeeded_in_log()
            spec = next(s for s in self.definition.steps if s.name == inv.step)
            assert set(spec.depends_on) <= done, f"{inv.step} issued before its dependencies"
            assert inv.step not in done, f"completed action {inv.step!r} issued again"
            # G1: no action once compensation has begun.
            assert not any(i.op is C for i in self.issued), f"action {inv.step} after compensation"
        else:
            # G2: nothing compensated once the pivot succeeded.
            assert self.definition.pivot not in self._succeeded_in_log()
            # G1: the turn backward and this compensation's start are durable first.
            assert any(
                isinstance(r, CompensationStarted)
                and r.step == inv.step
                and r.attempt == inv.attempt
                for r in durable
            )
            assert any(isinstance(r, StepFailedRecord) and r.exhausted for r in durable)

    def _ancestors(self, name: str) -> set[str]:
        specs = {s.name: s for s in self.definition.steps}
        found: set[str] = set()
        todo = list(specs[name].depends_on)
        while todo:
            dep = todo.pop()
            if dep not in found:
                found.add(dep)
                todo.extend(specs[dep].depends_on)
        return found

    def _check_machine(self) -> None:
        states = [s.state for s in self.machine.steps.values()]
        compensating = states.count(StepState.COMPENSATING)
        assert compensating <= 1, "two compensations at once"
        if compensating:
            assert StepState.RUNNING not in states, "compensating while an action runs"

    # running ------------------------------------------------------------------------

    def start(self, payload: Any = None) -> list[Effect]:
        return self._guarded(lambda: self.handle(Start(payload)))

    def _guarded(self, call: Callable[[], list[Effect]]) -> list[Effect]:
        try:
            return call()
        except Crash:
            self.restart()
            return []

    def restart(self) -> None:
        """The orchestrator crashed right after its last forced record: replay the log."""
        self.crashes += 1
        self.crash_after_records = None
        del self.log[self.durable :]
        if not self.keep_inflight:
            self.queue.clear()
        self.timers.clear()
        self.machine = self._fresh()
        for record in list(self.log):
            assert self.machine.handle(RecordRecovered(record)) == []
        self._guarded(lambda: self.handle(RecoveryDone()))

    def deliver(self, index: int = 0) -> None:
        inv = self.queue.pop(index)
        answer = self.world.execute(inv)
        if answer is not None:
            self._guarded(lambda: self.handle(answer))

    def fire_next_timer(self) -> None:
        name = min(self.timers, key=lambda n: (self.timers[n], n))
        self.now_s = max(self.now_s, self.timers.pop(name))
        self._guarded(lambda: self.handle(TimerFired(name)))

    def run(self, max_steps: int = 2_000, pick: Callable[[int], int] | None = None) -> None:
        for _ in range(max_steps):
            if self.queue:
                self.deliver(pick(len(self.queue)) if pick else 0)
            elif self.timers:
                self.fire_next_timer()
            else:
                return
        raise AssertionError("the saga did not settle")

    def operations(self) -> list[tuple[str, StepOp]]:
        """Distinct invocations in first-issue order."""
        seen: list[tuple[str, StepOp]] = []
        for inv in self.issued:
            if (inv.step, inv.op) not in seen:
                seen.append((inv.step, inv.op))
        return seen

    def compensations(self) -> list[str]:
        return [s for s, op in self.operations() if op is C]

    def check_outcome(self) -> None:
        """G1 and G4 on the finished saga, from the log and the world."""
        state = self.machine.state
        applied = Counter(self.world.applied)
        assert all(n == 1 for n in applied.values()), f"applied twice: {applied}"
        completions = [r.step for r in self.log if isinstance(r, StepSucceededRecord)]
        if state is SagaState.COMPLETED:
            assert self.compensations() == []
            assert set(completions) == {s.name for s in self.definition.steps}
            assert not [k for k in applied if k[1] is C]
            assert {k[0] for k in applied} == {s.name for s in self.definition.steps}
        else:
            assert state is SagaState.COMPENSATED, state
            done = [s for s in completions if s in self.compensations()]
            comps = [s for s in self.compensations() if s in completions]
            assert comps == list(reversed(done)), (comps, completions)
            assert set(completions) <= set(self.compensations())
            for step, op in applied:
                if op is A:
                    assert (step, C) in applied, f"{step} left applied after compensation"


def trip(*, pivot: str | None = None, **overrides: Any) -> SagaDefinition:
    steps = (
        SagaStep("hotel", "book_hotel", "cancel_hotel"),
        SagaStep("car", "book_car", "cancel_car", ("hotel",)),
        SagaStep("flight", "book_flight", "cancel_flight", ("car",)),
    )
    return SagaDefinition("trip", steps, pivot, **overrides)


def diamond() -> SagaDefinition:
    """hotel and car in parallel, then flight, then (after the pivot) email."""
    return SagaDefinition(
        "diamond",
        (
            SagaStep("hotel", "book_hotel", "cancel_hotel"),
            SagaStep("car", "book_car", "cancel_car"),
            SagaStep("pay", "charge", None, ("hotel", "car")),
            SagaStep("email", "send_email", None, ("pay",), retry=FOREVER),
        ),
        pivot="pay",
    )


def invokes(effects: list[Effect]) -> list[tuple[str, StepOp]]:
    return [(e.step, e.op) for e in effects if isinstance(e, InvokeStep)]


def two_branches() -> SagaDefinition:
    return SagaDefinition(
        "branches",
        (
            SagaStep("a", "do_a", "undo_a"),
            SagaStep("b", "do_b", "undo_b"),
            SagaStep("c", "do_c", "undo_c", ("a", "b")),
        ),
    )


def stubborn_trip() -> SagaDefinition:
    policy = RetryPolicy(max_attempts=3, backoff_ms_initial=10, backoff_ms_max=15, jitter=0)
    return SagaDefinition(
        "trip",
        (
            SagaStep("hotel", "book_hotel", "cancel_hotel", compensation_retry=policy),
            SagaStep("car", "book_car", "cancel_car", ("hotel",), compensation_retry=policy),
            SagaStep("flight", "book_flight", "cancel_flight", ("car",)),
        ),
    )


SCENARIOS: dict[str, tuple[Callable[[], SagaDefinition], dict[tuple[str, StepOp], list[str]]]] = {
    "trip-completes": (trip, {}),
    "trip-flight-fails": (trip, {("flight", A): ["fatal"]}),
    "trip-retries": (trip, {("car", A): ["fail", "applied-lost"], ("hotel", C): ["fail"]}),
    "diamond-completes": (diamond, {("email", A): ["fail", "fail"]}),
    "diamond-pivot-fails": (diamond, {("pay", A): ["fatal"]}),
    "branches-fail": (two_branches, {("b", A): ["fatal"], ("a", A): ["fail", "fail"]}),
    "stuck-then-resumed": (stubborn_trip, {("flight", A): ["fatal"], ("car", C): ["fail"] * 4}),
}


def settle(driver: Driver) -> None:
    for _ in range(5):
        driver.run()
        if driver.state() is not SagaState.STUCK:
            return
        driver._guarded(lambda: driver.handle(ResumeRequested()))
    raise AssertionError("still stuck")
