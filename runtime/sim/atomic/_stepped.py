"""The simulated atomic-commit cluster driven step by step, for hypothesis state machines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import msgspec
from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime.sim._loop import SimLoop
from dtxn.runtime.sim._net import NetworkFaults
from dtxn.runtime.sim.atomic._cluster import SimCluster, bind_fault
from dtxn.runtime.sim.atomic._hooks import MachineFactory, ResourceFactory
from dtxn.runtime.sim.atomic._scenario import (
    COORDINATOR_NODE,
    NODE_FAULTS,
    Fault,
    Scenario,
    TxnSpec,
)
from dtxn.runtime.sim.invariants import Violation

__all__ = ["SteppedCluster"]


class SteppedCluster:
    """The simulated cluster driven step by step from synchronous code.

    Hypothesis rules are synchronous, so each call runs the virtual-time loop
    just long enough for its step; between calls nothing runs. Every step is
    also recorded as a `Scenario` (`scenario()`), so a failure found this way
    prints as a schedule that `run` and `dtxn replay` accept.
    """

    def __init__(
        self,
        protocol: Protocol | str = Protocol.TWO_PC,
        participants: int = 3,
        seed: int = 0,
        *,
        network: NetworkFaults | None = None,
        resource_factory: ResourceFactory | None = None,
        machine_factory: MachineFactory | None = None,
    ) -> None:
        base = Scenario(Protocol(protocol), participants, seed,
                        network=network or NetworkFaults())
        self._sim = SimCluster(base, resource_factory, None, machine_factory)
        self._txns: list[TxnSpec] = []
        self._faults: list[Fault] = []
        self._loop = SimLoop()
        self._closed = False
        self._loop.run_until_complete(self._sim.boot())
        self._start_s = self._loop.time()

    @property
    def now_s(self) -> float:
        """Virtual seconds since the cluster started."""
        return round(self._loop.time() - self._start_s, 6)

    @property
    def nodes(self) -> list[str]:
        return list(self._sim.nodes)

    @property
    def violations(self) -> list[Violation]:
        return self._sim.checker.violations

    def up(self, node: str) -> bool:
        return self._sim.nodes[node].up

    def would_fail_totally(self, node: str) -> bool:
        """Whether crashing `node` leaves every process of some transaction down."""
        down = {name for name, n in self._sim.nodes.items() if not n.up} | {node}
        return any(
            {COORDINATOR_NODE, *(f"p{p}" for p in spec.participants)} <= down
            for spec in self._txns
        )

    def submit(self, participants: tuple[int, ...], votes: tuple[Vote, ...]) -> str:
        spec = TxnSpec(self.now_s, participants, votes)
        txid = f"t{len(self._txns)}"
        self._txns.append(spec)
        self._inside(lambda: self._sim.submit_spec(spec, txid))
        return txid

    def _inside(self, step: Callable[[], None]) -> None:
        # Runtime and anyio calls expect a running loop, so steps run on it.
        async def call() -> None:
            step()

        self._loop.run_until_complete(call())

    def run_for(self, duration_s: float) -> None:
        """Let `duration_s` virtual seconds pass (deliveries, timers, forces run)."""
        self._loop.run_until_complete(asyncio.sleep(duration_s))  # noqa: TID251 - virtual

    def crash(self, node: str) -> None:
        self._faults.append(Fault(self.now_s, "crash", nodes=(node,)))
        self._inside(lambda: self._sim.crash(self._sim.nodes[node]))

    def restart(self, node: str) -> None:
        self._faults.append(Fault(self.now_s, "restart", nodes=(node,)))
        self._loop.run_until_complete(self._sim.start(self._sim.nodes[node]))

    def partition(self, *groups: tuple[str, ...]) -> None:
        self._faults.append(Fault(self.now_s, "part", groups=tuple(groups)))
        self._inside(lambda: self._sim.net.partition(*groups))

    def heal(self) -> None:
        self._faults.append(Fault(self.now_s, "heal"))
        self._inside(self._sim.net.heal)

    def node_fault(self, kind: str, node: str) -> None:
        """A storage or boundary-crash fault on `node`: one of `NODE_FAULTS` but crash/restart."""
        if kind not in NODE_FAULTS or kind in ("crash", "restart"):
            raise ValueError(f"unknown node fault {kind!r}; use crash() or restart()")
        fault = Fault(self.now_s, kind, nodes=(node,))
        self._faults.append(fault)
        self._inside(lambda: bind_fault(self._sim, fault)())

    def scenario(self) -> Scenario:
        """Everything done so far, as a replayable scenario."""
        return msgspec.structs.replace(
            self._sim.scenario, txns=tuple(self._txns), faults=tuple(self._faults)
        )

    def finish(self) -> list[Violation]:
        """Run the liveness phase and the end checks, stop the cluster, return violations."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.run_until_complete(self._sim.liveness())
                self._loop.run_until_complete(self._sim.shutdown())
            finally:
                self._loop.close()
                self._sim.release()
        return self.violations

    def close(self) -> None:
        """Stop without the liveness checks."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.run_until_complete(self._sim.shutdown())
            finally:
                self._loop.close()
                self._sim.release()
