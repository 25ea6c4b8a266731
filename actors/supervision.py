"""Supervision policy: what happens when an actor's handler fails.

All the decisions live here so the policy is in one place: a failing actor is
restarted with fresh volatile state, stopped, or the failure is escalated to
the runtime (which then stops everything and raises `ActorFailed`). Restarts
are bounded by an intensity: more than `max_restarts` within `within_s`
seconds escalates, as in Erlang/OTP.
"""

from __future__ import annotations

import enum
import math
from collections import deque

import msgspec
from dtxn.protocols.errors import ConfigError


class Directive(enum.Enum):
    """What the supervisor does with a failed actor."""

    RESTART = "restart"
    STOP = "stop"
    ESCALATE = "escalate"


class SupervisionPolicy(msgspec.Struct, frozen=True):
    """An actor's policy: a directive and the restart intensity bound."""

    directive: Directive = Directive.RESTART
    max_restarts: int = 3
    within_s: float = 5.0

    def __post_init__(self) -> None:
        # msgspec checks types only when decoding, so a policy built in code is
        # checked here; a bad policy would otherwise surface at the first failure.
        if not isinstance(self.directive, Directive):
            raise ConfigError(f"directive must be a Directive, got {self.directive!r}")
        if type(self.max_restarts) is not int or self.max_restarts < 0:
            raise ConfigError(f"max_restarts must be an int >= 0, got {self.max_restarts!r}")
        if not isinstance(self.within_s, int | float) or not 0 < self.within_s < math.inf:
            raise ConfigError(f"within_s must be finite and > 0, got {self.within_s!r}")


class RestartBudget:
    """Tracks recent restarts of one actor against its policy's intensity."""

    def __init__(self, policy: SupervisionPolicy) -> None:
        self._policy = policy
        self._times: deque[float] = deque()

    def decide(self, now: float) -> Directive:
        """Return the directive for a failure at `now`, consuming budget on restart."""
        policy = self._policy
        if policy.directive is not Directive.RESTART:
            return policy.directive
        while self._times and now - self._times[0] > policy.within_s:
            self._times.popleft()
        if len(self._times) >= policy.max_restarts:
            return Directive.ESCALATE
        self._times.append(now)
        return Directive.RESTART
