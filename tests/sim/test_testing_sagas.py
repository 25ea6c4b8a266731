"""dtxn.testing for sagas, used the way a user would: a trip saga with our own steps.

The trip books a flight, a hotel and a car, then charges the card (the pivot).
Each service keeps its bookings keyed by saga id and makes its steps
idempotent on (saga, step, op), as the simulator may deliver a call twice.
A buggy hotel whose cancel is not idempotent (it refunds every time it is
called) is caught; the fixed hotel passes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import pytest
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.saga import SagaDefinition
from dtxn.protocols.saga.definition import RetryPolicy, SagaStep
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.hosting.sagas import StepCall, StepFn
from dtxn.testing import (
    SagaEffects,
    SagaScenario,
    SagaSimulationFailure,
    check_saga,
    saga_scenarios,
)
from hypothesis import HealthCheck, given, settings

TRIP = SagaDefinition(
    "trip",
    (
        SagaStep("flight", "book_flight", "cancel_flight", timeout_s=1.0),
        SagaStep("hotel", "book_hotel", "cancel_hotel", ("flight",), timeout_s=1.0),
        SagaStep("car", "rent_car", "return_car", ("hotel",), timeout_s=1.0),
        SagaStep("charge", "charge_card", None, ("car",),
                 retry=RetryPolicy(max_attempts=None), timeout_s=1.0),
    ),
    pivot="charge",
)


class Service:
    """One booking service: at most one booking per saga, idempotent book and cancel."""

    def __init__(self, effects: SagaEffects, *, idempotent_cancel: bool = True) -> None:
        self.effects = effects
        self.idempotent_cancel = idempotent_cancel
        self.booked: dict[str, str] = {}
        self.cancelled: set[str] = set()
        self.refunds = 0

    async def book(self, call: StepCall) -> str:
        saga = call.saga_id
        if saga in self.cancelled:
            return "refused"  # a late booking after its cancellation: never take effect
        if saga not in self.booked:
            self.booked[saga] = f"{call.step}-{saga}"
            self.effects.record(call)
        return self.booked[saga]

    async def cancel(self, call: StepCall) -> None:
        saga = call.saga_id
        if saga in self.cancelled and self.idempotent_cancel:
            return
        self.cancelled.add(saga)
        if self.booked.pop(saga, None) is not None or not self.idempotent_cancel:
            self.refunds += 1
            self.effects.record(call)


def trip_steps(*, idempotent_cancel: bool) -> Any:
    def make_steps(effects: SagaEffects) -> Mapping[str, StepFn]:
        flight = Service(effects)
        hotel = Service(effects, idempotent_cancel=idempotent_cancel)
        car = Service(effects)
        card = Service(effects)
        return {
            "book_flight": flight.book, "cancel_flight": flight.cancel,
            "book_hotel": hotel.book, "cancel_hotel": hotel.cancel,
            "rent_car": car.book, "return_car": car.cancel,
            "charge_card": card.book,
        }
    return make_steps


FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(saga_scenarios(TRIP))
def test_a_trip_with_idempotent_compensations_passes_every_schedule(scenario: SagaScenario) -> None:
    check_saga(TRIP, trip_steps(idempotent_cancel=True), scenario)


def test_a_hotel_cancel_that_is_not_idempotent_is_caught_with_a_replayable_schedule() -> None:
    buggy = trip_steps(idempotent_cancel=False)
    caught: list[SagaSimulationFailure] = []

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(saga_scenarios(TRIP))
    def probe(scenario: SagaScenario) -> None:
        try:
            check_saga(TRIP, buggy, scenario)
        except SagaSimulationFailure as failure:
            caught.append(failure)
            raise

    with pytest.raises(SagaSimulationFailure):
        probe()
    failure = caught[-1]
    assert {v.code for v in failure.violations} & {"G1", "G3", "G4"}
    text = failure.scenario.text()
    assert f"schedule: {text}" in str(failure)
    with pytest.raises(SagaSimulationFailure):  # the printed schedule replays
        check_saga(TRIP, buggy, text)
    check_saga(TRIP, trip_steps(idempotent_cancel=True), text)  # and the fix passes it


def test_a_final_check_catches_a_compensated_trip_that_still_holds_a_booking() -> None:
    hotels: list[Service] = []

    def make_steps(effects: SagaEffects) -> Mapping[str, StepFn]:
        steps = dict(trip_steps(idempotent_cancel=True)(effects))
        hotel = Service(effects)
        hotels.append(hotel)

        async def forgetful_cancel(call: StepCall) -> None:
            # The bug: cancels the flight's booking id at the hotel, so nothing is released.
            hotel.cancelled.add(call.saga_id + "-wrong")
            effects.record(call)

        steps.update(book_hotel=hotel.book, cancel_hotel=forgetful_cancel)
        return steps

    def no_booking_after_compensation(ends: Mapping[str, str]) -> None:
        held = [s for s, end in ends.items() if end == "compensated" and s in hotels[-1].booked]
        assert not held, f"compensated trips {held} still hold a hotel room"

    scenario = SagaScenario.parse("saga seed=1 dup=0 flaky=0 jitter=0.01 ; "
                                  "saga@0 deps=-,0,1,2 pivot=3 fail=2 stuck=-1 ; "
                                  "saga@0 deps=-,0,1,2 pivot=3 fail=-1 stuck=-1")
    with pytest.raises(SagaSimulationFailure, match="still hold a hotel room"):
        check_saga(TRIP, make_steps, scenario, final_check=no_booking_after_compensation)


def test_check_saga_refuses_steps_that_lack_a_callable_of_the_definition() -> None:
    def make_steps(effects: SagaEffects) -> Mapping[str, StepFn]:
        steps = dict(trip_steps(idempotent_cancel=True)(effects))
        del steps["return_car"]
        return steps

    scenario = SagaScenario.parse("saga seed=1 ; saga@0 deps=-,0,1,2 pivot=3 fail=-1 stuck=-1")
    with pytest.raises(ConfigError, match="return_car"):
        check_saga(TRIP, make_steps, scenario)


def test_a_step_at_or_after_the_pivot_must_retry_until_it_succeeds() -> None:
    once = msgspec.structs.replace(TRIP, steps=(*TRIP.steps[:3], msgspec.structs.replace(
        TRIP.steps[3], retry=RetryPolicy(max_attempts=3))))
    with pytest.raises(ConfigError, match="must retry until it succeeds"):
        check_saga(once, trip_steps(idempotent_cancel=True), "saga seed=1 ; saga@0 deps=-")


def test_recording_an_effect_outside_a_run_is_a_usage_error() -> None:
    with pytest.raises(ConfigError):
        SagaEffects().record(StepCall("s0", "flight", StepOp.ACTION, 1))
