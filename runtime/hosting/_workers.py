"""A bounded pool of worker tasks that run a host's resource calls.

A participant calls its `Resource` (prepare, commit, abort) for many
transactions at once. Starting a task group task per call costs more than
the whole protocol step around it, so each participant host owns a set of
long-lived workers that take calls from a bounded queue. The pool size
bounds how many calls run against one resource concurrently
(`resource_concurrency`).

**The pool is its workers' task group** (`async with pool:`), as the actor
system is its actors': it starts each worker as a plain asyncio task, on
demand (a job that finds no idle worker starts one, up to the pool size),
cancels them all with `cancel_all()` (a crash) or on exit, and joins them
before its block ends; a worker that fails (a job must handle its own
errors, so that is a bug) stops the others, is reported to `on_failure`, and
is raised from the block in an ExceptionGroup. Why not an anyio task group:
jobs are submitted from timer and WAL callbacks, outside any task, where
anyio cannot start a task; and a node incarnation in the simulator lives for
a few dozen events while many of its pools (the saga pool of a 2PC node)
never get a job: spawning their workers up front and cancelling them again
was a large part of a node's start and crash.

Waking a worker costs a task switch, as much as a cheap call itself, so a
submit wakes a worker only when none is already on its way; a worker that
takes a job while more wait wakes (or starts) the next one first (in case
its own job suspends), and one whose job finished without suspending takes
the next job itself. Calls that never suspend then cost a couple of task
switches per burst instead of one each; calls that do suspend still all
start, one wake after another, up to the pool size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from anyio import CancelScope
from anyio.lowlevel import checkpoint
from dtxn.protocols.errors import ConfigError, DtxnError

Job = Callable[[], Awaitable[None]]
# A job given as a function and two arguments (`submit_call`): no closure or
# job object to allocate per call, which the garbage collector would scan
# while the call waits for a worker.
Call = Callable[[Any, Any], Awaitable[None]]
_NO_ARGUMENT: Any = object()

# A worker that keeps finding jobs yields to the loop after this many in a row,
# so that a burst of calls that never suspend cannot starve the actors.
_FAIRNESS_BATCH = 64


class WorkQueueFull(DtxnError):
    """Raised when more resource calls wait than the pool's queue holds."""


class WorkerPool:
    """`workers` tasks draining a queue of at most `queue_max` jobs."""

    def __init__(self, name: str, *, workers: int, queue_max: int = 65536) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"{name}: worker count must be an int >= 1, got {workers!r}")
        self.name = name
        self.workers = workers
        self.queue_max = queue_max
        # Three queues in step: the job, and its two arguments (`_NO_ARGUMENT`
        # for a job submitted without arguments).
        self._jobs: deque[Job | Call] = deque()
        self._firsts: deque[Any] = deque()
        self._seconds: deque[Any] = deque()
        # Futures of the idle workers, each resolved to wake that worker.
        self._idle: list[asyncio.Future[None]] = []
        # A worker has been woken (or started) and has not taken a job yet.
        self._waking = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = True
        self._errors: list[BaseException] = []
        # Called with a worker's error, once: the runtime stops the node.
        self.on_failure: Callable[[BaseException], None] | None = None

    async def __aenter__(self) -> WorkerPool:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._errors = []
        if self._jobs and not self._waking:
            self._wake_one()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Calls still running belong to transactions that recovery finishes
        # at the next start: they are cancelled, then joined.
        self.cancel_all()
        with CancelScope(shield=True):
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        if self._errors:
            raise BaseExceptionGroup(f"{self.name}: a worker failed", self._errors)

    def cancel_all(self) -> None:
        """Cancel every worker now (a crash); no new worker starts after this."""
        self._closed = True
        for task in self._tasks:
            task.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self._errors.append(error)
            self.cancel_all()
            if self.on_failure is not None:
                self.on_failure(error)

    def submit_nowait(self, job: Job) -> None:
        """Run `await job()` on a worker; raises `WorkQueueFull` when the queue is full."""
        self.submit_call(job, _NO_ARGUMENT, _NO_ARGUMENT)  # type: ignore[arg-type]

    def submit_call(self, call: Call, first: Any, second: Any) -> None:
        """Run `await call(first, second)` on a worker; raises `WorkQueueFull` when full."""
        jobs = self._jobs
        if len(jobs) >= self.queue_max:
            raise WorkQueueFull(f"{self.name}: {len(jobs)} resource calls already wait")
        jobs.append(call)
        self._firsts.append(first)
        self._seconds.append(second)
        if not self._waking:
            self._wake_one()

    def pending(self) -> int:
        return len(self._jobs)

    def _wake_one(self, *, start: bool = True) -> None:
        """Wake an idle worker, or start one more when none is idle and there is room."""
        idle = self._idle
        while idle:
            waiter = idle.pop()
            # A worker being cancelled (its node crashed) has a cancelled
            # waiter that it has not removed yet: skip it, wake a live one.
            if not waiter.done():
                self._waking = True
                waiter.set_result(None)
                return
        loop = self._loop
        if start and not self._closed and loop is not None and len(self._tasks) < self.workers:
            self._waking = True
            task = loop.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _work(self) -> None:
        jobs = self._jobs
        firsts = self._firsts
        seconds = self._seconds
        idle = self._idle
        loop = asyncio.get_running_loop()
        # Started to take a job, as a woken worker is.
        self._waking = False
        batch = 0
        while True:
            if not jobs:
                waiter: asyncio.Future[None] = loop.create_future()
                idle.append(waiter)
                try:
                    await waiter
                except BaseException:
                    if waiter.done() and not waiter.cancelled():
                        # Woken and cancelled at once: pass the wake on.
                        self._waking = False
                        if jobs and idle:
                            # Only to a live worker: this one is being cancelled.
                            self._wake_one(start=False)
                    elif waiter in idle:
                        idle.remove(waiter)
                    raise
                self._waking = False
                batch = 0
                continue
            job = jobs.popleft()
            first = firsts.popleft()
            second = seconds.popleft()
            if jobs and not self._waking:
                self._wake_one()
            # A job handles its own errors (see ParticipantHost); anything that
            # escapes is a bug: the pool stops and the runtime fails.
            if first is _NO_ARGUMENT:
                await job()  # type: ignore[call-arg]
            else:
                await job(first, second)  # type: ignore[call-arg]
            batch += 1
            if batch >= _FAIRNESS_BATCH:
                batch = 0
                await checkpoint()
