"""`ActorSystem`: hosts actors in one task group and supervises them.

Every actor runs as a task in the system's task group, so nothing outlives
the `async with` block. The system owns supervision (see `supervision.py`),
the dead-letter report and statistics.

Shutdown: leaving the block normally *drains*: every mailbox is closed to new
messages, each actor handles what was already queued, then `on_stop` runs.
Messages sent during the drain to an actor that has closed become dead
letters. `aclose(drain=False)` (or an exception in the block) *cancels*:
actors stop at once, queued asks fail with `ActorStopped` and queued tells are
reported as dead letters.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import anyio
import msgspec
from anyio import CancelScope, EndOfStream, WouldBlock
from anyio.abc import TaskGroup, TaskStatus
from anyio.lowlevel import checkpoint
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from dtxn.actors.actor import Actor
from dtxn.actors.errors import (
    ActorError,
    ActorFailed,
    ActorNameTaken,
    ActorNotFound,
    ActorStopped,
    Rejected,
    UnknownMessage,
)
from dtxn.actors.ref import ActorRef, Envelope
from dtxn.actors.supervision import Directive, RestartBudget, SupervisionPolicy
from dtxn.actors.timing import Timekeeper
from dtxn.protocols.errors import ConfigError

log = logging.getLogger("dtxn.actors")

M = TypeVar("M")

# After this many messages handled without suspending, an actor yields to the
# loop so that a busy actor cannot starve the others.
_FAIRNESS_BATCH = 64
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


class _Cell:
    """Everything the system keeps about one running actor."""

    __slots__ = (
        "actor",
        "budget",
        "done",
        "factory",
        "name",
        "recv",
        "ref",
        "scope",
        "send",
    )

    def __init__(
        self,
        name: str,
        factory: Callable[[], Actor[Any]],
        policy: SupervisionPolicy,
        send: MemoryObjectSendStream[Envelope],
        recv: MemoryObjectReceiveStream[Envelope],
        ref: ActorRef[Any],
    ) -> None:
        self.name = name
        self.factory = factory
        self.budget = RestartBudget(policy)
        self.send = send
        self.recv = recv
        self.ref = ref
        self.actor: Actor[Any] | None = None
        self.scope: CancelScope | None = None
        self.done = anyio.Event()


class _StopRequested(Exception):
    """Internal: the supervisor decided to stop an actor."""


class ActorSystem:
    """Spawns, supervises and stops actors; use as `async with ActorSystem(clock)`."""

    def __init__(self, clock: Timekeeper, *, name: str = "system") -> None:
        self.clock = clock
        self.name = name
        self._cells: dict[str, _Cell] = {}
        self._tg: TaskGroup | None = None
        self._serial = 0
        self._dead: deque[DeadLetter] = deque(maxlen=_DEAD_LETTERS_KEPT)
        self._dead_count = 0
        self._rejected = 0
        self._failures = 0
        self._restarts = 0
        self._handled = 0
        self._dead_letter_hooks: list[Callable[[DeadLetter], None]] = []

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> ActorSystem:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        try:
            if exc is None:
                await self.aclose(drain=True)
            else:
                self._tg.cancel_scope.cancel()
        finally:
            tg, self._tg = self._tg, None
            result = await tg.__aexit__(exc_type, exc, tb)
        return result

    async def aclose(self, *, drain: bool = True) -> None:
        """Stop every actor: drain their mailboxes first, or cancel them now."""
        cells = list(self._cells.values())
        for cell in cells:
            self._request_stop(cell, drain=drain)
        for cell in cells:
            await cell.done.wait()

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
        """
        if self._tg is None:
            raise ActorError(f"actor system {self.name!r} is not running; use `async with`")
        if not isinstance(mailbox_size, int) or mailbox_size < 0 or math.isinf(mailbox_size):
            raise ConfigError(f"mailbox_size must be a finite int >= 0, got {mailbox_size!r}")
        if name is None:
            self._serial += 1
            name = f"actor-{self._serial}"
        if name in self._cells:
            raise ActorNameTaken(f"an actor named {name!r} is already running")
        send, recv = anyio.create_memory_object_stream[Envelope](mailbox_size)
        ref: ActorRef[M] = ActorRef(name, send, self)
        cell = _Cell(name, factory, policy or SupervisionPolicy(), send, recv, ref)
        self._cells[name] = cell
        try:
            await self._tg.start(self._host, cell)
        except BaseException:
            self._cells.pop(name, None)
            send.close()
            recv.close()
            raise
        return ref

    def ref(self, name: str) -> ActorRef[Any]:
        """The ref of the running actor `name`, or `ActorNotFound`."""
        cell = self._cells.get(name)
        if cell is None:
            raise ActorNotFound(f"no running actor named {name!r} in {self.name!r}")
        return cell.ref

    def message_type_of(self, name: str) -> Any:
        """The message type actor `name` declared (`object` when untyped)."""
        cell = self._cells.get(name)
        if cell is None or cell.actor is None:
            raise ActorNotFound(f"no running actor named {name!r} in {self.name!r}")
        return type(cell.actor).message_type

    def names(self) -> list[str]:
        """Names of the running actors, in spawn order."""
        return list(self._cells)

    async def stop(self, name: str, *, drain: bool = True) -> None:
        """Stop one actor (draining its mailbox, or at once) and wait until it is gone."""
        cell = self._cells.get(name)
        if cell is None:
            raise ActorNotFound(f"no running actor named {name!r} in {self.name!r}")
        self._request_stop(cell, drain=drain)
        await cell.done.wait()

    def _request_stop(self, cell: _Cell, *, drain: bool) -> None:
        if drain:
            cell.send.close()
        elif cell.scope is not None:
            cell.scope.cancel()
        else:
            cell.send.close()

    # -- reports ---------------------------------------------------------------

    def on_dead_letter(self, hook: Callable[[DeadLetter], None]) -> None:
        """Call `hook` for every dead letter (in addition to logging and counting)."""
        self._dead_letter_hooks.append(hook)

    def dead_letter(self, recipient: str, message: object, reason: str) -> None:
        """Report a message that will never be handled."""
        letter = DeadLetter(recipient, type(message).__name__, reason, message)
        self._dead.append(letter)
        self._dead_count += 1
        log.warning(
            "dead letter: %s to actor %r (%s)", letter.message_type, recipient, reason
        )
        for hook in self._dead_letter_hooks:
            hook(letter)

    def dead_letters(self) -> list[DeadLetter]:
        """The most recent dead letters (at most 1000 are kept; all are counted)."""
        return list(self._dead)

    def statistics(self) -> ActorSystemStatistics:
        return ActorSystemStatistics(
            actors=len(self._cells),
            messages_handled=self._handled,
            dead_letters=self._dead_count,
            rejected=self._rejected,
            failures=self._failures,
            restarts=self._restarts,
            mailbox_depths={
                name: cell.send.statistics().current_buffer_used
                for name, cell in self._cells.items()
            },
        )

    # -- the actor task --------------------------------------------------------

    async def _host(self, cell: _Cell, *, task_status: TaskStatus[None]) -> None:
        try:
            actor = cell.factory()
            await actor.on_start()
            cell.actor = actor
            task_status.started()
            stopped_cleanly = True
            with CancelScope() as scope:
                cell.scope = scope
                with contextlib.suppress(_StopRequested):
                    await self._process(cell)
            if scope.cancelled_caught:
                stopped_cleanly = False
            if cell.actor is not None:
                # Shielded so that on_stop runs even when the stop was a cancel.
                with CancelScope(shield=True):
                    await cell.actor.on_stop()
            how = "drained" if stopped_cleanly else "cancelled"
            log.debug("actor %r stopped (%s)", cell.name, how)
        finally:
            self._retire(cell)

    async def _process(self, cell: _Cell) -> None:
        recv = cell.recv
        batch = 0
        while True:
            try:
                message, reply = recv.receive_nowait()
            except WouldBlock:
                try:
                    message, reply = await recv.receive()
                except EndOfStream:
                    return
                batch = 0
            except EndOfStream:
                return
            actor = cell.actor
            assert actor is not None
            try:
                accepts = actor.accepts
                if accepts[0] is not object and not isinstance(message, accepts):
                    raise UnknownMessage(
                        f"actor {cell.name!r} ({type(actor).__name__}) does not accept "
                        f"{type(message).__name__}; it accepts "
                        f"{', '.join(t.__name__ for t in accepts)}"
                    )
                result = await actor.receive(message)
            except Rejected as exc:
                self._rejected += 1
                if reply is not None:
                    if not reply.done():
                        reply.set_exception(exc)
                else:
                    self.dead_letter(cell.name, message, f"rejected: {exc}")
            except Exception as exc:  # noqa: BLE001 - handed to the supervisor, never dropped
                if reply is not None and not reply.done():
                    reply.set_exception(exc)
                await self._supervise(cell, message, exc)
            else:
                if reply is not None and not reply.done():
                    reply.set_result(result)
            self._handled += 1
            batch += 1
            if batch >= _FAIRNESS_BATCH:
                batch = 0
                await checkpoint()

    async def _supervise(self, cell: _Cell, message: object, exc: Exception) -> None:
        self._failures += 1
        what = f"actor {cell.name!r} failed handling {type(message).__name__}: {exc!r}"
        directive = cell.budget.decide(self.clock.now())
        if directive is Directive.RESTART:
            log.error("%s; restarting with fresh state", what, exc_info=exc)
            old, cell.actor = cell.actor, None
            try:
                if old is not None:
                    await old.on_stop()
                fresh = cell.factory()
                await fresh.on_start()
            except Exception as restart_exc:
                raise ActorFailed(f"{what}; restart failed: {restart_exc!r}") from restart_exc
            cell.actor = fresh
            self._restarts += 1
        elif directive is Directive.STOP:
            log.error("%s; stopping it (policy)", what, exc_info=exc)
            cell.send.close()
            raise _StopRequested
        else:
            log.error("%s; escalating", what, exc_info=exc)
            raise ActorFailed(f"{what}; escalated (restart intensity exceeded or policy)") from exc

    def _retire(self, cell: _Cell) -> None:
        """Fail every queued ask and report every queued tell; free the name."""
        cell.send.close()
        while True:
            try:
                message, reply = cell.recv.receive_nowait()
            except (WouldBlock, EndOfStream):
                break
            if reply is not None:
                if not reply.done():
                    reply.set_exception(
                        ActorStopped(
                            f"actor {cell.name!r} stopped before handling "
                            f"ask {type(message).__name__}"
                        )
                    )
            else:
                self.dead_letter(cell.name, message, "actor stopped with message queued")
        cell.recv.close()
        if self._cells.get(cell.name) is cell:
            del self._cells[cell.name]
        cell.done.set()
