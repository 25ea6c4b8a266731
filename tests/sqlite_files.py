"""Helpers for tests that look inside a `SqliteResource`'s file: one `accounts` table.

`create_ledger(path)` makes account 1 with 100; `move` is the branch that adds
its payload to account 1's balance; `leftovers(path)` counts the markers, undo
rows and row locks a prepared branch leaves, (0, 0, 0) once it is decided.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from dtxn.runtime.resources import SqliteBranch


def create_ledger(path: Path, balance: int = 100) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);"
            f"INSERT INTO accounts VALUES (1, {int(balance)});"
        )
    db.close()


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(path)
    try:
        return [tuple(row) for row in db.execute(sql, params)]
    finally:
        db.close()


def balance(path: Path, account: int = 1) -> int:
    ((value,),) = query(path, "SELECT balance FROM accounts WHERE id = ?", (account,))
    return int(value)


def leftovers(path: Path) -> tuple[int, int, int]:
    """(markers, undo rows, locks) left in the file."""
    counts = [
        query(path, f"SELECT count(*) FROM {table}")[0][0]
        for table in ("dtxn_prepared", "dtxn_undo", "dtxn_locks")
    ]
    return counts[0], counts[1], counts[2]


def move(tx: SqliteBranch, amount: Any) -> None:
    row = tx.read("accounts", 1)
    assert row is not None
    tx.update("accounts", 1, {"balance": row["balance"] + int(amount)})
