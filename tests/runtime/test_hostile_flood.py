"""A flood of messages about unknown transactions from one sender starves nobody else.

Issue 14, finding 6: 200,000 well-formed decisions for transactions p1 never
heard of, sent by a node that is a member of none of them, filled p1's
mailbox, so legitimate prepares and decisions were dropped and transfers
running at the same time aborted on vote timeouts, with a log line per drop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import anyio
import pytest
from anyio.lowlevel import checkpoint
from conftest import ManualClock
from dtxn.protocols.effects import Outcome
from dtxn.protocols.messages import Decision, Message, StateRequest, Timeouts
from dtxn.runtime import UNKNOWN_BURST, UNKNOWN_PER_S, Runtime
from dtxn.runtime.transport import Address, InProcessTransport
from dtxn.runtime.transport.limits import Budget, LogLimiter
from nodes import Ledger

pytestmark = pytest.mark.anyio

FLOOD = 200_000
TRANSFERS = 30
# Loose timeouts: only a dropped message can make a transfer miss them.
TIMEOUTS = Timeouts(votes_s=5.0, acks_s=1.0, decision_s=2.0, retry_max_s=2.0)


async def _flood_while_transferring(
    caplog: pytest.LogCaptureFixture, make: Callable[[int], Message]
) -> tuple[list[Outcome], Runtime, int]:
    """Run TRANSFERS transfers p1 -> p2 while a stranger floods p1; return the
    outcomes, p1 and how many messages the flood sent."""
    caplog.set_level(logging.INFO, logger="dtxn")
    # Through the codec, every message takes the path a NATS message takes
    # into a node (`Runtime.deliver_nowait`), the legitimate ones included.
    transport = InProcessTransport(encode=True)
    ledgers = {"p1": Ledger(), "p2": Ledger()}
    async with (
        Runtime("p1", transport=transport, resources={"ledger": ledgers["p1"]},
                timeouts=TIMEOUTS) as p1,
        Runtime("p2", transport=transport, resources={"ledger": ledgers["p2"]},
                timeouts=TIMEOUTS),
        Runtime("coord", transport=transport, timeouts=TIMEOUTS) as coord,
    ):
        # The budget's clock stands still, so what it lets in does not depend
        # on how fast this machine is: the burst, and no refill.
        p1.unknown_budget = Budget(ManualClock(), burst=UNKNOWN_BURST, per_s=UNKNOWN_PER_S)
        outcomes: list[Outcome] = []
        started = anyio.Event()
        sent = 0

        async def transfer() -> None:
            await started.wait()
            outcome = await coord.transact({"ledger@p1": -1, "ledger@p2": 1})
            outcomes.append(outcome.outcome)

        async def flood() -> None:
            # At least FLOOD messages, and on until every transfer has ended.
            nonlocal sent
            to = Address("p1", "ledger")
            while sent < FLOOD or len(outcomes) < TRANSFERS:
                transport.send_nowait(to, make(sent))
                sent += 1
                if sent == FLOOD // 2:
                    started.set()  # the transfers start with the flood in full swing
                if sent % 500 == 0:
                    await checkpoint()

        async with anyio.create_task_group() as tg:
            for _ in range(TRANSFERS):
                tg.start_soon(transfer)
            tg.start_soon(flood)
        return outcomes, p1, sent


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("dtxn")]


async def test_a_flood_of_decisions_for_unknown_transactions_from_a_stranger_starves_no_transfer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcomes, p1, sent = await _flood_while_transferring(
        caplog, lambda i: Decision(f"ghost-{i}", "coordinator@mallory", False)
    )
    assert sent >= FLOOD
    assert outcomes.count(Outcome.COMMITTED) >= TRANSFERS - 1
    stats = p1.statistics().txn
    # All but the stranger's budget is dropped before p1's mailbox, its hosts
    # and its log: only UNKNOWN_BURST decisions ever reach the participant.
    assert stats.unknown_dropped == sent - UNKNOWN_BURST
    assert stats.ignored == UNKNOWN_BURST
    assert stats.messages_dropped == 0  # no mailbox overflowed
    # One rate-limited line for the whole flood (one per 10 s), not one per message.
    lines = _lines(caplog)
    assert 1 <= len(lines) <= 3
    assert all("'mallory' sends more than" in line for line in lines)


async def test_a_flood_of_3pc_state_requests_for_unknown_transactions_forces_only_its_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # An unknown txid in a STATE-REQ costs a forced unilateral abort: the
    # budget caps how many records the stranger can make p1 force.
    outcomes, p1, sent = await _flood_while_transferring(
        caplog, lambda i: StateRequest(f"ghost-{i}", "coordinator@mallory", 1)
    )
    assert outcomes.count(Outcome.COMMITTED) >= TRANSFERS - 1
    stats = p1.statistics().txn
    assert stats.unknown_dropped == sent - UNKNOWN_BURST
    transfers_forces = 2 * TRANSFERS  # prepared and committed, per transfer
    assert stats.forces <= UNKNOWN_BURST + transfers_forces
    assert stats.messages_dropped == 0
    assert 1 <= len(_lines(caplog)) <= 3


def test_one_senders_spent_budget_leaves_every_other_senders_whole() -> None:
    clock = ManualClock()
    budget = Budget(clock, burst=3, per_s=2.0)
    assert [budget.take("mallory") for _ in range(4)] == [True, True, True, False]
    assert budget.take("coord")  # a bucket of its own
    clock.advance(0.5)  # refills one
    assert [budget.take("mallory") for _ in range(2)] == [True, False]


def test_the_log_limiter_says_how_many_lines_it_held_back() -> None:
    clock = ManualClock()
    limiter = LogLimiter(clock, burst=1, interval_s=10.0)
    assert limiter.allow("mallory") == 0
    assert [limiter.allow("mallory") for _ in range(3)] == [None, None, None]
    assert limiter.allow("coord") == 0
    clock.advance(10.0)
    assert limiter.allow("mallory") == 3
