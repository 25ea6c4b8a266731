"""`ActorSystem`: hosts actors in one task group and supervises them.

Every actor runs as a task in the system's task group, so nothing outlives
the `async with` block. The system owns the actors' names, the dead-letter
report and statistics; each actor's task is an `ActorHost` (see `host.py`),
and the supervision policy lives in `supervision.py`.

Shutdown: leaving the block normally *drains*: every mailbox is closed to new
messages, each actor handles what was already queued, then `on_stop` runs.
Messages sent during the drain (including senders still waiting for room)
become dead letters. `aclose(drain=False)` (or an exception in the block)
*cancels*: actors stop at once, the ask being handled and every queued ask
fail with `ActorStopped` and queued tells are reported as dead letters. An
escalated failure cancels everything and leaves the block as `ActorFailed`
inside an `ExceptionGroup`, as any anyio task group does.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import anyio
import msgspec
from anyio import CancelScope
from dtxn.actors.actor import Actor
from dtxn.actors.errors import ActorError, ActorNameTaken, ActorNotFound
from dtxn.actors.host import ActorHost
from dtxn.actors.mailbox import Mailbox
from dtxn.actors.ref import ActorRef
from dtxn.actors.supervision import SupervisionPolicy
from dtxn.actors.timing import Timekeeper
from dtxn.protocols.errors import ConfigError

log = logging.getLogger("dtxn.actors")

M = TypeVar("M")

_DEAD_LETTERS_KEPT = 1000


class DeadLetter(msgspec.Struct, frozen=True):
    """A message that could not be delivered or was refused, kept for inspection."""

    recipient: str
    message_type: str
    reason: str
    message: Any = None


class ActorSystemStatistics(msgspec.Struct, frozen=True):
    """An immutable snapshot of the system's counters."""

    actors: int
    messages_handled: int
    dead_letters: int
    rejected: int
    failures: int
    restarts: int
    mailbox_depths: dict[str, int]


class Counters:
    """The system's running totals, shared with every host (a snapshot is `statistics()`)."""

    __slots__ = ("dead_letters", "failures", "handled", "rejected", "restarts")

    def __init__(self) -> None:
        self.handled = 0
        self.dead_letters = 0
        self.rejected = 0
        self.failures = 0
        self.restarts = 0


class ActorSystem:
    """Spawns, supervises and stops actors; use as `async with ActorSystem(clock)`."""

    def __init__(self, clock: Timekeeper, *, name: str = "system") -> None:
        self.clock = clock
        self.name = name
        self._hosts: dict[str, ActorHost] = {}
        # The actors' tasks belong to the system, which is their task group:
        # nothing outlives the block, a failing actor cancels the others and the
        # block (through `_scope`), and the block raises the failures as an
        # ExceptionGroup. Why not an anyio task group: anyio 4 wraps every task
        # in a handle with its own cancel scope and event, `start` adds a future
        # and a trip round the loop, and cancellation is re-delivered on every
        # loop iteration until each task is done; a node's start and crash spent
        # most of their time there (see docs/simulator.md, Speed).
        self._scope: CancelScope | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []
        self._all_done: asyncio.Future[None] | None = None
        self._closing = False
        self._serial = 0
        self._counters = Counters()
        self._dead: deque[DeadLetter] = deque(maxlen=_DEAD_LETTERS_KEPT)
        self._dead_letter_hooks: list[Callable[[DeadLetter], None]] = []

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> ActorSystem:
        if self._scope is not None:
            raise ActorError(f"actor system {self.name!r} is already running")
        scope = CancelScope()
        scope.__enter__()
        self._scope = scope
        self._tasks = set()
        self._errors = []
        self._closing = False
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        scope = self._scope
        assert scope is not None
        try:
            try:
                if exc is None:
                    await self.aclose(drain=True)
            except BaseException as drain_exc:  # noqa: BLE001 - raised below, with the actors'
                # An actor escalated during the drain (our scope cancelled the
                # drain), or the caller was cancelled: cancel every actor instead.
                exc = drain_exc
            if exc is not None:
                self._closing = True
                self._cancel_actors()
            await self._join()
            # As an anyio task group: an error of the block itself is reported
            # with the actors' errors; a cancellation is not an error.
            errors = list(self._errors)
            if exc is not None and not isinstance(exc, asyncio.CancelledError):
                errors.insert(0, exc)
            if errors:
                raise BaseExceptionGroup("unhandled errors in a TaskGroup", errors) from None
            if exc is not None:
                raise exc
        except BaseException as error:
            if scope.__exit__(type(error), error, error.__traceback__):
                return True
            raise
        finally:
            self._scope = None
            del exc, tb
        return scope.__exit__(None, None, None)

    def cancel_all(self) -> None:
        """Cancel every actor now, as a crash does; the block still waits for them.

        Like `aclose(drain=False)` without the wait: queued asks fail with
        `ActorStopped`, queued tells become dead letters, and the system
        refuses new actors.
        """
        self._closing = True
        self._cancel_actors()

    def _cancel_actors(self) -> None:
        for host in list(self._hosts.values()):
            host.request_stop(drain=False)

    async def _join(self) -> None:
        """Wait until every actor task is done, whatever cancellations arrive meanwhile."""
        if not self._tasks:
            # Nothing to wait for (a crash usually finds every actor gone):
            # spare the shielded scope, which costs more than the check.
            return
        loop = asyncio.get_running_loop()
        with CancelScope(shield=True):
            while self._tasks:
                waiter = self._all_done = loop.create_future()
                try:
                    await waiter
                except asyncio.CancelledError:
                    self._closing = True
                    self._cancel_actors()
                finally:
                    self._all_done = None

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                # An escalated failure (or a bug in the host): stop everything,
                # as a task group would, and let the block raise it.
                self._errors.append(exc)
                self._closing = True
                self._cancel_actors()
                if self._scope is not None:
                    self._scope.cancel()
        waiter = self._all_done
        if waiter is not None and not self._tasks and not waiter.done():
            waiter.set_result(None)

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop every actor, draining their mailboxes first or cancelling them now.

        The system refuses new actors from here on.
        """
        self._closing = True
        hosts = list(self._hosts.values())
        for host in hosts:
            host.request_stop(drain=drain)
        for host in hosts:
            await host.done.wait()

    # -- spawning and lookup ---------------------------------------------------

    async def spawn(
        self,
        factory: Callable[[], Actor[M]],
        *,
        name: str | None = None,
        mailbox_size: int = 1024,
        policy: SupervisionPolicy | None = None,
    ) -> ActorRef[M]:
        """Start an actor built by `factory` and return its ref once `on_start` ran.

        `factory` is called again on every restart, so it must build a fresh actor.
        An exception from the factory or `on_start` is raised here.
        """
        if self._scope is None or self._closing:
            state = "closing" if self._closing else "not running; use `async with`"
            raise ActorError(f"actor system {self.name!r} is {state}")
        if not callable(factory):
            raise ConfigError(f"factory must be callable (e.g. the actor class), got {factory!r}")
        if type(mailbox_size) is not int or mailbox_size < 0:
            raise ConfigError(f"mailbox_size must be an int >= 0, got {mailbox_size!r}")
        if policy is not None and not isinstance(policy, SupervisionPolicy):
            raise ConfigError(f"policy must be a SupervisionPolicy, got {policy!r}")
        if name is None:
            self._serial += 1
            name = f"actor-{self._serial}"
        elif not isinstance(name, str) or not name or "@" in name:
            raise ConfigError(f"actor name must be a non-empty str without '@', got {name!r}")
        if name in self._hosts:
            raise ActorNameTaken(f"an actor named {name!r} is already running in {self.name!r}")
        loop = asyncio.get_running_loop()
        mailbox = Mailbox(mailbox_size, loop)
        done = anyio.Event()
        ref: ActorRef[M] = ActorRef(name, mailbox, self, loop, done)
        host = ActorHost(
            self, self._counters, name, factory, policy or SupervisionPolicy(), mailbox, ref, done
        )
        self._hosts[name] = host
        await host.start()
        if self._scope is None:
            # The system stopped while `on_start` ran: this actor never runs.
            await host.stop_unstarted()
            raise ActorError(f"actor system {self.name!r} stopped while {name!r} was starting")
        # Started even when the system began closing meanwhile: the task then
        # sees its closed mailbox (or the cancel request) and stops at once.
        task = loop.create_task(host.run(), name=f"actor {name!r}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return ref

    def ref(self, name: str) -> ActorRef[Any]:
        """The ref of the running actor `name`, or `ActorNotFound`."""
        return self._host(name).ref

    def message_type_of(self, name: str) -> Any:
        """The message type actor `name` declared (`object` when untyped)."""
        return self._host(name).message_type

    def names(self) -> list[str]:
        """Names of the running actors, in spawn order."""
        return list(self._hosts)

    async def stop(self, name: str, *, drain: bool = True) -> None:
        """Stop one actor (draining its mailbox, or at once) and wait until it is gone."""
        host = self._host(name)
        host.request_stop(drain=drain)
        await host.done.wait()

    def _host(self, name: str) -> ActorHost:
        host = self._hosts.get(name)
        if host is None:
            raise ActorNotFound(f"no running actor named {name!r} in {self.name!r}")
        return host

    def _forget(self, host: ActorHost) -> None:
        """Called by a host as it retires: its name is free again."""
        if self._hosts.get(host.name) is host:
            del self._hosts[host.name]

    # -- reports ---------------------------------------------------------------

    def on_dead_letter(self, hook: Callable[[DeadLetter], None]) -> None:
        """Call `hook` for every dead letter (in addition to logging and counting)."""
        self._dead_letter_hooks.append(hook)

    def dead_letter(self, recipient: str, message: object, reason: str) -> None:
        """Report a message that will never be handled."""
        letter = DeadLetter(recipient, type(message).__name__, reason, message)
        self._dead.append(letter)
        self._counters.dead_letters += 1
        log.warning("dead letter: %s to actor %r (%s)", letter.message_type, recipient, reason)
        for hook in self._dead_letter_hooks:
            hook(letter)

    def dead_letters(self) -> list[DeadLetter]:
        """The most recent dead letters (at most 1000 are kept; all are counted)."""
        return list(self._dead)

    def statistics(self) -> ActorSystemStatistics:
        counters = self._counters
        return ActorSystemStatistics(
            actors=len(self._hosts),
            messages_handled=counters.handled,
            dead_letters=counters.dead_letters,
            rejected=counters.rejected,
            failures=counters.failures,
            restarts=counters.restarts,
            mailbox_depths={name: len(host.mailbox) for name, host in self._hosts.items()},
        )
