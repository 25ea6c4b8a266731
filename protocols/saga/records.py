"""Log records of an orchestrated saga: what the orchestrator writes to its WAL.

Schema version 1 (`SAGA_SCHEMA_VERSION`, also stored in `SagaStarted` so every
saga's log says which schema wrote it). Records share `txid` (the saga id)
with the atomic-commit records, so the runtime logs and replays them the same
way; tags are explicit and stable and new fields are appended with defaults.

Which records are forced (G3, PROTOCOLS.md section 1):

saga-started              forced before the first step is issued.
step-started              forced before the action of that attempt is issued.
step-succeeded            forced before anything that depends on the result
                          (a dependent step, the next compensation, the end).
step-failed               forced; `exhausted` marks the failure that turned
                          the saga backward (compensation), so recovery knows
                          the direction without re-deriving retry budgets.
compensation-started      forced before the compensation attempt is issued.
compensation-succeeded    forced before the next compensation; `forced` marks
                          an operator's Force of a stuck compensation.
compensation-failed       forced.
saga-stuck                forced before the stuck status is reported.
saga-finished             lazy: if it is lost, replay re-derives the same end.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
from dtxn.protocols.errors import CodecError
from dtxn.protocols.records import Record

SAGA_SCHEMA_VERSION = 1


class StepOp(enum.Enum):
    """Which side of a step an invocation, a result or a barrier row is about."""

    ACTION = "action"
    COMPENSATION = "compensation"


class SagaState(enum.Enum):
    """Where a saga is. The five public statuses plus the two before it runs."""

    INIT = "init"  # created, neither started nor recovered
    RECOVERING = "recovering"  # records being replayed
    RUNNING = "running"  # issuing actions forward
    COMPENSATING = "compensating"  # a pre-pivot step failed: undoing completed steps
    STUCK = "stuck"  # a compensation (or a post-pivot step) needs an operator
    COMPLETED = "completed"
    COMPENSATED = "compensated"


class SagaStarted(Record, frozen=True, tag="saga-started"):
    definition: str
    version: int
    payload: Any = None
    schema_version: int = SAGA_SCHEMA_VERSION


class StepStarted(Record, frozen=True, tag="step-started"):
    step: str
    attempt: int


class StepSucceededRecord(Record, frozen=True, tag="step-succeeded"):
    step: str
    attempt: int
    result: Any = None
    forced: bool = False  # an operator's Force of a stuck post-pivot step
    note: str = ""  # the operator's reason for forcing


class StepFailedRecord(Record, frozen=True, tag="step-failed"):
    step: str
    attempt: int
    error: str
    uncertain: bool = False  # timed out: the action may have happened
    exhausted: bool = False  # this failure turned the saga backward


class CompensationStarted(Record, frozen=True, tag="compensation-started"):
    step: str
    attempt: int


class CompensationSucceeded(Record, frozen=True, tag="compensation-succeeded"):
    step: str
    attempt: int
    forced: bool = False
    note: str = ""  # the operator's reason for forcing


class CompensationFailed(Record, frozen=True, tag="compensation-failed"):
    step: str
    attempt: int
    error: str


class SagaStuck(Record, frozen=True, tag="saga-stuck"):
    step: str
    op: StepOp
    error: str


class SagaFinishedRecord(Record, frozen=True, tag="saga-finished"):
    state: SagaState
    reason: str = ""


SagaRecord = (
    SagaStarted
    | StepStarted
    | StepSucceededRecord
    | StepFailedRecord
    | CompensationStarted
    | CompensationSucceeded
    | CompensationFailed
    | SagaStuck
    | SagaFinishedRecord
)

SAGA_RECORD_TYPES: tuple[type[Record], ...] = (
    SagaStarted,
    StepStarted,
    StepSucceededRecord,
    StepFailedRecord,
    CompensationStarted,
    CompensationSucceeded,
    CompensationFailed,
    SagaStuck,
    SagaFinishedRecord,
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SagaRecord)


def encode_saga_record(record: Record) -> bytes:
    return _encoder.encode(record)


def decode_saga_record(data: bytes) -> Record:
    """Decode one saga record; raises `CodecError` on bytes that are not one."""
    try:
        record: Record = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CodecError(f"not a saga log record: {exc}") from exc
    return record
