"""2PC and 3PC over HTTP: a coordinator and two participant nodes whose resources
are HttpResources pointing at two real services (order, stock) served by uvicorn."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.resources.http import HttpResource
from http_servers import (
    Misbehave,
    amount,
    anyio_backend,  # noqa: F401 - the fixture: asyncio only
    ledger_states,
    prepared_markers,
    served,
    service_app,
)
from nodes import eventually

pytestmark = pytest.mark.anyio

ORDER = {"price": 30}
ONE_WIDGET = {"qty": 1}


@contextlib.asynccontextmanager
async def shop(tmp: Path, order_url: str, stock_url: str, **options: Any) -> AsyncIterator[Runtime]:
    """The coordinator node `shop` and the nodes `order-node` and `stock-node`."""
    transport = InProcessTransport()
    async with (
        HttpResource(order_url, name="order", **options) as order,
        HttpResource(stock_url, name="stock", **options) as stock,
        Runtime("order-node", transport=transport, wal_path=tmp / "order-node.db",
                resources={"order": order}),
        Runtime("stock-node", transport=transport, wal_path=tmp / "stock-node.db",
                resources={"stock": stock}),
        Runtime("shop", transport=transport, wal_path=tmp / "shop.db") as rt,
    ):
        yield rt


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
async def test_an_order_commits_at_both_services(tmp_path: Path, protocol: str) -> None:
    async with (
        served(service_app("order", tmp_path), service_app("stock", tmp_path)) as urls,
        shop(tmp_path, *urls) as rt,
    ):
        outcome = await rt.transact(
            {"order@order-node": ORDER, "stock@stock-node": ONE_WIDGET}, protocol=protocol
        )
        assert outcome.committed, outcome
        await eventually(lambda: ledger_states("stock", tmp_path) == {outcome.txid: "committed"}
                         and ledger_states("order", tmp_path) == {outcome.txid: "committed"})
    assert amount("order", tmp_path) == 70
    assert amount("stock", tmp_path) == 9
    assert prepared_markers("order", tmp_path) == prepared_markers("stock", tmp_path) == 0


async def test_a_409_from_one_service_aborts_the_order_at_both(tmp_path: Path) -> None:
    async with (
        served(service_app("order", tmp_path), service_app("stock", tmp_path)) as urls,
        shop(tmp_path, *urls) as rt,
    ):
        outcome = await rt.transact(
            {"order@order-node": ORDER, "stock@stock-node": {"qty": 1000}}, protocol="2pc"
        )
        assert not outcome.committed
        assert f"stock' ({urls[1]}/prepare)" in outcome.reason.replace("\\'", "'")
        assert "refused the branch: 409" in outcome.reason, outcome.reason
        # The order service prepared (it had the money): the abort must reach it.
        await eventually(lambda: ledger_states("order", tmp_path) == {outcome.txid: "aborted"})
        assert ledger_states("stock", tmp_path) == {outcome.txid: "refused"}
    assert amount("order", tmp_path) == 100
    assert amount("stock", tmp_path) == 10
    assert prepared_markers("order", tmp_path) == prepared_markers("stock", tmp_path) == 0


async def test_a_service_that_answers_garbage_aborts_the_order_and_is_named(tmp_path: Path) -> None:
    stock = Misbehave(service_app("stock", tmp_path), "prepare", "garbage")
    async with (
        served(service_app("order", tmp_path), stock) as (order_url, stock_url),
        shop(tmp_path, order_url, stock_url) as rt,
    ):
        outcome = await rt.transact(
            {"order@order-node": ORDER, "stock@stock-node": ONE_WIDGET}, protocol="2pc"
        )
        assert not outcome.committed
        assert f"stock' ({stock_url}/prepare)" in outcome.reason.replace("\\'", "'")
        assert "<html>all good!</html>" in outcome.reason and "not JSON" in outcome.reason
        # The stock service did prepare behind the garbage; its abort follows.
        await eventually(lambda: ledger_states("stock", tmp_path) == {outcome.txid: "aborted"}
                         and ledger_states("order", tmp_path) == {outcome.txid: "aborted"})
    assert (amount("order", tmp_path), amount("stock", tmp_path)) == (100, 10)
    assert prepared_markers("order", tmp_path) == prepared_markers("stock", tmp_path) == 0
