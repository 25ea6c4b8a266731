"""Trace events for the embedding service: an immutable record and a bounded async stream.

`Runtime.trace_events()` opens a `TraceStream`; the runtime pushes a
`TraceEvent` into every open stream for each force, forced write, lazy log
record, decision, timer, protocol choice, and message sent or received. The
runtime never waits for a reader: each stream holds at most `max_buffered`
events and, when full, drops the *oldest* one and counts it in `dropped`, so
a slow consumer sees the most recent history and learns how much it missed.

`TxidFilter` makes `%(txid)s` usable in a `logging.Formatter` for every
record, including those that carry no transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import msgspec

__all__ = ["TraceEvent", "TraceStream", "TxidFilter", "describe"]


class TraceEvent(msgspec.Struct, frozen=True):
    """One thing that happened to one transaction on one node."""

    #: Seconds on the runtime's clock (monotonic, arbitrary origin).
    time_s: float
    node: str
    txid: str
    #: The process it happened at, `actor@node`.
    actor: str
    #: force, forced, log, decide, timer, chose, send or receive.
    what: str
    #: A readable rendering of the record, outcome, timer or message.
    detail: str


def describe(detail: Any) -> str:
    """Text for a trace detail: a record or message by its tag and fields, else `str`."""
    if isinstance(detail, msgspec.Struct):
        tag = detail.__struct_config__.tag or type(detail).__name__
        fields = ", ".join(
            f"{name}={getattr(detail, name)!r}"
            for name in detail.__struct_fields__
            if name != "txid"
        )
        return f"{tag}({fields})"
    return str(detail)


class TraceStream:
    """A bounded buffer of trace events, read with `async for`.

    Iteration ends once the stream is closed (its `async with` block exits,
    or the runtime stops) and the buffer is drained.
    """

    def __init__(self, max_buffered: int) -> None:
        self.max_buffered = max_buffered
        self._buffer: deque[TraceEvent] = deque(maxlen=max_buffered)
        self._ready = asyncio.Event()
        self.closed = False
        #: Events discarded because the buffer was full (the oldest go first).
        self.dropped = 0

    def push(self, event: TraceEvent) -> None:
        if self.closed:
            return
        if len(self._buffer) == self.max_buffered:
            self.dropped += 1
        self._buffer.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def receive_nowait(self) -> TraceEvent | None:
        """The oldest buffered event, or None if there is none right now."""
        if self._buffer:
            return self._buffer.popleft()
        return None

    def __aiter__(self) -> TraceStream:
        return self

    async def __anext__(self) -> TraceEvent:
        while not self._buffer:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        return self._buffer.popleft()


class TxidFilter(logging.Filter):
    """Give every log record a `txid` attribute ("-" when it concerns no transaction).

    Attach it to a handler so `%(txid)s` in its format never fails.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "txid"):
            record.txid = "-"
        return True
