"""Benchmark of the actor core against the floors it is built on.

    python -m dtxn.bench.actors [--json] [--quick]

Measures one-way `tell` throughput and `ask` round trips per second on uvloop
and on plain asyncio in the same run, each next to baselines measured on the
same loop: a bounded `asyncio.Queue` between two tasks, anyio memory object
streams used naively (`await send` / `await receive`), and the ask floor, a
bare asyncio future per message resolved by the receiving task. The ratios
are what matter; absolute figures depend on the machine. If pykka is
importable, its thread-based tell and ask are measured as a reference.

Each figure is the best of several trials (like `timeit`): the fastest trial
is the one least disturbed by the rest of the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import platform
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import anyio
from dtxn.actors import Actor, ActorSystem
from dtxn.runtime.clock import Clock
from dtxn.runtime.loop import uvloop_available

# Targets from the design: the actor may cost at most this much over the floor.
TELL_TARGET = 0.25  # of the bounded asyncio.Queue's throughput
ASK_TARGET = 0.5  # of the bare-future ping-pong

MAILBOX_SIZE = 1024

Trial = Callable[[int], Awaitable[float]]


# -- what is measured ------------------------------------------------------------


class _Sink(Actor[int]):
    """Counts messages; resolves `done` at the n-th, so timing covers the handling."""

    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.n = n
        self.done = done
        self.count = 0

    async def receive(self, message: int) -> int:
        self.count += 1
        if self.count == self.n:
            self.done.set_result(None)
        return message


async def actor_tell(n: int) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(lambda: _Sink(n, done), mailbox_size=MAILBOX_SIZE)
        start = time.perf_counter()
        for i in range(n):
            await ref.tell(i)
        await done
        return n / (time.perf_counter() - start)


async def actor_ask(n: int, timeout_s: float | None = None) -> float:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(lambda: _Sink(n, done), mailbox_size=MAILBOX_SIZE)
        start = time.perf_counter()
        for i in range(n):
            await ref.ask(i, timeout_s)
        return n / (time.perf_counter() - start)


async def actor_ask_with_timeout(n: int) -> float:
    return await actor_ask(n, timeout_s=60.0)


async def queue_tell(n: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue(MAILBOX_SIZE)

    async def consume() -> None:
        count = 0
        while count < n:
            await queue.get()
            count += 1

    consumer = asyncio.ensure_future(consume())
    start = time.perf_counter()
    for i in range(n):
        await queue.put(i)
    await consumer
    return n / (time.perf_counter() - start)


async def anyio_stream_tell(n: int) -> float:
    send, receive = anyio.create_memory_object_stream[int](MAILBOX_SIZE)
    rate = 0.0
    with send, receive:

        async def consume() -> None:
            count = 0
            while count < n:
                await receive.receive()
                count += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            start = time.perf_counter()
            for i in range(n):
                await send.send(i)
        rate = n / (time.perf_counter() - start)
    return rate


async def future_ask(n: int) -> float:
    """The ask floor: the receiver resolves one bare future per message."""
    loop = asyncio.get_running_loop()
    inbox: deque[tuple[int, asyncio.Future[int]]] = deque()
    wakeup: list[asyncio.Future[None] | None] = [None]

    async def serve() -> None:
        handled = 0
        while handled < n:
            while inbox:
                message, reply = inbox.popleft()
                reply.set_result(message)
                handled += 1
            if handled < n:
                waiter = wakeup[0] = loop.create_future()
                await waiter

    server = asyncio.ensure_future(serve())
    await asyncio.sleep(0)  # let the server start waiting, as a spawned actor is
    start = time.perf_counter()
    for i in range(n):
        reply: asyncio.Future[int] = loop.create_future()
        inbox.append((i, reply))
        waiter = wakeup[0]
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        await reply
    rate = n / (time.perf_counter() - start)
    await server
    return rate


TELLS: dict[str, Trial] = {
    "actor tell": actor_tell,
    "asyncio.Queue (bounded)": queue_tell,
    "anyio stream (naive)": anyio_stream_tell,
}
# The naive stream is an order of magnitude slower; fewer messages give the
# same rate in less time.
_SCALE = {"anyio stream (naive)": 0.2}
ASKS: dict[str, Trial] = {
    "actor ask": actor_ask,
    "actor ask (timeout_s)": actor_ask_with_timeout,
    "bare future (floor)": future_ask,
}


# -- running trials --------------------------------------------------------------


async def _best_rates(trials: dict[str, tuple[Trial, int]], repeats: int) -> dict[str, float]:
    """Interleave the trials so that drift in the machine hits them all alike."""
    best = dict.fromkeys(trials, 0.0)
    for _ in range(repeats):
        for label, (trial, n) in trials.items():
            gc.collect()
            best[label] = max(best[label], await trial(n))
    return best


def _on_loop(use_uvloop: bool, n_tell: int, n_ask: int, repeats: int) -> dict[str, float]:
    trials = {label: (t, int(n_tell * _SCALE.get(label, 1))) for label, t in TELLS.items()}
    trials.update({label: (t, n_ask) for label, t in ASKS.items()})

    async def main() -> dict[str, float]:
        return await _best_rates(trials, repeats)

    if use_uvloop:
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def _pykka(n_tell: int, n_ask: int, repeats: int) -> dict[str, float] | None:
    try:
        pykka: Any = importlib.import_module("pykka")
    except ImportError:
        return None

    class Sink(pykka.ThreadingActor):  # type: ignore[misc]
        def on_receive(self, message: Any) -> Any:
            return message

    best = {"pykka tell (threads)": 0.0, "pykka ask (threads)": 0.0}
    for _ in range(repeats):
        ref = Sink.start()
        try:
            gc.collect()
            start = time.perf_counter()
            for i in range(n_tell):
                ref.tell(i)
            ref.ask(None)  # FIFO: when this is answered, every tell was handled
            rate = n_tell / (time.perf_counter() - start)
            best["pykka tell (threads)"] = max(best["pykka tell (threads)"], rate)
            gc.collect()
            start = time.perf_counter()
            for i in range(n_ask):
                ref.ask(i)
            rate = n_ask / (time.perf_counter() - start)
            best["pykka ask (threads)"] = max(best["pykka ask (threads)"], rate)
        finally:
            ref.stop()
    return best


def _version_of(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run(quick: bool) -> dict[str, Any]:
    """Measure everything and return the figures (msgs/s, ratios, verdicts) as plain data."""
    n_tell, n_ask, repeats = (100_000, 20_000, 3) if quick else (400_000, 100_000, 5)
    loops = {"uvloop": True, "asyncio": False} if uvloop_available() else {"asyncio": False}
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "uvloop": _version_of("uvloop"),
            "anyio": _version_of("anyio"),
            "pykka": _version_of("pykka"),
        },
        "params": {
            "quick": quick,
            "tell_messages": n_tell,
            "ask_round_trips": n_ask,
            "trials": repeats,
            "mailbox_size": MAILBOX_SIZE,
        },
        "targets": {"tell_vs_queue": TELL_TARGET, "ask_vs_future": ASK_TARGET},
        "loops": {},
    }
    for loop_name, use_uvloop in loops.items():
        rates = _on_loop(use_uvloop, n_tell, n_ask, repeats)
        tell_ratio = rates["actor tell"] / rates["asyncio.Queue (bounded)"]
        ask_ratio = rates["actor ask"] / rates["bare future (floor)"]
        results["loops"][loop_name] = {
            "rates": rates,
            "tell_vs_queue": tell_ratio,
            "tell_vs_anyio_stream": rates["actor tell"] / rates["anyio stream (naive)"],
            "ask_vs_future": ask_ratio,
            "tell_target_met": tell_ratio >= TELL_TARGET,
            "ask_target_met": ask_ratio >= ASK_TARGET,
        }
    pykka_n = (20_000, 5_000) if quick else (100_000, 20_000)
    results["pykka"] = _pykka(*pykka_n, repeats)
    return results


# -- reporting -------------------------------------------------------------------


def _rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    loops = list(results["loops"])
    header = ["msgs/s (best of trials)", *loops]
    rows: list[list[str]] = []
    for label in [*TELLS, *ASKS]:
        rows.append([label, *(f"{results['loops'][lp]['rates'][label]:,.0f}" for lp in loops)])

    def ratio(key: str, target: float | None) -> list[str]:
        cells = []
        for lp in loops:
            value = results["loops"][lp][key]
            mark = "" if target is None else ("  ok" if value >= target else "  MISSED")
            cells.append(f"{value:.2f}x{mark}")
        return cells

    rows.append([f"tell / Queue (target >= {TELL_TARGET})", *ratio("tell_vs_queue", TELL_TARGET)])
    rows.append(["tell / anyio stream", *ratio("tell_vs_anyio_stream", None)])
    rows.append([f"ask / future (target >= {ASK_TARGET})", *ratio("ask_vs_future", ASK_TARGET)])
    for label, rate in (results["pykka"] or {}).items():
        rows.append([label, *(f"{rate:,.0f}" if i == 0 else "" for i in range(len(loops)))])
    return header, rows


def report(results: dict[str, Any]) -> str:
    """The results as a plain-text table (what `--json` leaves out: nothing)."""
    header, rows = _rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _print_table(results: dict[str, Any]) -> None:
    machine = results["machine"]
    title = (
        f"dtxn actor core: {machine['cpus']} CPUs, Python {machine['python']}, "
        f"uvloop {machine['uvloop']}, anyio {machine['anyio']}"
    )
    try:
        rich_console: Any = importlib.import_module("rich.console")
        rich_table: Any = importlib.import_module("rich.table")
    except ImportError:
        print(title)
        print(report(results))
        return
    header, rows = _rows(results)
    table = rich_table.Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    rich_console.Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dtxn.bench.actors", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--quick", action="store_true", help="fewer messages (about 10 s)")
    args = parser.parse_args(argv)
    results = run(quick=args.quick)
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
    else:
        _print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
