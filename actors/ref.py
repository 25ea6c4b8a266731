"""`ActorRef`: the address of a running actor, holding only its mailbox's send side.

Sends take a fast path (`send_nowait`) and only await when the bounded mailbox
is full, which is what gives backpressure. A ref never holds the actor, so a
restarted actor keeps the same ref and mailbox.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from anyio import BrokenResourceError, ClosedResourceError, WouldBlock
from anyio.streams.memory import MemoryObjectSendStream
from dtxn.actors.errors import ActorStopped, AskTimeout, MailboxFull

if TYPE_CHECKING:
    from dtxn.actors.system import ActorSystem

M = TypeVar("M")

# What travels in a mailbox: the message and, for an ask, the future to reply on.
Envelope = tuple[Any, "asyncio.Future[Any] | None"]


class ActorRef(Generic[M]):
    """Send side of one actor's mailbox: `tell`, `tell_nowait` and `ask`."""

    __slots__ = ("_send", "_system", "name")

    def __init__(
        self, name: str, send: MemoryObjectSendStream[Envelope], system: ActorSystem
    ) -> None:
        self.name = name
        self._send = send
        self._system = system

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"

    async def tell(self, message: M) -> None:
        """Deliver `message`, waiting for room in the mailbox (backpressure).

        A message to a stopped actor is reported as a dead letter, not raised.
        """
        try:
            self._send.send_nowait((message, None))
        except WouldBlock:
            try:
                await self._send.send((message, None))
            except (ClosedResourceError, BrokenResourceError):
                self._system.dead_letter(self.name, message, "actor stopped")
        except (ClosedResourceError, BrokenResourceError):
            self._system.dead_letter(self.name, message, "actor stopped")

    def tell_nowait(self, message: M) -> None:
        """Deliver `message` now or raise `MailboxFull`; never waits."""
        try:
            self._send.send_nowait((message, None))
        except WouldBlock:
            raise MailboxFull(
                f"mailbox of actor {self.name!r} is full "
                f"({self._send.statistics().max_buffer_size:g} messages); "
                f"dropped {type(message).__name__}"
            ) from None
        except (ClosedResourceError, BrokenResourceError):
            self._system.dead_letter(self.name, message, "actor stopped")

    async def ask(self, message: M, timeout_s: float | None = None) -> Any:
        """Send `message` and return the reply, or raise the receiver's error.

        Raises `AskTimeout` after `timeout_s` seconds (on the runtime's clock) and
        `ActorStopped` if the actor stops before replying.
        """
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        try:
            self._send.send_nowait((message, reply))
        except WouldBlock:
            try:
                await self._send.send((message, reply))
            except (ClosedResourceError, BrokenResourceError):
                raise self._stopped(message) from None
        except (ClosedResourceError, BrokenResourceError):
            raise self._stopped(message) from None
        if timeout_s is None:
            return await reply
        timer = self._system.clock.call_later(timeout_s, lambda: _expire(reply))
        try:
            return await reply
        except _Expired:
            raise AskTimeout(
                f"ask {type(message).__name__} to actor {self.name!r} "
                f"got no reply within {timeout_s}s"
            ) from None
        finally:
            timer.cancel()

    def _stopped(self, message: object) -> ActorStopped:
        return ActorStopped(f"actor {self.name!r} is stopped; ask {type(message).__name__} failed")

    def statistics(self) -> tuple[int, int]:
        """(messages queued, mailbox capacity)."""
        stats = self._send.statistics()
        return stats.current_buffer_used, int(stats.max_buffer_size)


class _Expired(Exception):
    """Internal: set on an ask's future when its timer fires."""


def _expire(reply: asyncio.Future[Any]) -> None:
    if not reply.done():
        reply.set_exception(_Expired())
