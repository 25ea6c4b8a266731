"""dtxn.runtime.hosting: the layer that turns protocol effects into IO.

A `MachineHost` owns one protocol machine per transaction: it feeds the
machine events (messages, timer expiries, recovered records) and carries out
the effects it returns, in order: `ForceLog`/`LazyLog` to the WAL, `Send` to
the transport, `SetTimer`/`CancelTimer` to the `TimerWheel`, and outcomes to
the caller. The hosts per role are modules of their own:

- `coordinator`: `CoordinatorHost`, one 2PC/3PC coordinator per transaction;
- `participant`: `ParticipantHost`, which also calls the node's `Resource`;
- `sagas`: `SagaHost`, the saga orchestrator, and `saga_steps` for step calls;
- `recovery`: rebuilds every host's machines from the WAL at start.

`HostActor` is the actor a runtime registers for its hosts, `WorkerPool` the
bounded pool that runs resource and step calls off the host's mailbox.
"""

from dtxn.runtime.hosting._actor import HostActor
from dtxn.runtime.hosting._host import (
    FINISHED_REMEMBERED,
    LOG_DECODER,
    LOG_ENCODER,
    HostServices,
    LogEntry,
    Machine,
    MachineHost,
)
from dtxn.runtime.hosting._timer_wheel import Timer, TimerWheel
from dtxn.runtime.hosting._workers import WorkerPool, WorkQueueFull
from dtxn.runtime.hosting.sagas import SagaOutcome, StepCall, StepError, StepFn

__all__ = [
    "FINISHED_REMEMBERED",
    "LOG_DECODER",
    "LOG_ENCODER",
    "HostActor",
    "HostServices",
    "LogEntry",
    "Machine",
    "MachineHost",
    "SagaOutcome",
    "StepCall",
    "StepError",
    "StepFn",
    "Timer",
    "TimerWheel",
    "WorkQueueFull",
    "WorkerPool",
]
