"""The orchestrated-saga machine: stuck compensations, crash and recovery
(driver and invariants G1-G4 in saga_driver.py)."""

from __future__ import annotations

import pytest
from dtxn.protocols.effects import (
    Compact,
    ForceLog,
    RecordRecovered,
    RecoveryDone,
    SetTimer,
)
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.records import Record
from dtxn.protocols.saga import (
    SagaOrchestrator,
)
from dtxn.protocols.saga.barrier import (
    BarrierRow,
)
from dtxn.protocols.saga.events import (
    ForceRequested,
    InvokeStep,
    ReportStuck,
    ResumeRequested,
    SagaFinished,
    StepFailed,
    StepSucceeded,
)
from dtxn.protocols.saga.records import (
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaFinishedRecord,
    SagaStarted,
    SagaState,
    SagaStuck,
    StepFailedRecord,
    StepStarted,
    StepSucceededRecord,
)
from saga_driver import (
    SCENARIOS,
    A,
    C,
    Driver,
    World,
    invokes,
    settle,
    stubborn_trip,
    trip,
    two_branches,
)

# -- stuck compensations --------------------------------------------------------------




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




def _records_of(name: str) -> int:
    make, script = SCENARIOS[name]
    driver = Driver(make(), World(dict(script)))
    driver.start()
    settle(driver)
    return driver.records




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


