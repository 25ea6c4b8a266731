"""The saga orchestrator and idempotency barrier under test: correct or deliberately broken.

The mutation tests run the simulator with a broken variant (by name, from
`ORCHESTRATORS` and `BARRIERS`) and expect the checkers to catch it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dtxn.protocols.saga import SagaDefinition, SagaOrchestrator
from dtxn.protocols.saga.barrier import BarrierDecision, BarrierRow, decide
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.hosting.sagas import SagaHost

__all__ = [
    "BARRIERS",
    "ORCHESTRATORS",
    "BarrierFn",
    "ForwardCompensatingOrchestrator",
    "OrchestratorFactory",
    "SimSagaHost",
    "correct_orchestrator",
    "ignoring_duplicates",
]

BarrierFn = Callable[[list[BarrierRow], StepOp], BarrierDecision]
OrchestratorFactory = Callable[[str, SagaDefinition, Callable[[], float]], SagaOrchestrator]

class SimSagaHost(SagaHost):
    """A saga host whose orchestrators come from a factory (mutation tests plug in here)."""

    factory: OrchestratorFactory
    validated: set[SagaDefinition]  # shared by every incarnation of one simulation

    def check_definition(self, definition: SagaDefinition) -> None:
        # Validating a definition costs more than booting a saga; a restart
        # registers the very same (frozen) definitions again, so check each once.
        if definition not in self.validated:
            super().check_definition(definition)
            self.validated.add(definition)

    def machine_for(self, saga_id: str, name: str, version: int) -> SagaOrchestrator:
        machine = super().machine_for(saga_id, name, version)
        if self.factory is correct_orchestrator:
            return machine  # the production machine already: do not build (and validate) twice
        return self.factory(saga_id, machine.definition, machine.random)


class ForwardCompensatingOrchestrator(SagaOrchestrator):
    """A deliberately broken orchestrator: compensates in forward completion order."""

    def _compensation_order(self) -> list[Any]:
        order = super()._compensation_order()
        unknown = [s for s in order if s.state.value != "succeeded"]
        done = [s for s in order if s.state.value == "succeeded"]
        return unknown + sorted(done, key=lambda s: s.completed_seq)


def ignoring_duplicates(rows: list[BarrierRow], op: StepOp) -> BarrierDecision:
    """A deliberately broken barrier: runs a duplicate again instead of skipping it."""
    decision = decide(rows, op)
    return BarrierDecision.RUN if decision is BarrierDecision.DUPLICATE else decision


def correct_orchestrator(saga_id: str, definition: SagaDefinition,
                         random: Callable[[], float]) -> SagaOrchestrator:
    return SagaOrchestrator(saga_id, definition, random=random)


def _forward(saga_id: str, definition: SagaDefinition,
             random: Callable[[], float]) -> SagaOrchestrator:
    return ForwardCompensatingOrchestrator(saga_id, definition, random=random)


ORCHESTRATORS: dict[str, OrchestratorFactory] = {
    "correct": correct_orchestrator, "forward": _forward,
}
BARRIERS: dict[str, BarrierFn] = {"correct": decide, "ignore-duplicates": ignoring_duplicates}
