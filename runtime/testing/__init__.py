"""dtxn.testing: property-test your resources and crash schedules in the simulator.

`scenarios()` and friends are hypothesis strategies for workloads and fault
schedules; `check(scenario)` runs one in the deterministic simulator and
raises `SimulationFailure` with a minimal, replayable schedule (and the
`dtxn replay` command) when an invariant breaks. Pass `resource_factory` to
run your own `Resource` implementation on every participant node.
For sagas, `saga_scenarios(definition)` and `check_saga(definition,
make_steps, scenario)` do the same with your own step callables and
compensations (see `dtxn.testing.sagas`).
`dtxn.testing.machine.ClusterMachine` is a hypothesis state machine over a
`SteppedCluster` (submit, advance clock, crash, restart, partition, heal).
"""

from dtxn.runtime.sim import (
    Fault,
    FinalCheck,
    NetworkFaults,
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
from dtxn.runtime.sim.sagas import (
    SagaFault,
    SagaScenario,
    SagaSimResult,
    SagaSimulationFailure,
    SagaSpec,
)
from dtxn.testing.sagas import (
    SagaEffects,
    StepsFactory,
    UserSagaFailure,
    check_saga,
    run_saga_scenario,
    saga_fault_schedules,
    saga_scenarios,
    saga_workloads,
)
from dtxn.testing.strategies import (
    fault_schedules,
    network_faults,
    redelivery_faults,
    scenarios,
    transactions,
    workloads,
)

__all__ = [
    "Fault",
    "FinalCheck",
    "NetworkFaults",
    "SagaEffects",
    "SagaFault",
    "SagaScenario",
    "SagaSimResult",
    "SagaSimulationFailure",
    "SagaSpec",
    "Scenario",
    "ScriptedResource",
    "SimResult",
    "SimulationFailure",
    "SteppedCluster",
    "StepsFactory",
    "TxnSpec",
    "UserSagaFailure",
    "check",
    "check_saga",
    "fault_schedules",
    "minimize",
    "network_faults",
    "redelivery_faults",
    "run",
    "run_saga_scenario",
    "saga_fault_schedules",
    "saga_scenarios",
    "saga_workloads",
    "scenarios",
    "transactions",
    "workloads",
]
