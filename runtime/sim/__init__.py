"""The deterministic simulator: a whole dtxn cluster on one virtual-time loop.

A `Scenario` is everything a run depends on: the protocol, the number of
participant nodes, the seed, the workload (transactions with scripted votes)
and the fault schedule (crash, restart, partition, heal at virtual times, plus
network fault rates). `run(scenario)` builds a coordinator node "c" and
participant nodes "p1".."pN" - real `Runtime`s on `MemoryWal`s, joined by a
`SimTransport` - on a `SimLoop`, and runs two phases:

- safety: the workload and the faults run; every event feeds the checkers;
- liveness: the network heals, fault rates drop to zero, crashed nodes
  restart, and every transaction must finish within `LIVENESS_BOUND_S` of
  virtual time.

A crash is `rt.crash()` plus `wal.crash()` (the WAL keeps exactly the forced
prefix); a restart is a fresh `Runtime` on the same `MemoryWal` and the same
resource objects, so it runs the production recovery path. One seed derives
every random choice through separate streams (network, per-node clocks), and
the event trace is hashed so a test can assert that a seed replays exactly.

A scenario prints as one line of text (`Scenario.text()`), and
`Scenario.parse` reads it back: that line is what a failure reports and what
`dtxn replay` takes.

The simulator is split by job: `atomic._scenario` (what a run is made of),
`atomic._hooks` (what a test plugs in), `atomic._cluster` (the simulated cluster),
`atomic._runs` (run, check, shrink, sweep) and `atomic._stepped` (step-by-step
driving); `_harness` holds what it shares with the saga simulator. This
module keeps the one import path every caller uses.
"""

from __future__ import annotations

from dtxn.runtime.sim._harness import (
    ScheduleFailure,
    derive_seed,
    quiet_logs,
    run_virtually,
    shrink_greedily,
    trace_hash,
)
from dtxn.runtime.sim._loop import SimDeadlock, SimLoop
from dtxn.runtime.sim._net import NetworkFaults, SimTransport, describe
from dtxn.runtime.sim.atomic._cluster import (
    LIVENESS_BOUND_S,
    POLL_S,
    RESOURCE,
    SETTLE_S,
    SIM_TIMEOUTS,
)
from dtxn.runtime.sim.atomic._hooks import (
    MachineFactory,
    ResourceFactory,
    RuntimeHook,
    ScriptedResource,
)
from dtxn.runtime.sim.atomic._runs import (
    FinalCheck,
    SweepStatistics,
    UserChecks,
    check,
    failing,
    minimize,
    run,
    schedule_seed,
    sweep,
)
from dtxn.runtime.sim.atomic._scenario import (
    COORDINATOR_NODE,
    FAULT_KINDS,
    NODE_FAULTS,
    REDELIVERY_FAULTS,
    VOTE_CODES,
    VOTE_LETTERS,
    Fault,
    Scenario,
    SimResult,
    SimulationFailure,
    TxnSpec,
    fail_stop,
    random_scenario,
)
from dtxn.runtime.sim.atomic._stepped import SteppedCluster

__all__ = [
    "COORDINATOR_NODE",
    "FAULT_KINDS",
    "LIVENESS_BOUND_S",
    "NODE_FAULTS",
    "POLL_S",
    "REDELIVERY_FAULTS",
    "RESOURCE",
    "SETTLE_S",
    "SIM_TIMEOUTS",
    "VOTE_CODES",
    "VOTE_LETTERS",
    "Fault",
    "FinalCheck",
    "MachineFactory",
    "NetworkFaults",
    "ResourceFactory",
    "RuntimeHook",
    "Scenario",
    "ScheduleFailure",
    "ScriptedResource",
    "SimDeadlock",
    "SimLoop",
    "SimResult",
    "SimTransport",
    "SimulationFailure",
    "SteppedCluster",
    "SweepStatistics",
    "TxnSpec",
    "UserChecks",
    "check",
    "derive_seed",
    "describe",
    "fail_stop",
    "failing",
    "minimize",
    "quiet_logs",
    "random_scenario",
    "run",
    "run_virtually",
    "schedule_seed",
    "shrink_greedily",
    "sweep",
    "trace_hash",
]
