"""Choreographed sagas: participants react to each other's events; no orchestrator.

Theory of operation
-------------------
A `Choreography` hosts `ChoreographyParticipant` actors on one runtime. Each
participant declares `ChoreoStep`s: "on topic T run my action, then publish S
(or F if it failed for good); on any of topics C undo it and publish U". A
publish sends the `SagaEvent` to every address the explicit `Topics` table
lists for its topic, through the runtime's transport. The saga's shape is
the event chain itself (OrderCreated -> StockReserved -> ... ; PaymentFailed
-> StockReleased -> OrderRejected), so compensation runs in reverse order
because each undo is triggered by the undo (or failure) just downstream (G1).

Each participant keeps its progress in its *own* WAL (not the node's), per
(saga id, step, op), like the idempotency barrier (G4):

- `started` is forced before an action or compensation runs;
- `done` (succeeded, failed or a null compensation, with the event to publish)
  is forced before that event is published;
- `published` is appended lazily after the publish.

A trigger for a (saga, step) already started is a duplicate and has no
effect; an action trigger after the step was compensated is refused. After a
crash the participant replays its WAL: an operation started but not done is
run again (its handler must be idempotent: use `SqliteBarrier`), and an event
whose publish was not recorded is published again. Delivery is therefore
at-least-once and receivers drop the duplicates.

A compensation that keeps failing leaves its step `stuck`, listed by
`ChoreographyParticipant.stuck()`, for an operator (`resume`).
"""

from __future__ import annotations

from dtxn.runtime.choreography._host import Choreography
from dtxn.runtime.choreography._participant import ChoreographyParticipant
from dtxn.runtime.choreography._records import ChoreoStep, SagaEvent, StepStatus, Topics

__all__ = [
    "ChoreoStep",
    "Choreography",
    "ChoreographyParticipant",
    "SagaEvent",
    "StepStatus",
    "Topics",
]
