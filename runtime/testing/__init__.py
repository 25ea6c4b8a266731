"""dtxn.testing: property-test your resources and crash schedules in the simulator.

`scenarios()` and friends are hypothesis strategies for workloads and fault
schedules; `check(scenario)` runs one in the deterministic simulator and
raises `SimulationFailure` with a minimal, replayable schedule (and the
`dtxn replay` command) when an invariant breaks. Pass `resource_factory` to
run your own `Resource` implementation on every participant node.
`dtxn.testing.machine.ClusterMachine` is a hypothesis state machine over a
`SteppedCluster` (submit, advance clock, crash, restart, partition, heal).
"""

from dtxn.runtime.sim import (
    Fault,
    Scenario,
    ScriptedResource,
    SimResult,
    SimulationFailure,
    SteppedCluster,
    TxnSpec,
    check,
    minimize,
    run,
)
from dtxn.runtime.simnet import NetworkFaults
from dtxn.testing.strategies import (
    fault_schedules,
    network_faults,
    scenarios,
    transactions,
    workloads,
)

__all__ = [
    "Fault",
    "NetworkFaults",
    "Scenario",
    "ScriptedResource",
    "SimResult",
    "SimulationFailure",
    "SteppedCluster",
    "TxnSpec",
    "check",
    "fault_schedules",
    "minimize",
    "network_faults",
    "run",
    "scenarios",
    "transactions",
    "workloads",
]
