"""A hot row under contention: what a user expects from the defaults (issue 19).

Ten concurrent orders for a lamp with two in stock must place two orders and
refuse eight as out of stock, not refuse nine with `RowLocked`: by default a
prepare waits (`LOCK_WAIT_S`) for the branch holding the row to be decided.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.runtime import Runtime, TxnOutcome
from dtxn.runtime.resources.sqlite import LOCK_WAIT_S, SqliteBranch, SqliteResource
from nodes import eventually
from sqlite_files import leftovers

pytestmark = pytest.mark.anyio


def _take(tx: SqliteBranch, payload: Any) -> None:
    row = tx.read("stock", payload["item"])
    if row is None or row["qty"] < 1:
        left = 0 if row is None else row["qty"]
        raise ValueError(f"out of stock: {left} left of {payload['item']!r}")
    tx.update("stock", payload["item"], {"qty": row["qty"] - 1})


def _order(tx: SqliteBranch, payload: Any) -> None:
    tx.insert("orders", {"item": payload["item"], "buyer": payload["buyer"]})


def _setup(tmp: Path) -> tuple[Path, Path]:
    stock, orders = tmp / "stock.sqlite", tmp / "orders.sqlite"
    with sqlite3.connect(stock) as db:
        db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, qty INTEGER NOT NULL)")
        db.execute("INSERT INTO stock VALUES ('lamp', 2)")
    with sqlite3.connect(orders) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, buyer TEXT)")
    return stock, orders


def _one(path: Path, sql: str) -> Any:
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchone()[0]


async def _buy_all(rt: Runtime, buyers: int) -> list[TxnOutcome]:
    results: list[TxnOutcome] = []

    async def buy(n: int) -> None:
        payload = {"item": "lamp", "buyer": f"b{n}"}
        results.append(await rt.transact({"stock@shop": payload, "orders@shop": payload}))

    async with anyio.create_task_group() as tg:
        for n in range(buyers):
            tg.start_soon(buy, n)
    return results


async def test_ten_orders_for_two_lamps_place_two_and_refuse_eight_as_out_of_stock(
    tmp_path: Path,
) -> None:
    assert LOCK_WAIT_S > 0
    stock_path, orders_path = _setup(tmp_path)
    stock = SqliteResource(stock_path, name="stock", branch=_take)
    orders = SqliteResource(orders_path, name="orders", branch=_order)
    async with stock, orders, Runtime(
        "shop", wal_path=tmp_path / "wal.db", resources={"stock": stock, "orders": orders}
    ) as rt:
        results = await _buy_all(rt, 10)
        # `transact` returns at the decision, before every member has applied it.
        await eventually(lambda: leftovers(stock_path) == leftovers(orders_path) == (0, 0, 0))
    placed = [r for r in results if r.committed]
    refused = [r for r in results if not r.committed]
    assert len(placed) == 2, [r.reason for r in results]
    assert len(refused) == 8
    assert all("out of stock: 0 left" in r.reason for r in refused), [r.reason for r in refused]
    assert _one(stock_path, "SELECT qty FROM stock") == 0
    assert _one(orders_path, "SELECT count(*) FROM orders") == 2


async def test_with_lock_wait_s_0_a_contended_row_is_refused_at_once(tmp_path: Path) -> None:
    """The old behaviour, still there for callers who prefer to retry themselves."""
    stock_path, orders_path = _setup(tmp_path)
    stock = SqliteResource(stock_path, name="stock", branch=_take, lock_wait_s=0)
    orders = SqliteResource(orders_path, name="orders", branch=_order)
    async with stock, orders, Runtime(
        "shop", wal_path=tmp_path / "wal.db", resources={"stock": stock, "orders": orders}
    ) as rt:
        results = await _buy_all(rt, 10)
        # `transact` returns at the decision, before every member has applied it.
        await eventually(lambda: leftovers(stock_path) == leftovers(orders_path) == (0, 0, 0))
    assert sum(r.committed for r in results) <= 2
    assert any("is locked by transaction" in r.reason for r in results)
    # Whatever was refused, stock and orders agree.
    sold = 2 - _one(stock_path, "SELECT qty FROM stock")
    assert _one(orders_path, "SELECT count(*) FROM orders") == sold == sum(
        r.committed for r in results)
