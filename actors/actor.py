"""The `Actor` base class: one message at a time, a typed `receive`, lifecycle hooks.

An actor declares what it accepts through its type parameter:
`class Counter(Actor[Increment | Get])`. A message of any other type is
refused with `UnknownMessage` before `receive` runs, and the actor keeps going.
"""

from __future__ import annotations

import types
import typing
from typing import Any, ClassVar, Generic, TypeVar

M = TypeVar("M")


def _accepted_types(param: Any) -> tuple[type, ...]:
    """Flatten a type parameter (a class, a union, a generic alias) into classes."""
    if isinstance(param, TypeVar) or param is Any or param is object:
        return (object,)
    origin = typing.get_origin(param)
    if origin is typing.Union or origin is types.UnionType:
        found: list[type] = []
        for arg in typing.get_args(param):
            found.extend(_accepted_types(arg))
        return tuple(found)
    if origin is not None:
        return (origin,)
    if isinstance(param, type):
        return (param,)
    return (object,)


def _message_param(cls: type) -> Any:
    """What `cls` passes as `Actor`'s type parameter, through generic subclasses.

    `class Base(Actor[T])` then `class Concrete(Base[Ping])` must accept `Ping`,
    so a type variable is substituted by the argument given for it one level down.
    """
    for base in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        if origin is Actor:
            return typing.get_args(base)[0]
        if isinstance(origin, type) and issubclass(origin, Actor):
            inner = _message_param(origin)
            params = getattr(origin, "__parameters__", ())
            if isinstance(inner, TypeVar) and inner in params:
                return typing.get_args(base)[params.index(inner)]
            return inner
    return None


class Actor(Generic[M]):
    """Subclass and implement `receive`. The runtime calls it for one message at a time.

    The return value of `receive` is the reply to an `ask` (ignored for a tell).
    `on_start` runs before the first message, `on_stop` after the last one.
    A restart by the supervisor builds a fresh instance from the factory, so
    volatile state is lost by design; durable state belongs in a log.
    """

    accepts: ClassVar[tuple[type, ...]] = (object,)
    message_type: ClassVar[Any] = object

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        param = _message_param(cls)
        if param is not None:
            cls.accepts = _accepted_types(param)
            cls.message_type = param if object not in cls.accepts else object

    async def on_start(self) -> None:
        """Called once before the first message (and after every restart)."""

    async def on_stop(self) -> None:
        """Called once for each `on_start` that succeeded, however the actor stops.

        After the last message when drained; on a restart (before the fresh
        instance starts); shielded from cancellation when the actor is cancelled
        or its failure escalates, so resources are released in every case.
        """

    async def receive(self, message: M) -> Any:
        """Handle one message; the result is the reply to an ask."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive()")

    def receive_nowait(self, message: M) -> Any:
        """Optional: handle one message without awaiting anything.

        An actor whose handling never awaits may override this; its host then
        calls it instead of awaiting `receive`, which saves making and running
        a coroutine per message. Everything else is as for `receive` (one
        message at a time, the result is the reply, errors are supervised);
        `receive` should give the same result, for callers that await it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not handle messages synchronously")
