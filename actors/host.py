"""`ActorHost`: the task that runs one actor, one message at a time, under supervision.

The loop in `_process` is the hot path of every message: take an envelope,
check its type, await `receive` (or call `receive_nowait`, for an actor that
defines it), resolve the ask's future. It reads the
mailbox's buffer directly and keeps the actor in a local so that the
per-message cost stays a handful of attribute reads.

Whatever way the actor stops (drained, cancelled, stopped by policy, failed),
`on_stop` runs once for the `on_start` that ran, every queued ask fails with
`ActorStopped`, every queued tell becomes a dead letter and the name is freed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from anyio.lowlevel import checkpoint
from dtxn.actors.actor import Actor
from dtxn.actors.errors import ActorFailed, ActorStopped, Rejected, UnknownMessage
from dtxn.actors.mailbox import Mailbox
from dtxn.actors.ref import ActorRef
from dtxn.actors.supervision import Directive, RestartBudget, SupervisionPolicy

if TYPE_CHECKING:
    from dtxn.actors.system import ActorSystem, Counters

log = logging.getLogger("dtxn.actors")

# After this many messages handled without suspending, an actor yields to the
# loop so that a busy actor cannot starve the others.
_FAIRNESS_BATCH = 64


class _StopRequested(Exception):
    """Internal: the supervisor decided to stop an actor."""


class ActorHost:
    """Everything the system keeps about one running actor, and its task."""

    __slots__ = (
        "_accepts",
        "_cancel_requested",
        "_counters",
        "_processing",
        "_receive_nowait",
        "_system",
        "actor",
        "budget",
        "done",
        "factory",
        "mailbox",
        "message_type",
        "name",
        "ref",
        "task",
    )

    def __init__(
        self,
        system: ActorSystem,
        counters: Counters,
        name: str,
        factory: Callable[[], Actor[Any]],
        policy: SupervisionPolicy,
        mailbox: Mailbox,
        ref: ActorRef[Any],
        done: anyio.Event,
    ) -> None:
        self._system = system
        self._counters = counters
        self.name = name
        self.factory = factory
        self.budget = RestartBudget(policy)
        self.mailbox = mailbox
        self.ref = ref
        self.actor: Actor[Any] | None = None
        # Kept across restarts, so the transport can decode while one is under way;
        # known from the class before `on_start` when the factory is the class.
        self.message_type: Any = (
            factory.message_type
            if isinstance(factory, type) and issubclass(factory, Actor)
            else object
        )
        self._accepts: tuple[type, ...] | None = None
        self._receive_nowait: Callable[[Any], Any] | None = None
        # The actor's own task (created by the system once `start` succeeded);
        # `_processing` while it is in the message loop, the part a cancel stops.
        self.task: asyncio.Task[None] | None = None
        self._processing = False
        self._cancel_requested = False
        self.done = done

    def request_stop(self, *, drain: bool) -> None:
        """Drain: close the mailbox and let the queue run out. Otherwise cancel now."""
        self.mailbox.close()
        if not drain and not self._cancel_requested:
            self._cancel_requested = True
            # Only the message loop is cancelled, and only once: `on_stop`
            # after it must run to the end (it used to run in a shielded scope).
            task = self.task
            if task is not None and self._processing:
                task.cancel()

    def _install(self, actor: Actor[Any]) -> None:
        self.actor = actor
        self.message_type = type(actor).message_type
        accepts = type(actor).accepts
        self._accepts = None if object in accepts else accepts
        overridden = type(actor).receive_nowait is not Actor.receive_nowait
        self._receive_nowait = actor.receive_nowait if overridden else None

    # -- the task ----------------------------------------------------------------

    async def start(self) -> None:
        """Build the actor and run `on_start`, in the spawner's task.

        Done before the actor's own task exists, so that a spawn costs one
        task and no hand-over: `TaskGroup.start` would add a future, a second
        cancel scope and a trip round the loop per actor, which dominated the
        start-up of a node. On failure the name is freed and the error raised.
        """
        try:
            actor = self.factory()
            await actor.on_start()
        except BaseException:
            self._retire()
            raise
        self._install(actor)

    async def run(self) -> None:
        """The actor's task, once `start` succeeded: handle messages until stopped."""
        actor = self.actor
        assert actor is not None
        task = self.task = asyncio.current_task()
        assert task is not None
        try:
            try:
                if not self._cancel_requested:
                    self._processing = True
                    try:
                        await self._process(actor)
                    finally:
                        self._processing = False
            except _StopRequested:
                pass
            except asyncio.CancelledError:
                # Our own cancel (`request_stop`) ends the loop like a cancel
                # scope would; any other cancellation goes on up.
                if not (self._cancel_requested and task.uncancel() == 0):
                    await self._stop_actor(failing=True)
                    raise
            except BaseException:
                await self._stop_actor(failing=True)
                raise
            await self._stop_actor(failing=False)
        finally:
            self._retire()

    async def stop_unstarted(self) -> None:
        """Undo a successful `start` whose task could not be created."""
        try:
            await self._stop_actor(failing=False)
        finally:
            self._retire()

    async def _process(self, actor: Actor[Any]) -> None:
        mailbox = self.mailbox
        buffer = mailbox.buffer
        counters = self._counters
        accepts = self._accepts
        receive_nowait = self._receive_nowait
        batch = 0
        while True:
            if not buffer:
                waiter = mailbox.receiver_waiter()
                if waiter is None:
                    return
                await waiter
                batch = 0
                continue
            # `mailbox.take()` written out: one call less per message.
            message, reply = buffer.popleft()
            if mailbox.senders:
                mailbox.wake_sender()
            try:
                if accepts is not None and not isinstance(message, accepts):
                    raise self._unknown(actor, message)
                if receive_nowait is not None:
                    result = receive_nowait(message)
                else:
                    result = await actor.receive(message)
            except Rejected as exc:
                counters.rejected += 1
                if reply is None:
                    self._system.dead_letter(self.name, message, f"rejected: {exc}")
                elif not reply.done():
                    reply.set_exception(exc)
            except Exception as exc:  # noqa: BLE001 - handed to the asker and the supervisor
                if reply is not None and not reply.done():
                    reply.set_exception(exc)
                actor = await self._supervise(message, exc)
                accepts = self._accepts
                receive_nowait = self._receive_nowait
            except BaseException:
                # Cancelled mid-message: the asker must not wait forever.
                if reply is not None and not reply.done():
                    reply.set_exception(self._stopped(message, "while handling"))
                raise
            else:
                if reply is not None and not reply.done():
                    reply.set_result(result)
            counters.handled += 1
            batch += 1
            if batch >= _FAIRNESS_BATCH:
                batch = 0
                await checkpoint()

    def _unknown(self, actor: Actor[Any], message: object) -> UnknownMessage:
        accepted = ", ".join(t.__name__ for t in type(actor).accepts)
        return UnknownMessage(
            f"actor {self.name!r} ({type(actor).__name__}) does not accept "
            f"{type(message).__name__}; it accepts {accepted}"
        )

    def _stopped(self, message: object, when: str) -> ActorStopped:
        return ActorStopped(f"actor {self.name!r} stopped {when} ask {type(message).__name__}")

    # -- supervision -------------------------------------------------------------

    async def _supervise(self, message: object, exc: Exception) -> Actor[Any]:
        """Apply the policy to a failure; return the actor to carry on with."""
        self._counters.failures += 1
        what = f"actor {self.name!r} failed handling {type(message).__name__}: {exc!r}"
        directive = self.budget.decide(self._system.clock.now())
        if directive is Directive.RESTART:
            log.error("%s; restarting with fresh state", what, exc_info=exc)
            old, self.actor = self.actor, None
            try:
                if old is not None:
                    await old.on_stop()
                fresh = self.factory()
                await fresh.on_start()
            except Exception as restart_exc:
                raise ActorFailed(f"{what}; restart failed: {restart_exc!r}") from restart_exc
            self._install(fresh)
            self._counters.restarts += 1
            return fresh
        if directive is Directive.STOP:
            log.error("%s; stopping it (policy)", what, exc_info=exc)
            self.mailbox.close()
            raise _StopRequested
        log.error("%s; escalating", what, exc_info=exc)
        raise ActorFailed(f"{what}; escalated (restart intensity exceeded or policy)") from exc

    # -- stopping ----------------------------------------------------------------

    async def _stop_actor(self, *, failing: bool) -> None:
        """Run `on_stop`; it also runs, uninterrupted, when the stop is a cancel."""
        actor = self.actor
        if actor is None:
            return
        # The actor's task is cancelled at most once, and only in its message
        # loop, so nothing interrupts `on_stop`.
        try:
            await actor.on_stop()
        except Exception as exc:
            if not failing:
                raise ActorFailed(f"actor {self.name!r} failed in on_stop: {exc!r}") from exc
            # The error that is stopping the actor is already propagating;
            # this one must not replace it, but must not vanish either.
            log.error("actor %r also failed in on_stop", self.name, exc_info=exc)

    def _retire(self) -> None:
        """Fail every queued ask and report every queued tell; free the name."""
        try:
            left = self.mailbox.take_all()
            # Asks first: a dead-letter hook that raises must not strand an asker.
            for message, reply in left:
                if reply is not None and not reply.done():
                    reply.set_exception(self._stopped(message, "before handling"))
            for message, reply in left:
                if reply is None:
                    self._system.dead_letter(
                        self.name, message, "actor stopped with message queued"
                    )
        finally:
            self._system._forget(self)
            self.done.set()
