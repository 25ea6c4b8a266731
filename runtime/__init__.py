"""dtxn.runtime: one dtxn node: hosts actors, runs protocol effects, owns clock, transport and WAL.

The node core lives here (`Runtime`, the `Clock`, the event loop, the
`Resource` protocol and observation); its layers are packages:
`hosting` (effects → IO), `wal` (the write-ahead log), `transport`
(in-process and NATS), `resources` (SQLite, PostgreSQL, barrier, semantic
locks), `choreography`; its tools are `sim` (the simulator), `cli` (`dtxn`),
`demo` and `dtxn.testing`. docs/architecture.md walks one transaction
through them.
"""

from dtxn.runtime._runtime import (
    UNKNOWN_BURST,
    UNKNOWN_PER_S,
    Runtime,
    RuntimeStatistics,
    TxnStatus,
    UnknownTransaction,
)
from dtxn.runtime.clock import Clock
from dtxn.runtime.hosting.coordinator import TxnOutcome
from dtxn.runtime.hosting.saga_steps import ActorStep
from dtxn.runtime.hosting.sagas import SagaOutcome, StepCall, StepError
from dtxn.runtime.loop import run
from dtxn.runtime.resource import Recoverable, Resource, Vote
from dtxn.runtime.transport import Address, InProcessTransport, Transport, UnknownNode
from dtxn.runtime.wal import Durability, WalError, WalStore, make_wal

__all__ = [
    "UNKNOWN_BURST",
    "UNKNOWN_PER_S",
    "ActorStep",
    "Address",
    "Clock",
    "Durability",
    "InProcessTransport",
    "Recoverable",
    "Resource",
    "Runtime",
    "RuntimeStatistics",
    "SagaOutcome",
    "StepCall",
    "StepError",
    "Transport",
    "TxnOutcome",
    "TxnStatus",
    "UnknownNode",
    "UnknownTransaction",
    "Vote",
    "WalError",
    "WalStore",
    "make_wal",
    "run",
]
