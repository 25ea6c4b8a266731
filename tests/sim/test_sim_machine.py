"""The hypothesis state machine over the simulated cluster, and the stepped cluster under it."""

from __future__ import annotations

import pytest
from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime.sim import SimulationFailure, SteppedCluster, run
from dtxn.testing.machine import ClusterMachine
from hypothesis import HealthCheck, settings


class TwoPCCluster(ClusterMachine):
    protocol = Protocol.TWO_PC


class ThreePCCluster(ClusterMachine):
    protocol = Protocol.THREE_PC
    partitions = False
    storage = False


MACHINE_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=12,
    database=None,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

Test2PCClusterMachine = TwoPCCluster.TestCase
Test2PCClusterMachine.settings = MACHINE_SETTINGS
Test3PCClusterMachine = ThreePCCluster.TestCase
Test3PCClusterMachine.settings = MACHINE_SETTINGS


def test_a_stepped_cluster_commits_and_records_a_replayable_scenario() -> None:
    cluster = SteppedCluster(Protocol.TWO_PC, 2, seed=5)
    cluster.submit((1, 2), (Vote.YES, Vote.YES))
    cluster.run_for(0.5)
    cluster.crash("p1")
    cluster.run_for(0.1)
    cluster.restart("p1")
    assert cluster.finish() == []
    scenario = cluster.scenario()
    assert [f.kind for f in scenario.faults] == ["crash", "restart"]
    assert run(scenario).outcomes == {"t0": "committed"}


def test_a_stepped_3pc_cluster_reports_a_split_with_its_schedule() -> None:
    cluster = SteppedCluster(Protocol.THREE_PC, 3, seed=0)
    cluster.submit((1, 2, 3), (Vote.YES, Vote.YES, Vote.YES))
    cluster.run_for(0.0025)
    cluster.partition(("c",), ("p1", "p2", "p3"))
    cluster.run_for(5.0)
    cluster.heal()
    violations = cluster.finish()
    assert any(v.code == "S1" for v in violations)
    with pytest.raises(SimulationFailure):
        run(cluster.scenario())
