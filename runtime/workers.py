"""A bounded pool of worker tasks that run a host's resource calls.

A participant calls its `Resource` (prepare, commit, abort) for many
transactions at once. Starting a task group task per call costs more than
the whole protocol step around it, so each participant host owns a fixed
set of long-lived workers, started in the runtime's task group, that take
calls from a bounded queue. The pool size bounds how many calls run against
one resource concurrently (`resource_concurrency`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from anyio.abc import TaskGroup
from dtxn.protocols.errors import ConfigError, DtxnError

Job = Callable[[], Awaitable[None]]


class WorkQueueFull(DtxnError):
    """Raised when more resource calls wait than the pool's queue holds."""


class WorkerPool:
    """`workers` tasks draining a queue of at most `queue_max` jobs."""

    def __init__(self, name: str, *, workers: int, queue_max: int = 65536) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"{name}: worker count must be an int >= 1, got {workers!r}")
        self.name = name
        self.workers = workers
        self._queue: asyncio.Queue[Job] = asyncio.Queue(queue_max)

    def start(self, tg: TaskGroup) -> None:
        for _ in range(self.workers):
            tg.start_soon(self._work)

    def submit_nowait(self, job: Job) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise WorkQueueFull(
                f"{self.name}: {self._queue.qsize()} resource calls already wait"
            ) from None

    def pending(self) -> int:
        return self._queue.qsize()

    async def _work(self) -> None:
        queue = self._queue
        while True:
            job = await queue.get()
            # A job handles its own errors (see ParticipantHost); anything that
            # escapes is a bug and fails the runtime's task group.
            await job()
