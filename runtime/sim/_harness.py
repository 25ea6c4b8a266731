"""What both deterministic simulators share: seeds, trace hashing, the timeline, sweeps, shrinking.

The atomic-commit simulator (`dtxn.runtime.sim`) and the saga simulator
(`dtxn.runtime.sim.sagas`) differ in what they run but not in how a run is
driven: one seed derives every random stream, the scenario's timed steps play
in order on virtual time, a node's crash drops its runtime and the unforced
tail of its WAL, a sweep runs derived schedules and a failing schedule
shrinks greedily. Keeping that here means a fix to replay or shrinking
reaches both simulators at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from dtxn.protocols.errors import DtxnError
from dtxn.runtime._runtime import Runtime
from dtxn.runtime.clock import Clock
from dtxn.runtime.sim._loop import SimLoop
from dtxn.runtime.sim._net import Rng, TraceEntry, describe
from dtxn.runtime.sim.invariants import Violation
from dtxn.runtime.wal import MemoryWal

__all__ = [
    "PausableClock",
    "ScheduleFailure",
    "SimNode",
    "SweepTally",
    "TracedRun",
    "cancelled_by_crash",
    "derive_seed",
    "dtxn_replay",
    "play_timeline",
    "quiet_logs",
    "run_virtually",
    "schedule_items",
    "schedule_options",
    "shrink_greedily",
    "stream",
    "sweep_schedules",
    "trace_hash",
    "without_each",
]

ScenarioT = TypeVar("ScenarioT")
ItemT = TypeVar("ItemT")


def schedule_items(text: str) -> tuple[list[str], Iterator[tuple[str, str, str, str]]]:
    """Split a printed schedule ("head k=v ... ; kind@time rest ; ...") into its
    head's words and its items, each as (item, kind, time text, rest).

    The items are read as the caller iterates (so it checks the head first);
    an item without '@time' raises `ValueError` then. Each kind is the
    caller's to check.
    """
    head, *parts = [part.strip() for part in text.strip().split(";")]

    def items() -> Iterator[tuple[str, str, str, str]]:
        for item in parts:
            if not item:
                continue
            what, _, rest = item.partition(" ")
            kind, at, when = what.partition("@")
            if not at:
                raise ValueError(f"schedule item {item!r} has no '@time'")
            yield item, kind, when, rest

    return head.split(), items()


def schedule_options(words: list[str]) -> dict[str, str]:
    """The key=value options that follow a schedule's first word."""
    return dict(word.split("=", 1) for word in words[1:])


def derive_seed(seed: int, stream: str) -> int:
    """A 64-bit seed for `stream`, independent of every other stream of `seed`."""
    digest = hashlib.blake2b(f"{seed}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stream(seed: int, name: str) -> Rng:
    """The random stream `name` of `seed`."""
    return Clock(seed=seed).rng(name)


def trace_hash(trace: list[TraceEntry]) -> str:
    """A digest of a run's trace: equal digests mean a seed replayed exactly."""
    digest = hashlib.blake2b(digest_size=16)
    for at_s, what, detail in trace:
        digest.update(f"{at_s:.9f} {what} {describe(detail)}\n".encode())
    return digest.hexdigest()


def quiet_logs() -> None:
    # Simulated faults make nodes log warnings by the thousand; with no handler
    # configured they would all reach stderr through logging's last resort.
    logger = logging.getLogger("dtxn")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


class _Schedule(Protocol):
    @property
    def seed(self) -> int: ...

    def text(self) -> str: ...


ScheduleT = TypeVar("ScheduleT", bound=_Schedule)


class ScheduleFailure(DtxnError, Generic[ScheduleT]):
    """A simulated run broke an invariant; the message gives the schedule and how to replay it.

    `who` names the run ("simulation", say, to which " seed=N" is added),
    `replay` turns the schedule's one-line text into the call that replays it.
    """

    def __init__(self, scenario: ScheduleT, violations: list[Violation], who: str,
                 replay: Callable[[str], str], *, note: str = "") -> None:
        self.scenario = scenario
        self.violations = violations
        text = scenario.text()
        super().__init__("\n".join([
            f"{who} seed={scenario.seed} broke {len(violations)} invariant(s){note}:",
            *(f"  {v}" for v in violations[:10]),
            f"schedule: {text}",
            f"replay with: {replay(text)}",
        ]))


def dtxn_replay(text: str) -> str:
    """The command line that replays a schedule."""
    return f"dtxn replay '{text}'"


class TracedRun:
    """The virtual clock and event trace of one simulated run (the trace is what replays hash)."""

    def __init__(self) -> None:
        self.trace: list[TraceEntry] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def now(self) -> float:
        assert self.loop is not None
        return self.loop.time()

    def note(self, what: str, detail: Any) -> None:
        self.trace.append((self.now(), what, detail))


def run_virtually(main: Callable[[], Coroutine[Any, Any, None]]) -> float:
    """Run `main()` to the end on a fresh virtual-time loop; return the virtual seconds it took."""
    loop = SimLoop()
    try:
        loop.run_until_complete(main())
        return loop.time()
    finally:
        loop.close()


def cancelled_by_crash() -> bool:
    """Whether the `CancelledError` being handled came from a crashed runtime under the caller.

    A crash cancels the calls waiting on its runtime; a cancellation of the
    calling task itself (teardown) must propagate instead.
    """
    task = asyncio.current_task()
    return task is None or not task.cancelling()


async def play_timeline(now: Callable[[], float],
                        steps: Iterable[tuple[float, Callable[[], Any]]]) -> None:
    """Run each step at its virtual time (seconds from now), ties in the order given.

    A step that returns a coroutine is awaited before the next one runs.
    """
    ordered = sorted(steps, key=lambda step: step[0])  # stable: ties keep their order
    start_s = now()
    for at_s, step in ordered:
        wait_s = start_s + at_s - now()
        if wait_s > 0:
            await asyncio.sleep(wait_s)  # noqa: TID251 - virtual time, this is the scheduler
        result = step()
        if asyncio.iscoroutine(result):
            await result


class PausableClock(Clock):
    """A node's clock that can freeze: while paused, timers that come due are held
    (and sleeps do not end); `resume` fires the held ones at once, stale, in order,
    as a process stopped past its timeouts and then continued does."""

    def __init__(self, *, seed: int) -> None:
        super().__init__(seed=seed)
        self._held: list[Callable[[], None]] | None = None
        self._resumed: asyncio.Event | None = None

    @property
    def paused(self) -> bool:
        return self._held is not None

    def pause(self) -> None:
        if self._held is None:
            self._held = []
            self._resumed = asyncio.Event()

    def resume(self) -> None:
        held, self._held = self._held, None
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.set()
        for callback in held or ():
            callback()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Any:
        return super().call_later(delay_s, lambda: self._fire(callback))

    def _fire(self, callback: Callable[[], None]) -> None:
        if self._held is not None:
            self._held.append(callback)
        else:
            callback()

    async def sleep(self, delay_s: float) -> None:
        await super().sleep(delay_s)
        while self._resumed is not None:
            await self._resumed.wait()


class SimNode:
    """One simulated machine: its disk (WAL) outlives its runtimes (incarnations)."""

    def __init__(self, name: str, wal: MemoryWal) -> None:
        self.name = name
        self.wal = wal
        self.rt: Runtime | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop = asyncio.Event()
        self.incarnation = 0
        # "force" or "forced": crash at that trace point of this node (armed fault).
        self.crash_at: str | None = None
        self.clock: PausableClock | None = None  # the running incarnation's

    @property
    def up(self) -> bool:
        return self.rt is not None

    def next_clock(self, seed: int) -> PausableClock:
        """Count a new incarnation and give it its own clock stream."""
        self.incarnation += 1
        self.clock = PausableClock(seed=derive_seed(seed, f"clock:{self.name}:{self.incarnation}"))
        return self.clock

    def crash(self, *, deferred_disk: bool = False) -> bool:
        """Crash the running incarnation, if any; say whether there was one."""
        rt = self.rt
        if rt is None:
            return False
        self.rt = None
        self.crash_at = None
        rt.crash()
        if deferred_disk:
            # Called from inside the WAL's own callbacks: the crashed runtime
            # writes nothing more, so the disk may lose its unforced tail a
            # moment later without changing what survives.
            asyncio.get_running_loop().call_soon(self.wal.crash)
        else:
            self.wal.crash()
        return True


class SweepTally(Protocol[ScenarioT]):
    """What a sweep counts (each simulator has its own `SweepStatistics`)."""

    schedules: int
    events: int
    violations: int
    first_failure: ScenarioT | None


class _RunResult(Protocol):
    events: int
    violations: list[Violation]


def sweep_schedules(
    stats: SweepTally[ScenarioT],
    indexes: range,
    scenario_of: Callable[[int], ScenarioT],
    run_one: Callable[[ScenarioT], _RunResult],
    progress: Callable[[int], None] | None,
) -> None:
    """Run the schedule of each index into `stats`, reporting progress after each."""
    for index in indexes:
        scenario = scenario_of(index)
        result = run_one(scenario)
        stats.schedules += 1
        stats.events += result.events
        if result.violations:
            stats.violations += 1
            if stats.first_failure is None:
                stats.first_failure = scenario
        if progress is not None:
            progress(stats.schedules)


def shrink_greedily(
    scenario: ScenarioT,
    violations: list[Violation],
    candidates: Callable[[ScenarioT], list[ScenarioT]],
    failing: Callable[[ScenarioT], list[Violation]],
    *,
    runs: int,
    runs_max: int,
) -> tuple[ScenarioT, list[Violation]]:
    """Take the first smaller candidate that still fails, until none does or runs run out.

    A candidate counts only if it breaks an invariant with one of the codes
    the original broke, so the result fails for the same reason. `runs` is
    how many runs were spent already (of `runs_max`).
    """
    codes = {v.code for v in violations}
    progress = True
    while progress and runs < runs_max:
        progress = False
        for candidate in candidates(scenario):
            if runs >= runs_max:
                break
            runs += 1
            found = failing(candidate)
            if any(v.code in codes for v in found):
                scenario, violations, progress = candidate, found, True
                break
    return scenario, violations


def without_each(items: tuple[ItemT, ...]) -> list[tuple[ItemT, ...]]:
    """`items` with one of them left out, for each of them in turn (shrinking candidates)."""
    return [items[:index] + items[index + 1:] for index in range(len(items))]
