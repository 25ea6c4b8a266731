"""The decision table of the idempotency barrier (G4), with no storage attached.

A participant runs every delivery of a saga step's action or compensation
through the barrier, keyed by (saga id, step, operation). The runtime reads
the rows stored for (saga id, step), asks `decide`, and then, in the *same*
local transaction as the business write, inserts `row_to_write(...)` (if
any) and runs the operation only when told to. Because the row and the
business change commit together, a duplicate delivery finds the row and
has no second effect; a compensation that overtakes its action leaves a
NULL compensation row behind, so the late action is refused instead of
running after its saga was undone (no "hanging" action).

| rows for (saga, step)     | action              | compensation        |
|---------------------------|---------------------|---------------------|
| none                      | RUN                 | RECORD_NULL         |
| action                    | DUPLICATE           | RUN                 |
| action + compensation     | REFUSE              | DUPLICATE           |
| null compensation         | REFUSE              | DUPLICATE           |

DUPLICATE returns the recorded result of the earlier delivery. Any other
combination of rows (two rows for one operation, a real compensation with
no action, an action next to a null compensation) cannot be produced by
this table and raises `ProtocolError`: the store is corrupt or shared.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import msgspec
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.saga.records import StepOp


class BarrierDecision(enum.Enum):
    RUN = "run"  # run it and record a row with its result
    DUPLICATE = "duplicate"  # already ran: skip, answer with the recorded result
    RECORD_NULL = "record_null"  # compensation before any action: record NULL, skip
    REFUSE = "refuse"  # action after its compensation: do nothing, answer "refused"


class BarrierState(enum.Enum):
    EMPTY = "empty"
    ACTED = "acted"
    COMPENSATED = "compensated"
    NULL_COMPENSATED = "null_compensated"


class BarrierRow(msgspec.Struct, frozen=True, array_like=True):
    """One stored row: which operation ran (or was nulled) and what it returned."""

    op: StepOp
    null: bool = False
    result: Any = None


_TABLE: dict[tuple[BarrierState, StepOp], BarrierDecision] = {
    (BarrierState.EMPTY, StepOp.ACTION): BarrierDecision.RUN,
    (BarrierState.EMPTY, StepOp.COMPENSATION): BarrierDecision.RECORD_NULL,
    (BarrierState.ACTED, StepOp.ACTION): BarrierDecision.DUPLICATE,
    (BarrierState.ACTED, StepOp.COMPENSATION): BarrierDecision.RUN,
    (BarrierState.COMPENSATED, StepOp.ACTION): BarrierDecision.REFUSE,
    (BarrierState.COMPENSATED, StepOp.COMPENSATION): BarrierDecision.DUPLICATE,
    (BarrierState.NULL_COMPENSATED, StepOp.ACTION): BarrierDecision.REFUSE,
    (BarrierState.NULL_COMPENSATED, StepOp.COMPENSATION): BarrierDecision.DUPLICATE,
}


def barrier_state(rows: Iterable[BarrierRow]) -> BarrierState:
    """Classify the stored rows of one (saga, step); raise `ProtocolError` if impossible."""
    action: BarrierRow | None = None
    compensation: BarrierRow | None = None
    for row in rows:
        if row.op is StepOp.ACTION:
            if action is not None:
                raise ProtocolError("barrier holds two action rows for one saga step")
            if row.null:
                raise ProtocolError("barrier holds a null action row (only compensations are)")
            action = row
        else:
            if compensation is not None:
                raise ProtocolError("barrier holds two compensation rows for one saga step")
            compensation = row
    if compensation is None:
        return BarrierState.EMPTY if action is None else BarrierState.ACTED
    if compensation.null:
        if action is not None:
            raise ProtocolError("barrier holds an action beside a null compensation")
        return BarrierState.NULL_COMPENSATED
    if action is None:
        raise ProtocolError("barrier holds a compensation that ran without its action")
    return BarrierState.COMPENSATED


def decide(rows: Iterable[BarrierRow], op: StepOp) -> BarrierDecision:
    """What to do with a delivery of `op`, given the rows stored for its (saga, step)."""
    return _TABLE[barrier_state(rows), op]


def row_to_write(decision: BarrierDecision, op: StepOp, result: Any = None) -> BarrierRow | None:
    """The row to insert with the business write (None: insert nothing)."""
    if decision is BarrierDecision.RUN:
        return BarrierRow(op, False, result)
    if decision is BarrierDecision.RECORD_NULL:
        return BarrierRow(StepOp.COMPENSATION, True)
    return None


def recorded_result(rows: Iterable[BarrierRow], op: StepOp) -> Any:
    """The result a DUPLICATE answers with: the stored one of the same operation."""
    for row in rows:
        if row.op is op:
            return row.result
    raise ProtocolError(f"barrier holds no {op.value} row to answer a duplicate with")
