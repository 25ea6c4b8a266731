"""The deterministic simulator: virtual-time loop, simulated network, cluster runs, checkers."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from dtxn.protocols.messages import Decision, Protocol, Vote, VoteCast
from dtxn.protocols.records import CoordCommitted, PartPrepared
from dtxn.runtime.clock import Clock
from dtxn.runtime.sim import (
    Fault,
    NetworkFaults,
    Scenario,
    SimDeadlock,
    SimLoop,
    SimTransport,
    SimulationFailure,
    TxnSpec,
    describe,
    random_scenario,
    run,
)
from dtxn.runtime.sim.invariants import Checker
from dtxn.runtime.transport import Address

T = TypeVar("T")


def run_virtual(main: Coroutine[Any, Any, T]) -> tuple[T, float]:
    loop = SimLoop()
    try:
        result = loop.run_until_complete(main)
        return result, loop.time()
    finally:
        loop.close()


# -- layer 1: the virtual-time loop ----------------------------------------------


def test_an_hour_of_sleep_advances_virtual_time_by_jumping_not_waiting() -> None:
    async def main() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SimLoop)
        before = loop.time()
        await Clock(seed=1).sleep(3600)
        return loop.time() - before, loop.jumps

    (advanced, jumps), _ = run_virtual(main())
    assert advanced == pytest.approx(3600)
    # The selector never blocks: the hour passed as a single jump of the clock.
    assert jumps == 1


def test_the_same_program_runs_in_the_same_order_twice() -> None:
    async def main() -> list[tuple[int, float]]:
        order: list[tuple[int, float]] = []
        clock = Clock(seed=3)

        async def worker(n: int) -> None:
            for step in range(3):
                await clock.sleep(clock.rng(f"w{n}").random())
                order.append((n * 10 + step, asyncio.get_running_loop().time()))

        await asyncio.gather(*(worker(n) for n in range(8)))
        return order

    first, _ = run_virtual(main())
    second, _ = run_virtual(main())
    assert first == second
    assert len(first) == 24


def test_waiting_with_nothing_scheduled_is_a_deadlock_not_a_hang() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(SimDeadlock):
        run_virtual(main())


# -- layer 2: the simulated network ------------------------------------------------


class Port:
    def __init__(self, node: str) -> None:
        self.node = node
        self.got: list[tuple[float, object]] = []

    async def deliver(self, actor: str, message: object) -> None:
        self.deliver_nowait(actor, message)

    def deliver_nowait(self, actor: str, message: object) -> None:
        self.got.append((asyncio.get_running_loop().time(), message))

    def message_type(self, actor: str) -> Any:
        return object

    def report_undeliverable(self, actor: str, data: bytes, reason: str) -> None:
        raise AssertionError(reason)


def vote(n: int, sender: str = "r@a") -> VoteCast:
    return VoteCast(f"t{n}", sender, Vote.YES)


def network_run(faults: NetworkFaults, *, seed: int = 1, count: int = 50) -> tuple[Port, Any]:
    port = Port("b")

    async def main() -> SimTransport:
        net = SimTransport(Clock(seed=seed).rng("net"), faults=faults)
        net.attach(port)
        for n in range(count):
            net.send_nowait(Address("b", "r"), vote(n))
        await asyncio.sleep(1.0)  # noqa: TID251 - virtual time
        return net

    net, _ = run_virtual(main())
    return port, net


def test_messages_arrive_after_the_seeded_delay_and_replay_the_same() -> None:
    faults = NetworkFaults(delay_s=0.01, jitter_s=0.05)
    first, _ = network_run(faults)
    second, _ = network_run(faults)
    assert first.got == second.got
    assert all(0.01 <= at <= 0.06 for at, _ in first.got)
    # jitter reorders
    assert [m for _, m in first.got] != [vote(n) for n in range(50)]


def test_drops_and_duplicates_follow_their_rates() -> None:
    dropped, net = network_run(NetworkFaults(drop=1.0))
    assert dropped.got == [] and net.dropped == 50
    doubled, net = network_run(NetworkFaults(duplicate=1.0))
    assert len(doubled.got) == 100 and net.delivered == 100


def test_partitions_cut_messages_and_heal_restores_them() -> None:
    port = Port("b")

    async def main() -> SimTransport:
        net = SimTransport(Clock(seed=1).rng("net"))
        net.attach(port)
        net.partition(["a"], ["b"])
        net.send_nowait(Address("b", "r"), vote(1))
        await asyncio.sleep(0.1)  # noqa: TID251 - virtual time
        net.heal()
        net.send_nowait(Address("b", "r"), vote(2))
        await asyncio.sleep(0.1)  # noqa: TID251 - virtual time
        return net

    net, _ = run_virtual(main())
    assert [m for _, m in port.got] == [vote(2)]
    assert [what for _, what, _ in net.trace].count("cut") == 1


def test_messages_to_a_detached_node_are_lost_and_traced() -> None:
    port = Port("b")

    async def main() -> SimTransport:
        net = SimTransport(Clock(seed=1).rng("net"))
        net.attach(port)
        net.send_nowait(Address("b", "r"), vote(1))
        net.detach("b")
        await asyncio.sleep(0.1)  # noqa: TID251 - virtual time
        return net

    net, _ = run_virtual(main())
    assert port.got == [] and net.lost == 1


# -- layer 3: simulated clusters ----------------------------------------------------


def test_a_seed_replays_with_the_same_trace_hash() -> None:
    for seed in (1, 2, 3):
        scenario = random_scenario(seed, faults=4)
        assert run(scenario).trace_hash == run(scenario).trace_hash
        other = random_scenario(seed + 100, faults=4)
        assert run(scenario).trace_hash != run(other).trace_hash


def test_a_scenario_reads_back_from_its_text() -> None:
    for seed in range(20):
        scenario = random_scenario(seed, protocol="2pc" if seed % 2 else "3pc")
        assert Scenario.parse(scenario.text()) == scenario


def test_a_transfer_commits_everywhere_without_faults() -> None:
    scenario = Scenario(Protocol.TWO_PC, 2, 7, (TxnSpec(0.0, (1, 2), (Vote.YES, Vote.YES)),))
    result = run(scenario)
    assert result.outcomes == {"t0": "committed"}
    assert result.virtual_s < 5


def test_a_coordinator_crash_while_votes_are_in_flight_is_finished_by_recovery() -> None:
    text = "2pc n=2 seed=4 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y ; crash@0.0015 c"
    result = run(Scenario.parse(text))
    assert result.outcomes == {"t0": "info"}
    applied = [describe(detail) for _, what, detail in result.trace if what == "apply"]
    assert sorted(applied) == ["abort t0 at r@p1", "abort t0 at r@p2"]


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
def test_random_schedules_keep_every_invariant(protocol: str) -> None:
    for seed in range(60):
        run(random_scenario(seed, protocol=protocol, faults=4))


@pytest.mark.documented_limit
def test_3pc_splits_its_decision_under_a_partition() -> None:
    text = (
        "3pc n=3 seed=0 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y,p3=y ; "
        "part@0.0025 c|p1,p2,p3 ; heal@5"
    )
    with pytest.raises(SimulationFailure) as caught:
        run(Scenario.parse(text))
    assert any(v.code == "S1" for v in caught.value.violations)
    assert "dtxn replay '3pc n=3" in str(caught.value)


PAUSED_PARTICIPANTS = (
    "{proto} n=3 seed={seed} drop=0 dup=0 delay=0.001 jitter=0 ; tx@0.1 p1=y,p2=y ; "
    "pause@0.1015 p1 ; pause@0.1015 p2"
)


@pytest.mark.documented_limit
def test_3pc_splits_its_decision_when_its_participants_pause_past_every_timeout() -> None:
    """Issue 14, finding 9, reproduced: both participants stop (SIGSTOP) right after
    voting; the coordinator's PRE-COMMIT acks time out, so it commits ("silent means
    failed"); the participants resume, the broker having dropped what was in flight,
    run termination from their stale timers, find each other uncertain (TR3) and
    abort. 3PC's timeouts are its failure detector: a pause breaks it."""
    scenario = Scenario.parse(PAUSED_PARTICIPANTS.format(proto="3pc", seed=31))
    result = run(scenario, raise_on_violation=False)
    assert "S1" in {v.code for v in result.violations}, result.violations
    assert "messages lost" in " ".join(str(entry) for entry in result.trace)
    with pytest.raises(SimulationFailure, match="dtxn replay '3pc n=3"):
        run(scenario)


@pytest.mark.parametrize("seed", [31, 35, 36, 0, 1, 2])
def test_2pc_keeps_every_invariant_under_the_same_pauses(seed: int) -> None:
    # Whatever the resume order (messages first, timers first, messages lost).
    run(Scenario.parse(PAUSED_PARTICIPANTS.format(proto="2pc", seed=seed)))


def test_random_2pc_schedules_draw_pauses_and_3pc_ones_do_not() -> None:
    kinds_2pc = {f.kind for s in range(300) for f in random_scenario(s).faults}
    kinds_3pc = {f.kind for s in range(300) for f in random_scenario(s, protocol="3pc").faults}
    assert "pause" in kinds_2pc and "walcut" in kinds_2pc
    assert "pause" not in kinds_3pc
    assert "pause" in {
        f.kind for s in range(300)
        for f in random_scenario(s, protocol="3pc", pauses=True).faults
    }


# -- layer 4: the checkers ------------------------------------------------------------


def checker() -> Checker:
    return Checker({"t": Protocol.TWO_PC}, {"t": ("r@a", "r@b")})


def test_the_checker_flags_commit_sent_before_its_record_is_forced() -> None:
    check = checker()
    check.on_send(Decision("t", "coordinator@c", True))
    assert [v.code for v in check.violations] == ["S4"]
    check = checker()
    check.on_forced("coordinator@c", "t", CoordCommitted("t", Protocol.TWO_PC, ("r@a",)))
    check.on_send(Decision("t", "coordinator@c", True))
    assert check.violations == []


def test_the_checker_flags_a_yes_vote_before_prepared_is_forced() -> None:
    check = checker()
    check.on_send(VoteCast("t", "r@a", Vote.YES))
    assert [v.code for v in check.violations] == ["S4"]


def test_the_checker_flags_split_and_changed_decisions() -> None:
    check = checker()
    for pid in ("r@a", "r@b"):
        check.on_forced(pid, "t", PartPrepared("t", Protocol.TWO_PC, "coordinator@c", ()))
        check.on_send(VoteCast("t", pid, Vote.YES))
    check.on_decide("r@a", "t", "committed")
    check.on_deliver("r@b", Decision("t", "coordinator@c", False))
    check.on_decide("r@b", "t", "aborted")
    check.on_decide("r@a", "t", "aborted")
    # r@a also aborts while prepared with no abort decision delivered to it: S5
    assert [v.code for v in check.violations] == ["S1", "S3", "S1", "S5"]


def test_the_checker_flags_commit_without_every_yes_vote_and_lone_aborts() -> None:
    check = checker()
    check.on_send(VoteCast("t", "r@a", Vote.NO))
    check.on_decide("coordinator@c", "t", "committed")
    assert [v.code for v in check.violations] == ["S2"]
    check = checker()
    check.on_forced("r@a", "t", PartPrepared("t", Protocol.TWO_PC, "coordinator@c", ()))
    check.on_decide("r@a", "t", "aborted")
    assert [v.code for v in check.violations] == ["S5"]


def test_the_checker_flags_a_committed_outcome_not_applied_and_unfinished_work() -> None:
    check = checker()
    check.on_forced("r@a", "t", PartPrepared("t", Protocol.TWO_PC, "coordinator@c", ()))
    check.on_send(VoteCast("t", "r@a", Vote.YES))
    check.finish(["t"], {"t": ["r@a"]})
    assert [v.code for v in check.violations] == ["C", "L"]


def test_the_checker_flags_an_answer_that_contradicts_a_decision() -> None:
    check = checker()
    for pid in ("r@a", "r@b"):
        check.on_forced(pid, "t", PartPrepared("t", Protocol.TWO_PC, "coordinator@c", ()))
        check.on_send(VoteCast("t", pid, Vote.YES))
    check.on_decide("coordinator@c", "t", "committed")
    check.on_send(Decision("t", "coordinator@c", False))
    assert [v.code for v in check.violations] == ["S6"]


def test_a_crash_fault_on_an_unknown_node_is_ignored() -> None:
    scenario = Scenario(
        Protocol.TWO_PC, 1, 1, (TxnSpec(0.0, (1,), (Vote.YES,)),),
        (Fault(0.1, "crash", nodes=("zz",)),),
    )
    assert run(scenario).outcomes == {"t0": "committed"}


# -- storage faults -------------------------------------------------------------------


def test_a_failing_fsync_stops_the_node_which_restarts_and_finishes() -> None:
    text = (
        "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0.0005 p1=y,p2=y ; "
        "fsyncfail@0 p1"
    )
    result = run(Scenario.parse(text))
    whats = [what for _, what, _ in result.trace]
    assert "fail-stop" in whats
    assert result.outcomes == {"t0": "aborted"}


def test_a_stalled_fsync_holds_the_vote_until_it_resumes() -> None:
    text = (
        "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y ; "
        "stall@0 p2 ; resume@0.5 p2"
    )
    result = run(Scenario.parse(text))
    assert result.outcomes == {"t0": "committed"}
    votes = [
        at for at, what, detail in result.trace
        if what == "send" and "VoteCast" in describe(detail) and "r@p2" in describe(detail)
    ]
    assert votes and votes[0] >= 0.5


def test_storage_faults_read_back_from_text() -> None:
    text = (
        "2pc n=1 seed=0 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y ; stall@0.1 c ; "
        "resume@0.2 c ; fsyncfail@0.3 p1"
    )
    assert Scenario.parse(text).text() == text


def test_3pc_finishes_after_its_coordinator_and_participant_both_recover() -> None:
    text = (
        "3pc n=1 seed=0 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y ; "
        "crash@0.0025 c ; crash@0.5 p1"
    )
    run(Scenario.parse(text))


def test_traces_do_not_depend_on_string_hash_randomization() -> None:
    import os
    import subprocess
    import sys

    program = (
        "from dtxn.runtime.sim import run, random_scenario\n"
        "print([run(random_scenario(s, protocol=p, faults=4), raise_on_violation=False)"
        ".trace_hash for s in range(8) for p in ('2pc', '3pc')])\n"
    )
    hashes = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
        for hash_seed in (1, 2)
    }
    assert len(hashes) == 1


# -- crashes at the force boundaries ---------------------------------------------------


def test_a_coordinator_crashing_between_forcing_commit_and_sending_it_commits_on_recovery() -> None:
    text = (
        "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0.001 p1=y,p2=y ; crashforced@0 c"
    )
    result = run(Scenario.parse(text))
    crash_at = next(at for at, what, _ in result.trace if what == "crash")
    assert not any(
        what == "send" and at == crash_at and "commit=True" in describe(detail)
        for at, what, detail in result.trace
    )
    applied = sorted(describe(d) for _, what, d in result.trace if what == "apply")
    assert applied == ["commit t0 at r@p1", "commit t0 at r@p2"]


def test_a_participant_crashing_while_forcing_prepared_loses_the_vote() -> None:
    text = (
        "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0.001 p1=y,p2=y ; crashforce@0 p1"
    )
    result = run(Scenario.parse(text))
    assert result.outcomes == {"t0": "aborted"}


def test_a_node_crashing_while_a_prepare_waits_for_a_worker_ends_atomically() -> None:
    # Found by the simulator: a crash cancelled an idle worker whose wake-up
    # was then resolved again by the next submitted call (InvalidStateError).
    run(
        Scenario.parse(
            "2pc n=3 seed=4045157186 drop=0 dup=0 delay=0.001 jitter=0 ; "
            "tx@0.178 p1=y,p2=y,p3=y ; crash@0.179 p3"
        )
    )
