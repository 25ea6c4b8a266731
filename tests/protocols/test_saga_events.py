"""The orchestrated-saga machine: late, duplicate, unknown and illegal events,
every (state, event) pair, record round trips and properties over random DAGs."""

from __future__ import annotations

import copy
import itertools

import msgspec
import pytest
from dtxn.protocols.effects import (
    Event,
    Ignored,
    RecordRecovered,
    RecoveryDone,
    TimerFired,
)
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.records import Record, kind_of
from dtxn.protocols.saga import (
    FOREVER,
    RetryPolicy,
    SagaDefinition,
    SagaOrchestrator,
    SagaStep,
    StepState,
)
from dtxn.protocols.saga.events import (
    ForceRequested,
    ResumeRequested,
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
from saga_driver import (
    SCENARIOS,
    A,
    C,
    Driver,
    World,
    draws,
    settle,
    trip,
)

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
