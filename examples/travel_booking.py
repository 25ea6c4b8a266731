"""Travel booking as an orchestrated saga: hotel, then car, then flight.

The flight is full, so the saga compensates in reverse order: the car is
cancelled, then the hotel. Run: python examples/travel_booking.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from dtxn.protocols.saga import RetryPolicy, SagaDefinition, SagaStep
from dtxn.runtime import Runtime, run
from dtxn.runtime.hosting.sagas import StepCall, StepError

TRIP = SagaDefinition(
    "trip",
    (
        SagaStep("hotel", "book_hotel", "cancel_hotel"),
        SagaStep("car", "book_car", "cancel_car", ("hotel",)),
        SagaStep("flight", "book_flight", "cancel_flight", ("car",),
                 retry=RetryPolicy(max_attempts=2, backoff_ms_initial=10)),
    ),
)

journal: list[str] = []


async def book_hotel(call: StepCall) -> str:
    journal.append("book hotel")
    return "hotel-42"


async def cancel_hotel(call: StepCall) -> None:
    journal.append(f"cancel hotel {call.results.get('hotel')}")


async def book_car(call: StepCall) -> str:
    journal.append("book car")
    return "car-7"


async def cancel_car(call: StepCall) -> None:
    journal.append(f"cancel car {call.results.get('car')}")


async def book_flight(call: StepCall) -> str:
    journal.append(f"book flight (attempt {call.attempt})")
    raise StepError("flight LH123 is full", retriable=call.attempt < 2)


async def cancel_flight(call: StepCall) -> None:
    journal.append("cancel flight")


STEPS = {f.__name__: f for f in (book_hotel, cancel_hotel, book_car, cancel_car,
                                 book_flight, cancel_flight)}


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with Runtime("travel", wal_path=Path(tmp) / "travel.db") as rt:
            rt.register_saga(TRIP, STEPS)
            outcome = await rt.run_saga("trip", {"traveller": "Ada", "to": "Lisbon"})
    print(f"saga {outcome.saga_id}: {outcome.state.value} ({outcome.reason})")
    for line in journal:
        print("  ", line)
    assert journal[-2:] == ["cancel car car-7", "cancel hotel hotel-42"], journal


if __name__ == "__main__":
    run(main)
