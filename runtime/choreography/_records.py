"""Choreography's wire message, its WAL records and its configuration (topics, steps)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.saga.definition import RetryPolicy
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.hosting import StepFn
from dtxn.runtime.transport import Address

OUTCOMES_ACTOR = "choreography-outcomes"


# -- messages and records ------------------------------------------------------------


class ChoreographyMessage(msgspec.Struct, frozen=True, array_like=True, tag_field="type"):
    """Base of the messages participants exchange (a tagged union, one member so far)."""


class SagaEvent(ChoreographyMessage, frozen=True, tag="saga-event"):
    """A past-tense fact about one saga, published to the subscribers of `topic`."""

    topic: str
    saga_id: str
    payload: Any = None
    # Results of the actions done so far, by step name (grows along the chain).
    results: dict[str, Any] = msgspec.field(default_factory=dict)
    reason: str = ""


class _Record(msgspec.Struct, frozen=True, array_like=True, tag_field="kind"):
    saga_id: str
    step: str
    op: StepOp


class _Started(_Record, frozen=True, tag="started"):
    trigger: SagaEvent


class _Done(_Record, frozen=True, tag="done"):
    outcome: str  # "succeeded", "failed" or "null"
    result: Any = None
    event: SagaEvent | None = None


class _Published(_Record, frozen=True, tag="published"):
    pass


def _kind(record: _Record) -> str:
    return str(type(record).__struct_config__.tag)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Started | _Done | _Published)


# -- configuration ---------------------------------------------------------------------


class Topics:
    """The subscription table: topic -> the addresses a publish of it is sent to."""

    def __init__(self, table: Mapping[str, Sequence[Address]] | None = None) -> None:
        # Lists, not sets: publish order must not depend on hash randomization.
        self._table: dict[str, list[Address]] = {}
        for topic, addresses in (table or {}).items():
            for address in addresses:
                self.subscribe(topic, address)

    def subscribe(self, topic: str, address: Address) -> None:
        found = self._table.setdefault(topic, [])
        if address not in found:
            found.append(address)

    def subscribers(self, topic: str) -> tuple[Address, ...]:
        return tuple(self._table.get(topic, ()))


_RETRY = RetryPolicy()
_COMPENSATION_RETRY = RetryPolicy(max_attempts=5)


@dataclass(frozen=True)
class ChoreoStep:
    """One local step of a participant: what triggers it, what it publishes.

    `fails_with=None` makes the step retried until it succeeds (a step after
    the pivot); `compensation=None` makes it uncompensatable (the pivot, or
    after it), in which case `compensate_on` must be empty.
    """

    name: str
    on: str
    action: StepFn
    emits: str
    fails_with: str | None = None
    compensation: StepFn | None = None
    compensate_on: tuple[str, ...] = ()
    compensated: str | None = None
    retry: RetryPolicy = _RETRY
    compensation_retry: RetryPolicy = _COMPENSATION_RETRY

    def __post_init__(self) -> None:
        where = f"choreography step {self.name!r}"
        if self.compensate_on and (self.compensation is None or self.compensated is None):
            raise ConfigError(f"{where}: compensate_on needs a compensation and a compensated "
                              "topic")
        if self.fails_with is None and self.retry.max_attempts is not None:
            raise ConfigError(f"{where}: a step without a failure topic must retry forever "
                              "(retry=FOREVER)")


class StepStatus(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    NULL_COMPENSATED = "null_compensated"
    STUCK = "stuck"


class ChoreographyStatistics(msgspec.Struct, frozen=True):
    actions: int
    compensations: int
    duplicates: int
    refused: int
    republished: int


