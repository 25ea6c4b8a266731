"""`ClusterMachine`: a hypothesis `RuleBasedStateMachine` over the simulated cluster.

    from dtxn.testing.machine import ClusterMachine

    TestCluster = ClusterMachine.TestCase

Rules submit transactions, let virtual time pass, crash and restart nodes,
partition and heal the network, stall or fail fsyncs, and crash a node at a
force or right after its resource applied a prepare, commit or abort (so the
call is redelivered); the invariant checkers run after every rule, and
teardown runs the liveness phase. Subclass it to change the protocol, the
number of participants, or to plug in your own resources.
"""

from __future__ import annotations

from typing import Any

from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime.sim import ResourceFactory, SimulationFailure, SteppedCluster
from dtxn.testing.strategies import network_faults, node_names
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

__all__ = ["ClusterMachine"]

PARTICIPANTS = 3


class ClusterMachine(RuleBasedStateMachine):
    """Random interleavings of workload and faults against one simulated cluster."""

    protocol: Protocol = Protocol.TWO_PC
    participants: int = PARTICIPANTS
    partitions: bool = True
    storage: bool = True
    resource_factory: ResourceFactory | None = None

    def __init__(self) -> None:
        super().__init__()
        self.cluster: SteppedCluster | None = None

    @initialize(seed=st.integers(0, 2**32 - 1), network=network_faults(), data=st.data())
    def boot(self, seed: int, network: Any, data: st.DataObject) -> None:
        if not self.partitions:
            # Without partitions the links are reliable too (3PC's model).
            network = data.draw(network_faults(lossy=False))
        self.cluster = SteppedCluster(
            self.protocol, self.participants, seed, network=network,
            resource_factory=type(self).resource_factory,
        )

    def _cluster(self) -> SteppedCluster:
        assert self.cluster is not None
        return self.cluster

    @rule(
        members=st.lists(st.integers(1, PARTICIPANTS), min_size=1, max_size=PARTICIPANTS,
                         unique=True),
        data=st.data(),
    )
    def submit(self, members: list[int], data: st.DataObject) -> None:
        chosen = tuple(sorted(m for m in members if m <= self.participants)) or (1,)
        votes = tuple(
            data.draw(st.sampled_from([Vote.YES, Vote.YES, Vote.NO, Vote.READ_ONLY]))
            for _ in chosen
        )
        self._cluster().submit(chosen, votes)

    @rule(ms=st.integers(1, 1500))
    def advance_clock(self, ms: int) -> None:
        self._cluster().run_for(ms / 1000)

    @rule(node=st.sampled_from(node_names(PARTICIPANTS)))
    def crash(self, node: str) -> None:
        cluster = self._cluster()
        if node not in cluster.nodes:
            return
        # 3PC's fail-stop model: never every process of a transaction down.
        fail_stop = self.protocol is Protocol.THREE_PC and not self.partitions
        if fail_stop and cluster.would_fail_totally(node):
            return
        cluster.crash(node)

    @rule(node=st.sampled_from(node_names(PARTICIPANTS)))
    def restart(self, node: str) -> None:
        if node in self._cluster().nodes:
            self._cluster().restart(node)

    @precondition(lambda self: self.partitions)
    @rule(side=st.sets(st.sampled_from(node_names(PARTICIPANTS)), min_size=1))
    def partition(self, side: set[str]) -> None:
        nodes = self._cluster().nodes
        left = tuple(sorted(n for n in side if n in nodes))
        right = tuple(n for n in nodes if n not in left)
        if left and right:
            self._cluster().partition(left, right)

    @precondition(lambda self: self.partitions)
    @rule()
    def heal(self) -> None:
        self._cluster().heal()

    @rule(kind=st.sampled_from(["crashforce", "crashforced", "crashvote", "crashcommit",
                                "crashabort", "crashprepare"]),
          node=st.sampled_from(node_names(PARTICIPANTS)))
    def crash_at_a_force(self, kind: str, node: str) -> None:
        cluster = self._cluster()
        fail_stop = self.protocol is Protocol.THREE_PC and not self.partitions
        if node in cluster.nodes and not (fail_stop and cluster.would_fail_totally(node)):
            cluster.node_fault(kind, node)

    @precondition(lambda self: self.storage)
    @rule(kind=st.sampled_from(["stall", "resume", "fsyncfail"]),
          node=st.sampled_from(node_names(PARTICIPANTS)))
    def storage_fault(self, kind: str, node: str) -> None:
        if node in self._cluster().nodes:
            self._cluster().node_fault(kind, node)

    @invariant()
    def invariants_hold(self) -> None:
        if self.cluster is not None and self.cluster.violations:
            raise SimulationFailure(self.cluster.scenario(), self.cluster.violations)

    def teardown(self) -> None:
        if self.cluster is None:
            return
        violations = self.cluster.finish()
        if violations:
            raise SimulationFailure(self.cluster.scenario(), violations)
