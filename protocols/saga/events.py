"""Events in and effects out of the saga orchestrator.

The generic ones (`TimerFired`, `RecordRecovered`, `RecoveryDone` in;
`ForceLog`, `Log`, `SetTimer`, `CancelTimer`, `Ignored` out) come from
`dtxn.protocols.effects`, with the same contract: effects run in order and a
`ForceLog` is durable before any effect after it runs. This module adds the
saga's own: the results of step invocations and the operator's actions in,
step invocations, the stuck report and the end out.
"""

from __future__ import annotations

from typing import Any

import msgspec
from dtxn.protocols.effects import Effect, Event
from dtxn.protocols.saga.records import SagaState, StepOp

# -- events --------------------------------------------------------------------


class Start(Event, frozen=True):
    """The saga is asked to run with this input (handed to every invocation)."""

    payload: Any = None


class StepSucceeded(Event, frozen=True):
    """An invocation of a step's action (or compensation) returned.

    `attempt` 0 means "whichever attempt is running"; a positive value lets
    the machine ignore the answer of an attempt it already gave up on.
    """

    step: str
    result: Any = None
    op: StepOp = StepOp.ACTION
    attempt: int = 0


class StepFailed(Event, frozen=True):
    """An invocation raised. `retriable=False` means another attempt cannot help."""

    step: str
    error: str
    retriable: bool = True
    op: StepOp = StepOp.ACTION
    attempt: int = 0


class StepTimedOut(Event, frozen=True):
    """The runtime gave up waiting for an invocation (its outcome is unknown).

    The machine also arms its own timeout timers (`SetTimer`); a runtime that
    enforces `timeout_s` around the call itself reports it with this event.
    """

    step: str
    op: StepOp = StepOp.ACTION
    attempt: int = 0


class ResumeRequested(Event, frozen=True):
    """Operator: retry the invocation a stuck saga is stuck on (fresh attempt budget)."""


class ForceRequested(Event, frozen=True):
    """Operator: treat the invocation a stuck saga is stuck on as done.

    For a stuck compensation it means "I undid it by hand"; for a stuck
    post-pivot step, "it is done", with `result` standing in for its result.
    """

    result: Any = None
    reason: str = ""


# -- effects -------------------------------------------------------------------


class InvokeStep(Effect, frozen=True):
    """Run `name` (the step's action or compensation) through the idempotency barrier.

    The barrier key is (saga_id, step, op); `attempt` counts from 1 per step
    and op and is for logs and metrics only. `results` holds the results of
    the steps this one depends on (transitively) for an action, and the
    step's own action result for a compensation (empty when it is unknown:
    the action timed out).
    """

    saga_id: str
    step: str
    op: StepOp
    name: str
    attempt: int
    payload: Any = None
    results: dict[str, Any] = msgspec.field(default_factory=dict)


class ReportStuck(Effect, frozen=True):
    """Tell the operator: this saga needs `ResumeRequested` or `ForceRequested`."""

    saga_id: str
    step: str
    op: StepOp
    error: str


class SagaFinished(Effect, frozen=True):
    """The saga ended (COMPLETED or COMPENSATED); semantic locks may be released (G5)."""

    saga_id: str
    state: SagaState
    reason: str = ""
    results: dict[str, Any] = msgspec.field(default_factory=dict)
