"""Benchmark: orchestrated sagas on one node, against DBOS Transact as a peer.

    python -m dtxn.bench.sagas [--quick] [--json] [--dir DIR] [--no-peer]

A saga of N no-op steps in a line (each step depends on the one before it and
has a no-op compensation) runs on one `Runtime` with durability `full` (its
SQLite WAL in a temporary directory). `concurrency` client tasks call
`run_saga` back to back until each has run its count or the cell's time is
up. Per cell: completed sagas per second, p50/p99 latency of `run_saga` (it
returns once the saga's outcome is durable), and WAL commits (fsyncs) per
saga, read from `Runtime.statistics().txn.wal_commits` after every saga has
finished. Like `dtxn.bench.txn`, the run first measures raw sqlite3 forced
commits per second on the same disk (its fsync cost drifts between runs).

The peer, measured in the same run on the same disk: the same 3-step no-op
workflow on DBOS Transact (`pip install dbos`; not a dependency of dtxn),
three `@DBOS.step()` coroutines awaited in turn by one `@DBOS.workflow()`,
with its SQLite system database in the same temporary directory, in the
configuration DBOS ships (it sets no journal mode, so SQLite's rollback
journal is used; the journal mode found is reported). When `dbos` is not
importable the peer is skipped and the result says so.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from dtxn.bench.txn import (
    _drive,
    _loop_name,
    _percentile,
    _run_async,
    _settle,
    _sqlite_forced_commits,
)
from dtxn.protocols.saga import SagaDefinition, SagaStep
from dtxn.runtime import Runtime
from dtxn.runtime.hosting import StepCall

STEPS = (3, 8)
CONCURRENCY = (1, 16, 256)
DURABILITY = "full"
PEER_STEPS = 3


def _sizes(quick: bool, concurrency: int) -> tuple[int, float]:
    """(sagas per client task, time budget in seconds) for one dtxn cell."""
    total = 2048 if quick else 8192
    budget_s = 2.5 if quick else 8.0
    if concurrency == 1:
        return (200 if quick else 1000), budget_s
    return max(4, total // concurrency), budget_s


def _peer_sizes(quick: bool, concurrency: int) -> tuple[int, float]:
    """As `_sizes`, for the peer: it is slower, so fewer per task and a shorter budget."""
    total = 512 if quick else 2048
    budget_s = 2.5 if quick else 8.0
    if concurrency == 1:
        return (100 if quick else 400), budget_s
    return max(2, total // concurrency), budget_s


def _summary(committed: int, elapsed_s: float, latencies: list[float]) -> dict[str, Any]:
    latencies.sort()
    return {
        "completed": committed,
        "elapsed_s": elapsed_s,
        "sagas_per_s": committed / elapsed_s if elapsed_s > 0 else 0.0,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
    }


# -- dtxn ---------------------------------------------------------------------------


async def _noop(call: StepCall) -> None:
    return None


def linear_saga(steps: int) -> SagaDefinition:
    """`steps` no-op steps, each depending on the one before, each with a no-op compensation."""
    return SagaDefinition(
        f"linear{steps}",
        tuple(
            SagaStep(f"s{i}", "noop", "undo", (f"s{i - 1}",) if i else ())
            for i in range(steps)
        ),
    )


async def _dtxn_cell(root: Path, steps: int, concurrency: int, quick: bool) -> dict[str, Any]:
    # A fresh directory per cell: a WAL left by an earlier cell would be recovered.
    cell = Path(tempfile.mkdtemp(prefix=f"saga-s{steps}-c{concurrency}-", dir=root))
    definition = linear_saga(steps)
    runtime = Runtime("n", wal_path=cell / "n.db", durability=DURABILITY)

    async def one() -> bool:
        outcome = await runtime.run_saga(definition.name, None)
        return outcome.completed

    per_task, budget_s = _sizes(quick, concurrency)
    async with runtime:
        runtime.register_saga(definition, {"noop": _noop, "undo": _noop})
        # Warm up (connections, caches, first allocations), then measure.
        await _drive(min(concurrency, 16), 5, budget_s, one)
        await _settle([runtime])
        fsyncs0 = runtime.statistics().txn.wal_commits
        committed, elapsed_s, latencies = await _drive(concurrency, per_task, budget_s, one)
        await _settle([runtime])
        fsyncs1 = runtime.statistics().txn.wal_commits
    return {
        "system": "dtxn",
        "steps": steps,
        "concurrency": concurrency,
        "durability": DURABILITY,
        **_summary(committed, elapsed_s, latencies),
        "fsyncs_per_saga": (fsyncs1 - fsyncs0) / max(committed, 1),
    }


# -- DBOS Transact (peer) -------------------------------------------------------------

# DBOS registers decorated functions in a process-wide registry, once.
_dbos_workflow: list[Callable[[], Awaitable[None]]] = []


def _dbos() -> Any:
    """The `dbos` module, imported by name so that mypy needs neither it nor its stubs."""
    return importlib.import_module("dbos")


def _dbos_available() -> str | None:
    """The installed DBOS version, or None when `dbos` is not importable."""
    try:
        _dbos()
    except ImportError:
        return None
    try:
        return metadata.version("dbos")
    except metadata.PackageNotFoundError:
        return "unknown"


def _dbos_three_steps() -> Callable[[], Awaitable[None]]:
    if _dbos_workflow:
        return _dbos_workflow[0]
    DBOS = _dbos().DBOS

    # Decorators applied as calls: `DBOS` is untyped here, and a typed name keeps mypy strict.
    async def step1() -> None:
        return None

    async def step2() -> None:
        return None

    async def step3() -> None:
        return None

    steps: list[Callable[[], Awaitable[None]]] = [
        DBOS.step()(fn) for fn in (step1, step2, step3)
    ]

    async def three_steps() -> None:
        for step in steps:
            await step()

    workflow: Callable[[], Awaitable[None]] = DBOS.workflow()(three_steps)
    _dbos_workflow.append(workflow)
    return workflow


async def _dbos_cells(
    workflow: Callable[[], Awaitable[None]], concurrency: Sequence[int], quick: bool
) -> list[dict[str, Any]]:
    async def one() -> bool:
        await workflow()
        return True

    cells = []
    for c in concurrency:
        per_task, budget_s = _peer_sizes(quick, c)
        await _drive(min(c, 16), 2, budget_s, one)
        committed, elapsed_s, latencies = await _drive(c, per_task, budget_s, one)
        cells.append({
            "system": "dbos",
            "steps": PEER_STEPS,
            "concurrency": c,
            **_summary(committed, elapsed_s, latencies),
        })
    return cells


def _dbos_peer(
    root: Path, concurrency: Sequence[int], quick: bool, journal: str | None
) -> dict[str, Any]:
    """Run the 3-step workflow on DBOS with a fresh SQLite system database in `root`.

    `journal` None leaves the database as DBOS creates it; "wal" creates the
    file in WAL mode first (the mode is stored in the file, so DBOS keeps it).
    """
    version = _dbos_available()
    if version is None:
        return {"skipped": "dbos is not importable (pip install dbos to measure the peer)"}
    DBOS = _dbos().DBOS

    workflow = _dbos_three_steps()
    database = root / f"dbos-{journal or 'default'}.sqlite"
    if journal is not None:
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.execute(f"PRAGMA journal_mode={journal}")
    DBOS(config={
        "name": "dtxn-bench-sagas",
        "system_database_url": f"sqlite:///{database}",
        "log_level": "WARNING",
    })
    try:
        DBOS.launch()
        cells: list[dict[str, Any]] = _run_async(
            functools.partial(_dbos_cells, workflow, concurrency, quick)
        )
    finally:
        DBOS.destroy()
    with contextlib.closing(sqlite3.connect(database)) as db:
        journal_mode = str(db.execute("PRAGMA journal_mode").fetchone()[0])
    # DBOS sets no `synchronous` pragma: SQLite's default, FULL, as dtxn's `full`.
    return {
        "version": version,
        "system_database": f"SQLite, journal_mode={journal_mode}, synchronous=FULL"
        + (" (as DBOS creates it)" if journal is None else " (set before launch)"),
        "results": cells,
    }


# -- driver ------------------------------------------------------------------------------


PEER_JOURNALS: tuple[str | None, ...] = (None, "wal")


def run(
    quick: bool = False,
    *,
    steps: Sequence[int] = STEPS,
    concurrency: Sequence[int] = CONCURRENCY,
    directory: str | os.PathLike[str] | None = None,
    peer: bool = True,
) -> dict[str, Any]:
    """Measure every dtxn cell and the DBOS peer; return them as plain data.

    `peers` holds one entry per DBOS configuration (as DBOS creates its
    SQLite database, then in WAL mode), each with its cells, or a `skipped`
    note; `dtxn_over_peer` the ratio of 3-step sagas per second, dtxn over
    that peer, per concurrency.
    """
    results: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="dtxn-bench-sagas-", dir=directory) as tmp:
        root = Path(tmp)
        # What one forced record costs on this disk now (fsync cost drifts between runs).
        forced = _sqlite_forced_commits(root / "forced.db", 100 if quick else 500)
        for n in steps:
            for c in concurrency:
                results.append(_run_async(functools.partial(_dtxn_cell, root, n, c, quick)))
        if not peer:
            peers.append({"skipped": "not measured (--no-peer)"})
        for journal in PEER_JOURNALS if peer else ():
            found = _dbos_peer(root, concurrency, quick, journal)
            peers.append(found)
            if "skipped" in found:
                break
    for found in peers:
        ratios: dict[str, float] = {}
        for cell in found.get("results", []):
            ours = next((r for r in results if r["steps"] == PEER_STEPS
                         and r["concurrency"] == cell["concurrency"]), None)
            if ours is not None and cell["sagas_per_s"] > 0:
                ratios[str(cell["concurrency"])] = ours["sagas_per_s"] / cell["sagas_per_s"]
        found["dtxn_over_peer"] = ratios
    return {
        "quick": quick,
        "loop": _loop_name(),
        "python": sys.version.split()[0],
        "sqlite_version": sqlite3.sqlite_version,
        "directory": str(Path(directory) if directory is not None else tempfile.gettempdir()),
        "sqlite_forced_commits_per_s": forced,
        "results": results,
        "peers": peers,
    }


def _rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["system", "steps", "conc", "sagas/s", "p50 ms", "p99 ms", "fsyncs/saga",
              "dtxn / peer"]
    rows = []
    for r in results["results"]:
        rows.append([
            "dtxn", str(r["steps"]), str(r["concurrency"]), f"{r['sagas_per_s']:,.0f}",
            f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", f"{r['fsyncs_per_saga']:.2f}", "",
        ])
    for i, found in enumerate(results["peers"]):
        for r in found.get("results", []):
            ratio = found["dtxn_over_peer"].get(str(r["concurrency"]))
            rows.append([
                f"DBOS [{i + 1}]", str(r["steps"]), str(r["concurrency"]),
                f"{r['sagas_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}", "",
                "" if ratio is None else f"{ratio:.1f}x",
            ])
    return header, rows


def _notes(results: dict[str, Any]) -> list[str]:
    notes = []
    for i, found in enumerate(results["peers"]):
        if "skipped" in found:
            notes.append(f"DBOS peer skipped: {found['skipped']}")
        else:
            notes.append(f"[{i + 1}] DBOS Transact {found['version']}, {found['system_database']}")
    return notes


def _print_table(results: dict[str, Any]) -> None:
    header, rows = _rows(results)
    title = (f"dtxn sagas, durability full, no-op steps in a line "
             f"({results['loop']}, sqlite {results['sqlite_version']}; raw forced "
             f"commits/s: {results['sqlite_forced_commits_per_s']:,.0f})")
    notes = _notes(results)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        print("  ".join(f"{h:>11}" for h in header))
        for row in rows:
            print("  ".join(f"{cell:>11}" for cell in row))
        print("\n".join(notes))
        return
    table = Table(title=title, caption="\n".join(notes))
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(100, Console().width)).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtxn.bench.sagas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts, short cells")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--dir", default=None, help="where to put the databases (default: tmp)")
    parser.add_argument("--steps", type=int, action="append", default=None)
    parser.add_argument("--concurrency", type=int, action="append", default=None)
    parser.add_argument("--no-peer", action="store_true", help="do not measure DBOS")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = run(
        args.quick,
        steps=args.steps or STEPS,
        concurrency=args.concurrency or CONCURRENCY,
        directory=args.dir,
        peer=not args.no_peer,
    )
    results["wall_s"] = time.perf_counter() - started
    _print_table(results)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
