"""Paxos Commit over a real private nats-server: every Paxos message crosses the wire codec,
and a transaction whose coordinator dies for good after the votes still ends everywhere."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack

import anyio
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.messages import Timeouts, Vote
from dtxn.protocols.paxos_records import PaxosPartPrepared
from dtxn.runtime import Runtime
from dtxn.runtime.servers import nats_server
from dtxn.runtime.transport.nats import NatsTransport
from nodes import Ledger, Node, eventually

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=0.6, acks_s=0.2, decision_s=0.3, retry_max_s=0.5)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10, "ledger@bank-c": 0}
BANKS = ("bank-a", "bank-b", "bank-c")


async def _cluster(
    url: str, stack: AsyncExitStack, *, with_coordinator: bool = True
) -> tuple[Runtime | None, dict[str, Runtime], dict[str, Ledger]]:
    nodes = ["coord", *BANKS]
    ledgers = {name: Ledger() for name in BANKS}
    banks: dict[str, Runtime] = {}
    for name in BANKS:
        t = await stack.enter_async_context(NatsTransport(url, peers=nodes, coordinators=["coord"]))
        banks[name] = await stack.enter_async_context(
            Runtime(name, transport=t, resources={"ledger": ledgers[name]}, timeouts=FAST)
        )
    if not with_coordinator:
        return None, banks, ledgers
    t = await stack.enter_async_context(NatsTransport(url, peers=nodes))
    coord = await stack.enter_async_context(Runtime("coord", transport=t, timeouts=FAST))
    return coord, banks, ledgers


async def test_paxos_commit_and_a_no_vote_over_nats_end_alike_everywhere() -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        coord, banks, ledgers = await _cluster(server.url, stack)
        assert coord is not None
        outcome = await coord.transact(TRANSFER, protocol="paxos")
        assert outcome.outcome is Outcome.COMMITTED
        await eventually(lambda: all(len(lg.committed) == 1 for lg in ledgers.values()))
        ledgers["bank-c"].vote = Vote.NO
        outcome = await coord.transact(TRANSFER, protocol="paxos")
        assert outcome.outcome is Outcome.ABORTED
        await eventually(lambda: all(not lg.prepared for lg in ledgers.values()))
        assert [lg.balance for lg in ledgers.values()] == [-10, 10, 0]
        assert all(rt.statistics().undeliverable == 0 for rt in banks.values())
        # Every participant applied both: the acceptors dropped them.
        await eventually(lambda: all(not rt.acceptor.txns for rt in banks.values()))


async def test_over_nats_a_backup_leader_finishes_when_the_coordinator_dies_for_good() -> None:
    async with (
        nats_server() as server,
        anyio.create_task_group() as tg,
        AsyncExitStack() as stack,
    ):
        _, banks, ledgers = await _cluster(server.url, stack, with_coordinator=False)
        coord_transport = await stack.enter_async_context(
            NatsTransport(server.url, peers=["coord", *BANKS])
        )
        # In a task of its own, so that its crash cancels only its own block.
        node = Node(tg, lambda: Runtime("coord", transport=coord_transport, timeouts=FAST))
        coord = await node.start()
        prepared: set[str] = set()
        crashed = anyio.Event()

        def hook(name: str) -> Callable[[str, str, str, object], None]:
            def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
                if what == "forced" and isinstance(detail, PaxosPartPrepared):
                    prepared.add(name)
                    if prepared == set(BANKS) and not crashed.is_set():
                        crashed.set()
                        coord.crash()  # its leader and its acceptor are gone for good

            return on_trace

        for name, rt in banks.items():
            rt.on_trace(hook(name))

        async def client() -> None:
            await coord.transact(TRANSFER, protocol="paxos")

        async with anyio.create_task_group() as caller:
            caller.start_soon(client)
            await crashed.wait()
            caller.cancel_scope.cancel()
        await node.crash()
        await eventually(lambda: all(len(lg.committed) == 1 for lg in ledgers.values()))
        assert [lg.balance for lg in ledgers.values()] == [-10, 10, 0]
        assert sum(rt.statistics().txn.takeovers for rt in banks.values()) >= 1
