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
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Actor:
                (param,) = typing.get_args(base)
                cls.accepts = _accepted_types(param)
                cls.message_type = param if cls.accepts != (object,) else object
                break

    async def on_start(self) -> None:
        """Called once before the first message (and after every restart)."""

    async def on_stop(self) -> None:
        """Called once after the last message, when the actor stops or is restarted."""

    async def receive(self, message: M) -> Any:
        """Handle one message; the result is the reply to an ask."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive()")
