"""Benchmark: 2PC over PostgreSQL prepared transactions in two databases, against plain commits.

    python -m dtxn.bench.pg [--quick] [--json] [--dir DIR]

One private PostgreSQL 15 server (`postgres_server`, fsync on) holds bank_a
and bank_b, each with an accounts table. A transaction moves 1 between two
accounts, taking the next of 4096 pairs in turn, so transactions in flight
never wait on each other's row locks: this measures the commit path, not
contention. Client tasks (one pool connection per task and database) run
transactions back to back for a fixed time, on the same server in the same run:

- `one-db`: BEGIN; UPDATE; UPDATE; COMMIT in bank_a (asyncpg): the baseline.
- `two-db`: one such commit per database, in turn, not atomic: the cost of
  two databases before any protocol.
- `dtxn-2pc`: one UPDATE per database, each a `PostgresResource` on its own
  participant `Runtime`, plus a coordinator, 2PC over in-process transport,
  every runtime with its own SQLite WAL at durability full. p50/p99 are of
  `transact` (it returns once the decision is durable); tx/s counts until
  every COMMIT PREPARED is done.

After every cell: total balance unchanged, bank_b up by one per committed
cross-database transfer, pg_prepared_xacts empty, else `CheckFailed`. A full
run makes three rounds of every cell and reports the median cell by tx/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from dtxn.bench.txn import TIMEOUTS, _drive, _loop_name, _percentile, _run_async, _settle
from dtxn.protocols.errors import DtxnError
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.resources.postgres import PostgresResource
from dtxn.runtime.servers import PostgresServer, postgres_server

LABELS = {
    "one-db": "1 database, plain commit",
    "two-db": "2 databases, 2 commits, not atomic",
    "dtxn-2pc": "2 databases, dtxn 2PC (prepared)",
}
SYSTEMS = tuple(LABELS)
CONCURRENCY = (1, 16, 64)
PAIRS = 4096
BALANCE = 1_000_000
MOVE = "UPDATE accounts SET balance = balance + $2 WHERE id = $1"
DATABASES = ("bank_a", "bank_b")

# (transactions per client task, time budget in seconds), or None for the defaults.
Sizes = tuple[int, float] | None


class CheckFailed(DtxnError):
    """Raised when a cell leaves money created or lost, or a prepared transaction behind."""


@dataclass
class Ledger:
    """What the cells have done so far: the next account pair and the money moved to bank_b."""

    serial: int = 0
    moved: int = 0

    def pair(self) -> int:
        self.serial += 1
        return self.serial % PAIRS


async def _branch(conn: Any, payload: Any) -> None:
    """One side of a transfer at a PostgresResource: payload is (account, delta)."""
    account, delta = payload
    await conn.execute(MOVE, int(account), int(delta))


async def _pool(stack: contextlib.AsyncExitStack, dsn: str, size: int) -> Any:
    pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
    stack.push_async_callback(pool.close)
    return pool


async def _build(
    stack: contextlib.AsyncExitStack, system: str, server: PostgresServer, c: int,
    ledger: Ledger, wal_dir: Path,
) -> tuple[Callable[[], Awaitable[bool]], list[Runtime]]:
    """The one-transaction callable for `system`, and the runtimes to wait for at the end."""
    a = await _pool(stack, server.dsn("bank_a"), c)
    if system == "one-db":

        async def one_db() -> bool:
            k = ledger.pair()
            async with a.acquire() as conn, conn.transaction():
                await conn.execute(MOVE, 2 * k, -1)
                await conn.execute(MOVE, 2 * k + 1, 1)
            return True

        return one_db, []
    b = await _pool(stack, server.dsn("bank_b"), c)
    if system == "two-db":

        async def two_db() -> bool:
            k = ledger.pair()
            async with a.acquire() as conn, conn.transaction():
                await conn.execute(MOVE, 2 * k, -1)
            async with b.acquire() as conn, conn.transaction():
                await conn.execute(MOVE, 2 * k + 1, 1)
            ledger.moved += 1
            return True

        return two_db, []
    transport = InProcessTransport()
    nodes = []
    for node, pool in (("bank-a", a), ("bank-b", b)):
        resource = PostgresResource(pool=pool, name=f"ledger@{node}", branch=_branch)
        await resource.start()
        nodes.append(Runtime(node, transport=transport, wal_path=wal_dir / f"{node}.db",
                             durability="full", resources={"ledger": resource},
                             timeouts=TIMEOUTS))
    coord = Runtime("coord", transport=transport, wal_path=wal_dir / "coord.db",
                    durability="full", timeouts=TIMEOUTS)
    nodes.append(coord)
    for rt in nodes:
        await stack.enter_async_context(rt)

    async def two_phase() -> bool:
        k = ledger.pair()
        outcome = await coord.transact(
            {"ledger@bank-a": (2 * k, -1), "ledger@bank-b": (2 * k + 1, 1)}
        )
        if outcome.committed:
            ledger.moved += 1
        return outcome.committed

    return two_phase, nodes


async def _check(server: PostgresServer, ledger: Ledger) -> dict[str, Any]:
    """Balances and leftovers after a cell; raises CheckFailed when one is wrong."""
    conn = await asyncpg.connect(server.dsn("bank_a"))
    try:
        # Let the closed pools' backends exit, so the next cell finds its connections.
        for _ in range(250):
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            if others == 0:
                break
            await asyncio.sleep(0.02)
        sums = []
        for db in DATABASES:
            other = await asyncpg.connect(server.dsn(db))
            try:
                sums.append(int(await other.fetchval("SELECT sum(balance) FROM accounts")))
            finally:
                await other.close()
        prepared = int(await conn.fetchval("SELECT count(*) FROM pg_prepared_xacts"))
    finally:
        await conn.close()
    initial = 2 * PAIRS * BALANCE
    check = {
        "total_unchanged": sum(sums) == 2 * initial,
        "moved_expected": ledger.moved,
        "moved_found": sums[1] - initial,
        "prepared_left": prepared,
    }
    if not check["total_unchanged"] or ledger.moved != sums[1] - initial or prepared:
        raise CheckFailed(f"correctness check failed after a cell: {check}, balances {sums}")
    return check


async def _cell(
    system: str, server: PostgresServer, c: int, sizes: tuple[int, float], ledger: Ledger,
    wal_dir: Path,
) -> dict[str, Any]:
    per_task, budget_s = sizes
    async with contextlib.AsyncExitStack() as stack:
        one, nodes = await _build(stack, system, server, c, ledger, wal_dir)
        # Warm up (prepared statements, caches, first allocations), then measure.
        await _drive(min(c, 16), 5, budget_s, one)
        await _settle(nodes)
        started = time.perf_counter()
        committed, _, latencies = await _drive(c, per_task, budget_s, one)
        await _settle(nodes)  # COMMIT PREPARED done everywhere
        elapsed_s = time.perf_counter() - started
    check = await _check(server, ledger)
    latencies.sort()
    return {
        "system": system,
        "concurrency": c,
        "committed": committed,
        "elapsed_s": elapsed_s,
        "tx_per_s": committed / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "check": check,
    }


async def _setup(server: PostgresServer) -> tuple[str, int]:
    """Fill both databases; return the server version and the largest concurrency it serves."""
    for db in DATABASES:
        conn = await asyncpg.connect(server.dsn(db))
        try:
            await conn.execute(
                "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);"
                f" INSERT INTO accounts SELECT i, {BALANCE}"
                f" FROM generate_series(0, {2 * PAIRS - 1}) i"
            )
            await conn.execute("VACUUM ANALYZE accounts")
            version = str(await conn.fetchval("SHOW server_version"))
            limit = int(await conn.fetchval("SHOW max_connections")) - int(
                await conn.fetchval("SHOW superuser_reserved_connections")
            )
        finally:
            await conn.close()
    # dtxn-2pc opens one pool of `c` connections per database, and _check one more.
    return version, (limit - 1) // 2


async def _measure(
    server: PostgresServer, root: Path, systems: Sequence[str], concurrency: Sequence[int],
    rounds: int, sizes: tuple[int, float],
) -> dict[str, Any]:
    version, most = await _setup(server)
    ledger = Ledger()
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for round_ in range(rounds):
        for c in (c for c in concurrency if c <= most):
            for system in systems:
                wal_dir = root / f"{system}-c{c}-r{round_}"
                wal_dir.mkdir()
                cell = await _cell(system, server, c, sizes, ledger, wal_dir)
                samples.setdefault((system, c), []).append(cell)
    checks = [cell.pop("check") | {"system": s, "concurrency": c, "round": i}
              for (s, c), cells in samples.items() for i, cell in enumerate(cells)]
    # The median cell by tx/s: the shared machine's speed drifts between rounds.
    results = [sorted(cells, key=lambda cell: cell["tx_per_s"])[len(cells) // 2]
               | {"rounds_tx_per_s": [cell["tx_per_s"] for cell in cells]}
               for cells in samples.values()]
    base = {r["concurrency"]: r for r in results if r["system"] == "one-db"}
    for cell in results:
        if cell["concurrency"] in base:
            cell["vs_one_db"] = cell["tx_per_s"] / base[cell["concurrency"]]["tx_per_s"]
            cell["p50_vs_one_db"] = cell["p50_ms"] / base[cell["concurrency"]]["p50_ms"]
    return {
        "postgres_version": version,
        "skipped_concurrency": [c for c in concurrency if c > most],
        "checks": checks,
        "results": results,
    }


def run(
    quick: bool = False,
    *,
    systems: Sequence[str] = SYSTEMS,
    concurrency: Sequence[int] = CONCURRENCY,
    directory: str | os.PathLike[str] | None = None,
    sizes: Sizes = None,
    rounds: int | None = None,
) -> dict[str, Any]:
    """Start a private server, measure every cell, check every cell; return plain data.

    `sizes` overrides (transactions per client task, time budget in seconds)
    for every cell (tests use it to stay fast); `rounds` defaults to 1 quick,
    3 otherwise.
    """
    rounds = rounds if rounds is not None else (1 if quick else 3)
    # Cells are bounded by time: the count is only a ceiling.
    cell_sizes = sizes if sizes is not None else (100_000, 1.0 if quick else 4.0)
    started = time.perf_counter()
    # Room for every transaction of the largest concurrency prepared in both databases.
    with (
        tempfile.TemporaryDirectory(prefix="dtxn-bench-pg-", dir=directory) as tmp,
        postgres_server(max_prepared_transactions=200, fsync=True) as server,
    ):
        for db in DATABASES:
            server.createdb(db)
        measured: dict[str, Any] = _run_async(functools.partial(
            _measure, server, Path(tmp), systems, concurrency, rounds, cell_sizes
        ))
    return {
        "quick": quick,
        "loop": _loop_name(),
        "python": sys.version.split()[0],
        "fsync": True,
        "wal_durability": "full",
        "rounds": rounds,
        "directory": str(Path(directory) if directory is not None else tempfile.gettempdir()),
        **measured,
        "wall_s": time.perf_counter() - started,
    }


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "conc", "tx/s", "p50 ms", "p99 ms", "tx/s vs 1 db", "p50 vs 1 db"]
    rows = []
    order = {system: i for i, system in enumerate(SYSTEMS)}
    for r in sorted(results["results"], key=lambda r: (r["concurrency"], order[r["system"]])):
        ratio, p50 = r.get("vs_one_db"), r.get("p50_vs_one_db")
        rows.append([
            LABELS[r["system"]], str(r["concurrency"]), f"{r['tx_per_s']:,.0f}",
            f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
            "" if ratio is None else f"{ratio:.2f}", "" if p50 is None else f"{p50:.2f}x",
        ])
    return header, rows


def print_table(results: dict[str, Any]) -> None:
    """The results as a rich table (plain text without rich), with the checks as caption."""
    header, rows = table_rows(results)
    title = (f"PostgreSQL {results['postgres_version']} (fsync on) 2PC vs plain commits "
             f"({results['loop']}, dtxn WALs durability full, median of {results['rounds']})")
    checks = results["checks"]
    caption = (f"{len(checks)} cells checked: total balance unchanged, bank_b gained one per"
               f" committed transfer, pg_prepared_xacts empty"
               + (f"; skipped concurrency {results['skipped_concurrency']} (max_connections)"
                  if results["skipped_concurrency"] else ""))
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        lines = [f"{r[0]:<36}" + "".join(f"{cell:>13}" for cell in r[1:]) for r in [header, *rows]]
        print("\n".join([title, *lines, caption]))
        return
    table = Table(title=title, caption=caption)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(110, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtxn.bench.pg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of short cells")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--dir", default=None, help="where to put the WAL files (default: tmp)")
    parser.add_argument("--concurrency", type=int, action="append", default=None)
    args = parser.parse_args(argv)
    results = run(args.quick, concurrency=args.concurrency or CONCURRENCY, directory=args.dir)
    print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
