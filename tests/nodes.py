"""Test helpers: nodes that can be crashed and restarted, and a durable-enough test resource."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from dtxn.protocols.messages import Vote
from dtxn.runtime import Runtime
from dtxn.runtime.clock import Clock

_clock = Clock()


async def eventually(condition: Callable[[], bool], *, within_s: float = 10.0) -> None:
    """Wait until `condition()` holds; fail after `within_s` (a deadline, not a speed check)."""
    waited = 0.0
    while not condition():
        if waited >= within_s:
            raise AssertionError(f"condition still false after {within_s}s")
        await _clock.sleep(0.01)
        waited += 0.01


class Ledger:
    """A resource whose state outlives a node crash (it stands for a database).

    prepare applies nothing until commit; `vote` and `gate` script its answers.
    """

    def __init__(self, vote: Vote = Vote.YES) -> None:
        self.vote = vote
        self.gate: anyio.Event | None = None
        self.prepared: dict[str, Any] = {}
        self.committed: list[str] = []
        self.aborted: list[str] = []
        self.balance = 0

    async def prepare(self, txid: str, payload: Any) -> Vote:
        if self.gate is not None:
            await self.gate.wait()
        if self.vote is Vote.YES:
            self.prepared[txid] = payload
        return self.vote

    async def commit(self, txid: str) -> None:
        if txid in self.prepared:
            self.balance += int(self.prepared.pop(txid) or 0)
            self.committed.append(txid)

    async def abort(self, txid: str) -> None:
        if self.prepared.pop(txid, None) is not None or txid not in self.aborted:
            self.aborted.append(txid)


class Node:
    """Runs a `Runtime` in a task of `tg` so a test can crash and restart it."""

    def __init__(self, tg: TaskGroup, factory: Callable[[], Runtime]) -> None:
        self._tg = tg
        self._factory = factory
        self.rt: Runtime | None = None
        self._stop = anyio.Event()
        self._done = anyio.Event()

    async def start(self) -> Runtime:
        self._stop = anyio.Event()
        self._done = anyio.Event()
        rt: Runtime = await self._tg.start(self._run)
        return rt

    async def _run(self, *, task_status: TaskStatus[Runtime]) -> None:
        try:
            async with self._factory() as rt:
                self.rt = rt
                task_status.started(rt)
                await self._stop.wait()
        finally:
            self._done.set()

    async def crash(self) -> None:
        assert self.rt is not None
        self.rt.crash()
        await self._done.wait()

    async def stop(self) -> None:
        self._stop.set()
        await self._done.wait()
