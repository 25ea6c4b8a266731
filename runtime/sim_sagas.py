"""The deterministic simulator for orchestrated sagas: one orchestrator, many step services.

A `SagaScenario` is everything a run depends on: the seed, the sagas (each a
small linear chain or DAG of steps, with an optional pivot, an optional step
whose action fails for good and an optional step whose compensation fails
for good) and the fault schedule (orchestrator crash and restart at virtual
times, a crash armed at the next force or right after the next forced
record, plus a rate of duplicate deliveries and of transient step failures).

`run(scenario)` builds one orchestrator node - a real `Runtime` on a
`MemoryWal` - on a `SimLoop`. Its step callables deliver to `StepServices`:
in-memory resources behind the pure idempotency barrier
(`dtxn.protocols.barrier.decide`), whose rows, effect journal and pending
marks survive orchestrator crashes. The simulator also delivers some calls a
second time, later (duplicates the orchestrator never hears about). Every
effect that gets past the barrier feeds a `SagaChecker` (G1-G5).

Two phases, as for atomic commit: safety (faults on), then liveness (the
orchestrator restarts, duplicates stop, and every saga must end completed or
compensated within `LIVENESS_BOUND_S`, or stuck when a compensation is
scripted to fail for good). A scenario prints as one line (`text()`), which
`parse` reads back and `dtxn replay` takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from dtxn.protocols.barrier import (
    BarrierDecision,
    BarrierRow,
    decide,
    recorded_result,
    row_to_write,
)
from dtxn.protocols.errors import DtxnError, ProtocolError
from dtxn.protocols.saga import SagaDefinition, SagaOrchestrator
from dtxn.protocols.saga_definition import RetryPolicy, SagaStep
from dtxn.protocols.saga_records import SagaFinishedRecord, SagaState, SagaStuck, StepOp
from dtxn.runtime.clock import Clock
from dtxn.runtime.invariants import SagaChecker, SagaShape, Violation
from dtxn.runtime.runtime import Runtime
from dtxn.runtime.sagas import SagaHost, StepCall, StepError, StepFn
from dtxn.runtime.simloop import SimLoop
from dtxn.runtime.simnet import TraceEntry
from dtxn.runtime.wal_memory import MemoryWal

__all__ = [
    "BARRIERS",
    "ORCHESTRATORS",
    "SagaScenario",
    "SagaSimResult",
    "SagaSimulationFailure",
    "SagaSpec",
    "StepServices",
    "minimize",
    "random_scenario",
    "run",
    "sweep",
]

NODE = "o"
FAULT_KINDS = ("crash", "restart", "crashforce", "crashforced")
LIVENESS_BOUND_S = 120.0
POLL_S = 0.05
SETTLE_S = 0.5
STEP_TIMEOUT_S = 1.0
STEPS_MAX = 6

BarrierFn = Callable[[list[BarrierRow], StepOp], BarrierDecision]
OrchestratorFactory = Callable[[str, SagaDefinition, Callable[[], float]], SagaOrchestrator]


class SagaSimulationFailure(DtxnError):
    """Raised when a simulated saga run breaks an invariant; the message says how to replay it."""

    def __init__(self, scenario: SagaScenario, violations: list[Violation]) -> None:
        self.scenario = scenario
        self.violations = violations
        text = scenario.text()
        super().__init__("\n".join([
            f"saga simulation seed={scenario.seed} broke {len(violations)} invariant(s):",
            *(f"  {v}" for v in violations[:10]),
            f"schedule: {text}",
            f"replay with: dtxn replay '{text}'",
        ]))


class SagaSpec(msgspec.Struct, frozen=True):
    """One saga of a workload: when it starts, its DAG, its pivot and scripted failures.

    `deps[i]` are the indexes (all < i) step i depends on. `fail` is the step
    whose action fails for good, `stuck` the step whose compensation does; -1
    for none.
    """

    at_s: float
    deps: tuple[tuple[int, ...], ...]
    pivot: int = -1
    fail: int = -1
    stuck: int = -1


class SagaFault(msgspec.Struct, frozen=True):
    """One timed fault of the orchestrator node: one of `FAULT_KINDS`."""

    at_s: float
    kind: str


class SagaScenario(msgspec.Struct, frozen=True):
    """A complete, replayable simulated saga run."""

    seed: int = 0
    sagas: tuple[SagaSpec, ...] = ()
    faults: tuple[SagaFault, ...] = ()
    duplicate: float = 0.0
    flaky: float = 0.0
    jitter_s: float = 0.01

    def text(self) -> str:
        parts = [f"saga seed={self.seed} dup={self.duplicate:g} flaky={self.flaky:g} "
                 f"jitter={self.jitter_s:g}"]
        for spec in self.sagas:
            deps = ",".join("+".join(map(str, d)) or "-" for d in spec.deps)
            parts.append(f"saga@{spec.at_s:g} deps={deps} pivot={spec.pivot} "
                         f"fail={spec.fail} stuck={spec.stuck}")
        parts.extend(f"{f.kind}@{f.at_s:g}" for f in self.faults)
        return " ; ".join(parts)

    @classmethod
    def parse(cls, text: str) -> SagaScenario:
        """Read back what `text()` printed (raises `ValueError` on anything else)."""
        head, *items = [part.strip() for part in text.strip().split(";")]
        words = head.split()
        if not words or words[0] != "saga":
            raise ValueError("a saga schedule starts with 'saga'")
        opts = dict(word.split("=", 1) for word in words[1:])
        sagas: list[SagaSpec] = []
        faults: list[SagaFault] = []
        for item in items:
            if not item:
                continue
            what, _, rest = item.partition(" ")
            kind, at, when = what.partition("@")
            if not at:
                raise ValueError(f"schedule item {item!r} has no '@time'")
            if kind == "saga":
                fields = dict(word.split("=", 1) for word in rest.split())
                deps = tuple(
                    () if d == "-" else tuple(int(x) for x in d.split("+"))
                    for d in fields["deps"].split(",")
                )
                sagas.append(SagaSpec(float(when), deps, int(fields.get("pivot", -1)),
                                      int(fields.get("fail", -1)), int(fields.get("stuck", -1))))
            elif kind in FAULT_KINDS:
                faults.append(SagaFault(float(when), kind))
            else:
                raise ValueError(f"unknown schedule item {item!r}")
        return cls(int(opts.get("seed", 0)), tuple(sagas), tuple(faults),
                   float(opts.get("dup", 0)), float(opts.get("flaky", 0)),
                   float(opts.get("jitter", 0.01)))


class SagaSimResult(msgspec.Struct):
    """What one simulated saga run did."""

    scenario: SagaScenario
    trace_hash: str
    events: int
    outcomes: dict[str, str]
    violations: list[Violation]
    virtual_s: float
    trace: list[TraceEntry]


# -- definitions -------------------------------------------------------------------


def _saga_id(index: int) -> str:
    return f"s{index}"


def shape_of(spec: SagaSpec) -> SagaShape:
    return SagaShape(spec.deps, spec.pivot, spec.stuck)


def definition_of(index: int, spec: SagaSpec) -> SagaDefinition:
    """The saga definition a spec describes (step names are "k0", "k1", ...)."""
    shape = shape_of(spec)
    after = shape.after_pivot()
    steps = []
    for k, deps in enumerate(spec.deps):
        post = k in after
        steps.append(SagaStep(
            f"k{k}",
            f"s{index}.T{k}",
            None if post or k == spec.pivot else f"s{index}.C{k}",
            tuple(f"k{d}" for d in deps),
            retry=RetryPolicy(max_attempts=None) if post else RetryPolicy(),
            compensation_retry=RetryPolicy(max_attempts=None),
            timeout_s=STEP_TIMEOUT_S,
        ))
    pivot = f"k{spec.pivot}" if spec.pivot >= 0 else None
    return SagaDefinition(f"s{index}", tuple(steps), pivot)


# -- the step services ---------------------------------------------------------------


class StepServices:
    """Every step's resource: barrier rows, the effect journal and pending marks.

    Owned by the simulation, not the orchestrator, so all of it survives an
    orchestrator crash. `decide` is the barrier's decision table (a mutation
    test swaps in a broken one).
    """

    def __init__(self, sim: _SagaSim, decide_fn: BarrierFn) -> None:
        self.sim = sim
        self.decide = decide_fn
        self.rows: dict[tuple[str, str], dict[StepOp, BarrierRow]] = {}
        self.pending: dict[str, bool] = {}  # saga id -> pending mark set
        self.rng = Clock(seed=_derive(sim.scenario.seed, "services")).rng("services")

    def script(self, saga: str, step: int, op: StepOp, attempt: int) -> str:
        """The scripted answer of one delivery: the same for every copy of an attempt."""
        spec = self.sim.specs[saga]
        if op is StepOp.ACTION and step == spec.fail:
            return "fail"
        if op is StepOp.COMPENSATION and step == spec.stuck:
            return "fail"
        if step == spec.pivot:
            return "ok"
        draw = _derive(self.sim.scenario.seed, f"flaky:{saga}:{step}:{op.value}:{attempt}")
        return "flaky" if (draw % 10_000) / 10_000 < self.sim.scenario.flaky else "ok"

    async def deliver(self, call: StepCall, step: int, duplicate: bool) -> Any:
        sim = self.sim
        await asyncio.sleep(self.rng.uniform(0, sim.scenario.jitter_s))  # noqa: TID251 - virtual
        saga = call.saga_id
        answer = self.script(saga, step, call.op, call.attempt)
        if answer != "ok":
            if answer == "fail" and call.op is StepOp.COMPENSATION:
                sim.checker.on_compensation_refused(saga, step)
            raise StepError(f"{call.op.value} of {saga}/k{step} {answer}",
                            retriable=answer == "flaky")
        rows = self.rows.setdefault((saga, call.step), {})
        try:
            decision = self.decide(list(rows.values()), call.op)
        except ProtocolError as exc:
            # A corrupt barrier: the orchestrator would only see a retriable failure.
            sim.checker.now_s = sim.now()
            sim.checker.on_error(f"barrier of {saga}/{call.step}", exc)
            raise
        result: Any = None
        if decision is BarrierDecision.RUN:
            result = f"{saga}.{call.step}.{call.op.value}"
            self._apply(saga, step, call.op, duplicate)
        elif decision is BarrierDecision.DUPLICATE:
            result = recorded_result(rows.values(), call.op)
        elif decision is BarrierDecision.REFUSE:
            sim.note("refused", (saga, call.step, call.op.value))
            raise StepError(f"{saga}/{call.step}: action refused after compensation",
                            retriable=False)
        row = row_to_write(decision, call.op, result)
        if row is not None:
            rows[row.op] = row
        if decision is BarrierDecision.RECORD_NULL:
            sim.note("null", (saga, call.step))
        await asyncio.sleep(self.rng.uniform(0, sim.scenario.jitter_s))  # noqa: TID251 - virtual
        return result

    def _apply(self, saga: str, step: int, op: StepOp, duplicate: bool) -> None:
        sim = self.sim
        sim.note("effect", (saga, f"k{step}", op.value, "dup" if duplicate else "call"))
        sim.checker.now_s = sim.now()
        sim.checker.on_effect(saga, step, op, duplicate=duplicate)
        last = len(sim.specs[saga].deps) - 1
        # The semantic lock: the first step sets it, the last step (completion)
        # or the first step's compensation (the end of backward recovery) clears it.
        if op is StepOp.ACTION and step == 0:
            self.pending[saga] = True
        if (op is StepOp.ACTION and step == last) or (op is StepOp.COMPENSATION and step == 0):
            self.pending[saga] = False


class _StepFn:
    """The callable registered for one action or compensation."""

    def __init__(self, services: StepServices, step: int) -> None:
        self.services = services
        self.step = step

    async def __call__(self, call: StepCall) -> Any:
        sim = self.services.sim
        if not sim.healed and sim.dup_rng.random() < sim.scenario.duplicate:
            sim.duplicate(call, self.step)
        return await self.services.deliver(call, self.step, False)


# -- the orchestrator under test -------------------------------------------------------


class _SimSagaHost(SagaHost):
    """A saga host whose orchestrators come from a factory (mutation tests plug in here)."""

    factory: OrchestratorFactory
    validated: set[SagaDefinition]  # shared by every incarnation of one simulation

    def register(self, definition: SagaDefinition, steps: Mapping[str, StepFn]) -> None:
        # Validating a definition costs more than booting a saga; a restart
        # registers the very same (frozen) definitions again, so check each once.
        if definition not in self.validated:
            super().register(definition, steps)
            self.validated.add(definition)
            return
        self.definitions[(definition.name, definition.version)] = definition
        self.steps.update(steps)

    def machine_for(self, saga_id: str, name: str, version: int) -> SagaOrchestrator:
        machine = super().machine_for(saga_id, name, version)
        if self.factory is _orchestrator:
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


def _orchestrator(saga_id: str, definition: SagaDefinition,
                  random: Callable[[], float]) -> SagaOrchestrator:
    return SagaOrchestrator(saga_id, definition, random=random)


def _forward(saga_id: str, definition: SagaDefinition,
             random: Callable[[], float]) -> SagaOrchestrator:
    return ForwardCompensatingOrchestrator(saga_id, definition, random=random)


ORCHESTRATORS: dict[str, OrchestratorFactory] = {"correct": _orchestrator, "forward": _forward}
BARRIERS: dict[str, BarrierFn] = {"correct": decide, "ignore-duplicates": ignoring_duplicates}


# -- the simulation ------------------------------------------------------------------


class _SagaSim:
    def __init__(self, scenario: SagaScenario, orchestrator: OrchestratorFactory,
                 barrier: BarrierFn) -> None:
        self.scenario = scenario
        self.orchestrator = orchestrator
        self.trace: list[TraceEntry] = []
        self.specs = {_saga_id(i): spec for i, spec in enumerate(scenario.sagas)}
        self.checker = SagaChecker({sid: shape_of(s) for sid, s in self.specs.items()})
        self.services = StepServices(self, barrier)
        self.dup_rng = Clock(seed=_derive(scenario.seed, "duplicates")).rng("duplicates")
        self.definitions = [definition_of(i, s) for i, s in enumerate(scenario.sagas)]
        self.steps: dict[str, StepFn] = {}
        for i, spec in enumerate(scenario.sagas):
            for k in range(len(spec.deps)):
                fn = _StepFn(self.services, k)
                self.steps[f"s{i}.T{k}"] = fn
                self.steps[f"s{i}.C{k}"] = fn
        self.validated: set[SagaDefinition] = set()
        self.wal = MemoryWal(node=NODE)
        self.rt: Runtime | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.incarnation = 0
        self.crash_at: str | None = None
        self.healed = False
        self.outcomes: dict[str, str] = {}
        self.ends: dict[str, str] = {}
        self.tasks: list[asyncio.Task[Any]] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def note(self, what: str, detail: Any) -> None:
        self.trace.append((self.now(), what, detail))

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
        if what == self.crash_at:
            self.crash_at = None
            self.crash(deferred_disk=True)

    # -- the node ----------------------------------------------------------------

    async def start(self) -> None:
        if self.rt is not None:
            return
        if self.task is not None:
            await asyncio.wait([self.task])
        self.incarnation += 1
        clock = Clock(seed=_derive(self.scenario.seed, f"clock:{NODE}:{self.incarnation}"))
        rt = Runtime(NODE, clock=clock, wal=self.wal, resource_concurrency=8)
        host = _SimSagaHost(rt, NODE, rt.sagas.pool, rt.sagas.random)
        host.factory = self.orchestrator
        host.validated = self.validated
        rt.sagas = host
        for definition in self.definitions:
            rt.register_saga(definition, self.steps)
        rt.on_trace(self._tracer)
        self.stop = asyncio.Event()
        started = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._host(rt, started))
        await started.wait()
        self.note("start", f"{NODE} incarnation {self.incarnation}")

    async def _host(self, rt: Runtime, started: asyncio.Event) -> None:
        try:
            async with rt:
                self.rt = rt
                started.set()
                await self.stop.wait()
        except Exception as exc:  # noqa: BLE001 - reported as a violation with the schedule
            self.checker.now_s = self.now()
            self.checker.on_error(NODE, exc)
        finally:
            self.rt = None
            started.set()

    def crash(self, *, deferred_disk: bool = False) -> None:
        rt = self.rt
        if rt is None:
            return
        self.rt = None
        self.crash_at = None
        rt.crash()
        if deferred_disk:
            asyncio.get_running_loop().call_soon(self.wal.crash)
        else:
            self.wal.crash()
        self.note("crash", NODE)

    # -- clients and faults ------------------------------------------------------------

    def submit(self, index: int) -> None:
        saga_id = _saga_id(index)
        rt = self.rt
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
            task = asyncio.current_task()
            if task is not None and task.cancelling():
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
        elif self.rt is not None:
            self.note(fault.kind, NODE)
            self.crash_at = "force" if fault.kind == "crashforce" else "forced"

    # -- the run --------------------------------------------------------------------

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.start()
        steps: list[tuple[float, int, int]] = []
        for index, spec in enumerate(self.scenario.sagas):
            steps.append((spec.at_s, len(steps), index))
        for index, fault in enumerate(self.scenario.faults):
            steps.append((fault.at_s, len(steps), -1 - index))
        steps.sort()
        start_s = self.now()
        for at_s, _, what in steps:
            wait_s = start_s + at_s - self.now()
            if wait_s > 0:
                await asyncio.sleep(wait_s)  # noqa: TID251 - virtual time, the scheduler
            if what >= 0:
                self.submit(what)
            else:
                await self.fault(self.scenario.faults[-1 - what])
        await asyncio.sleep(SETTLE_S)  # noqa: TID251 - virtual time
        await self.liveness()
        await self.shutdown()

    async def liveness(self) -> None:
        self.note("liveness", "no more faults or duplicates; restart the orchestrator")
        self.healed = True
        self.crash_at = None
        await self.start()
        deadline_s = self.now() + LIVENESS_BOUND_S
        while self.unfinished() and self.now() < deadline_s:
            await asyncio.sleep(POLL_S)  # noqa: TID251 - virtual time
            if self.rt is None and (self.task is None or self.task.done()):
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
        rt = self.rt
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
        pending = [t for t in [self.task, *self.tasks] if t is not None]
        if pending:
            await asyncio.wait(pending)
        for task in self.tasks:
            if not task.cancelled() and task.exception() is not None:
                self.checker.on_error("services", task.exception())  # type: ignore[arg-type]


def _derive(seed: int, stream: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _quiet_logs() -> None:
    logger = logging.getLogger("dtxn")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


def run(
    scenario: SagaScenario,
    *,
    orchestrator: str | OrchestratorFactory = "correct",
    barrier: str | BarrierFn = "correct",
    raise_on_violation: bool = True,
    hash_trace: bool = True,
) -> SagaSimResult:
    """Run `scenario` on a fresh virtual-time loop; raise on a violation unless told not to.

    `hash_trace=False` leaves `trace_hash` empty (a sweep never reads it).

    `orchestrator` and `barrier` name (or are) the variants under test: the
    mutation tests pass `"forward"` and `"ignore-duplicates"`.
    """
    from dtxn.runtime.sim import trace_hash

    _quiet_logs()
    make = ORCHESTRATORS[orchestrator] if isinstance(orchestrator, str) else orchestrator
    decide_fn = BARRIERS[barrier] if isinstance(barrier, str) else barrier
    sim = _SagaSim(scenario, make, decide_fn)
    loop = SimLoop()
    try:
        loop.run_until_complete(sim.main())
        virtual_s = loop.time()
    finally:
        loop.close()
    digest = trace_hash(sim.trace) if hash_trace else ""
    result = SagaSimResult(scenario, digest, len(sim.trace), dict(sim.ends),
                           list(sim.checker.violations), virtual_s, sim.trace)
    if raise_on_violation and result.violations:
        raise SagaSimulationFailure(scenario, result.violations)
    return result


def random_scenario(seed: int, *, sagas: int = 3, faults: int = 3) -> SagaScenario:
    """A random saga scenario drawn from `seed` (fault rates are drawn too: swarm testing)."""
    rng = Clock(seed=seed).rng("saga-scenario")
    specs: list[SagaSpec] = []
    for _ in range(sagas):
        n = rng.randint(1, STEPS_MAX)
        deps: list[tuple[int, ...]] = [()]
        linear = n <= 2 or rng.random() < 0.5
        for k in range(1, n):
            deps.append((k - 1,) if linear else (rng.randrange(k),))
        if not linear:
            # One sink: the last step joins every branch, so the DAG ends in one step.
            used = {d for ds in deps[:-1] for d in ds}
            sinks = tuple(k for k in range(n - 1) if k not in used)
            deps[-1] = sinks
        if rng.random() < 0.4:
            pivot = rng.randrange(n) if linear else rng.choice([0, n - 1])
        else:
            pivot = -1
        fail = -1
        if rng.random() < 0.5:
            limit = pivot if pivot >= 0 else n
            fail = rng.randrange(limit) if limit > 0 else -1
        stuck = -1
        compensatable = [k for k in range(n) if pivot < 0 or k < pivot]
        if not linear and pivot >= 0:
            compensatable = [] if pivot == 0 else list(range(n - 1))
        if compensatable and rng.random() < 0.15:
            stuck = rng.choice(compensatable)
        specs.append(SagaSpec(round(rng.uniform(0, 0.3), 3), tuple(deps), pivot, fail, stuck))
    events = []
    for _ in range(faults):
        kind = rng.choice(["crash", "crash", "restart", "restart", "crashforce", "crashforced"])
        events.append(SagaFault(round(rng.uniform(0, 1.0), 3), kind))
    events.sort(key=lambda f: f.at_s)
    return SagaScenario(
        seed,
        tuple(specs),
        tuple(events),
        duplicate=rng.choice([0.0, 0.1, 0.3]),
        flaky=rng.choice([0.0, 0.1, 0.3]),
        jitter_s=rng.choice([0.001, 0.01, 0.05]),
    )


class SweepStatistics(msgspec.Struct):
    """What `sweep` did: schedules run, trace events, failing schedules, the first failure."""

    schedules: int = 0
    events: int = 0
    violations: int = 0
    first_failure: SagaScenario | None = None


def schedule_seed(seed: int, index: int) -> int:
    return _derive(seed, f"saga-schedule:{index}") % 2**32


def sweep(
    schedules: int,
    seed: int,
    *,
    sagas: int = 3,
    faults: int = 3,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
    orchestrator: str | OrchestratorFactory = "correct",
    barrier: str | BarrierFn = "correct",
) -> SweepStatistics:
    """Run schedules `start`..`start + schedules - 1` of the saga sweep seeded by `seed`."""
    stats = SweepStatistics()
    for index in range(start, start + schedules):
        scenario = random_scenario(schedule_seed(seed, index), sagas=sagas, faults=faults)
        result = run(scenario, orchestrator=orchestrator, barrier=barrier,
                     raise_on_violation=False, hash_trace=False)
        stats.schedules += 1
        stats.events += result.events
        if result.violations:
            stats.violations += 1
            if stats.first_failure is None:
                stats.first_failure = scenario
        if progress is not None:
            progress(stats.schedules)
    return stats


def minimize(
    scenario: SagaScenario,
    *,
    orchestrator: str | OrchestratorFactory = "correct",
    barrier: str | BarrierFn = "correct",
    runs_max: int = 200,
) -> tuple[SagaScenario, list[Violation]]:
    """Shrink a failing scenario greedily (drop faults and sagas, calm the rates)."""

    def failing(candidate: SagaScenario) -> list[Violation]:
        return run(candidate, orchestrator=orchestrator, barrier=barrier,
                   raise_on_violation=False, hash_trace=False).violations

    violations = failing(scenario)
    if not violations:
        return scenario, []
    codes = {v.code for v in violations}
    runs = 1
    progress = True
    while progress and runs < runs_max:
        progress = False
        candidates: list[SagaScenario] = []
        if scenario.flaky:
            candidates.append(msgspec.structs.replace(scenario, flaky=0.0))
        if scenario.duplicate:
            candidates.append(msgspec.structs.replace(scenario, duplicate=0.0))
        for i in range(len(scenario.faults)):
            candidates.append(msgspec.structs.replace(
                scenario, faults=scenario.faults[:i] + scenario.faults[i + 1:]))
        if len(scenario.sagas) > 1:
            # Keep indexes stable for the remaining sagas' ids by trimming from the end.
            candidates.append(msgspec.structs.replace(scenario, sagas=scenario.sagas[:-1]))
        for candidate in candidates:
            if runs >= runs_max:
                break
            runs += 1
            found = failing(candidate)
            if any(v.code in codes for v in found):
                scenario, violations, progress = candidate, found, True
                break
    return scenario, violations
