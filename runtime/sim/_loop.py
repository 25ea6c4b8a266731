"""`SimLoop`: an asyncio event loop on virtual time, for the deterministic simulator.

Theory of operation: asyncio's `_run_once` asks its selector to wait until the
next timer is due (or forever when nothing is scheduled). `SimLoop` plugs in a
selector that never blocks: asked to wait `timeout` seconds, it moves the
loop's virtual clock forward by exactly that much and reports no IO. So time
jumps whenever nothing is runnable, `loop.time()` is virtual, and every
`asyncio.sleep`, `call_later` and `Clock` reading in dtxn runs unchanged on it.

With no threads and no real IO, the only sources of order are the FIFO ready
queue and the timer heap, so the same program runs the same way every time.
A wait with nothing scheduled can never end: it raises `SimDeadlock` instead
of hanging.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any

from dtxn.protocols.errors import DtxnError

__all__ = ["SimDeadlock", "SimLoop", "VirtualSelector"]


class SimDeadlock(DtxnError):
    """Raised when the simulated loop would wait forever: nothing runnable, no timer set."""


class VirtualSelector(selectors.BaseSelector):
    """A selector that advances its loop's virtual clock instead of blocking."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self.loop: SimLoop | None = None

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self._keys.pop(fileobj, None)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        if loop is None:
            return []
        if timeout is None:
            raise SimDeadlock(
                f"simulated loop at t={loop.time():.6f}s: nothing runnable and no timer "
                "set, so it would wait forever"
            )
        if timeout > 0:
            loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()
        self.loop = None


def _fd(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else int(fileobj.fileno())


class SimLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is virtual and jumps to the next timer when idle."""

    def __init__(self, *, start_s: float = 0.0) -> None:
        selector = VirtualSelector()
        self._virtual_s = float(start_s)
        super().__init__(selector)
        selector.loop = self
        self.jumps = 0

    def time(self) -> float:
        return self._virtual_s

    def advance(self, delta_s: float) -> None:
        """Move virtual time forward by `delta_s` (only the selector and tests call this)."""
        if delta_s < 0:
            raise ValueError(f"virtual time cannot go back (delta_s={delta_s})")
        self._virtual_s += delta_s
        self.jumps += 1
