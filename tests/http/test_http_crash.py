"""A service SIGKILLed after it prepared gets its commit once it is back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process
from http_servers import (
    Misbehave,
    amount,
    anyio_backend,  # noqa: F401 - the fixture: asyncio only
    create_db,
    free_port,
    ledger_states,
    served,
    service_app,
    wait_listening,
)
from nodes import eventually
from test_http_2pc import ONE_WIDGET, ORDER, shop

pytestmark = pytest.mark.anyio

SCRIPT = Path(__file__).with_name("http_servers.py")


async def start_stock(folder: Path, port: int) -> Process:
    process = await anyio.open_process(
        [sys.executable, str(SCRIPT), "stock", str(folder), str(port)],
        stdout=subprocess.DEVNULL, stderr=None,
    )
    await wait_listening(port)
    return process


async def test_a_service_killed_after_prepare_gets_its_commit_when_it_is_back(
    tmp_path: Path,
) -> None:
    create_db("stock", tmp_path)
    port = free_port()
    # The order service holds its prepare until the stock service is dead, so the
    # decision (commit) is taken while stock has prepared and cannot hear it.
    order = Misbehave(service_app("order", tmp_path), "prepare", "gate")
    stock = await start_stock(tmp_path, port)
    try:
        async with (
            served(order) as (order_url,),
            shop(tmp_path, order_url, f"http://127.0.0.1:{port}") as rt,
            anyio.create_task_group() as tg,
        ):
            outcomes: list[Any] = []

            async def order_one() -> None:
                outcomes.append(await rt.transact(
                    {"order@order-node": ORDER, "stock@stock-node": ONE_WIDGET}, protocol="2pc"
                ))

            tg.start_soon(order_one)
            await eventually(lambda: list(ledger_states("stock", tmp_path).values())
                             == ["prepared"])
            stock.kill()
            await stock.wait()
            order.gate.set()
            await eventually(lambda: bool(outcomes))
            assert outcomes[0].committed, outcomes[0]
            assert list(ledger_states("stock", tmp_path).values()) == ["prepared"]
            stock = await start_stock(tmp_path, port)
            # The stock participant has been retrying its commit all along.
            await eventually(lambda: ledger_states("stock", tmp_path)
                             == {outcomes[0].txid: "committed"}, within_s=30)
            await eventually(lambda: ledger_states("order", tmp_path)
                             == {outcomes[0].txid: "committed"})
    finally:
        if stock.returncode is None:
            stock.kill()
            await stock.wait()
    assert (amount("order", tmp_path), amount("stock", tmp_path)) == (70, 9)
