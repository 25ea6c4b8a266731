"""`ResourceLoop`: a real event loop on a helper thread, for simulated resources that do real IO.

The simulator's loop runs on virtual time and knows no threads, so a
resource whose calls wait on a thread (aiosqlite, behind `SqliteResource`)
cannot run on it: virtual time would jump past the call. A `ResourceLoop`
runs such a resource's coroutines on a real asyncio loop in one helper
thread, and `call` blocks the simulation until the call ends. Each call then
takes no virtual time and ends before anything else in the simulation runs,
so a run stays deterministic.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from dtxn.protocols.errors import DtxnError

__all__ = ["CALL_TIMEOUT_S", "ResourceLoop", "ResourceLoopTimeout", "needs_real_loop"]

T = TypeVar("T")

# Real seconds one resource call may take before the simulation gives up on it.
CALL_TIMEOUT_S = 60.0


class ResourceLoopTimeout(DtxnError):
    """Raised when a resource call on the helper loop does not end in `CALL_TIMEOUT_S`."""


def needs_real_loop(resource: object) -> bool:
    """Whether `resource` has a lifecycle (`async def start()`): it runs on a `ResourceLoop`."""
    start = getattr(resource, "start", None)
    return start is not None and inspect.iscoroutinefunction(start)


class ResourceLoop:
    """One helper thread running a real asyncio loop; `call` runs a coroutine to its end there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="dtxn-sim-resources", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, call: Coroutine[Any, Any, T]) -> T:
        """Run `call` on the helper loop and wait for it (its exception is raised here)."""
        future = asyncio.run_coroutine_threadsafe(call, self.loop)
        try:
            return future.result(timeout=CALL_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ResourceLoopTimeout(
                f"a simulated resource call did not end within {CALL_TIMEOUT_S:g} real seconds"
                " (does it wait for something on the simulator's loop?)"
            ) from None

    def close(self) -> None:
        """Stop the loop and join its thread (idempotent)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
