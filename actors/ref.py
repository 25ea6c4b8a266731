"""`ActorRef`: the address of a running actor, holding only its mailbox.

Sends take the fast path (`Mailbox.try_send`) and only await when the bounded
mailbox is full, which is what gives backpressure. A ref never holds the
actor, so a restarted actor keeps the same ref and mailbox.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
from anyio import CancelScope
from dtxn.actors.errors import ActorStopped, AskTimeout, MailboxFull
from dtxn.actors.mailbox import Mailbox, MailboxClosed, MailboxStatistics

if TYPE_CHECKING:
    from dtxn.actors.system import ActorSystem

M = TypeVar("M")


class ActorRef(Generic[M]):
    """Send side of one actor's mailbox: `tell`, `tell_nowait` and `ask`."""

    __slots__ = ("_loop", "_mailbox", "_stopped", "_system", "name")

    def __init__(
        self,
        name: str,
        mailbox: Mailbox,
        system: ActorSystem,
        loop: asyncio.AbstractEventLoop,
        stopped: anyio.Event,
    ) -> None:
        self.name = name
        self._mailbox = mailbox
        self._system = system
        self._loop = loop
        self._stopped = stopped

    def __repr__(self) -> str:
        return f"ActorRef({self.name!r})"

    @property
    def mailbox(self) -> Mailbox:
        """The actor's mailbox, for a transport's direct route to it (`Mailbox.try_send`)."""
        return self._mailbox

    async def tell(self, message: M) -> None:
        """Deliver `message`, waiting for room in the mailbox (backpressure).

        A message to a stopped actor is reported as a dead letter, not raised:
        the sender of a tell asked for no answer, and stopping is normal.
        """
        envelope = (message, None)
        try:
            if not self._mailbox.try_send(envelope):
                await self._mailbox.send(envelope)
        except MailboxClosed:
            self._system.dead_letter(self.name, message, "actor stopped")

    def tell_nowait(self, message: M) -> None:
        """Deliver `message` now or raise `MailboxFull`; never waits."""
        try:
            sent = self._mailbox.try_send((message, None))
        except MailboxClosed:
            self._system.dead_letter(self.name, message, "actor stopped")
            return
        if not sent:
            raise MailboxFull(
                f"mailbox of actor {self.name!r} is full "
                f"({self._mailbox.capacity} messages); dropped {type(message).__name__}"
            )

    async def ask(self, message: M, timeout_s: float | None = None) -> Any:
        """Send `message` and return the reply, or raise the receiver's error.

        Raises `AskTimeout` after `timeout_s` seconds on the runtime's clock,
        counted from the call, so that the wait for mailbox room is bounded
        too; and `ActorStopped` if the actor stops before replying.
        """
        reply: asyncio.Future[Any] = self._loop.create_future()
        envelope = (message, reply)
        timer = None
        if timeout_s is not None:
            timer = self._system.clock.call_later(timeout_s, partial(_expire, reply))
        try:
            try:
                if self._mailbox.try_send(envelope):
                    pass
                elif timer is None:
                    await self._mailbox.send(envelope)
                else:
                    await self._send_before_expiry(envelope, reply)
            except MailboxClosed:
                raise ActorStopped(
                    f"actor {self.name!r} is stopped; ask {type(message).__name__} failed"
                ) from None
            return await reply
        except _Expired:
            raise AskTimeout(
                f"ask {type(message).__name__} to actor {self.name!r} "
                f"got no reply within {timeout_s}s"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()

    async def _send_before_expiry(self, envelope: Any, reply: asyncio.Future[Any]) -> None:
        """Slow path of `ask`: wait for room, but give up when the ask's timer fires."""
        with CancelScope() as scope:

            def give_up(_: object) -> None:
                scope.cancel()

            reply.add_done_callback(give_up)
            try:
                await self._mailbox.send(envelope)
            finally:
                reply.remove_done_callback(give_up)
        if scope.cancelled_caught:
            reply.result()  # raises _Expired

    async def wait_stopped(self) -> None:
        """Wait until the actor has stopped for good and its mailbox is retired."""
        await self._stopped.wait()

    def statistics(self) -> MailboxStatistics:
        """How full this actor's mailbox is."""
        return self._mailbox.statistics()


class _Expired(Exception):
    """Internal: set on an ask's future when its timer fires."""


def _expire(reply: asyncio.Future[Any]) -> None:
    if not reply.done():
        reply.set_exception(_Expired())
