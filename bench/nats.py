"""Benchmark: 2PC across processes over NATS, against the same run in one process.

    python -m dtxn.bench.nats [--quick] [--json]

Three participant nodes (each a no-op resource voting yes, with its own
SQLite WAL at durability `full`) and one coordinator node. Two layouts,
measured in the same run, on the same disk:

- `in-process`: four `Runtime`s in this process on one `InProcessTransport`;
- `nats`: the participants are three `dtxn node` processes, the coordinator
  runs here; every message crosses a private nats-server on loopback.

Per cell: committed transactions per second and p50/p99 latency of
`transact` (returned once the decision is durable at the coordinator), at
concurrency 1, 16 and 256.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process
from dtxn.bench.txn import TIMEOUTS, NoOp, _drive, _percentile, _sizes
from dtxn.protocols.effects import Outcome
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.cli.node import start_process
from dtxn.runtime.loop import run as run_loop
from dtxn.runtime.servers import nats_server
from dtxn.runtime.transport.nats import NatsTransport

PARTICIPANTS = ("p1", "p2", "p3")
CONCURRENCY = (1, 16, 256)


def noop_resource() -> NoOp:
    """The `python` resource factory the participant node processes use."""
    return NoOp()


def _node_config(root: Path, node: str, url: str) -> Path:
    text = f"""
[node]
name = "{node}"
wal = "{node}.wal"
durability = "full"

[nats]
servers = ["{url}"]

[timeouts]
votes_s = {TIMEOUTS.votes_s}
acks_s = {TIMEOUTS.acks_s}
decision_s = {TIMEOUTS.decision_s}
retry_max_s = {TIMEOUTS.retry_max_s}

[[resources]]
name = "noop"
kind = "python"
factory = "dtxn.bench.nats:noop_resource"
"""
    path = root / f"{node}.toml"
    path.write_text(text)
    return path


@asynccontextmanager
async def _node_processes(root: Path, url: str) -> AsyncIterator[list[Process]]:
    processes: list[Process] = []
    try:
        for node in PARTICIPANTS:
            config = _node_config(root, node, url)
            processes.append(await start_process(config, root / f"{node}.log"))
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            with anyio.move_on_after(30, shield=True):
                await process.wait()
            await process.aclose()


async def _cells(
    coord: Runtime, quick: bool, concurrency: Sequence[int]
) -> list[dict[str, Any]]:
    pids = {f"noop@{node}": None for node in PARTICIPANTS}

    async def one() -> bool:
        outcome = await coord.transact(pids, timeouts=TIMEOUTS)
        return outcome.outcome is Outcome.COMMITTED

    cells = []
    for level in concurrency:
        await _drive(level, 2, 5.0, one)  # warm up (imports, statement caches)
        per_task, budget = _sizes(quick, level)
        committed, elapsed, latencies = await _drive(level, per_task, budget, one)
        latencies.sort()
        cells.append({
            "concurrency": level,
            "tx_per_s": round(committed / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 0.5), 3),
            "p99_ms": round(_percentile(latencies, 0.99), 3),
        })
    return cells


async def _in_process(root: Path, quick: bool, concurrency: Sequence[int]) -> list[dict[str, Any]]:
    transport = InProcessTransport()
    async with AsyncExitStack() as stack:
        for node in PARTICIPANTS:
            await stack.enter_async_context(Runtime(
                node, transport=transport, wal_path=root / f"in-{node}.wal",
                durability="full", resources={"noop": NoOp()}, timeouts=TIMEOUTS,
            ))
        coord = await stack.enter_async_context(Runtime(
            "coord", transport=transport, wal_path=root / "in-coord.wal", durability="full",
            timeouts=TIMEOUTS,
        ))
        return await _cells(coord, quick, concurrency)


async def _over_nats(root: Path, quick: bool, concurrency: Sequence[int]) -> list[dict[str, Any]]:
    async with (
        nats_server() as server,
        _node_processes(root, server.url),
        NatsTransport(server.url, outbox_size=1 << 17) as transport,
        Runtime("coord", transport=transport, wal_path=root / "nats-coord.wal",
                durability="full", timeouts=TIMEOUTS) as coord,
    ):
        await transport.wait_subscribed()
        return await _cells(coord, quick, concurrency)


def run(quick: bool = False, concurrency: Sequence[int] = CONCURRENCY) -> dict[str, Any]:
    """Both layouts, same run; returns {"in_process": [...], "nats": [...], "ratio": [...]}."""
    root = Path(tempfile.mkdtemp(prefix="dtxn-bench-nats-"))

    async def main() -> dict[str, Any]:
        local = await _in_process(root, quick, concurrency)
        remote = await _over_nats(root, quick, concurrency)
        ratio = [
            {"concurrency": a["concurrency"],
             "nats_over_in_process": round(b["tx_per_s"] / a["tx_per_s"], 3)}
            for a, b in zip(local, remote, strict=True)
        ]
        return {"participants": len(PARTICIPANTS), "durability": "full",
                "in_process": local, "nats": remote, "ratio": ratio}

    results: dict[str, Any] = run_loop(main)
    return results


def print_table(results: dict[str, Any]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps(results, indent=2))
        return
    table = Table(title="2PC, 3 participants, durability full: in one process vs over NATS")
    for column in ("concurrency", "in-process tx/s", "p50 ms", "p99 ms",
                   "NATS tx/s", "p50 ms", "p99 ms", "NATS / in-process"):
        table.add_column(column, justify="right")
    for a, b, r in zip(results["in_process"], results["nats"], results["ratio"], strict=True):
        table.add_row(str(a["concurrency"]), f"{a['tx_per_s']:,.0f}", f"{a['p50_ms']:.2f}",
                      f"{a['p99_ms']:.2f}", f"{b['tx_per_s']:,.0f}", f"{b['p50_ms']:.2f}",
                      f"{b['p99_ms']:.2f}", f"{r['nats_over_in_process']:.2f}")
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="2PC over NATS vs in-process")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
