"""The flood of issue 14, finding 6, over a real private nats-server.

A peer that is a member of no transaction sends p1 200,000 well-formed
COMMIT decisions for a txid p1 never held. Before: p1 handled every one
(answering each with an ack), fell seconds behind, and 19 of 30 transfers
running at the same time aborted on vote timeouts.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from contextlib import AsyncExitStack

import anyio
import pytest
from conftest import ManualClock
from dtxn.protocols.effects import Outcome
from dtxn.protocols.messages import Timeouts
from dtxn.runtime import UNKNOWN_BURST, UNKNOWN_PER_S, Runtime
from dtxn.runtime.servers import nats_server
from dtxn.runtime.transport.limits import Budget
from dtxn.runtime.transport.nats import NatsTransport
from nodes import Ledger, eventually

pytestmark = pytest.mark.anyio

FLOOD = 200_000
TRANSFERS = 30
TIMEOUTS = Timeouts(votes_s=5.0, acks_s=1.0, decision_s=2.0, retry_max_s=2.0)
NODES = ["coord", "p1", "p2", "mallory"]
ROGUE = """
import asyncio, sys, msgspec, nats
from dtxn.protocols.messages import Decision

async def main(url, count):
    nc = await nats.connect(url, pending_size=1 << 30)
    ghost = msgspec.msgpack.encode(Decision("ghost", "coordinator@mallory", True))
    for i in range(count):
        await nc.publish("dtxn.p1.ledger.mallory", ghost)
        if i == count // 10:
            await nc.flush()
            print("flooding", flush=True)
    await nc.flush()
    await nc.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


async def test_a_flood_over_nats_from_a_peer_outside_every_transaction_starves_no_transfer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dtxn")
    async with nats_server() as server, AsyncExitStack() as stack:
        runtimes: dict[str, Runtime] = {}
        for name in ("p1", "p2"):
            t = await stack.enter_async_context(
                NatsTransport(server.url, peers=NODES, coordinators=["coord"])
            )
            runtimes[name] = await stack.enter_async_context(
                Runtime(name, transport=t, resources={"ledger": Ledger()}, timeouts=TIMEOUTS)
            )
        t = await stack.enter_async_context(NatsTransport(server.url, peers=NODES))
        coord = await stack.enter_async_context(Runtime("coord", transport=t, timeouts=TIMEOUTS))
        p1 = runtimes["p1"]
        p1_transport = p1.transport
        assert isinstance(p1_transport, NatsTransport)
        # A budget on a clock that stands still lets in its burst and no
        # refill, however fast this machine is.
        p1.unknown_budget = Budget(ManualClock(), burst=UNKNOWN_BURST, per_s=UNKNOWN_PER_S)
        outcomes: list[Outcome] = []

        async def transfer() -> None:
            outcomes.append((await coord.transact({"ledger@p1": -1, "ledger@p2": 1})).outcome)

        # mallory is a peer (its subject is its own, so it passes the
        # transport), publishing from a process of its own as a node would.
        rogue = await anyio.open_process(
            [sys.executable, "-c", ROGUE, server.url, str(FLOOD)], stdout=subprocess.PIPE
        )
        assert rogue.stdout is not None
        async with rogue:
            async with anyio.create_task_group() as tg:
                # Once the flood is under way (the rogue says so), the transfers start.
                await rogue.stdout.receive()
                for _ in range(TRANSFERS):
                    tg.start_soon(transfer)
            assert await rogue.wait() == 0
        assert outcomes.count(Outcome.COMMITTED) >= TRANSFERS - 1
        await eventually(lambda: p1_transport.statistics().received >= FLOOD, within_s=60.0)
        # The transport counts a message before the runtime has judged it: wait
        # for the runtime too (the budget's clock stands still, so this is exact).
        await eventually(
            lambda: p1.statistics().txn.unknown_dropped >= FLOOD - UNKNOWN_BURST, within_s=30.0
        )
        stats = p1.statistics().txn
        assert stats.unknown_dropped == FLOOD - UNKNOWN_BURST
        assert stats.messages_dropped == 0
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dtxn")]
    flood_lines = [line for line in lines if "'mallory' sends more than" in line]
    assert 1 <= len(flood_lines) <= 3  # one per 10 s, not one per message
    assert len(lines) <= 10  # (a stopping node may dead-letter a late re-send)
