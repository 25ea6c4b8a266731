"""The one view of time the actor core needs: a reading and a timer.

The actor core never reads the wall clock itself; the runtime hands it a
`Timekeeper` (its `Clock`), which under the simulator runs on virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


class Timekeeper(Protocol):
    """Monotonic time in seconds and one-shot timers on the running event loop."""

    def now(self) -> float: ...

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable: ...
