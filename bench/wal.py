"""Benchmark: forced WAL records per second with group commit, against raw sqlite3.

    python -m dtxn.bench.wal [--quick] [--dir DIR] [--json]

Every figure comes from the same run on the same disk. The baselines use the
stdlib sqlite3 module on the calling thread with the WAL's own settings
(journal_mode=WAL, synchronous=FULL) and schema: one record per commit (what
a log without group commit pays per forced record), then batches of 16 and
256 records per commit (the best a batch of that size can do). `SqliteWal`
is then driven by 1, 16 and 256 tasks that each force records one after the
other, as transactions would. Run it on the disk the node will use: on tmpfs
an fsync costs nothing and the comparison means little.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from dtxn.runtime.wal import SqliteWal, record_checksum

RECORD = b"r" * 100  # about the size of an encoded PREPARED record
CONCURRENCY = (1, 16, 256)
BATCHES = (16, 256)


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"per_record": 100, "batches": 20, "records_per_task_1": 100, "records_total": 640}
    return {"per_record": 1000, "batches": 100, "records_per_task_1": 1000, "records_total": 5120}


def _baseline(path: Path, commits: int, batch: int) -> dict[str, float]:
    """Raw sqlite3 on this thread: `commits` commits of `batch` records each."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE records (lsn INTEGER PRIMARY KEY AUTOINCREMENT, txid TEXT NOT NULL,"
            " kind TEXT NOT NULL, data BLOB NOT NULL, checksum INTEGER NOT NULL)"
        )
        db.execute("CREATE INDEX records_txid ON records (txid)")
        lsn = 0
        started = time.perf_counter()
        for _ in range(commits):
            rows = []
            for _ in range(batch):
                lsn += 1
                txid = f"t{lsn}"
                rows.append(
                    (lsn, txid, "prepared", RECORD, record_checksum(lsn, txid, "prepared", RECORD))
                )
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        elapsed_s = time.perf_counter() - started
    finally:
        db.close()
    return {
        "records": commits * batch,
        "commits": commits,
        "records_per_s": commits * batch / elapsed_s,
        "commits_per_s": commits / elapsed_s,
    }


async def _wal(path: Path, concurrency: int, per_task: int) -> dict[str, float]:
    """`concurrency` tasks, each forcing `per_task` records one after the other."""

    async def transaction_stream(task: int) -> None:
        for i in range(per_task):
            await store.force(f"t{task}.{i}", "prepared", RECORD)

    async with SqliteWal(path) as store:
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for task in range(concurrency):
                tg.start_soon(transaction_stream, task)
        elapsed_s = time.perf_counter() - started
        stats = store.statistics()
    return {
        "records": stats.records_committed,
        "commits": stats.commits,
        "records_per_s": stats.records_committed / elapsed_s,
        "commits_per_s": stats.commits / elapsed_s,
        "mean_batch": stats.mean_batch,
        "largest_batch": stats.largest_batch,
    }


async def _aiosqlite_trip_us(trips: int) -> float:
    """What one aiosqlite call costs with no IO at all: the reason for one trip per batch."""
    async with aiosqlite.connect(":memory:") as conn:
        started = time.perf_counter()
        for _ in range(trips):
            await conn.execute("SELECT 1")
        return (time.perf_counter() - started) / trips * 1e6


def _run_async(fn: Callable[[], Any]) -> Any:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return anyio.run(fn)
    return anyio.run(fn, backend_options={"use_uvloop": True})


def _baseline_at(path: Path, *, size: int, batch: int) -> dict[str, float]:
    return _baseline(path, size, batch)


def _wal_at(path: Path, *, tasks: int, per_task: int) -> dict[str, float]:
    result: dict[str, float] = _run_async(functools.partial(_wal, path, tasks, per_task))
    return result


def _median(samples: list[dict[str, float]]) -> dict[str, float]:
    """The sample with the median rate: the disk's speed drifts, so one pass can mislead."""
    ordered = sorted(samples, key=lambda sample: sample["records_per_s"])
    return ordered[len(ordered) // 2]


def run(quick: bool = False, *, directory: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Measure and return the figures as plain data (see the module docstring).

    A full run makes three rounds, each measuring everything once in turn, and
    reports the median of each figure; a quick run makes one round.
    """
    sizes = _sizes(quick)
    rounds = 1 if quick else 3
    samples: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="dtxn-bench-wal-", dir=directory) as tmp:
        root = Path(tmp)
        for round_ in range(rounds):
            runs: dict[str, Callable[[Path], dict[str, float]]] = {
                "per_record": lambda p: _baseline(p, sizes["per_record"], 1),
            }
            for batch in BATCHES:
                runs[f"batch_{batch}"] = functools.partial(
                    _baseline_at, size=sizes["batches"], batch=batch
                )
            for c in CONCURRENCY:
                n = sizes["records_per_task_1"] if c == 1 else sizes["records_total"] // c
                runs[f"concurrency_{c}"] = functools.partial(_wal_at, tasks=c, per_task=n)
            for name, measure in runs.items():
                samples.setdefault(name, []).append(measure(root / f"{name}-{round_}.db"))
    baseline = {
        name: _median(samples[name]) for name in ["per_record"] + [f"batch_{b}" for b in BATCHES]
    }
    per_record_s = baseline["per_record"]["records_per_s"]
    wal: dict[str, Any] = {}
    for c in CONCURRENCY:
        figures = dict(_median(samples[f"concurrency_{c}"]))
        figures["vs_sqlite3_per_record"] = figures["records_per_s"] / per_record_s
        wal[f"concurrency_{c}"] = figures
    return {
        "quick": quick,
        "rounds": rounds,
        "directory": str(Path(directory) if directory is not None else tempfile.gettempdir()),
        "sqlite_version": sqlite3.sqlite_version,
        "record_bytes": len(RECORD),
        "sqlite3_baseline": baseline,
        "sqlite_wal": wal,
        "aiosqlite_trip_us": _run_async(lambda: _aiosqlite_trip_us(500 if quick else 5000)),
    }


def _report(results: dict[str, Any]) -> str:
    lines = [
        f"dtxn WAL benchmark (sqlite {results['sqlite_version']}, "
        f"{results['record_bytes']}-byte records, in {results['directory']},"
        f" median of {results['rounds']} rounds)",
        f"{'what':<34}{'records/s':>12}{'fsyncs':>9}{'recs/fsync':>12}{'vs 1/commit':>13}",
    ]
    base = results["sqlite3_baseline"]
    per_record_s = base["per_record"]["records_per_s"]
    for name, label in [("per_record", "sqlite3, 1 record per commit")] + [
        (f"batch_{b}", f"sqlite3, {b} records per commit") for b in BATCHES
    ]:
        row = base[name]
        lines.append(
            f"{label:<34}{row['records_per_s']:>12,.0f}{row['commits']:>9}"
            f"{row['records'] / row['commits']:>12.1f}{row['records_per_s'] / per_record_s:>12.1f}x"
        )
    for concurrency in CONCURRENCY:
        row = results["sqlite_wal"][f"concurrency_{concurrency}"]
        label = f"SqliteWal.force, {concurrency} tasks"
        lines.append(
            f"{label:<34}{row['records_per_s']:>12,.0f}{row['commits']:>9}"
            f"{row['mean_batch']:>12.1f}{row['vs_sqlite3_per_record']:>12.1f}x"
        )
    lines.append(f"one aiosqlite call (SELECT 1): {results['aiosqlite_trip_us']:.0f} us")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtxn.bench.wal", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer records, for a smoke run")
    parser.add_argument("--dir", default=None, help="where to put the files (default: tmp)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    results = run(args.quick, directory=args.dir)
    print(json.dumps(results, indent=2) if args.json else _report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
