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

import pytest
from dtxn.protocols.effects import (
    CancelTimer,
    Ignored,
    SetTimer,
)
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.saga import (
    FOREVER,
    RetryPolicy,
    SagaDefinition,
    SagaOrchestrator,
    SagaStep,
    backoff_ms,
)
from dtxn.protocols.saga.barrier import (
    BarrierRow,
)
from dtxn.protocols.saga.events import (
    ForceRequested,
    ResumeRequested,
    StepFailed,
    StepSucceeded,
)
from dtxn.protocols.saga.records import (
    SagaState,
    StepSucceededRecord,
)
from saga_driver import (
    A,
    C,
    Driver,
    World,
    diamond,
    draws,
    invokes,
    trip,
    two_branches,
)

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


