"""Benchmark: atomic commit (2PC / 3PC) through real runtimes, against a hand-written floor.

    python -m dtxn.bench.txn [--quick] [--json] [--dir DIR]

Every participant is a no-op resource voting yes, each on its own in-process
node (`Runtime` on one `InProcessTransport`) with its own WAL; the coordinator
has a node of its own. `concurrency` client tasks run transactions back to
back on the coordinator until each has run its count or the cell's time is up.
Per cell: committed transactions per second, p50/p99 latency of `transact`
(it returns once the decision is durable at the coordinator), messages sent
per transaction and WAL commits (fsyncs) per transaction, both summed over
all nodes after the transactions have finished everywhere.

Measured in the same run, on the same disk:
- `sqlite_forced_commits_per_s`: raw sqlite3, one record per commit,
  journal_mode=WAL, synchronous=FULL: what one forced record costs.
- `floor_2pc_tx_per_s`: the same 2PC written by hand with nothing else: a
  coordinator and N participants as plain asyncio tasks connected by
  asyncio.Queues; participants force PREPARED and COMMITTED, the coordinator
  forces COMMIT; each process has its own group-committed sqlite3 writer (one
  thread per database, writing everything queued in one transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from dtxn.protocols.messages import Timeouts, Vote
from dtxn.runtime import InProcessTransport, Runtime

PROTOCOLS = ("2pc", "3pc")
PARTICIPANTS = (1, 3, 8)
CONCURRENCY = (1, 16, 256)
DURABILITY = ("full",)
DURABILITIES = ("full", "normal", "memory")
QUICK_PARTICIPANTS = (3,)
RECORD = b"r" * 100  # about the size of an encoded PREPARED record

# Generous timeouts: a benchmark under load must not abort on a slow fsync.
TIMEOUTS = Timeouts(votes_s=30.0, acks_s=5.0, decision_s=30.0, retry_max_s=5.0)


class NoOp:
    """A resource that does nothing and always votes yes."""

    async def prepare(self, txid: str, payload: Any) -> Vote:
        return Vote.YES

    async def commit(self, txid: str) -> None:
        return None

    async def abort(self, txid: str) -> None:
        return None


# (transactions per client task, time budget in seconds), or None for the defaults.
Sizes = tuple[int, float] | None


def _sizes(quick: bool, concurrency: int, override: Sizes = None) -> tuple[int, float]:
    """(transactions per client task, time budget in seconds) for one cell."""
    if override is not None:
        return override
    total = 2048 if quick else 8192
    budget = 3.0 if quick else 8.0
    if concurrency == 1:
        return (200 if quick else 1000), budget
    return max(4, total // concurrency), budget


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# -- dtxn ---------------------------------------------------------------------------


async def _drive(
    concurrency: int,
    per_task: int,
    budget_s: float,
    one: Callable[[], Any],
) -> tuple[int, float, list[float]]:
    """Run `one()` from `concurrency` tasks back to back; (committed, elapsed_s, latencies_ms)."""
    latencies: list[float] = []
    committed = 0
    deadline = time.perf_counter() + budget_s

    async def client() -> None:
        nonlocal committed
        for _ in range(per_task):
            start = time.perf_counter()
            ok = await one()
            end = time.perf_counter()
            if ok:
                committed += 1
                latencies.append((end - start) * 1e3)
            if end >= deadline:
                return

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
    return committed, time.perf_counter() - started, latencies


async def _settle(nodes: Sequence[Runtime], within_s: float = 10.0) -> None:
    """Wait until no node holds an unfinished transaction (acks and END records done)."""
    deadline = time.perf_counter() + within_s
    while time.perf_counter() < deadline:
        if all(node.statistics().txn.active == 0 for node in nodes):
            return
        await asyncio.sleep(0.005)


def _totals(nodes: Sequence[Runtime]) -> tuple[int, int]:
    messages = fsyncs = 0
    for node in nodes:
        txn = node.statistics().txn
        messages += txn.messages_sent
        fsyncs += txn.wal_commits
    return messages, fsyncs


async def _dtxn_cell(
    root: Path,
    protocol: str,
    participants: int,
    concurrency: int,
    durability: str,
    quick: bool,
    sizes: Sizes = None,
) -> dict[str, Any]:
    transport = InProcessTransport()
    cell = root / f"{protocol}-p{participants}-c{concurrency}-{durability}"
    cell.mkdir(parents=True, exist_ok=True)

    def wal(name: str) -> Path | None:
        return None if durability == "memory" else cell / f"{name}.db"

    parts = [
        Runtime(
            f"p{i}",
            transport=transport,
            wal_path=wal(f"p{i}"),
            durability=durability,
            resources={"r": NoOp()},
            timeouts=TIMEOUTS,
        )
        for i in range(participants)
    ]
    coord = Runtime(
        "coord", transport=transport, wal_path=wal("coord"), durability=durability,
        timeouts=TIMEOUTS,
    )
    nodes = [*parts, coord]
    payload = {f"r@p{i}": None for i in range(participants)}

    async def one() -> bool:
        outcome = await coord.transact(payload, protocol=protocol)
        return outcome.committed

    per_task, budget_s = _sizes(quick, concurrency, sizes)
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        # Warm up (connections, caches, first allocations), then measure.
        await _drive(min(concurrency, 16), 5, budget_s, one)
        await _settle(nodes)
        messages0, fsyncs0 = _totals(nodes)
        committed, elapsed_s, latencies = await _drive(concurrency, per_task, budget_s, one)
        await _settle(nodes)
        messages1, fsyncs1 = _totals(nodes)
    latencies.sort()
    per = max(committed, 1)
    return {
        "protocol": protocol,
        "participants": participants,
        "concurrency": concurrency,
        "durability": durability,
        "committed": committed,
        "elapsed_s": elapsed_s,
        "tx_per_s": committed / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "messages_per_tx": (messages1 - messages0) / per,
        "fsyncs_per_tx": (fsyncs1 - fsyncs0) / per,
    }


# -- the hand-written floor ------------------------------------------------------------


def _open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS records (lsn INTEGER PRIMARY KEY AUTOINCREMENT,"
        " txid TEXT NOT NULL, kind TEXT NOT NULL, data BLOB NOT NULL)"
    )
    return db


class GroupWriter:
    """One database, one writer thread; everything queued while it writes goes in one commit."""

    def __init__(self, path: Path) -> None:
        self._db = _open_db(path)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="floor-wal")
        self._pending: list[tuple[str, str, asyncio.Future[None]]] = []
        self._flushing = False
        self.commits = 0

    def _write(self, rows: list[tuple[str, str, bytes]]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO records (txid, kind, data) VALUES (?, ?, ?)", rows)
        self._db.execute("COMMIT")

    async def force(self, txid: str, kind: str) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((txid, kind, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rows = [(txid, kind, RECORD) for txid, kind, _ in batch]
                await loop.run_in_executor(self._pool, self._write, rows)
                self.commits += 1
                for _, _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._flushing = False

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._db.close()


async def _floor_2pc(
    root: Path, participants: int, concurrency: int, quick: bool, sizes: Sizes = None
) -> dict[str, Any]:
    """2PC by hand: tasks, queues and group-committed sqlite3 writers, nothing else."""
    cell = root / f"floor-p{participants}-c{concurrency}"
    cell.mkdir(parents=True, exist_ok=True)
    coord_wal = GroupWriter(cell / "coord.db")
    part_wals = [GroupWriter(cell / f"p{i}.db") for i in range(participants)]
    inboxes: list[asyncio.Queue[tuple[str, str]]] = [asyncio.Queue() for _ in part_wals]
    coord_inbox: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    votes: dict[str, tuple[int, asyncio.Future[None]]] = {}
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def on_message(i: int, kind: str, txid: str) -> None:
        if kind == "prepare":
            await part_wals[i].force(txid, "prepared")
            coord_inbox.put_nowait(("yes", txid))
        else:
            await part_wals[i].force(txid, "committed")
            coord_inbox.put_nowait(("ack", txid))

    async def participant(i: int) -> None:
        inbox = inboxes[i]
        while True:
            kind, txid = await inbox.get()
            spawn(on_message(i, kind, txid))

    async def coordinator_inbox() -> None:
        while True:
            kind, txid = await coord_inbox.get()
            if kind == "yes":
                left, future = votes[txid]
                if left == 1:
                    del votes[txid]
                    future.set_result(None)
                else:
                    votes[txid] = (left - 1, future)

    serial = 0

    async def one() -> bool:
        nonlocal serial
        serial += 1
        txid = f"t{serial}"
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        votes[txid] = (participants, future)
        for inbox in inboxes:
            inbox.put_nowait(("prepare", txid))
        await future
        await coord_wal.force(txid, "commit")
        for inbox in inboxes:
            inbox.put_nowait(("commit", txid))
        return True

    loops = [asyncio.get_running_loop().create_task(participant(i)) for i in range(participants)]
    loops.append(asyncio.get_running_loop().create_task(coordinator_inbox()))
    per_task, budget_s = _sizes(quick, concurrency, sizes)
    try:
        await _drive(min(concurrency, 16), 5, budget_s, one)
        committed, elapsed_s, latencies = await _drive(concurrency, per_task, budget_s, one)
        while tasks:
            await asyncio.gather(*list(tasks))
    finally:
        for task in loops:
            task.cancel()
        for writer in (coord_wal, *part_wals):
            writer.close()
    latencies.sort()
    return {
        "participants": participants,
        "concurrency": concurrency,
        "committed": committed,
        "tx_per_s": committed / elapsed_s,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
    }


def _sqlite_forced_commits(path: Path, commits: int) -> float:
    db = _open_db(path)
    try:
        started = time.perf_counter()
        for i in range(commits):
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO records (txid, kind, data) VALUES (?, ?, ?)", (f"t{i}", "p", RECORD)
            )
            db.execute("COMMIT")
        return commits / (time.perf_counter() - started)
    finally:
        db.close()


# -- driver ------------------------------------------------------------------------------


def _run_async(fn: Callable[[], Any]) -> Any:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(fn)
    return anyio.run(fn, backend_options={"use_uvloop": True})


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(
    quick: bool = False,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    participants: Sequence[int] | None = None,
    concurrency: Sequence[int] = CONCURRENCY,
    durability: Sequence[str] = DURABILITY,
    directory: str | os.PathLike[str] | None = None,
    floor_participants: int = 3,
    sizes: Sizes = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every cell and the baselines; return them as plain data (see module docstring).

    `sizes` overrides (transactions per client task, time budget in seconds) for
    every cell and the floor, and shortens the raw-sqlite baseline to match (tests
    use it to stay fast). `progress` is called with a short label after each of
    the `steps(...)` measurements.
    """
    if participants is None:
        participants = QUICK_PARTICIPANTS if quick else PARTICIPANTS
    done = progress if progress is not None else (lambda label: None)
    forced_commits = 100 if quick else 500
    if sizes is not None:
        forced_commits = max(5, min(forced_commits, sizes[0]))
    results: list[dict[str, Any]] = []
    floor: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="dtxn-bench-txn-", dir=directory) as tmp:
        root = Path(tmp)
        forced = _sqlite_forced_commits(root / "forced.db", forced_commits)
        done("raw sqlite forced commits")
        for c in concurrency:
            floor[str(c)] = _run_async(
                functools.partial(_floor_2pc, root, floor_participants, c, quick, sizes)
            )
            done(f"2pc floor, concurrency {c}")
        for mode in durability:
            for proto in protocols:
                for n in participants:
                    for c in concurrency:
                        cell: dict[str, Any] = _run_async(
                            functools.partial(_dtxn_cell, root, proto, n, c, mode, quick, sizes)
                        )
                        base = floor.get(str(c))
                        if (proto == "2pc" and n == floor_participants and mode == "full"
                                and base is not None):
                            cell["vs_floor"] = cell["tx_per_s"] / base["tx_per_s"]
                        results.append(cell)
                        done(f"{proto} x{n} c{c} {mode}")
    return {
        "quick": quick,
        "loop": _loop_name(),
        "python": sys.version.split()[0],
        "sqlite_version": sqlite3.sqlite_version,
        "directory": str(Path(directory) if directory is not None else tempfile.gettempdir()),
        "results": results,
        "baselines": {
            "sqlite_forced_commits_per_s": forced,
            "floor_participants": floor_participants,
            "floor_2pc_tx_per_s": {c: f["tx_per_s"] for c, f in floor.items()},
            "floor_2pc_p50_ms": {c: f["p50_ms"] for c, f in floor.items()},
            "floor_2pc_p99_ms": {c: f["p99_ms"] for c, f in floor.items()},
        },
    }


def steps(
    *,
    protocols: Sequence[str],
    participants: Sequence[int],
    concurrency: Sequence[int],
    durability: Sequence[str],
) -> int:
    """How many times `run` calls `progress` for this matrix (for a progress bar's total)."""
    cells = len(protocols) * len(participants) * len(concurrency) * len(durability)
    return 1 + len(concurrency) + cells


def table_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["protocol", "parts", "conc", "durability", "tx/s", "p50 ms", "p99 ms",
              "msgs/tx", "fsyncs/tx", "vs floor"]
    rows = []
    for r in results["results"]:
        ratio = r.get("vs_floor")
        rows.append([
            r["protocol"], str(r["participants"]), str(r["concurrency"]), r["durability"],
            f"{r['tx_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
            f"{r['messages_per_tx']:.1f}", f"{r['fsyncs_per_tx']:.2f}",
            "" if ratio is None else f"{ratio:.2f}",
        ])
    base = results["baselines"]
    for c, rate in base["floor_2pc_tx_per_s"].items():
        rows.append([
            "floor", str(base["floor_participants"]), c, "full", f"{rate:,.0f}",
            f"{base['floor_2pc_p50_ms'][c]:.2f}", f"{base['floor_2pc_p99_ms'][c]:.2f}",
            "", "", "1.00",
        ])
    return header, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtxn.bench.txn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 participants only, small counts")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--dir", default=None, help="where to put the WAL files (default: tmp)")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS, default=None)
    parser.add_argument("--participants", type=int, action="append", default=None)
    parser.add_argument("--concurrency", type=int, action="append", default=None)
    parser.add_argument("--durability", action="append", choices=DURABILITIES,
                        default=None)
    args = parser.parse_args(argv)
    results = run(
        args.quick,
        protocols=args.protocol or PROTOCOLS,
        participants=args.participants,
        concurrency=args.concurrency or CONCURRENCY,
        durability=args.durability or DURABILITY,
        directory=args.dir,
    )
    from dtxn.bench.report import print_table

    print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
