"""The idempotency barrier's decision table, exhaustively, and random delivery orders.

A step's participant sees deliveries of its action and its compensation
duplicated, late and out of order. Whatever the order, the barrier must give
exactly-once effects (G4), never run a compensation without its action's
effect, and never run an action after its compensation (no hanging action).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.saga.barrier import (
    BarrierDecision,
    BarrierRow,
    BarrierState,
    barrier_state,
    decide,
    recorded_result,
    row_to_write,
)
from dtxn.protocols.saga.records import StepOp
from hypothesis import given
from hypothesis import strategies as st

A, C = StepOp.ACTION, StepOp.COMPENSATION
ACTED = BarrierRow(A, False, "booked")
COMPENSATED = BarrierRow(C, False, "cancelled")
NULL = BarrierRow(C, True)

VALID: dict[tuple[BarrierRow, ...], BarrierState] = {
    (): BarrierState.EMPTY,
    (ACTED,): BarrierState.ACTED,
    (ACTED, COMPENSATED): BarrierState.COMPENSATED,
    (COMPENSATED, ACTED): BarrierState.COMPENSATED,
    (NULL,): BarrierState.NULL_COMPENSATED,
}

EXPECTED = {
    (BarrierState.EMPTY, A): BarrierDecision.RUN,
    (BarrierState.EMPTY, C): BarrierDecision.RECORD_NULL,
    (BarrierState.ACTED, A): BarrierDecision.DUPLICATE,
    (BarrierState.ACTED, C): BarrierDecision.RUN,
    (BarrierState.COMPENSATED, A): BarrierDecision.REFUSE,
    (BarrierState.COMPENSATED, C): BarrierDecision.DUPLICATE,
    (BarrierState.NULL_COMPENSATED, A): BarrierDecision.REFUSE,
    (BarrierState.NULL_COMPENSATED, C): BarrierDecision.DUPLICATE,
}


@pytest.mark.parametrize("op", [A, C])
@pytest.mark.parametrize("rows", list(VALID), ids=lambda rows: "+".join(map(str, rows)) or "none")
def test_every_valid_row_set_and_operation_gets_the_documented_decision(
    rows: tuple[BarrierRow, ...], op: StepOp
) -> None:
    state = barrier_state(rows)
    assert state is VALID[rows]
    assert decide(rows, op) is EXPECTED[state, op]


def test_the_table_covers_every_state_and_operation() -> None:
    assert set(EXPECTED) == set(itertools.product(BarrierState, StepOp))
    assert set(VALID.values()) == set(BarrierState)


ROW_KINDS = [ACTED, BarrierRow(A, True), COMPENSATED, NULL]


@pytest.mark.parametrize(
    "rows",
    [
        rows
        for n in range(1, 4)
        for rows in itertools.product(ROW_KINDS, repeat=n)
        if rows not in VALID
    ],
)
def test_every_other_row_set_is_refused_as_corrupt(rows: tuple[BarrierRow, ...]) -> None:
    with pytest.raises(ProtocolError, match="barrier holds"):
        barrier_state(rows)


def test_the_rows_to_write_follow_the_decision() -> None:
    assert row_to_write(BarrierDecision.RUN, A, 7) == BarrierRow(A, False, 7)
    assert row_to_write(BarrierDecision.RUN, C, "x") == BarrierRow(C, False, "x")
    assert row_to_write(BarrierDecision.RECORD_NULL, C) == NULL
    assert row_to_write(BarrierDecision.DUPLICATE, A) is None
    assert row_to_write(BarrierDecision.REFUSE, A) is None


def test_a_duplicate_is_answered_with_the_recorded_result_of_the_same_operation() -> None:
    rows = [ACTED, COMPENSATED]
    assert recorded_result(rows, A) == "booked"
    assert recorded_result(rows, C) == "cancelled"
    with pytest.raises(ProtocolError, match="no compensation row"):
        recorded_result([ACTED], C)


class Participant:
    """One step's participant: business effects plus barrier rows, committed together."""

    def __init__(self) -> None:
        self.rows: list[BarrierRow] = []
        self.effects: list[StepOp] = []
        self.answers: list[tuple[StepOp, BarrierDecision, Any]] = []

    def deliver(self, op: StepOp) -> None:
        decision = decide(self.rows, op)
        result: Any = None
        if decision is BarrierDecision.RUN:
            self.effects.append(op)
            result = f"{op.value}-{len(self.effects)}"
        elif decision is BarrierDecision.DUPLICATE:
            result = recorded_result(self.rows, op)
        row = row_to_write(decision, op, result)
        if row is not None:
            self.rows.append(row)
        self.answers.append((op, decision, result))


@given(st.lists(st.sampled_from([A, C]), min_size=1, max_size=12))
def test_any_order_of_duplicated_deliveries_has_exactly_once_effects_and_no_hanging_action(
    deliveries: list[StepOp],
) -> None:
    participant = Participant()
    for op in deliveries:
        participant.deliver(op)
    effects = participant.effects
    # Exactly once per operation, and never a compensation without its action.
    assert effects in ([], [A], [A, C])
    first_c = deliveries.index(C) if C in deliveries else None
    first_a = deliveries.index(A) if A in deliveries else None
    if first_a is not None and (first_c is None or first_a < first_c):
        assert effects[:1] == [A]  # the first action ran
    if first_c is not None and (first_a is None or first_c < first_a):
        # The compensation overtook the action: nothing ran, the action is refused for good.
        assert effects == []
        assert participant.rows == [NULL]
    if first_c is not None:
        # Once compensated, every later action is refused and nets to zero.
        later = [a for a in participant.answers[first_c:] if a[0] is A]
        assert all(decision is BarrierDecision.REFUSE for _, decision, _ in later)
        assert effects.count(A) == effects.count(C)
    # Every duplicate answers with the first delivery's result.
    for op in (A, C):
        results = [
            r for o, d, r in participant.answers if o is op and d is not BarrierDecision.REFUSE
        ]
        assert len(set(results)) <= 1
