"""dtxn.protocols.saga: orchestrated sagas as pure state machines.

- `definition`: `SagaDefinition`, `SagaStep`, `RetryPolicy` — what a user writes;
- `orchestrator`: `SagaOrchestrator`, the machine (events in, effects out);
- `events`: the events the orchestrator takes and the effects only it emits;
- `records`: its WAL records and how they replay to a saga's state;
- `barrier`: the idempotency barrier's pure logic (a step runs at most once,
  a compensation of a step that never ran is a null one).

The names a user needs are re-exported here.
"""

from dtxn.protocols.saga.orchestrator import (
    FOREVER,
    MAX_STEPS,
    RetryPolicy,
    SagaDefinition,
    SagaOrchestrator,
    SagaReport,
    SagaStep,
    StepReport,
    StepState,
    backoff_ms,
    validate,
)

__all__ = [
    "FOREVER",
    "MAX_STEPS",
    "RetryPolicy",
    "SagaDefinition",
    "SagaOrchestrator",
    "SagaReport",
    "SagaStep",
    "StepReport",
    "StepState",
    "backoff_ms",
    "validate",
]
