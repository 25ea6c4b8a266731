"""The runtime's clock and seeded randomness: the only place dtxn reads time.

`Clock` reads the running event loop's time. On asyncio or uvloop that is the
real monotonic clock; under the simulator it is the simulated loop's virtual
time, so the same actor and runtime code runs unchanged in both. Like trio's
system clock, the readings carry a random offset so that code comparing them
with `time.monotonic()` (which it must not read) breaks at once.

Randomness comes from `Clock.rng(stream)`: one seed forks an independent
`random.Random` per named stream, so an extra draw in one subsystem does not
perturb the others (TigerBeetle/FoundationDB style).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable

from dtxn.actors.timing import Cancellable


class Clock:
    """Monotonic time, sleeps, timers and seeded RNG streams for one runtime."""

    def __init__(self, *, seed: int | None = None, offset_s: float | None = None) -> None:
        # The seed is drawn once from the OS when none is given, and kept so a
        # run can be reported and replayed.
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**63)
        self._offset_s = (
            offset_s if offset_s is not None else random.Random(self.seed).uniform(1e4, 1e6)
        )
        self._streams: dict[str, random.Random] = {}

    def now(self) -> float:
        """Seconds on a monotonic clock with an arbitrary origin."""
        return asyncio.get_running_loop().time() + self._offset_s

    async def sleep(self, delay_s: float) -> None:
        """Suspend the calling task for `delay_s` seconds of this clock."""
        await asyncio.sleep(delay_s)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        """Run `callback` after `delay_s` seconds; `.cancel()` the result to call it off."""
        return asyncio.get_running_loop().call_later(delay_s, callback)

    def rng(self, stream: str) -> random.Random:
        """The seeded random stream named `stream` (created on first use)."""
        found = self._streams.get(stream)
        if found is None:
            digest = hashlib.blake2b(f"{self.seed}:{stream}".encode(), digest_size=8).digest()
            found = random.Random(int.from_bytes(digest, "big"))
            self._streams[stream] = found
        return found

