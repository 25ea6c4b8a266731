"""Paxos Commit through real runtimes: SQLite WALs and ledgers, crashes, restarts, takeover.

The point of Paxos Commit is the test in the middle: the coordinator's node
dies for good (its WAL deleted) after the participants voted, and with
Paxos every participant still decides, alike, money conserved; with 2PC in
the same run both stay in doubt.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Timeouts, Vote
from dtxn.protocols.paxos_messages import Ballot, Phase1a
from dtxn.protocols.paxos_records import PaxosAcceptorState, PaxosPartPrepared
from dtxn.protocols.records import PartPrepared
from dtxn.runtime import InProcessTransport, Runtime, UnknownNode
from dtxn.runtime.caps import paxos_placement
from dtxn.runtime.cli.inspect import inspect_wal
from dtxn.runtime.clock import Clock
from dtxn.runtime.resources.sqlite import SqliteResource
from dtxn.runtime.wal import read_wal
from nodes import Ledger, Node, eventually
from sqlite_files import balance, create_ledger, leftovers, move

pytestmark = pytest.mark.anyio

# takeover_after(1) = ceil(votes_s / decision_s) = 3 inquiries: a backup
# takes over about 0.6 s after a participant began to doubt.
FAST = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}
BANKS = ("bank-a", "bank-b")


class Cluster:
    """A coordinator node, two banks on SQLite ledgers, and `extra` resource-less nodes.

    Every node has a SQLite WAL in `tmp` and runs under `Node`, so it can be
    crashed and restarted; the ledgers stand for databases and outlive crashes.
    """

    def __init__(
        self,
        tmp: Path,
        tg: anyio.abc.TaskGroup,
        ledgers: dict[str, Any],
        *,
        extra: tuple[str, ...] = (),
        encode: bool = True,
    ) -> None:
        self.tmp = tmp
        self.transport = InProcessTransport(encode=encode)
        self.nodes: dict[str, Node] = {}
        self.nodes["coord"] = Node(tg, self._factory("coord", {}))
        for name, resource in ledgers.items():
            self.nodes[name] = Node(tg, self._factory(name, {"ledger": resource}))
        for name in extra:
            self.nodes[name] = Node(tg, self._factory(name, {}))

    def _factory(self, name: str, resources: dict[str, Any]) -> Callable[[], Runtime]:
        return lambda: Runtime(
            name,
            transport=self.transport,
            wal_path=self.wal(name),
            resources=resources,
            timeouts=FAST,
        )

    def wal(self, name: str) -> Path:
        return self.tmp / f"{name}.wal.db"

    def rt(self, name: str) -> Runtime:
        runtime = self.nodes[name].rt
        assert runtime is not None
        return runtime

    async def start(self) -> Runtime:
        for name, node in self.nodes.items():
            if name != "coord":
                await node.start()
        return await self.nodes["coord"].start()

    async def stop(self, *skip: str) -> None:
        for name, node in self.nodes.items():
            if name not in skip:
                await node.stop()

    def kinds(self, name: str) -> list[str]:
        return [entry.kind for entry in read_wal(self.wal(name))]


@asynccontextmanager
async def sqlite_ledgers(tmp: Path) -> AsyncIterator[tuple[dict[str, Any], dict[str, Path]]]:
    paths = {bank: tmp / f"{bank}.sqlite" for bank in BANKS}
    async with AsyncExitStack() as stack:
        ledgers: dict[str, Any] = {}
        for bank, path in paths.items():
            create_ledger(path)
            ledgers[bank] = await stack.enter_async_context(
                SqliteResource(path, name=bank.replace("-", "_"), branch=move)
            )
        yield ledgers, paths


def settled(paths: dict[str, Path]) -> bool:
    return all(leftovers(path) == (0, 0, 0) for path in paths.values())


CODEC = pytest.mark.parametrize("encode", [True, False], ids=["codec", "direct"])


@CODEC
async def test_a_paxos_transfer_commits_at_both_banks_and_the_acceptors_forget_it(
    tmp_path: Path, encode: bool
) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers, encode=encode)
        coord = await cluster.start()
        outcome = await coord.transact(TRANSFER, protocol="paxos")
        assert outcome.committed
        await eventually(lambda: settled(paths))
        assert (balance(paths["bank-a"]), balance(paths["bank-b"])) == (90, 110)
        # Every participant applied and said so: no acceptor keeps a record,
        # the leader (ballot 0 only) wrote none, each participant one tombstone.
        names = ("coord", *BANKS)
        await eventually(lambda: all(not cluster.rt(n).acceptor.txns for n in names))
        for bank in BANKS:
            assert cluster.rt(bank).status(outcome.txid).outcome == "committed"
        # A leader still balloting now (a stale coordinator) meets no blank
        # acceptor: the outcome is remembered and sent back, nothing recreated.
        acceptor = cluster.rt("bank-a").acceptor
        assert acceptor.finished[outcome.txid] is Outcome.COMMITTED
        sent = cluster.rt("bank-a").statistics().txn.messages_sent
        stale = Phase1a(outcome.txid, "coordinator@bank-b", "ledger@bank-a", Ballot(9, "x"))
        acceptor.deliver(stale)
        assert not acceptor.txns
        assert cluster.rt("bank-a").statistics().txn.messages_sent == sent + 1
        await cluster.stop()  # the drops wait for a commit: stopping makes one
        assert cluster.kinds("coord") == []
        for bank in BANKS:
            assert cluster.kinds(bank) == ["px-p-ended"]


async def test_a_no_vote_aborts_the_paxos_transaction_everywhere(tmp_path: Path) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        ledgers["bank-b"] = Ledger(Vote.NO)
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        outcome = await coord.transact(TRANSFER, protocol="paxos")
        assert not outcome.committed
        # bank-a may still be preparing when the leader learned bank-b's NO.
        await eventually(lambda: cluster.rt("bank-a").status(outcome.txid).outcome == "aborted")
        assert leftovers(paths["bank-a"]) == (0, 0, 0)
        assert balance(paths["bank-a"]) == 100
        await cluster.stop()


async def test_a_read_only_participant_lets_a_paxos_transaction_commit(tmp_path: Path) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        reader = Ledger(Vote.READ_ONLY)
        ledgers["bank-b"] = reader
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        outcome = await coord.transact(TRANSFER, protocol="paxos")
        assert outcome.committed
        await eventually(lambda: leftovers(paths["bank-a"]) == (0, 0, 0))
        assert balance(paths["bank-a"]) == 90
        assert reader.committed == [] and reader.aborted == []
        # The reader forced nothing and its applied counts: the acceptors forget.
        await eventually(lambda: all(not cluster.rt(n).acceptor.txns for n in BANKS))
        assert "px-p-prepared" not in cluster.kinds("bank-b")
        await cluster.stop()


async def _transact_until_cancelled(rt: Runtime, **kwargs: Any) -> None:
    await rt.transact(TRANSFER, **kwargs)


def _crash_once_both_prepared(cluster: Cluster, record: type[Any], fired: anyio.Event) -> None:
    """Crash the coordinator's node the moment the second bank has forced its prepared record,
    before that bank's vote (2PC) or phase 2a (Paxos) leaves."""
    prepared: set[str] = set()

    def hook(bank: str) -> Callable[[str, str, str, object], None]:
        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            if what == "forced" and isinstance(detail, record):
                prepared.add(bank)
                if prepared == set(BANKS) and not fired.is_set():
                    fired.set()
                    cluster.rt("coord").crash()

        return on_trace

    for bank in BANKS:
        cluster.rt(bank).on_trace(hook(bank))


def _delete_wal(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):  # the sidecars may not exist
            os.remove(f"{path}{suffix}")


@pytest.mark.parametrize("protocol", ["paxos", "2pc"])
async def test_when_the_coordinator_dies_for_good_paxos_participants_decide_but_2pc_ones_block(
    tmp_path: Path, protocol: str
) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        crashed = anyio.Event()
        record = PaxosPartPrepared if protocol == "paxos" else PartPrepared
        _crash_once_both_prepared(cluster, record, crashed)
        async with anyio.create_task_group() as client:
            client.start_soon(lambda: _transact_until_cancelled(coord, protocol=protocol))
            await crashed.wait()
            client.cancel_scope.cancel()
        await cluster.nodes["coord"].crash()
        _delete_wal(cluster.wal("coord"))  # never to return
        a, b = cluster.rt("bank-a"), cluster.rt("bank-b")
        if protocol == "paxos":
            await eventually(lambda: settled(paths))
            (txid,) = {e.txid for e in read_wal(cluster.wal("bank-a"))}
            # Both voted yes and F+1 acceptors were up: committed, at both.
            await eventually(
                lambda: {a.status(txid).outcome, b.status(txid).outcome} == {"committed"}
            )
            assert balance(paths["bank-a"]) + balance(paths["bank-b"]) == 200
            assert (balance(paths["bank-a"]), balance(paths["bank-b"])) == (90, 110)
            assert a.statistics().txn.takeovers + b.statistics().txn.takeovers >= 1
        else:
            await Clock().sleep(2.0)  # over three takeover delays of the Paxos run
            assert settled(paths) is False
            for rt in (a, b):
                (txid,) = {e.txid for e in read_wal(cluster.wal(rt.node))}
                assert rt.status(txid).in_doubt
        await cluster.stop("coord")


async def test_a_coordinator_that_restarts_without_a_record_takes_its_transaction_over(
    tmp_path: Path,
) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        crashed = anyio.Event()
        _crash_once_both_prepared(cluster, PaxosPartPrepared, crashed)
        async with anyio.create_task_group() as client:
            client.start_soon(lambda: _transact_until_cancelled(coord, protocol="paxos"))
            await crashed.wait()
            client.cancel_scope.cancel()
        await cluster.nodes["coord"].crash()
        # The normal case forced nothing at the leader (the acceptor there did).
        assert "px-ballot" not in cluster.kinds("coord")
        restarted = await cluster.nodes["coord"].start()
        await eventually(lambda: settled(paths))
        assert (balance(paths["bank-a"]), balance(paths["bank-b"])) == (90, 110)
        # Whoever took over (the restarted coordinator at once, or a bank's
        # backup) forced its ballot first and left its end as a tombstone.
        takers = [name for name in ("coord", *BANKS) if cluster.rt(name).statistics().txn.takeovers]
        assert takers
        assert restarted.statistics().txn.violations == 0
        await cluster.stop()
        for name in takers:
            kinds = cluster.kinds(name)
            assert "px-leader-ended" in kinds and "px-ballot" not in kinds


async def test_with_two_of_three_acceptors_down_the_outcome_waits_then_commits_after_restart(
    tmp_path: Path,
) -> None:
    acceptors = ("acc-1", "acc-2", "acc-3")
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers, extra=acceptors)
        coord = await cluster.start()
        crashed: set[str] = set()

        def crash_after_forcing(name: str) -> Callable[[str, str, str, object], None]:
            def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
                # Forced its acceptance, crashes before its phase 2b leaves.
                forced = what == "forced" and isinstance(detail, PaxosAcceptorState)
                if forced and name not in crashed:
                    crashed.add(name)
                    cluster.rt(name).crash()

            return on_trace

        for name in acceptors[:2]:
            cluster.rt(name).on_trace(crash_after_forcing(name))
        async with anyio.create_task_group() as client:
            client.start_soon(
                lambda: _transact_until_cancelled(coord, protocol="paxos", acceptors=acceptors)
            )
            await eventually(lambda: crashed == set(acceptors[:2]))
            for name in acceptors[:2]:
                await cluster.nodes[name].crash()
            await Clock().sleep(1.0)
            # One acceptor of three: nothing can be chosen, both banks in doubt.
            assert not settled(paths)
            assert cluster.rt("bank-a").statistics().txn.in_doubt == 1
            # `dtxn inspect` shows each role's Paxos state readably.
            _, summaries = inspect_wal(cluster.wal("bank-a"))
            by_role = {s.role: s for s in summaries}
            bank_a = by_role["participant"]
            if "leader" in by_role:  # bank-a's backup may have taken over already
                assert by_role["leader"].state.startswith("ballot round ")
            assert (bank_a.actor, bank_a.protocol, bank_a.state, bank_a.in_doubt) == (
                "ledger",
                "paxos",
                "prepared",
                True,
            )
            for name in acceptors[:2]:
                assert "px-acceptor" in cluster.kinds(name)  # forced before it died
                _, (acc,) = inspect_wal(cluster.wal(name))
                assert (acc.role, acc.protocol, acc.in_doubt) == ("acceptor", "paxos", False)
                assert re.fullmatch(
                    r"(ledger@bank-[ab]): promised \(0,\1\), accepted prepared at \(0,\1\)",
                    acc.state,
                ), acc.state
                await cluster.nodes[name].start()
            # A quorum again: leaders' phase 1 (or re-sent phase 2a) chooses a
            # value per instance. Either outcome is right (an instance whose
            # PREPARED only acc-3 had may be chosen ABORTED); both banks agree.
            await eventually(lambda: settled(paths))
            client.cancel_scope.cancel()
        balances = (balance(paths["bank-a"]), balance(paths["bank-b"]))
        assert balances in ((90, 110), (100, 100))
        (txid,) = {e.txid for e in read_wal(cluster.wal("bank-a"))}
        expected = "committed" if balances == (90, 110) else "aborted"
        await eventually(
            lambda: {cluster.rt(bank).status(txid).outcome for bank in BANKS} == {expected}
        )
        await eventually(lambda: all(not cluster.rt(n).acceptor.txns for n in acceptors))
        await cluster.stop()
        for name in acceptors:
            assert "px-acceptor" not in cluster.kinds(name)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"acceptors": ["bank-a", "bank-b"]}, ConfigError, r"odd number\), got 2"),
        ({"acceptors": ["bank-a", "bank-b", "nowhere"]}, UnknownNode, "'nowhere'"),
        ({"acceptors": ["bank-a", "bank-a", "coord"]}, ConfigError, "twice"),
        ({"acceptors": "bank-a"}, ConfigError, "list of node names"),
        ({"acceptors": ["bank-a", "x@y", "coord"]}, ConfigError, "'x@y'"),
        ({"fault_tolerance": 2}, ConfigError, "needs 5 acceptors.*only 3.*2 short"),
        ({"fault_tolerance": 0}, ConfigError, "int >= 1"),
        ({"fault_tolerance": True}, ConfigError, "int >= 1"),
        (
            {"fault_tolerance": 2, "acceptors": ["bank-a", "bank-b", "coord"]},
            ConfigError,
            "needs 5 acceptors",
        ),
        ({"protocol": "2pc", "fault_tolerance": 1}, ConfigError, "protocol='paxos'"),
        ({"protocol": "4pc"}, ConfigError, "'paxos'"),
    ],
)
async def test_bad_paxos_arguments_raise_clear_errors_and_leave_no_durable_state(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        sent = cluster.transport.statistics().messages
        kwargs = {"protocol": "paxos", **kwargs}
        with pytest.raises(error, match=match):
            await coord.transact(TRANSFER, **kwargs)
        assert cluster.transport.statistics().messages == sent
        assert not coord.coordinator.txns and coord.statistics().txn.started == 0
        for name in ("coord", *BANKS):
            assert cluster.kinds(name) == []
        assert settled(paths)
        # The node is fine: the same transfer with good arguments commits.
        assert (await coord.transact(TRANSFER, protocol="paxos")).committed
        await cluster.stop()


async def test_two_participants_on_one_node_need_an_acceptor_node_more(tmp_path: Path) -> None:
    async with anyio.create_task_group() as tg:
        transport = InProcessTransport()
        async with (
            Runtime("coord", transport=transport) as coord,
            Runtime("bank", transport=transport, resources={"x": Ledger(), "y": Ledger()}),
        ):
            with pytest.raises(ConfigError, match="only 2 \\(bank, coord\\): 1 short"):
                await coord.transact({"x@bank": 1, "y@bank": 2}, protocol="paxos")
            async with Runtime("spare", transport=transport):
                outcome = await coord.transact(
                    {"x@bank": 1, "y@bank": 2},
                    protocol="paxos",
                    acceptors=["bank", "coord", "spare"],
                )
                assert outcome.committed
        tg.cancel_scope.cancel()


async def test_transact_on_a_crashed_node_still_refuses_paxos(tmp_path: Path) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, _), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        await cluster.nodes["coord"].crash()
        with pytest.raises(TransactionError):
            await coord.transact(TRANSFER, protocol="paxos")
        await cluster.stop("coord")


async def test_a_participant_that_crashes_after_forcing_prepared_comes_back_in_doubt_and_agrees(
    tmp_path: Path,
) -> None:
    async with sqlite_ledgers(tmp_path) as (ledgers, paths), anyio.create_task_group() as tg:
        cluster = Cluster(tmp_path, tg, ledgers)
        coord = await cluster.start()
        crashed = anyio.Event()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # Forced PX-PREPARED; its phase 2a never leaves.
            if what == "forced" and isinstance(detail, PaxosPartPrepared) and not crashed.is_set():
                crashed.set()
                cluster.rt("bank-a").crash()

        cluster.rt("bank-a").on_trace(on_trace)
        async with anyio.create_task_group() as client:
            client.start_soon(lambda: _transact_until_cancelled(coord, protocol="paxos"))
            await crashed.wait()
            await cluster.nodes["bank-a"].crash()
            restarted = await cluster.nodes["bank-a"].start()
            (txid,) = {e.txid for e in read_wal(cluster.wal("bank-a")) if e.kind == "px-p-prepared"}
            # Rebuilt from its record: in doubt until it learns (it may already have).
            await eventually(lambda: settled(paths))
            client.cancel_scope.cancel()
        balances = (balance(paths["bank-a"]), balance(paths["bank-b"]))
        assert balances in ((90, 110), (100, 100))
        expected = "committed" if balances == (90, 110) else "aborted"
        await eventually(
            lambda: {cluster.rt(bank).status(txid).outcome for bank in BANKS} == {expected}
        )
        assert coord.status(txid).outcome == expected
        assert restarted.statistics().txn.violations == 0
        await cluster.stop()


def test_default_placement_takes_the_participants_nodes_then_the_coordinators() -> None:
    pids = ("x@n1", "y@n2", "z@n1", "w@n3", "v@n4")
    acceptors, leaders = paxos_placement("me", pids, None, None, None)
    assert acceptors == ("acceptor@n1", "acceptor@n2", "acceptor@n3")
    assert leaders == tuple(f"coordinator@{n}" for n in ("me", "n1", "n2", "n3", "n4"))
    acceptors, _ = paxos_placement("me", pids[:2], None, None, None)
    assert acceptors == ("acceptor@n1", "acceptor@n2", "acceptor@me")
    acceptors, _ = paxos_placement("n5", pids, 2, None, None)
    assert acceptors == tuple(f"acceptor@n{i}" for i in range(1, 6))
    # A coordinator on a participant's node adds no node: 4 of the 5 needed.
    with pytest.raises(ConfigError, match=r"needs 5 acceptors.*only 4.*1 short"):
        paxos_placement("n2", pids, 2, None, None)
    # Named acceptors are taken as given, in order.
    acceptors, _ = paxos_placement("me", pids, None, ["n4", "me", "n9"], lambda node: True)
    assert acceptors == ("acceptor@n4", "acceptor@me", "acceptor@n9")
