"""The simulated saga cluster: one orchestrator node, its step services, clients and faults.

Two phases, as for atomic commit: safety (faults on), then liveness (the
orchestrator restarts, duplicates stop, and every saga must end completed or
compensated within `LIVENESS_BOUND_S`, or stuck when a compensation is
scripted to fail for good). Only the orchestrator crashes: the step services
belong to the simulation, so they survive.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from dtxn.protocols.errors import DtxnError
from dtxn.protocols.saga import SagaDefinition
from dtxn.protocols.saga.records import SagaFinishedRecord, SagaState, SagaStuck
from dtxn.runtime._runtime import Runtime
from dtxn.runtime.clock import Clock
from dtxn.runtime.hosting.sagas import StepCall, StepError, StepFn
from dtxn.runtime.sim._harness import (
    SimNode,
    TracedRun,
    cancelled_by_crash,
    derive_seed,
    play_timeline,
)
from dtxn.runtime.sim.invariants import SagaChecker
from dtxn.runtime.sim.sagas._scenario import SagaFault, SagaScenario
from dtxn.runtime.sim.sagas._services import (
    StepFunction,
    StepServices,
    definition_of,
    shape_of,
)
from dtxn.runtime.sim.sagas._services import saga_id as saga_id_of
from dtxn.runtime.sim.sagas._variants import BarrierFn, OrchestratorFactory, SimSagaHost
from dtxn.runtime.wal import MemoryWal

__all__ = ["LIVENESS_BOUND_S", "NODE", "SagaCluster"]

NODE = "o"
FAULT_KINDS = ("crash", "restart", "crashforce", "crashforced")
LIVENESS_BOUND_S = 120.0
POLL_S = 0.05
SETTLE_S = 0.5


class SagaCluster(TracedRun):
    """One simulated orchestrator node and its step services, on the running loop."""

    def __init__(self, scenario: SagaScenario, orchestrator: OrchestratorFactory,
                 barrier: BarrierFn) -> None:
        super().__init__()
        self.scenario = scenario
        self.orchestrator = orchestrator
        self.specs = {saga_id_of(i): spec for i, spec in enumerate(scenario.sagas)}
        self.checker = SagaChecker({sid: shape_of(s) for sid, s in self.specs.items()})
        self.services = StepServices(self, barrier)
        self.dup_rng = Clock(seed=derive_seed(scenario.seed, "duplicates")).rng("duplicates")
        self.definitions = [definition_of(i, s) for i, s in enumerate(scenario.sagas)]
        self.steps: dict[str, StepFn] = {}
        for i, spec in enumerate(scenario.sagas):
            for k in range(len(spec.deps)):
                fn = StepFunction(self.services, k)
                self.steps[f"s{i}.T{k}"] = fn
                self.steps[f"s{i}.C{k}"] = fn
        self.validated: set[SagaDefinition] = set()
        self.node = SimNode(NODE, MemoryWal(node=NODE))
        self.healed = False
        self.outcomes: dict[str, str] = {}
        self.ends: dict[str, str] = {}
        self.tasks: list[asyncio.Task[Any]] = []

    def duplicate(self, call: StepCall, step: int) -> None:
        """Deliver `call` once more, a little later, to nobody's knowledge."""
        self.note("duplicate", (call.saga_id, call.step, call.op.value, call.attempt))
        self.tasks.append(asyncio.get_running_loop().create_task(self._duplicate(call, step)))

    async def _duplicate(self, call: StepCall, step: int) -> None:
        await asyncio.sleep(self.dup_rng.uniform(0, 0.2))  # noqa: TID251 - virtual time
        with contextlib.suppress(StepError):  # the answer to a duplicate goes nowhere
            await self.services.deliver(call, step, True)

    def _tracer(self, txid: str, actor: str, what: str, detail: Any) -> None:
        self.note(what, (actor, txid, detail))
        if what in ("log", "forced") and isinstance(detail, SagaFinishedRecord):
            self.outcomes[txid] = detail.state.value
        elif what == "force" and isinstance(detail, SagaStuck):
            self.outcomes[txid] = SagaState.STUCK.value
        if what == self.node.crash_at:
            self.node.crash_at = None
            self.crash(deferred_disk=True)

    # -- the node ----------------------------------------------------------------

    async def start(self) -> None:
        node = self.node
        if node.up:
            return
        if node.task is not None:
            await asyncio.wait([node.task])
        clock = node.next_clock(self.scenario.seed)
        rt = Runtime(NODE, clock=clock, wal=node.wal, resource_concurrency=8)
        host = SimSagaHost(rt, NODE, rt.sagas.pool, rt.sagas.random)
        host.factory = self.orchestrator
        host.validated = self.validated
        rt.sagas = host
        for definition in self.definitions:
            rt.register_saga(definition, self.steps)
        rt.on_trace(self._tracer)
        node.stop = asyncio.Event()
        started = asyncio.Event()
        node.task = asyncio.get_running_loop().create_task(self._host(rt, started))
        await started.wait()
        self.note("start", f"{NODE} incarnation {node.incarnation}")

    async def _host(self, rt: Runtime, started: asyncio.Event) -> None:
        try:
            async with rt:
                self.node.rt = rt
                started.set()
                await self.node.stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported as a violation with the schedule
            self.checker.now_s = self.now()
            self.checker.on_error(NODE, exc)
        finally:
            self.node.rt = None
            started.set()

    def crash(self, *, deferred_disk: bool = False) -> None:
        if self.node.crash(deferred_disk=deferred_disk):
            self.note("crash", NODE)

    # -- clients and faults ------------------------------------------------------------

    def submit(self, index: int) -> None:
        saga_id = saga_id_of(index)
        rt = self.node.rt
        if rt is None:
            self.outcomes[saga_id] = "not-submitted"
            self.note("submit", f"{saga_id} refused: orchestrator down")
            return
        self.note("submit", saga_id)
        self.outcomes[saga_id] = "info"
        self.tasks.append(asyncio.get_running_loop().create_task(self._client(rt, saga_id)))

    def definition_name(self, saga_id: str) -> str:
        """The name of the definition `saga_id` runs (here each saga has its own)."""
        return saga_id

    async def _client(self, rt: Runtime, saga_id: str) -> None:
        try:
            outcome = await rt.run_saga(
                self.definition_name(saga_id), {"saga": saga_id}, saga_id=saga_id
            )
        except asyncio.CancelledError:
            if not cancelled_by_crash():
                raise
            return
        except DtxnError as exc:
            # The orchestrator crashed before the client's task ran: not started.
            self.note("client", f"{saga_id} failed: {exc}")
            return
        self.note("client", f"{saga_id} {outcome.state.value}")

    async def fault(self, fault: SagaFault) -> None:
        if fault.kind == "crash":
            self.crash()
        elif fault.kind == "restart":
            await self.start()
        elif self.node.up:
            self.note(fault.kind, NODE)
            self.node.crash_at = "force" if fault.kind == "crashforce" else "forced"

    # -- the run --------------------------------------------------------------------

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.start()
        steps: list[tuple[float, Callable[[], Any]]] = []
        for index, spec in enumerate(self.scenario.sagas):
            steps.append((spec.at_s, functools.partial(self.submit, index)))
        for fault in self.scenario.faults:
            steps.append((fault.at_s, functools.partial(self.fault, fault)))
        await play_timeline(self.now, steps)
        await asyncio.sleep(SETTLE_S)  # noqa: TID251 - virtual time
        await self.liveness()
        await self.shutdown()

    async def liveness(self) -> None:
        self.note("liveness", "no more faults or duplicates; restart the orchestrator")
        self.healed = True
        self.node.crash_at = None
        await self.start()
        deadline_s = self.now() + LIVENESS_BOUND_S
        while self.unfinished() and self.now() < deadline_s:
            await asyncio.sleep(POLL_S)  # noqa: TID251 - virtual time
            node = self.node
            if not node.up and (node.task is None or node.task.done()):
                await self.start()
        self.ends = {saga_id: self.end_of(saga_id) for saga_id in self.specs}
        self.checker.now_s = self.now()
        self.checker.finish(self.ends, dict(self.services.pending))

    def end_of(self, saga_id: str) -> str:
        """completed, compensated, stuck, running, lost (never made durable) or not-submitted."""
        said = self.outcomes.get(saga_id)
        if said in (None, "not-submitted"):
            return "not-submitted"
        if said in ("completed", "compensated"):
            return str(said)
        rt = self.node.rt
        if rt is None:
            return "unknown"
        report = rt.sagas.report(saga_id)
        if report is None:
            return "lost"
        return "stuck" if report.state is SagaState.STUCK else "running"

    def unfinished(self) -> list[str]:
        return [s for s in self.specs if self.end_of(s) in ("running", "unknown")]

    async def shutdown(self) -> None:
        self.crash()
        for task in self.tasks:
            task.cancel()
        pending = [t for t in [self.node.task, *self.tasks] if t is not None]
        if pending:
            await asyncio.wait(pending)
        for task in self.tasks:
            if not task.cancelled() and task.exception() is not None:
                self.checker.on_error("services", task.exception())  # type: ignore[arg-type]
