"""Orchestrated sagas: the orchestrator machine (the definition is in `saga.definition`).

Theory of operation
-------------------
A saga is a DAG of steps. Each step has an action and, before the pivot, a
compensation; independent steps run in parallel. The orchestrator is pure:
`handle(event)` validates the event, raises `ProtocolError` *before* changing
anything if it is illegal here, and otherwise returns the effects to carry
out in order. It never reads a clock or draws a random number: delays are
`SetTimer` effects and the jitter of a backoff comes from the `random`
callable the runtime hands in (its seeded RNG).

Forward: every step whose dependencies have succeeded is issued, each as
Log(step-started) then InvokeStep then SetTimer(timeout); its result is
logged (step-succeeded) before any step that depends on it is issued. A
failed or timed-out attempt is retried with capped exponential backoff while
the step's retry budget lasts.

Durability (G3): the log is one ordered stream and a force makes everything
appended before it durable, so a crash loses a *suffix* of the saga's
records. Only what recovery could not redo safely is forced: the saga's
start (before its first action), the pivot's start and result (before
anything after the pivot), the turn backward (before the first
compensation), each compensation's start (so the result it is given is
durable), a stuck report and the outcome (before the caller hears it). A
lost step record is harmless: recovery issues that step again (at least
once, deduplicated by the idempotency barrier) and, because the lost suffix
may have started it, counts its outcome as unknown (compensated if the
saga goes back; the barrier turns a compensation of a step that never ran
into a null one). docs/sagas.md has the table.

Backward: when a step before the pivot fails for good (budget spent, or a
failure marked not retriable), the saga stops issuing, cancels pending
retries, waits for the steps still running (each is bounded by its
timeout), then compensates one at a time, in the reverse order of
completion (G1). A step whose outcome is unknown (an attempt timed out, or
was re-issued after a crash, and none succeeded) is compensated first: the
idempotency barrier turns a compensation that overtakes its action into a
null compensation and refuses the late action. A compensation that fails
is retried with backoff; when its budget is spent the saga is STUCK until an
operator resumes it (a fresh budget) or forces it (declares it done).

Pivot (G2): every step is an ancestor of the pivot (compensatable), the
pivot itself, or a descendant of the pivot (retriable: retried until it
succeeds). Once the pivot succeeded nothing is compensated; a post-pivot
step that fails with a non-retriable error, or a pivot whose outcome is
unknown when its budget is spent, makes the saga STUCK (forward).

Recovery: the runtime replays the saga's records (`RecordRecovered`), then
`RecoveryDone`. A completed step's result comes from the log and its action
is never issued again; a step started without a result is issued again (same
attempt, going forward; its outcome counts as unknown should this delivery
fail, since the one before the crash may still land) or counted as unknown
and compensated (going backward); a compensation started without a result is
issued again.

Results and failures for steps that are not running, from attempts already
given up, or for unknown steps are answered with `Ignored`, never an error.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from dtxn.protocols.effects import (
    CancelTimer,
    Compact,
    Effect,
    Event,
    ForceLog,
    Ignored,
    Log,
    RecordRecovered,
    RecoveryDone,
    SetTimer,
    TimerFired,
)
from dtxn.protocols.errors import ProtocolError
from dtxn.protocols.saga.definition import (
    FOREVER,
    MAX_STEPS,
    RetryPolicy,
    SagaDefinition,
    SagaStep,
    backoff_ms,
    validate,
)
from dtxn.protocols.saga.events import (
    ForceRequested,
    InvokeStep,
    ReportStuck,
    ResumeRequested,
    SagaFinished,
    Start,
    StepFailed,
    StepSucceeded,
    StepTimedOut,
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
    StepOp,
    StepStarted,
    StepSucceededRecord,
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

# -- the machine -----------------------------------------------------------------


class StepState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"  # action invoked, no answer yet
    BACKOFF = "backoff"  # action failed, retry timer armed
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # given up on (no compensation unless `uncertain`)
    STUCK = "stuck"  # action needs an operator (post-pivot or unknown pivot)
    COMPENSATING = "compensating"
    COMPENSATION_BACKOFF = "compensation_backoff"
    COMPENSATION_STUCK = "compensation_stuck"
    COMPENSATED = "compensated"


class StepReport(msgspec.Struct, frozen=True, array_like=True):
    name: str
    state: StepState
    attempts: int
    compensation_attempts: int
    uncertain: bool
    error: str


class SagaReport(msgspec.Struct, frozen=True, array_like=True):
    """What a status query shows: the saga's state and, when STUCK, why."""

    saga_id: str
    definition: str
    state: SagaState
    steps: tuple[StepReport, ...]
    stuck: tuple[str, ...] = ()
    error: str = ""


@dataclass
class _Step:
    spec: SagaStep
    state: StepState = StepState.PENDING
    attempt: int = 0
    comp_attempt: int = 0
    budget_base: int = 0  # attempts before the operator's last Resume
    comp_budget_base: int = 0
    result: Any = None
    uncertain: bool = False  # an attempt timed out or was re-issued, and none succeeded
    started_seq: int = -1
    completed_seq: int = -1
    error: str = ""


_FINISHED = (SagaState.COMPLETED, SagaState.COMPENSATED)
# States `_settle` leaves alone, and the step states that make a saga stuck
# (tuples: `in` tests identity first, where a set would call Enum.__hash__).
_SETTLED = (*_FINISHED, SagaState.INIT, SagaState.RECOVERING)
_STEP_STUCK = (StepState.STUCK, StepState.COMPENSATION_STUCK)


class _Plan:
    """What a machine derives from its definition once: checked, then shared."""

    __slots__ = ("after_pivot", "ancestors", "definition", "ordered")

    def __init__(self, definition: SagaDefinition) -> None:
        self.definition = definition
        self.ancestors = validate(definition)
        pivot = definition.pivot
        self.after_pivot = frozenset(
            name
            for name, ancestors in self.ancestors.items()
            if pivot is not None and (pivot in ancestors or name == pivot)
        )
        # Each step's ancestors in definition order (the results it is called with).
        self.ordered = {
            name: tuple(s.name for s in definition.steps if s.name in ancestors)
            for name, ancestors in self.ancestors.items()
        }


# id(definition) -> its plan. A host builds a machine per saga from the same
# definition object; checking it each time was a tenth of a saga's CPU. The
# plan holds its definition, so an id cannot be reused while it is cached.
_PLANS: dict[int, _Plan] = {}
_PLANS_MAX = 1024


def _plan(definition: SagaDefinition) -> _Plan:
    plan = _PLANS.get(id(definition))
    if plan is not None and plan.definition is definition:
        return plan
    plan = _Plan(definition)  # raises ConfigError for a malformed definition
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[id(definition)] = plan
    return plan


def _no_jitter() -> float:
    return 0.0


class SagaOrchestrator:
    """The orchestrator of one saga: one machine per saga id."""

    def __init__(
        self,
        saga_id: str,
        definition: SagaDefinition,
        *,
        random: Callable[[], float] = _no_jitter,
    ) -> None:
        plan = _plan(definition)
        self._ancestors = plan.ancestors
        self._ordered = plan.ordered
        self._after_pivot = plan.after_pivot
        self.saga_id = saga_id
        self.txid = saga_id  # the name every hosted machine answers to
        self.definition = definition
        self.random = random
        self.state = SagaState.INIT
        self.payload: Any = None
        self.backward = False
        self.reason = ""
        self.steps: dict[str, _Step] = {s.name: _Step(s) for s in definition.steps}
        self.timers: dict[str, tuple[str, str, StepOp, int]] = {}
        self._seq = 0

    # -- queries -----------------------------------------------------------------

    def report(self) -> SagaReport:
        stuck = tuple(
            name
            for name, s in self.steps.items()
            if s.state in (StepState.STUCK, StepState.COMPENSATION_STUCK)
        )
        return SagaReport(
            self.saga_id,
            self.definition.name,
            self.state,
            tuple(
                StepReport(n, s.state, s.attempt, s.comp_attempt, s.uncertain, s.error)
                for n, s in self.steps.items()
            ),
            stuck,
            "; ".join(f"{n}: {self.steps[n].error}" for n in stuck),
        )

    @property
    def pivot_done(self) -> bool:
        pivot = self.definition.pivot
        return pivot is not None and self.steps[pivot].state is StepState.SUCCEEDED

    # -- dispatch ----------------------------------------------------------------

    def handle(self, event: Event) -> list[Effect]:
        if isinstance(event, StepSucceeded | StepFailed | StepTimedOut):
            effects = self._on_answer(event)
        elif isinstance(event, TimerFired):
            effects = self._on_timer(event.name)
        elif isinstance(event, Start):
            effects = self._start(event)
        elif isinstance(event, ResumeRequested | ForceRequested):
            effects = self._on_operator(event)
        elif isinstance(event, RecordRecovered):
            return self._recover(event)
        elif isinstance(event, RecoveryDone):
            effects = self._resume(event)
        else:
            raise self._illegal(event)
        self._settle()
        return effects

    def _illegal(self, event: Event, why: str = "") -> ProtocolError:
        return ProtocolError(
            f"saga {self.saga_id!r} in state {self.state.value!r} cannot handle "
            f"{type(event).__name__}{': ' + why if why else ''}"
        )

    def _settle(self) -> None:
        if self.state in _SETTLED:
            return
        stuck = False
        for step in self.steps.values():
            if step.state in _STEP_STUCK:
                stuck = True
                break
        if stuck:
            self.state = SagaState.STUCK
        elif self.backward:
            self.state = SagaState.COMPENSATING
        else:
            self.state = SagaState.RUNNING

    # -- forward -----------------------------------------------------------------

    def _start(self, event: Start) -> list[Effect]:
        if self.state is not SagaState.INIT:
            raise self._illegal(event)
        self.state = SagaState.RUNNING
        self.payload = event.payload
        # Forced: a saga whose first action ran must survive a crash, or
        # nothing would ever compensate (or finish) that action.
        effects: list[Effect] = [
            ForceLog(
                SagaStarted(
                    self.saga_id, self.definition.name, self.definition.version, event.payload
                )
            )
        ]
        effects.extend(self._advance())
        return effects

    def _advance(self) -> list[Effect]:
        """Issue every ready step; finish when all succeeded."""
        effects: list[Effect] = []
        steps = self.steps
        # Plain loops: this runs after every step's success.
        done = True
        for step in steps.values():
            state = step.state
            if state is StepState.PENDING:
                done = False
                for dependency in step.spec.depends_on:
                    if steps[dependency].state is not StepState.SUCCEEDED:
                        break
                else:
                    effects.extend(self._issue(step, StepOp.ACTION))
            elif state is not StepState.SUCCEEDED:
                done = False
        if done:
            self.state = SagaState.COMPLETED
            results = {name: s.result for name, s in steps.items()}
            # Forced before the caller hears it: the last steps' records may be
            # lazy, and a re-run after a crash could fail and turn the saga back.
            effects.append(ForceLog(SagaFinishedRecord(self.saga_id, SagaState.COMPLETED)))
            # Once it is durable, the saga's other records are history.
            effects.append(Compact())
            effects.append(SagaFinished(self.saga_id, SagaState.COMPLETED, "", results))
        return effects

    def _timer_name(self, kind: str, step: str, op: StepOp, attempt: int) -> str:
        # Not `op.value`: the enum's descriptor costs more than the test.
        return f"{kind}:{step}:{'action' if op is StepOp.ACTION else 'compensation'}:{attempt}"

    def _set_timer(
        self, kind: str, step: _Step, op: StepOp, attempt: int, delay_s: float
    ) -> Effect:
        name = self._timer_name(kind, step.spec.name, op, attempt)
        self.timers[name] = (kind, step.spec.name, op, attempt)
        return SetTimer(name, delay_s)

    def _cancel_timer(self, kind: str, step: _Step, op: StepOp, attempt: int) -> list[Effect]:
        if not self.timers:
            return []
        name = self._timer_name(kind, step.spec.name, op, attempt)
        if self.timers.pop(name, None) is None:
            return []
        return [CancelTimer(name)]

    def _issue(self, step: _Step, op: StepOp, *, again: bool = False) -> list[Effect]:
        """Invoke the next attempt of `op` (or, `again`, the current one after a crash)."""
        effects: list[Effect] = []
        name = step.spec.name
        if op is StepOp.ACTION:
            if not again:
                step.attempt += 1
                effects.append(self._step_log(name, StepStarted(self.saga_id, name, step.attempt)))
            attempt = step.attempt
            step.state = StepState.RUNNING
            self._seq += 1
            step.started_seq = self._seq
            results = {a: self.steps[a].result for a in self._ordered_ancestors(name)}
            callable_name = step.spec.action
        else:
            if not again:
                step.comp_attempt += 1
                # Forced: the action's result handed to the compensation (and
                # every record before, e.g. a sibling's late success) must
                # survive, or a re-run after a crash would compensate blind.
                effects.append(ForceLog(CompensationStarted(self.saga_id, name, step.comp_attempt)))
            attempt = step.comp_attempt
            step.state = StepState.COMPENSATING
            results = {} if step.completed_seq < 0 else {name: step.result}
            callable_name = step.spec.compensation or ""
        effects.append(
            InvokeStep(self.saga_id, name, op, callable_name, attempt, self.payload, results)
        )
        effects.append(self._set_timer("timeout", step, op, attempt, step.spec.timeout_s))
        return effects

    def _ordered_ancestors(self, name: str) -> tuple[str, ...]:
        return self._ordered[name]

    def _step_log(self, name: str, record: StepStarted | StepSucceededRecord) -> Effect:
        """Log an action's start or result: every start is forced, results only the pivot's.

        Every step's start is forced before the step is issued (G3: the log
        durably records each step before the next step is issued); as the
        log is committed in order, that also makes the previous steps'
        results durable, so a crash can lose at most the results of steps
        running at that moment, which recovery issues again (at least once,
        deduplicated by the barrier).

        The pivot's start is forced so that a pivot missing from the log
        surely never ran (a failure can still be compensated, not stuck); its
        result is forced so that passing it is durable before any step after
        it runs (G2: nothing is compensated once it took effect). Any other
        step's record may be lost: recovery issues the step again.
        """
        if name == self.definition.pivot or isinstance(record, StepStarted):
            return ForceLog(record)
        return Log(record)

    # -- answers -------------------------------------------------------------------

    def _on_answer(self, event: StepSucceeded | StepFailed | StepTimedOut) -> list[Effect]:
        step = self.steps.get(event.step)
        if step is None:
            return [Ignored(f"answer for unknown step {event.step!r}", violation=True)]
        if self.state in (SagaState.INIT, SagaState.RECOVERING):
            return [Ignored(f"answer for step {event.step!r} before the saga runs")]
        if event.op is StepOp.ACTION:
            return self._on_action_answer(step, event)
        return self._on_compensation_answer(step, event)

    def _on_action_answer(
        self, step: _Step, event: StepSucceeded | StepFailed | StepTimedOut
    ) -> list[Effect]:
        name = step.spec.name
        late = event.attempt not in (0, step.attempt)
        if isinstance(event, StepSucceeded):
            # A success is a fact whichever attempt it answers (the barrier
            # made the attempts one action); it settles an unknown outcome.
            live = step.state in (StepState.RUNNING, StepState.BACKOFF) or (
                step.state in (StepState.FAILED, StepState.STUCK) and step.uncertain
            )
            if not live or event.attempt > step.attempt:
                return [Ignored(f"late or duplicate result of step {name!r} ({step.state.value})")]
            return self._action_succeeded(step, event.result, event.attempt or step.attempt)
        if step.state is not StepState.RUNNING or late:
            return [Ignored(f"late failure of step {name!r} ({step.state.value})")]
        if isinstance(event, StepTimedOut):
            return self._action_failed(step, f"timed out after {step.spec.timeout_s}s", True, True)
        return self._action_failed(step, event.error, event.retriable, False)

    def _action_succeeded(self, step: _Step, result: Any, attempt: int) -> list[Effect]:
        name = step.spec.name
        effects = self._cancel_timer("timeout", step, StepOp.ACTION, step.attempt)
        effects += self._cancel_timer("retry", step, StepOp.ACTION, step.attempt + 1)
        effects.append(
            self._step_log(name, StepSucceededRecord(self.saga_id, name, attempt, result))
        )
        step.state = StepState.SUCCEEDED
        step.result = result
        step.uncertain = False
        step.error = ""
        self._seq += 1
        step.completed_seq = self._seq
        if self.backward:
            effects += self._advance_backward()
        else:
            effects += self._advance()
        return effects

    def _action_failed(
        self, step: _Step, error: str, retriable: bool, timed_out: bool
    ) -> list[Effect]:
        name = step.spec.name
        effects = self._cancel_timer("timeout", step, StepOp.ACTION, step.attempt)
        step.uncertain = step.uncertain or timed_out
        step.error = error
        policy = step.spec.retry
        used = step.attempt - step.budget_base
        budget_left = policy.max_attempts is None or used < policy.max_attempts
        after_pivot = name in self._after_pivot
        is_pivot = name == self.definition.pivot
        record = StepFailedRecord(self.saga_id, name, step.attempt, error, step.uncertain)
        if self.backward:
            # A sibling of the failed step: no more attempts, compensate if unknown.
            step.state = StepState.FAILED
            return [*effects, Log(record), *self._advance_backward()]
        if retriable and budget_left:
            # Lazy: a lost failure only means another attempt after a crash.
            return [*effects, Log(record), *self._schedule_retry(step, StepOp.ACTION)]
        if (after_pivot and not is_pivot) or (is_pivot and step.uncertain):
            # Cannot go back: an operator must resume or force this step.
            step.state = StepState.STUCK
            # Forced before the report: an operator acts on it.
            return [
                *effects,
                Log(record),
                ForceLog(SagaStuck(self.saga_id, name, StepOp.ACTION, error)),
                ReportStuck(self.saga_id, name, StepOp.ACTION, error),
            ]
        step.state = StepState.FAILED
        self.reason = f"step {name!r} failed: {error}"
        # Forced: the turn backward must be durable before the first
        # compensation runs, or recovery could go forward again and complete a
        # partly compensated saga (G1).
        effects.append(
            ForceLog(
                StepFailedRecord(
                    self.saga_id, name, step.attempt, error, step.uncertain, exhausted=True
                )
            )
        )
        return effects + self._turn_backward()

    def _schedule_retry(self, step: _Step, op: StepOp) -> list[Effect]:
        if op is StepOp.ACTION:
            step.state = StepState.BACKOFF
            failures = step.attempt - step.budget_base
            policy = step.spec.retry
            attempt = step.attempt + 1
        else:
            step.state = StepState.COMPENSATION_BACKOFF
            failures = step.comp_attempt - step.comp_budget_base
            policy = step.spec.compensation_retry
            attempt = step.comp_attempt + 1
        delay_ms = backoff_ms(policy, max(failures, 1), self.random())
        return [self._set_timer("retry", step, op, attempt, delay_ms / 1000.0)]

    # -- backward ------------------------------------------------------------------

    def _turn_backward(self) -> list[Effect]:
        self.backward = True
        effects: list[Effect] = []
        for step in self.steps.values():
            if step.state is StepState.BACKOFF:
                effects += self._cancel_timer("retry", step, StepOp.ACTION, step.attempt + 1)
                step.state = StepState.FAILED
        return effects + self._advance_backward()

    def _compensation_order(self) -> list[_Step]:
        """Unknown outcomes first, then completions, latest first.

        Among the unknown ones, steps that may have run before a crash but were
        never issued since (`_mark_possibly_started`) come first, descendants
        before ancestors: every step issued since has all its dependencies
        succeeded, so none of those is an ancestor of it. Then the rest by
        latest start.
        """
        unseen = [
            s
            for s in self.steps.values()
            if s.state is StepState.PENDING and s.uncertain and s.spec.compensation is not None
        ]
        unknown = [
            s
            for s in self.steps.values()
            if s.state is StepState.FAILED and s.uncertain and s.spec.compensation is not None
        ]
        done = [
            s
            for s in self.steps.values()
            if s.state is StepState.SUCCEEDED and s.spec.compensation is not None
        ]
        unseen.sort(key=lambda s: -len(self._ancestors[s.spec.name]))
        unknown.sort(key=lambda s: -s.started_seq)
        done.sort(key=lambda s: -s.completed_seq)
        return unseen + unknown + done

    def _advance_backward(self) -> list[Effect]:
        busy = (
            StepState.RUNNING,
            StepState.COMPENSATING,
            StepState.COMPENSATION_BACKOFF,
            StepState.COMPENSATION_STUCK,
        )
        if any(s.state in busy for s in self.steps.values()):
            return []
        order = self._compensation_order()
        if order:
            return self._issue(order[0], StepOp.COMPENSATION)
        self.state = SagaState.COMPENSATED
        # Forced before the caller hears it (the last compensation's record is lazy).
        return [
            ForceLog(SagaFinishedRecord(self.saga_id, SagaState.COMPENSATED, self.reason)),
            Compact(),
            SagaFinished(self.saga_id, SagaState.COMPENSATED, self.reason),
        ]

    def _on_compensation_answer(
        self, step: _Step, event: StepSucceeded | StepFailed | StepTimedOut
    ) -> list[Effect]:
        name = step.spec.name
        if step.state is not StepState.COMPENSATING or event.attempt not in (
            0,
            step.comp_attempt,
        ):
            return [Ignored(f"late compensation answer of step {name!r} ({step.state.value})")]
        effects = self._cancel_timer("timeout", step, StepOp.COMPENSATION, step.comp_attempt)
        if isinstance(event, StepSucceeded):
            step.state = StepState.COMPENSATED
            step.error = ""
            # Lazy: if lost, recovery runs the compensation again (the barrier
            # dedupes); the next compensation's start or the end forces it.
            effects.append(Log(CompensationSucceeded(self.saga_id, name, step.comp_attempt)))
            return effects + self._advance_backward()
        if isinstance(event, StepTimedOut):
            error, retriable = f"compensation timed out after {step.spec.timeout_s}s", True
        else:
            error, retriable = event.error, event.retriable
        step.error = error
        effects.append(Log(CompensationFailed(self.saga_id, name, step.comp_attempt, error)))
        policy = step.spec.compensation_retry
        used = step.comp_attempt - step.comp_budget_base
        if retriable and (policy.max_attempts is None or used < policy.max_attempts):
            return effects + self._schedule_retry(step, StepOp.COMPENSATION)
        step.state = StepState.COMPENSATION_STUCK
        # Forced before the report: an operator acts on it.
        return [
            *effects,
            ForceLog(SagaStuck(self.saga_id, name, StepOp.COMPENSATION, error)),
            ReportStuck(self.saga_id, name, StepOp.COMPENSATION, error),
        ]

    # -- timers --------------------------------------------------------------------

    def _on_timer(self, name: str) -> list[Effect]:
        entry = self.timers.pop(name, None)
        if entry is None:
            return [Ignored(f"stale timer {name!r} in state {self.state.value}")]
        kind, step_name, op, attempt = entry
        step = self.steps[step_name]
        if kind == "timeout":
            return self._on_answer(StepTimedOut(step_name, op, attempt))
        if op is StepOp.ACTION and step.state is StepState.BACKOFF:
            return self._issue(step, op)
        if op is StepOp.COMPENSATION and step.state is StepState.COMPENSATION_BACKOFF:
            return self._issue(step, op)
        return [Ignored(f"stale retry timer {name!r} ({step.state.value})")]

    # -- operator ------------------------------------------------------------------

    def _on_operator(self, event: ResumeRequested | ForceRequested) -> list[Effect]:
        if self.state is not SagaState.STUCK:
            raise self._illegal(event, "only a stuck saga can be resumed or forced")
        effects: list[Effect] = []
        for step in self.steps.values():
            name = step.spec.name
            if step.state is StepState.STUCK:
                if isinstance(event, ResumeRequested):
                    step.budget_base = step.attempt
                    effects += self._issue(step, StepOp.ACTION)
                else:
                    # Forced: an operator's decision cannot be re-derived on replay.
                    effects.append(
                        ForceLog(
                            StepSucceededRecord(
                                self.saga_id,
                                name,
                                step.attempt,
                                event.result,
                                forced=True,
                                note=event.reason,
                            )
                        )
                    )
                    step.state = StepState.SUCCEEDED
                    step.result = event.result
                    step.uncertain = False
                    step.error = ""
                    self._seq += 1
                    step.completed_seq = self._seq
            elif step.state is StepState.COMPENSATION_STUCK:
                if isinstance(event, ResumeRequested):
                    step.comp_budget_base = step.comp_attempt
                    effects += self._issue(step, StepOp.COMPENSATION)
                else:
                    effects.append(
                        ForceLog(
                            CompensationSucceeded(
                                self.saga_id,
                                name,
                                step.comp_attempt,
                                forced=True,
                                note=event.reason,
                            )
                        )
                    )
                    step.state = StepState.COMPENSATED
                    step.error = ""
        effects += self._advance_backward() if self.backward else self._advance()
        return effects

    # -- recovery ------------------------------------------------------------------

    def _recover(self, event: RecordRecovered) -> list[Effect]:
        record = event.record
        if self.state not in (SagaState.INIT, SagaState.RECOVERING):
            raise self._illegal(event, "records are replayed before anything else")
        if record.txid != self.saga_id:
            raise self._illegal(event, f"record of saga {record.txid!r}")
        if isinstance(record, SagaStarted):
            if self.state is not SagaState.INIT:
                raise self._illegal(event, "a second saga-started record")
            if (record.definition, record.version) != (
                self.definition.name,
                self.definition.version,
            ):
                raise self._illegal(
                    event,
                    f"the log was written by {record.definition!r} version {record.version}, "
                    f"not {self.definition.name!r} version {self.definition.version}",
                )
            self.state = SagaState.RECOVERING
            self.payload = record.payload
            return []
        if self.state is SagaState.INIT:
            raise self._illegal(event, "the first record must be saga-started")
        if isinstance(record, SagaFinishedRecord):
            if record.state not in _FINISHED:
                raise self._illegal(event, f"a saga cannot finish {record.state.value}")
            self.state = record.state
            self.reason = record.reason
            return []
        if not isinstance(
            record,
            StepStarted
            | StepSucceededRecord
            | StepFailedRecord
            | CompensationStarted
            | CompensationSucceeded
            | CompensationFailed
            | SagaStuck,
        ):
            raise self._illegal(event, f"{type(record).__name__} is not a saga record")
        step = self.steps.get(record.step)
        if step is None:
            raise self._illegal(event, f"record for unknown step {record.step!r}")
        self._seq += 1
        if isinstance(record, StepStarted):
            step.state = StepState.RUNNING
            step.attempt = record.attempt
            step.started_seq = self._seq
        elif isinstance(record, StepSucceededRecord):
            step.state = StepState.SUCCEEDED
            step.attempt = max(step.attempt, record.attempt)
            step.result = record.result
            step.uncertain = False
            step.error = ""
            step.completed_seq = self._seq
        elif isinstance(record, StepFailedRecord):
            step.error = record.error
            step.uncertain = step.uncertain or record.uncertain
            if record.exhausted:
                step.state = StepState.FAILED
                self.backward = True
                self.reason = f"step {record.step!r} failed: {record.error}"
            else:
                step.state = StepState.FAILED if self.backward else StepState.BACKOFF
        elif isinstance(record, CompensationStarted):
            self.backward = True
            step.state = StepState.COMPENSATING
            step.comp_attempt = record.attempt
        elif isinstance(record, CompensationSucceeded):
            step.state = StepState.COMPENSATED
            step.error = ""
        elif isinstance(record, CompensationFailed):
            step.state = StepState.COMPENSATION_BACKOFF
            step.error = record.error
        else:
            step.error = record.error
            if record.op is StepOp.ACTION:
                step.state = StepState.STUCK
                step.budget_base = step.attempt
            else:
                step.state = StepState.COMPENSATION_STUCK
                step.comp_budget_base = step.comp_attempt
        return []

    def _mark_possibly_started(self) -> None:
        """Count as unknown the outcome of every step a lost lazy record may hide.

        Conservative since step starts are forced (G3): only a log written
        while they were lazy can have lost the start (and result) of an
        attempt that ran. Then a step waiting for a retry may have
        started its next attempt, and a step the log shows pending may have
        been issued if each of its dependencies may have succeeded. Should the
        saga go back, such a step is compensated (a null compensation through
        the barrier if it never ran, which also refuses a late delivery).
        Steps from the pivot on are left alone: the pivot's records are forced
        (the log is exact for it) and nothing after it is ever compensated.
        """
        reached = {
            name
            for name, s in self.steps.items()
            if s.state in (StepState.SUCCEEDED, StepState.RUNNING, StepState.BACKOFF)
        }
        for name in sorted(self.steps, key=lambda n: len(self._ancestors[n])):
            step = self.steps[name]
            if name in self._after_pivot:
                continue
            if step.state is StepState.BACKOFF:
                step.uncertain = True
            elif step.state is StepState.PENDING and all(
                d in reached for d in step.spec.depends_on
            ):
                step.uncertain = True
                reached.add(name)

    def _resume(self, event: RecoveryDone) -> list[Effect]:
        if self.state in _FINISHED:
            results = (
                {n: s.result for n, s in self.steps.items()}
                if self.state is SagaState.COMPLETED
                else {}
            )
            return [SagaFinished(self.saga_id, self.state, self.reason, results)]
        if self.state is not SagaState.RECOVERING:
            raise self._illegal(event, "no saga-started record was replayed")
        self.state = SagaState.RUNNING
        self._mark_possibly_started()
        effects: list[Effect] = []
        for step in self.steps.values():
            state = step.state
            if state is StepState.RUNNING:
                if self.backward:
                    # Its answer died with the crash: outcome unknown, compensate it.
                    step.state = StepState.FAILED
                    step.uncertain = True
                else:
                    # The delivery before the crash may still be in flight and
                    # succeed after a failure of this one: only a compensation
                    # (through the barrier) could fence it off, so a failure
                    # now leaves the outcome unknown.
                    step.uncertain = True
                    effects += self._issue(step, StepOp.ACTION, again=True)
            elif state is StepState.BACKOFF:
                if self.backward:
                    step.state = StepState.FAILED
                else:
                    effects += self._schedule_retry(step, StepOp.ACTION)
            elif state is StepState.COMPENSATING:
                effects += self._issue(step, StepOp.COMPENSATION, again=True)
            elif state is StepState.COMPENSATION_BACKOFF:
                effects += self._schedule_retry(step, StepOp.COMPENSATION)
            elif state is StepState.STUCK:
                effects.append(ReportStuck(self.saga_id, step.spec.name, StepOp.ACTION, step.error))
            elif state is StepState.COMPENSATION_STUCK:
                effects.append(
                    ReportStuck(self.saga_id, step.spec.name, StepOp.COMPENSATION, step.error)
                )
        effects += self._advance_backward() if self.backward else self._advance()
        return effects
