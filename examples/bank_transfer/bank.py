"""The banks' side of the example: schema, the branch each participant runs, and the audit.

Each bank is a PostgreSQL database with `accounts(id, balance)` and
`transfers(id, delta)`. A transfer's branch at one bank moves the balance of
one account and records the transfer id, in the same PostgreSQL transaction
that `PostgresResource` then prepares. So "committed at a bank" means "its
id is in that bank's transfers table", and the audit can compare the banks.
"""

from __future__ import annotations

from typing import Any

import asyncpg  # type: ignore[import-untyped]

ACCOUNTS = 100
OPENING_BALANCE = 1_000


async def branch(conn: Any, payload: dict[str, Any]) -> None:
    """One bank's half of a transfer: payload = {"id": txid, "account": n, "delta": amount}."""
    # A row locked by a transfer that waits for its decision makes us wait;
    # not forever: the error becomes a NO vote and the transfer aborts.
    await conn.execute("SET LOCAL lock_timeout = '2s'")
    await conn.execute(
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
        payload["delta"], payload["account"],
    )
    await conn.execute(
        "INSERT INTO transfers (id, delta) VALUES ($1, $2)", payload["id"], payload["delta"]
    )


async def create(dsn: str) -> None:
    """Fresh tables: ACCOUNTS accounts holding OPENING_BALANCE each, no transfers."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS accounts, transfers;"
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);"
            "CREATE TABLE transfers (id text PRIMARY KEY, delta bigint NOT NULL);"
        )
        await conn.executemany(
            "INSERT INTO accounts VALUES ($1, $2)",
            [(n, OPENING_BALANCE) for n in range(ACCOUNTS)],
        )
    finally:
        await conn.close()


class BankState:
    """What one bank's database says at the end."""

    def __init__(self, total: int, transfers: dict[str, int], prepared: list[str]) -> None:
        self.total = total
        self.transfers = transfers
        self.prepared = prepared


async def audit(dsn: str) -> BankState:
    conn = await asyncpg.connect(dsn)
    try:
        total = int(await conn.fetchval("SELECT sum(balance) FROM accounts"))
        rows = await conn.fetch("SELECT id, delta FROM transfers")
        prepared = await conn.fetch(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
        )
    finally:
        await conn.close()
    return BankState(
        total, {str(r["id"]): int(r["delta"]) for r in rows}, [str(r["gid"]) for r in prepared]
    )
