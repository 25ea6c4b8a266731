"""Shared fixtures: every async test runs on asyncio with uvloop and on plain asyncio."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from dtxn.actors import Cancellable


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    backend: tuple[str, dict[str, Any]] = request.param
    return backend


class ManualClock:
    """A `Timekeeper` whose reading only moves when a test calls `advance`.

    Timers still run on the event loop, so `call_later` is delegated; only
    `now()` (what restart intensity windows are measured with) is manual.
    """

    def __init__(self, start_s: float = 1000.0) -> None:
        self._now_s = start_s

    def now(self) -> float:
        return self._now_s

    def advance(self, delta_s: float) -> None:
        self._now_s += delta_s

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> Cancellable:
        import asyncio

        return asyncio.get_running_loop().call_later(delay_s, callback)


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()
