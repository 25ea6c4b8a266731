"""The orchestrated-saga machine, driven with no event loop.

A small `Driver` plays the runtime: it performs effects in order, keeps the
orchestrator's log, queues step invocations for a scripted `World` (which
runs every invocation through the pure idempotency barrier, as a
participant would), fires timers on a virtual clock, and can crash the
orchestrator right after any forced record, then replay the log into a fresh
machine. Invariants checked from the driver's omniscient view:

G1 no action is issued after the first compensation; completed steps are
   compensated in the reverse order of their completion, one at a time;
G2 once the pivot succeeded nothing is compensated;
G3 an invocation follows its forced start record; a dependent step follows
   the forced results of its dependencies;
G4 the world applies every action and compensation at most once, and a
   compensated saga leaves no action without its compensation;
recovery never issues the action of a step whose result is in the log.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
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
from dtxn.protocols.errors import ConfigError, ProtocolError
from dtxn.protocols.records import Record, kind_of
from dtxn.protocols.saga import (
    FOREVER,
    RetryPolicy,
    SagaDefinition,
    SagaOrchestrator,
    SagaStep,
    StepState,
    backoff_ms,
)
from dtxn.protocols.saga.barrier import (
    BarrierDecision,
    BarrierRow,
    decide,
    recorded_result,
    row_to_write,
)
from dtxn.protocols.saga.events import (
    ForceRequested,
    InvokeStep,
    ReportStuck,
    ResumeRequested,
    SagaFinished,
    Start,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
)
from dtxn.protocols.saga.records import (
    SAGA_RECORD_TYPES,
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaFinishedRecord,
    SagaStarted,
    SagaState,
    SagaStuck,
    StepFailedRecord,
    StepOp,
    StepStarted,
    StepSucceededRecord,
    decode_saga_record,
    encode_saga_record,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# -- definitions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "pivot", "message"),
    [
        ((), None, "has no steps"),
        ((SagaStep("a", "x", "y"), SagaStep("a", "x", "y")), None, "used twice"),
        ((SagaStep("a", "x", "y", ("zz",)),), None, "unknown step 'zz'"),
        (
            (SagaStep("a", "x", "y", ("b",)), SagaStep("b", "x", "y", ("a",))),
            None,
            "cycle a -> b -> a",
        ),
        ((SagaStep("a", "x", "y", ("a",)),), None, "cycle a -> a"),
        ((SagaStep("a", "x"),), None, "needs a compensation"),
        ((SagaStep("a", "x", "y"), SagaStep("b", "x", None, ("a",))), "b", None),
        ((SagaStep("a", "x", "y"), SagaStep("b", "x", "y", ("a",))), "b", "cannot have"),
        ((SagaStep("a", "x", "y"),), "zz", "pivot 'zz' is not a step"),
        (
            (SagaStep("p", "x"), SagaStep("b", "x", None, ("p",))),
            "p",
            "must be retriable",
        ),
        (
            (SagaStep("p", "x"), SagaStep("b", "x", "y", ("p",), retry=FOREVER)),
            "p",
            "remove its compensation",
        ),
        (
            (SagaStep("p", "x"), SagaStep("b", "x", "y")),
            "p",
            "neither before nor after the pivot",
        ),
        ((SagaStep("a", "x", "y", retry=RetryPolicy(max_attempts=0)),), None, "max_attempts"),
        ((SagaStep("a", "x", "y", retry=RetryPolicy(jitter=1.0)),), None, "jitter"),
        ((SagaStep("a", "x", "y", retry=RetryPolicy(multiplier=0.5)),), None, "multiplier"),
        (
            (SagaStep("a", "x", "y", retry=RetryPolicy(backoff_ms_max=1.0)),),
            None,
            "backoff_ms_max",
        ),
        ((SagaStep("a", "x", "y", timeout_s=0),), None, "timeout_s"),
        ((SagaStep("a", ""),), None, "action name is empty"),
    ],
)
def test_a_definition_is_validated_with_a_message_naming_the_saga_and_step(
    steps: tuple[SagaStep, ...], pivot: str | None, message: str | None
) -> None:
    definition = SagaDefinition("d", steps, pivot)
    if message is None:
        SagaOrchestrator("s", definition)
        return
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as info:
        SagaOrchestrator("s", definition)
    assert "saga 'd'" in str(info.value)


def test_backoff_grows_by_the_multiplier_is_capped_and_jitter_only_shortens_it() -> None:
    policy = RetryPolicy(backoff_ms_initial=100, backoff_ms_max=1000, multiplier=3, jitter=0.5)
    assert [backoff_ms(policy, n, 0.0) for n in range(1, 6)] == [100, 300, 900, 1000, 1000]
    assert backoff_ms(policy, 2, 0.5) == pytest.approx(225)
    assert backoff_ms(policy, 10_000, 0.999) <= 1000
    assert backoff_ms(policy, 10_000, 0.999) >= 500


# -- forward ---------------------------------------------------------------------


def test_all_steps_succeed_and_independent_steps_are_issued_together() -> None:
    driver = Driver(diamond())
    effects = driver.start({"who": "ann"})
    assert invokes(effects) == [("hotel", A), ("car", A)]
    # G3 in the effect order: the saga's start forced, then each invocation
    # right after its forced start record.
    kinds = [type(e).__name__ for e in effects]
    assert kinds == [
        "ForceLog",
        "ForceLog",
        "InvokeStep",
        "SetTimer",
        "ForceLog",
        "InvokeStep",
        "SetTimer",
    ]
    driver.deliver(1)  # car first: pay still waits for hotel
    assert [i.step for i in driver.queue] == ["hotel"]
    driver.deliver(0)
    assert [i.step for i in driver.queue] == ["pay"]
    assert driver.queue[0].results == {"hotel": "hotel:action", "car": "car:action"}
    driver.run()
    assert driver.state() is SagaState.COMPLETED
    [finished] = driver.finished
    assert finished.results["email"] == "email:action"
    assert driver.operations() == [("hotel", A), ("car", A), ("pay", A), ("email", A)]
    driver.check_outcome()
    assert driver.timers == {}


def test_the_payload_and_the_dependency_results_reach_every_invocation() -> None:
    driver = Driver(trip())
    driver.start({"who": "ann"})
    driver.run()
    flight = next(i for i in driver.issued if i.step == "flight")
    assert flight.payload == {"who": "ann"}
    assert flight.name == "book_flight"
    assert flight.results == {"hotel": "hotel:action", "car": "car:action"}


@pytest.mark.parametrize(
    ("failing", "compensated"),
    [("hotel", []), ("car", ["hotel"]), ("flight", ["car", "hotel"])],
)
def test_a_failure_at_each_step_of_the_trip_compensates_the_completed_ones_in_reverse(
    failing: str, compensated: list[str]
) -> None:
    world = World({(failing, A): ["fatal"]})
    driver = Driver(trip(), world)
    driver.start()
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert driver.compensations() == compensated
    assert driver.finished[-1].state is SagaState.COMPENSATED
    assert failing in driver.finished[-1].reason
    assert world.applied == [
        *[(s, A) for s in ["hotel", "car", "flight"][: len(compensated)]],
        *[(s, C) for s in compensated],
    ]
    driver.check_outcome()


def test_a_retriable_failure_is_retried_with_growing_capped_backoff_before_compensating() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_ms_initial=100, backoff_ms_max=300, jitter=0.5)
    definition = SagaDefinition(
        "trip",
        (
            SagaStep("hotel", "book_hotel", "cancel_hotel"),
            SagaStep("car", "book_car", "cancel_car", ("hotel",), retry=policy),
        ),
    )
    world = World({("car", A): ["fail"] * 4})
    driver = Driver(definition, world, random=draws([0.0, 0.0, 1 / 3]))
    driver.start()
    driver.run()
    delays = [e.delay_s for e in driver.trace if isinstance(e, SetTimer) and "retry" in e.name]
    assert delays == pytest.approx([0.1, 0.2, 0.25])
    assert [i.attempt for i in driver.issued if i.step == "car"] == [1, 2, 3, 4]
    assert driver.compensations() == ["hotel"]
    driver.check_outcome()


def test_a_non_retriable_failure_is_not_retried() -> None:
    driver = Driver(trip(), World({("hotel", A): ["fatal"]}))
    driver.start()
    driver.run()
    assert [i.attempt for i in driver.issued if i.step == "hotel"] == [1]
    assert driver.state() is SagaState.COMPENSATED


def test_a_timed_out_attempt_is_retried_and_the_barrier_answers_with_the_first_result() -> None:
    # The first attempt ran but its answer was lost: the retry is a duplicate.
    world = World({("hotel", A): ["applied-lost"]})
    driver = Driver(trip(), world)
    driver.start()
    driver.run()
    assert driver.state() is SagaState.COMPLETED
    assert [i.attempt for i in driver.issued if i.step == "hotel"] == [1, 2]
    assert world.applied.count(("hotel", A)) == 1
    driver.check_outcome()


# -- parallel branches -------------------------------------------------------------


def two_branches() -> SagaDefinition:
    return SagaDefinition(
        "branches",
        (
            SagaStep("a", "do_a", "undo_a"),
            SagaStep("b", "do_b", "undo_b"),
            SagaStep("c", "do_c", "undo_c", ("a", "b")),
        ),
    )


def test_a_failed_branch_waits_for_its_running_sibling_then_compensates_it() -> None:
    driver = Driver(two_branches(), World({("b", A): ["fatal"]}))
    driver.start()
    driver.deliver(1)  # b fails while a runs
    assert driver.state() is SagaState.COMPENSATING
    assert driver.queue and driver.queue[0].step == "a"
    assert driver.compensations() == []  # a is awaited, not compensated blindly
    driver.deliver(0)  # a completes late: now compensate it
    assert [(i.step, i.op) for i in driver.queue] == [("a", C)]
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert driver.operations() == [("a", A), ("b", A), ("a", C)]
    driver.check_outcome()


def test_a_sibling_that_also_fails_is_neither_retried_nor_compensated() -> None:
    driver = Driver(two_branches(), World({("b", A): ["fatal"], ("a", A): ["fail"]}))
    driver.start()
    driver.deliver(1)
    driver.deliver(0)
    assert driver.state() is SagaState.COMPENSATED
    assert driver.compensations() == []
    assert [i.attempt for i in driver.issued if i.step == "a"] == [1]


def test_a_sibling_whose_answer_never_comes_is_compensated_through_the_barrier() -> None:
    # a ran but its answer is lost; after its timeout its outcome is unknown,
    # so it is compensated (first): the barrier finds the action and runs it.
    world = World({("b", A): ["fatal"], ("a", A): ["applied-lost"]})
    driver = Driver(two_branches(), world)
    driver.start()
    driver.deliver(1)
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert driver.compensations() == ["a"]
    assert world.applied == [("a", A), ("a", C)]
    driver.check_outcome()


def test_a_compensation_that_overtakes_its_action_is_null_and_the_late_action_is_refused() -> None:
    world = World({("b", A): ["fatal"], ("a", A): ["lost"]})
    driver = Driver(two_branches(), world)
    driver.start()
    lost = driver.queue[0]
    driver.deliver(1)
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert world.rows["a"] == [BarrierRow(C, null=True)]
    # The lost delivery of a's action finally arrives: refused, answer ignored.
    answer = world.execute(lost)
    assert isinstance(answer, StepFailed) and "refused" in answer.error
    assert isinstance(driver.handle(answer)[0], Ignored)
    assert world.applied == []


def test_retries_pending_when_a_sibling_fails_for_good_are_cancelled() -> None:
    driver = Driver(two_branches(), World({("a", A): ["fail"], ("b", A): ["fatal"]}))
    driver.start()
    driver.deliver(0)  # a fails, a retry timer is armed
    assert any(n.startswith("retry:a") for n in driver.timers)
    effects = driver.handle(StepFailed("b", "refused", False))
    assert any(isinstance(e, CancelTimer) and e.name.startswith("retry:a") for e in effects)
    assert driver.state() is SagaState.COMPENSATED


# -- pivot -----------------------------------------------------------------------


def test_after_the_pivot_nothing_is_compensated_and_later_steps_are_retried_until_done() -> None:
    world = World({("email", A): ["fail", "lost", "fail", "fail", "fail", "fail", "fail"]})
    driver = Driver(diamond(), world)
    driver.start()
    driver.run()
    assert driver.state() is SagaState.COMPLETED
    assert driver.compensations() == []
    assert [i.attempt for i in driver.issued if i.step == "email"] == list(range(1, 9))
    delays = [e.delay_s for e in driver.trace if isinstance(e, SetTimer) and "retry" in e.name]
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(FOREVER.backoff_ms_initial * 2**6 / 1000)
    driver.check_outcome()


def test_a_pivot_failure_compensates_the_steps_before_it() -> None:
    driver = Driver(diamond(), World({("pay", A): ["fatal"]}))
    driver.start()
    driver.deliver(1)  # car completes first
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert driver.compensations() == ["hotel", "car"]
    driver.check_outcome()


def test_a_post_pivot_step_that_cannot_succeed_gets_stuck_then_resume_retries_it() -> None:
    driver = Driver(diamond(), World({("email", A): ["fatal", "fatal"]}))
    driver.start()
    driver.run()
    assert driver.state() is SagaState.STUCK
    report = driver.machine.report()
    assert report.stuck == ("email",) and "email refused" in report.error
    assert driver.stuck[-1].op is A
    driver.handle(ResumeRequested())
    driver.run()
    assert driver.state() is SagaState.STUCK
    driver.handle(ResumeRequested())
    driver.run()
    assert driver.state() is SagaState.COMPLETED
    assert driver.compensations() == []


def test_forcing_a_stuck_post_pivot_step_completes_the_saga_with_the_given_result() -> None:
    driver = Driver(diamond(), World({("email", A): ["fatal"]}))
    driver.start()
    driver.run()
    driver.world.by_hand("email", A)
    driver.handle(ForceRequested(result="sent by hand"))
    assert driver.state() is SagaState.COMPLETED
    assert driver.finished[-1].results["email"] == "sent by hand"
    assert StepSucceededRecord("s1", "email", 1, "sent by hand", forced=True) in driver.log


def test_a_pivot_whose_outcome_is_unknown_when_its_budget_is_spent_is_stuck_not_compensated() -> (
    None
):
    definition = SagaDefinition(
        "p",
        (
            SagaStep("hold", "hold", "release"),
            SagaStep("pay", "charge", None, ("hold",), retry=RetryPolicy(max_attempts=2)),
        ),
        pivot="pay",
    )
    driver = Driver(definition, World({("pay", A): ["lost", "fail"]}))
    driver.start()
    driver.run()
    assert driver.state() is SagaState.STUCK
    assert driver.compensations() == []
    driver.handle(ResumeRequested())
    driver.run()
    assert driver.state() is SagaState.COMPLETED


def test_a_late_success_of_a_stuck_pivot_settles_it_and_the_saga_goes_on() -> None:
    definition = SagaDefinition(
        "p",
        (
            SagaStep("hold", "hold", "release"),
            SagaStep("pay", "charge", None, ("hold",), retry=RetryPolicy(max_attempts=1)),
        ),
        pivot="pay",
    )
    driver = Driver(definition, World({("pay", A): ["lost"]}))
    driver.start()
    driver.run()
    assert driver.state() is SagaState.STUCK
    driver.handle(StepSucceeded("pay", "charged late", attempt=1))
    assert driver.state() is SagaState.COMPLETED
    assert driver.finished[-1].results["pay"] == "charged late"


# -- stuck compensations --------------------------------------------------------------


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


def test_a_failing_compensation_is_retried_then_the_saga_is_stuck_with_its_error() -> None:
    world = World({("flight", A): ["fatal"], ("car", C): ["fail"] * 5})
    driver = Driver(stubborn_trip(), world)
    driver.start()
    driver.run()
    assert driver.state() is SagaState.STUCK
    assert [i.attempt for i in driver.issued if i.op is C] == [1, 2, 3]
    delays = [e.delay_s for e in driver.trace if isinstance(e, SetTimer) and "retry" in e.name]
    assert delays == [0.01, 0.015]
    report = driver.machine.report()
    assert report.state is SagaState.STUCK
    assert report.stuck == ("car",)
    assert report.error == "car: car compensation failed"
    assert driver.stuck == [ReportStuck("s1", "car", C, "car compensation failed")]
    assert SagaStuck("s1", "car", C, "car compensation failed") in driver.log
    # Resume: a fresh budget of three attempts; two more failures, then it works.
    driver.handle(ResumeRequested())
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert driver.compensations() == ["car", "hotel"]
    assert [i.attempt for i in driver.issued if i.step == "car" and i.op is C] == [1, 2, 3, 4, 5, 6]
    driver.check_outcome()


def test_forcing_a_stuck_compensation_marks_it_done_and_goes_on_with_the_next() -> None:
    world = World({("flight", A): ["fatal"], ("car", C): ["fatal"]})
    driver = Driver(stubborn_trip(), world)
    driver.start()
    driver.run()
    assert driver.state() is SagaState.STUCK
    assert [i.attempt for i in driver.issued if i.op is C] == [1]  # not retriable
    world.by_hand("car", C)
    driver.handle(ForceRequested(reason="cancelled by phone"))
    assert CompensationSucceeded("s1", "car", 1, True, "cancelled by phone") in driver.log
    driver.run()
    assert driver.state() is SagaState.COMPENSATED
    assert driver.compensations() == ["car", "hotel"]
    driver.check_outcome()


# -- crash and recovery ---------------------------------------------------------------


SCENARIOS: dict[str, tuple[Callable[[], SagaDefinition], dict[tuple[str, StepOp], list[str]]]] = {
    "trip-completes": (trip, {}),
    "trip-flight-fails": (trip, {("flight", A): ["fatal"]}),
    "trip-retries": (trip, {("car", A): ["fail", "applied-lost"], ("hotel", C): ["fail"]}),
    "diamond-completes": (diamond, {("email", A): ["fail", "fail"]}),
    "diamond-pivot-fails": (diamond, {("pay", A): ["fatal"]}),
    "branches-fail": (two_branches, {("b", A): ["fatal"], ("a", A): ["fail", "fail"]}),
    "stuck-then-resumed": (stubborn_trip, {("flight", A): ["fatal"], ("car", C): ["fail"] * 4}),
}


def _records_of(name: str) -> int:
    make, script = SCENARIOS[name]
    driver = Driver(make(), World(dict(script)))
    driver.start()
    settle(driver)
    return driver.records


def settle(driver: Driver) -> None:
    for _ in range(5):
        driver.run()
        if driver.state() is not SagaState.STUCK:
            return
        driver._guarded(lambda: driver.handle(ResumeRequested()))
    raise AssertionError("still stuck")


CRASH_POINTS = [(name, n) for name in SCENARIOS for n in range(1, _records_of(name) + 1)]


@pytest.mark.parametrize("keep_inflight", [False, True], ids=["inflight-lost", "inflight-late"])
@pytest.mark.parametrize(("scenario", "crash_after"), CRASH_POINTS)
def test_a_crash_after_any_record_resumes_without_rerunning_completed_actions(
    scenario: str, crash_after: int, keep_inflight: bool
) -> None:
    make, script = SCENARIOS[scenario]
    reference = Driver(make(), World(dict(script)))
    reference.start()
    settle(reference)

    driver = Driver(
        make(), World(dict(script)), crash_after_records=crash_after, keep_inflight=keep_inflight
    )
    driver.start()
    settle(driver)
    assert driver.crashes == 1
    if any(report.op is A for report in driver.stuck) and not reference.stuck:
        # The pivot was re-issued after the crash and then failed: its first
        # delivery may still land, so the saga got stuck instead of
        # compensating, and the operator's Resume took it forward.
        assert driver.state() in (SagaState.COMPLETED, SagaState.COMPENSATED)
    else:
        assert driver.state() is reference.machine.state
    assert driver.finished[-1].state is driver.state()
    driver.check_outcome()  # includes: the world applied nothing twice


def test_recovery_of_a_finished_saga_reports_its_end_again_and_issues_nothing() -> None:
    driver = Driver(trip())
    driver.start()
    driver.run()
    machine = SagaOrchestrator("s1", trip())
    for record in driver.log:
        machine.handle(RecordRecovered(record))
    effects = machine.handle(RecoveryDone())
    assert effects == [SagaFinished("s1", SagaState.COMPLETED, "", driver.finished[0].results)]


def test_a_saga_whose_finished_record_was_lost_forces_it_again_on_recovery() -> None:
    driver = Driver(trip())
    driver.start()
    driver.run()
    assert isinstance(driver.log[-1], SagaFinishedRecord)
    machine = SagaOrchestrator("s1", trip())
    for record in driver.log[:-1]:
        machine.handle(RecordRecovered(record))
    effects = machine.handle(RecoveryDone())
    assert effects == [
        ForceLog(SagaFinishedRecord("s1", SagaState.COMPLETED)),
        Compact(),
        SagaFinished("s1", SagaState.COMPLETED, "", driver.finished[0].results),
    ]


def test_a_step_started_without_a_result_is_issued_again_with_the_same_attempt() -> None:
    machine = SagaOrchestrator("s1", trip())
    for record in [
        SagaStarted("s1", "trip", 1, "p"),
        StepStarted("s1", "hotel", 1),
        StepSucceededRecord("s1", "hotel", 1, "H"),
        StepStarted("s1", "car", 2),
    ]:
        machine.handle(RecordRecovered(record))
    effects = machine.handle(RecoveryDone())
    [invoke] = [e for e in effects if isinstance(e, InvokeStep)]
    assert invoke == InvokeStep("s1", "car", A, "book_car", 2, "p", {"hotel": "H"})
    assert not any(isinstance(e, ForceLog) for e in effects)


def test_a_step_reissued_after_a_crash_then_failing_is_compensated_as_a_fence() -> None:
    # b's first delivery is still in flight when the orchestrator crashes;
    # the re-issued one fails for good. The old one may yet land, so b is
    # compensated: a null compensation that makes the barrier refuse it.
    world = World({("a", A): ["fail"], ("b", A): ["fatal"]})
    driver = Driver(two_branches(), world, crash_after_records=4, keep_inflight=True)
    driver.start()
    driver.deliver(0)  # a fails (lazily logged); the orchestrator crashes
    assert driver.crashes == 1
    # Only the forced saga-started survived: both steps are issued again.
    assert [(i.step, i.attempt) for i in driver.queue] == [("b", 1), ("a", 1), ("b", 1)]
    driver.deliver(2)  # the re-issued b fails for good
    assert driver.state() is SagaState.COMPENSATING
    driver.deliver(1)  # a succeeds; the unknown steps are compensated first
    # c (after a) may have been issued before the crash too: it goes first.
    assert [(i.step, i.op) for i in driver.queue] == [("b", A), ("c", C)]
    driver.run(pick=lambda n: n - 1)  # compensations overtake the old delivery of b
    assert driver.state() is SagaState.COMPENSATED
    assert world.rows["b"] == [BarrierRow(C, null=True)]  # the late b was refused
    assert driver.compensations() == ["c", "b", "a"]
    driver.check_outcome()


def test_a_pending_step_that_may_have_run_before_a_crash_is_compensated_going_back() -> None:
    # The crash took hotel's lazily logged success and the starts of car and
    # flight, which may have run. After recovery hotel is issued again and now
    # fails for good: car and flight are unknown, so they are compensated
    # (latest first, before hotel) though never issued again.
    machine = SagaOrchestrator("s1", trip())
    for record in [SagaStarted("s1", "trip", 1, "p"), StepStarted("s1", "hotel", 1)]:
        machine.handle(RecordRecovered(record))
    effects = machine.handle(RecoveryDone())
    assert invokes(effects) == [("hotel", A)]
    assert all(s.uncertain for s in machine.report().steps)
    compensated = []
    effects = machine.handle(StepFailed("hotel", "no", False, A, 1))
    for _ in range(3):
        [invoke] = [e for e in effects if isinstance(e, InvokeStep)]
        assert invoke.op is C and invoke.results == {}
        compensated.append(invoke.step)
        effects = machine.handle(StepSucceeded(invoke.step, None, C, invoke.attempt))
    assert compensated == ["flight", "car", "hotel"]
    assert machine.state is SagaState.COMPENSATED
    assert ForceLog(SagaFinishedRecord("s1", SagaState.COMPENSATED, "step 'hotel' failed: no")) in (
        effects
    )


def test_a_pending_step_whose_dependency_surely_failed_is_not_counted_unknown() -> None:
    machine = SagaOrchestrator("s1", trip())
    for record in [
        SagaStarted("s1", "trip", 1, "p"),
        StepStarted("s1", "hotel", 1),
        StepFailedRecord("s1", "hotel", 1, "no", exhausted=True),
    ]:
        machine.handle(RecordRecovered(record))
    effects = machine.handle(RecoveryDone())
    assert not any(s.uncertain for s in machine.report().steps)
    assert effects[-1] == SagaFinished("s1", SagaState.COMPENSATED, "step 'hotel' failed: no")


def test_recovery_going_backward_compensates_a_step_whose_answer_died_with_the_crash() -> None:
    machine = SagaOrchestrator("s1", two_branches())
    for record in [
        SagaStarted("s1", "branches", 1),
        StepStarted("s1", "a", 1),
        StepStarted("s1", "b", 1),
        StepFailedRecord("s1", "b", 1, "no", exhausted=True),
    ]:
        machine.handle(RecordRecovered(record))
    effects = machine.handle(RecoveryDone())
    assert invokes(effects) == [("a", C)]
    assert machine.state is SagaState.COMPENSATING


def test_recovery_of_a_stuck_saga_reports_it_stuck_again() -> None:
    machine = SagaOrchestrator("s1", stubborn_trip())
    for record in [
        SagaStarted("s1", "trip", 1),
        StepStarted("s1", "hotel", 1),
        StepSucceededRecord("s1", "hotel", 1),
        StepStarted("s1", "car", 1),
        StepFailedRecord("s1", "car", 1, "no", exhausted=True),
        CompensationStarted("s1", "hotel", 1),
        CompensationFailed("s1", "hotel", 1, "down"),
        SagaStuck("s1", "hotel", C, "down"),
    ]:
        machine.handle(RecordRecovered(record))
    assert machine.handle(RecoveryDone()) == [ReportStuck("s1", "hotel", C, "down")]
    assert machine.state is SagaState.STUCK
    effects = machine.handle(ResumeRequested())
    assert invokes(effects) == [("hotel", C)]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "no saga-started record"),
        ([StepStarted("s1", "hotel", 1)], "first record must be saga-started"),
        ([SagaStarted("s1", "trip", 2)], "version 2"),
        ([SagaStarted("s1", "other", 1)], "'other'"),
        ([SagaStarted("s2", "trip", 1)], "record of saga 's2'"),
        ([SagaStarted("s1", "trip", 1), SagaStarted("s1", "trip", 1)], "second saga-started"),
        ([SagaStarted("s1", "trip", 1), StepStarted("s1", "boat", 1)], "unknown step 'boat'"),
        (
            [SagaStarted("s1", "trip", 1), SagaFinishedRecord("s1", SagaState.STUCK)],
            "cannot finish stuck",
        ),
    ],
)
def test_a_log_that_does_not_fit_the_definition_is_refused(
    records: list[Record], message: str
) -> None:
    machine = SagaOrchestrator("s1", trip())
    with pytest.raises(ProtocolError, match=message):
        for record in records:
            machine.handle(RecordRecovered(record))
        machine.handle(RecoveryDone())


# -- late, duplicate, unknown, illegal --------------------------------------------------


def running_trip() -> SagaOrchestrator:
    machine = SagaOrchestrator("s1", trip())
    machine.handle(Start())
    machine.handle(StepSucceeded("hotel", "H"))
    return machine


@pytest.mark.parametrize(
    "event",
    [
        StepSucceeded("hotel", "again"),  # duplicate
        StepSucceeded("flight", "x"),  # not issued yet
        StepSucceeded("boat", "x"),  # unknown step
        StepFailed("hotel", "late"),
        StepTimedOut("hotel"),
        StepSucceeded("car", "x", C),  # compensation that was never issued
        StepFailed("car", "old attempt", attempt=7),
        StepSucceeded("car", "future attempt", attempt=2),
        TimerFired("timeout:hotel:action:1"),  # cancelled
        TimerFired("nonsense"),
    ],
)
def test_late_duplicate_and_unknown_answers_are_ignored_and_change_nothing(event: Event) -> None:
    machine = running_trip()
    before = copy.deepcopy(vars(machine))
    effects = machine.handle(event)
    assert len(effects) == 1 and isinstance(effects[0], Ignored)
    assert vars(machine) == before


def test_an_answer_for_an_unknown_step_is_flagged_as_a_violation() -> None:
    [effect] = running_trip().handle(StepSucceeded("boat"))
    assert isinstance(effect, Ignored) and effect.violation


@pytest.mark.parametrize(
    "event",
    [
        Start(),
        ResumeRequested(),
        ForceRequested(),
        RecordRecovered(SagaStarted("s1", "trip", 1)),
        RecoveryDone(),
        Event(),
    ],
)
def test_illegal_local_events_raise_and_leave_the_machine_unchanged(event: Event) -> None:
    machine = running_trip()
    before = copy.deepcopy(vars(machine))
    with pytest.raises(ProtocolError, match="saga 's1' in state 'running'"):
        machine.handle(event)
    assert vars(machine) == before


def test_a_finished_saga_ignores_answers_and_refuses_operator_actions() -> None:
    driver = Driver(trip())
    driver.start()
    driver.run()
    assert isinstance(driver.machine.handle(StepSucceeded("flight"))[0], Ignored)
    with pytest.raises(ProtocolError, match="only a stuck saga"):
        driver.machine.handle(ResumeRequested())


def test_an_answer_before_the_saga_runs_is_ignored() -> None:
    machine = SagaOrchestrator("s1", trip())
    assert isinstance(machine.handle(StepSucceeded("hotel"))[0], Ignored)
    assert machine.state is SagaState.INIT


# -- every (state, event) pair ------------------------------------------------------------


def _reachable() -> list[SagaOrchestrator]:
    found: list[SagaOrchestrator] = []
    for make, script in SCENARIOS.values():
        found.append(SagaOrchestrator("s1", make()))  # INIT
        driver = Driver(make(), World(dict(script)))
        driver.start("p")
        settle(driver)
        found.extend(driver.snapshots)
        recovering = SagaOrchestrator("s1", make())
        recovering.handle(RecordRecovered(driver.log[0]))
        found.append(recovering)
    return found


def _events_for(machine: SagaOrchestrator) -> list[Event]:
    names = [*machine.steps, "boat"]
    events: list[Event] = [
        Start(),
        ResumeRequested(),
        ForceRequested("r"),
        RecoveryDone(),
        RecordRecovered(SagaStarted("s1", machine.definition.name, 1)),
        RecordRecovered(StepStarted("s1", "boat", 1)),
        TimerFired("timeout:boat:action:1"),
        *[TimerFired(name) for name in machine.timers],
    ]
    for name, op, attempt in itertools.product(names, (A, C), (0, 1, 2)):
        events += [
            StepSucceeded(name, "r", op, attempt),
            StepFailed(name, "e", True, op, attempt),
            StepFailed(name, "e", False, op, attempt),
            StepTimedOut(name, op, attempt),
        ]
    return events


def test_every_reachable_state_answers_every_event_or_raises_leaving_it_unchanged() -> None:
    pairs = 0
    for reached in _reachable():
        for event in _events_for(reached):
            machine = copy.deepcopy(reached)
            before = copy.deepcopy(vars(machine))
            try:
                effects = machine.handle(event)
            except ProtocolError:
                assert vars(machine) == before, f"{event} changed {reached.state} before raising"
                # Only a misuse of the local API raises; answers and timers never do.
                local = Start | ResumeRequested | ForceRequested | RecordRecovered | RecoveryDone
                assert isinstance(event, local), event
                continue
            assert isinstance(effects, list)
            if isinstance(event, StepSucceeded | StepFailed | StepTimedOut | TimerFired):
                assert not isinstance(event, StepSucceeded | StepFailed | StepTimedOut) or (
                    event.step != "boat" or isinstance(effects[0], Ignored)
                )
            states = [s.state for s in machine.steps.values()]
            assert states.count(StepState.COMPENSATING) <= 1
            pairs += 1
    assert pairs > 1000


# -- records -----------------------------------------------------------------------------


def test_every_saga_record_round_trips_with_its_stable_tag() -> None:
    samples: list[Record] = [
        SagaStarted("s", "trip", 1, {"k": [1, 2]}),
        StepStarted("s", "a", 1),
        StepSucceededRecord("s", "a", 1, {"id": 7}),
        StepFailedRecord("s", "a", 1, "e", True, True),
        CompensationStarted("s", "a", 1),
        CompensationSucceeded("s", "a", 1, True),
        CompensationFailed("s", "a", 1, "e"),
        SagaStuck("s", "a", C, "e"),
        SagaFinishedRecord("s", SagaState.COMPENSATED, "why"),
    ]
    assert {type(r) for r in samples} == set(SAGA_RECORD_TYPES)
    assert [kind_of(r) for r in samples] == [
        "saga-started",
        "step-started",
        "step-succeeded",
        "step-failed",
        "compensation-started",
        "compensation-succeeded",
        "compensation-failed",
        "saga-stuck",
        "saga-finished",
    ]
    for record in samples:
        assert decode_saga_record(encode_saga_record(record)) == record
    # Old logs stay readable: array_like with the tag first.
    assert msgspec.json.encode(StepStarted("s", "a", 1)) == b'["step-started","s","a",1]'


# -- properties --------------------------------------------------------------------------

ACTION_OUTCOMES = ["ok", "ok", "ok", "fail", "fatal", "lost", "applied-lost"]
FORWARD_OUTCOMES = ["ok", "fail", "lost", "applied-lost", "fatal"]
COMP_OUTCOMES = ["ok", "ok", "fail", "lost", "applied-lost", "fatal"]


@st.composite
def sagas(draw: st.DrawFn) -> tuple[SagaDefinition, World]:
    n = draw(st.integers(1, 6))
    pivot_at = draw(st.none() | st.integers(0, n - 1))
    fast = RetryPolicy(max_attempts=draw(st.integers(1, 3)), backoff_ms_initial=1, jitter=0.5)
    comp = RetryPolicy(max_attempts=2, backoff_ms_initial=1, backoff_ms_max=2)
    steps = []
    for i in range(n):
        deps = {f"s{j}" for j in range(i) if draw(st.booleans())}
        if pivot_at is not None and i == pivot_at:
            deps |= {f"s{j}" for j in range(i)}
        if pivot_at is not None and i > pivot_at:
            deps.add(f"s{pivot_at}")
        before = pivot_at is None or i < pivot_at
        steps.append(
            SagaStep(
                f"s{i}",
                f"do{i}",
                f"undo{i}" if before else None,
                tuple(sorted(deps)),
                retry=fast if pivot_at is None or i <= pivot_at else FOREVER,
                compensation_retry=comp,
                timeout_s=1.0,
            )
        )
    pivot = None if pivot_at is None else f"s{pivot_at}"
    script: dict[tuple[str, StepOp], list[str]] = {}
    for i, step in enumerate(steps):
        after = pivot_at is not None and i > pivot_at
        outcomes = FORWARD_OUTCOMES if after else ACTION_OUTCOMES
        script[(step.name, A)] = draw(st.lists(st.sampled_from(outcomes), max_size=4))
        script[(step.name, C)] = draw(st.lists(st.sampled_from(COMP_OUTCOMES), max_size=4))
    return SagaDefinition("random", tuple(steps), pivot), World(script)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sagas(),
    st.none() | st.integers(1, 40),
    st.lists(st.integers(0, 10), max_size=50),
    st.lists(st.sampled_from(["resume", "force"]), min_size=20, max_size=20),
    st.lists(st.floats(0, 0.999), max_size=10),
    st.booleans(),
)
def test_random_dags_with_random_failures_and_a_crash_satisfy_g1_g2_and_g4(
    saga: tuple[SagaDefinition, World],
    crash_after: int | None,
    picks: list[int],
    operator: list[str],
    jitter: list[float],
    keep_inflight: bool,
) -> None:
    definition, world = saga
    driver = Driver(
        definition,
        world,
        random=draws(jitter),
        crash_after_records=crash_after,
        keep_inflight=keep_inflight,
    )
    schedule = iter(picks)

    def pick(n: int) -> int:
        return next(schedule, 0) % n

    driver.start()
    for action in operator:
        driver.run(pick=pick)
        if driver.state() is not SagaState.STUCK:
            break
        for name in driver.machine.report().stuck:
            step = driver.machine.steps[name]
            if action == "force":
                world.by_hand(name, C if step.state is StepState.COMPENSATION_STUCK else A)
        event = ResumeRequested() if action == "resume" else ForceRequested("by hand")
        driver._guarded(lambda e=event: driver.handle(e))  # type: ignore[misc]
    driver.run(pick=pick)
    state = driver.machine.state
    assert state in (SagaState.COMPLETED, SagaState.COMPENSATED, SagaState.STUCK)
    if state is SagaState.STUCK:
        return
    assert driver.timers == {}
    driver.check_outcome()
    if definition.pivot is not None and any(
        isinstance(r, StepSucceededRecord) and r.step == definition.pivot for r in driver.log
    ):
        assert state is SagaState.COMPLETED  # G2: forward only after the pivot
