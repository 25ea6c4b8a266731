"""`Mailbox`: the bounded FIFO between an actor's senders and the actor itself.

Why not an anyio memory object stream: every message of every actor passes
through here, and the stream's `receive` takes a checkpoint (a trip round
the event loop) whenever the actor goes idle and its `send_nowait` looks up
the receiver's cancellation state on every hand-over; with it an ask cost
twice the bare-future floor on uvloop (see docs/benchmarks.md). This mailbox
does only what an actor needs: many senders, exactly one receiver, a hard
bound, and two ways to close:

- `close()` stops new messages; what is queued can still be received, then
  the receiver sees the end (a drain). Senders waiting for room give up.
- the owner then takes what is left with `take_all()` and reports it.

Waiters are plain futures of the running asyncio loop, as `ask` uses; the
actor core runs on asyncio (or uvloop), not on trio.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any

import msgspec

# What travels in a mailbox: the message and, for an ask, the future to reply on.
Envelope = tuple[Any, "asyncio.Future[Any] | None"]


class MailboxClosed(Exception):
    """Internal: raised to a sender when the mailbox takes no more messages."""


class MailboxStatistics(msgspec.Struct, frozen=True):
    """An immutable snapshot of one mailbox."""

    queued: int
    capacity: int
    waiting_senders: int
    closed: bool


class Mailbox:
    """Bounded many-to-one FIFO; `capacity` 0 hands over only to a waiting receiver."""

    __slots__ = ("_loop", "_receiver", "buffer", "capacity", "closed", "senders")

    def __init__(self, capacity: int, loop: asyncio.AbstractEventLoop) -> None:
        self.capacity = capacity
        self.buffer: deque[Envelope] = deque()
        self.closed = False
        self._loop = loop
        # The receiver waits only when the buffer is empty; senders wait in FIFO
        # order (`senders`, read by the actor's loop, which takes from `buffer`
        # itself and then calls `wake_sender` if any sender waits).
        self._receiver: asyncio.Future[None] | None = None
        self.senders: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self.buffer)

    # -- sending ----------------------------------------------------------------

    def try_send(self, envelope: Envelope) -> bool:
        """Queue `envelope` if there is room now; False if full. Raises `MailboxClosed`."""
        if self.closed:
            raise MailboxClosed
        receiver = self._receiver
        if receiver is not None:
            # The buffer is empty while the receiver waits, so this is always room,
            # even with capacity 0 (a direct hand-over).
            self._receiver = None
            self.buffer.append(envelope)
            if not receiver.done():
                receiver.set_result(None)
            return True
        if len(self.buffer) < self.capacity:
            self.buffer.append(envelope)
            return True
        return False

    async def send(self, envelope: Envelope) -> None:
        """Queue `envelope`, waiting for room. Raises `MailboxClosed`."""
        while not self.try_send(envelope):
            waiter = self._loop.create_future()
            self.senders.append(waiter)
            try:
                await waiter
            except BaseException:
                # A wake-up that arrives with a cancellation must not be lost,
                # or the next sender would wait although there is room.
                if waiter.done() and not waiter.cancelled():
                    self.wake_sender()
                else:
                    self._discard(waiter)
                raise

    def wake_sender(self) -> None:
        senders = self.senders
        while senders:
            waiter = senders.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _discard(self, waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):  # already woken and removed
            self.senders.remove(waiter)

    # -- receiving --------------------------------------------------------------

    def take(self) -> Envelope:
        """Pop the oldest envelope (the buffer must not be empty) and make room."""
        envelope = self.buffer.popleft()
        if self.senders:
            self.wake_sender()
        return envelope

    def receiver_waiter(self) -> asyncio.Future[None] | None:
        """A future the receiver awaits until there may be an envelope; None at the end.

        Synchronous, so that the actor's loop awaits a bare future and not a
        coroutine on every wait. Call only with an empty buffer; after the
        future resolves, check the buffer again (a closed mailbox wakes it empty).
        """
        if self.closed:
            return None
        if self.senders:
            # Capacity 0: a sender is waiting for a receiver; let it hand over.
            self.wake_sender()
        waiter = self._receiver = self._loop.create_future()
        return waiter

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        """Take no more messages; queued ones stay receivable. Waiting senders give up."""
        if self.closed:
            return
        self.closed = True
        receiver, self._receiver = self._receiver, None
        if receiver is not None and not receiver.done():
            receiver.set_result(None)
        senders, self.senders = self.senders, deque()
        for waiter in senders:
            if not waiter.done():
                waiter.set_result(None)

    def take_all(self) -> list[Envelope]:
        """Close and return everything still queued, oldest first."""
        self.close()
        left = list(self.buffer)
        self.buffer.clear()
        return left

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            queued=len(self.buffer),
            capacity=self.capacity,
            waiting_senders=len(self.senders),
            closed=self.closed,
        )
