"""The definition of an orchestrated saga: steps, retry policies, validation, backoff.

A definition is data (frozen msgspec Structs), so it can be logged, compared
and shipped; `validate` turns every mistake that would break G1 or G2 into a
`ConfigError` naming the saga and the step, before any machine runs it.
"""

from __future__ import annotations

import msgspec
from dtxn.protocols.errors import ConfigError

MAX_STEPS = 256


class RetryPolicy(msgspec.Struct, frozen=True, array_like=True):
    """How often and how patiently an invocation is retried.

    `max_attempts` counts the first attempt; None means "until it succeeds"
    (what a step after the pivot must have). The delay before attempt k+1 is
    min(backoff_ms_initial * multiplier**(k-1), backoff_ms_max), shortened by
    up to `jitter` of itself, so `backoff_ms_max` is a hard cap.
    """

    max_attempts: int | None = 3
    backoff_ms_initial: float = 100.0
    backoff_ms_max: float = 10_000.0
    multiplier: float = 2.0
    jitter: float = 0.2

    @property
    def retriable(self) -> bool:
        return self.max_attempts is None


FOREVER = RetryPolicy(max_attempts=None)


class SagaStep(msgspec.Struct, frozen=True, array_like=True):
    """One step: an action, its compensation (None for the pivot and after), its dependencies."""

    name: str
    action: str
    compensation: str | None = None
    depends_on: tuple[str, ...] = ()
    retry: RetryPolicy = RetryPolicy()
    compensation_retry: RetryPolicy = RetryPolicy(max_attempts=5)
    timeout_s: float = 30.0


class SagaDefinition(msgspec.Struct, frozen=True, array_like=True):
    """A named, versioned saga; `version` is logged so replay refuses a changed definition."""

    name: str
    steps: tuple[SagaStep, ...]
    pivot: str | None = None
    version: int = 1


def _check_policy(where: str, policy: RetryPolicy) -> None:
    if policy.max_attempts is not None and policy.max_attempts < 1:
        raise ConfigError(f"{where}: max_attempts must be at least 1 or None (until success)")
    if not policy.backoff_ms_initial > 0:
        raise ConfigError(f"{where}: backoff_ms_initial must be positive")
    if not policy.backoff_ms_max >= policy.backoff_ms_initial:
        raise ConfigError(f"{where}: backoff_ms_max must be at least backoff_ms_initial")
    if not policy.multiplier >= 1.0:
        raise ConfigError(f"{where}: multiplier must be at least 1")
    if not 0.0 <= policy.jitter < 1.0:
        raise ConfigError(f"{where}: jitter must be a fraction in [0, 1)")


def _find_cycle(steps: dict[str, SagaStep]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(steps, white)
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        colour[name] = grey
        path.append(name)
        for dep in steps[name].depends_on:
            if colour[dep] == grey:
                return [*path[path.index(dep) :], dep]
            if colour[dep] == white:
                found = visit(dep)
                if found:
                    return found
        path.pop()
        colour[name] = black
        return None

    for name in steps:
        if colour[name] == white:
            found = visit(name)
            if found:
                return found
    return None


def _ancestors(steps: dict[str, SagaStep]) -> dict[str, frozenset[str]]:
    memo: dict[str, frozenset[str]] = {}

    def of(name: str) -> frozenset[str]:
        if name not in memo:
            found: set[str] = set()
            for dep in steps[name].depends_on:
                found.add(dep)
                found |= of(dep)
            memo[name] = frozenset(found)
        return memo[name]

    for name in steps:
        of(name)
    return memo


def validate(definition: SagaDefinition) -> dict[str, frozenset[str]]:
    """Check a definition; raise `ConfigError` naming the saga and the step; return ancestors."""
    where = f"saga {definition.name!r}"
    if not definition.steps:
        raise ConfigError(f"{where} has no steps")
    if len(definition.steps) > MAX_STEPS:
        raise ConfigError(f"{where} has {len(definition.steps)} steps, more than {MAX_STEPS}")
    steps: dict[str, SagaStep] = {}
    for step in definition.steps:
        if not step.name:
            raise ConfigError(f"{where}: a step has an empty name")
        if step.name in steps:
            raise ConfigError(f"{where}: step name {step.name!r} is used twice")
        steps[step.name] = step
    for step in definition.steps:
        at = f"{where}, step {step.name!r}"
        if not step.action:
            raise ConfigError(f"{at}: the action name is empty")
        for dep in step.depends_on:
            if dep not in steps:
                raise ConfigError(f"{at} depends on unknown step {dep!r}")
        if len(set(step.depends_on)) != len(step.depends_on):
            raise ConfigError(f"{at} lists a dependency twice")
        if not step.timeout_s > 0:
            raise ConfigError(f"{at}: timeout_s must be positive")
        _check_policy(f"{at}, retry", step.retry)
        _check_policy(f"{at}, compensation_retry", step.compensation_retry)
    cycle = _find_cycle(steps)
    if cycle:
        raise ConfigError(f"{where}: dependency cycle {' -> '.join(cycle)}")
    ancestors = _ancestors(steps)
    pivot = definition.pivot
    if pivot is not None and pivot not in steps:
        raise ConfigError(f"{where}: the pivot {pivot!r} is not a step")
    for step in definition.steps:
        at = f"{where}, step {step.name!r}"
        if pivot is None or pivot in ancestors[step.name]:
            after = pivot is not None
        elif step.name == pivot:
            if step.compensation is not None:
                raise ConfigError(f"{at} is the pivot and cannot have a compensation")
            continue
        elif step.name in ancestors[pivot]:
            after = False
        else:
            raise ConfigError(
                f"{at} is neither before nor after the pivot {pivot!r}: make it a "
                f"dependency of the pivot (compensatable) or depend on it (retriable)"
            )
        if after:
            if step.compensation is not None:
                raise ConfigError(
                    f"{at} comes after the pivot {pivot!r} and is never compensated; "
                    f"remove its compensation"
                )
            if not step.retry.retriable:
                raise ConfigError(
                    f"{at} comes after the pivot {pivot!r} and must be retriable "
                    f"(retry=RetryPolicy(max_attempts=None), retried until it succeeds)"
                )
        elif step.compensation is None:
            raise ConfigError(f"{at} comes before the pivot and needs a compensation")
    return ancestors


def backoff_ms(policy: RetryPolicy, failures: int, draw: float) -> float:
    """Delay before the next attempt after `failures` failed ones (>= 1); `draw` in [0, 1)."""
    delay = policy.backoff_ms_initial
    for _ in range(failures - 1):
        if delay >= policy.backoff_ms_max:
            break
        delay *= policy.multiplier
    delay = min(delay, policy.backoff_ms_max)
    return delay * (1.0 - policy.jitter * draw)
