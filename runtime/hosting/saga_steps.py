"""Saga steps carried out by participant actors, on this node or another.

`Runtime.register_saga` takes, for each action or compensation name, an
async callable or a participant actor:

    rt.register_saga(TRIP, {
        "book_hotel": ActorStep("hotel@hotels"),      # an actor on node "hotels"
        "cancel_hotel": ActorStep("hotel@hotels"),
        "book_car": book_car,                          # an async callable
        ...
    })

The actor receives the `StepCall` (its `op` says action or compensation),
replies with the step's result, and raises `StepError` to fail the step
(`retriable=False` when another attempt cannot help). A `StepError` is a
`Rejected`, so it goes back to the orchestrator without counting as the
actor's failure. An actor on another node is asked over the transport
(`NatsTransport`: request-reply), and the retriable flag crosses the wire.
The target is looked up at each call, so it may be spawned after the saga is
registered (which must happen before the runtime starts, for recovery).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol

from dtxn.actors import ActorRef
from dtxn.protocols.errors import ConfigError
from dtxn.runtime.hosting.sagas import StepCall, StepError, StepFn
from dtxn.runtime.transport import Address, RemoteError

DEFAULT_TIMEOUT_S = 30.0


class _LocalActors(Protocol):
    def ref(self, name: str) -> ActorRef[Any]: ...


class _Asker(Protocol):
    """A transport that can ask an actor on another node (`NatsTransport`)."""

    async def ask(
        self,
        to: Address,
        message: object,
        *,
        timeout_s: float = ...,
        reply_type: Any = ...,
        from_node: str | None = ...,
    ) -> Any: ...


class ActorStep:
    """A step (or compensation) handled by the actor `target`: "actor@node", an
    `Address` or an `ActorRef`; `timeout_s` bounds each ask."""

    __slots__ = ("target", "timeout_s")

    def __init__(
        self, target: str | Address | ActorRef[Any], *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if isinstance(target, str):
            actor, sep, node = target.partition("@")
            if not sep or not actor or not node or "@" in node:
                raise ConfigError(f"an actor step is written 'actor@node', got {target!r}")
            target = Address(node, actor)
        elif not isinstance(target, Address | ActorRef):
            raise ConfigError(
                f"an actor step needs 'actor@node', an Address or an ActorRef, got {target!r}"
            )
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s)
            or timeout_s <= 0
        ):
            raise ConfigError(
                f"an actor step's timeout_s must be a positive number, got {timeout_s!r}"
            )
        self.target: Address | ActorRef[Any] = target
        self.timeout_s = float(timeout_s)

    def __repr__(self) -> str:
        return f"ActorStep({self.target!r}, timeout_s={self.timeout_s})"


def step_function(
    name: str, given: object, *, node: str, actors: _LocalActors, transport: object
) -> StepFn:
    """The async callable the saga host runs for `given` (a callable, actor or ActorStep)."""
    if isinstance(given, ActorRef | Address | str):
        given = ActorStep(given)
    if not isinstance(given, ActorStep):
        if not callable(given):
            raise ConfigError(
                f"saga step {name!r}: expected an async callable, an ActorStep, 'actor@node', "
                f"an Address or an ActorRef, got {given!r}"
            )
        if not _is_async(given):
            raise ConfigError(
                f"saga step {name!r}: {given!r} is a plain (sync) callable; a step must be "
                "an async function (`async def step(call: StepCall)`) or an object with "
                "an `async def __call__`"
            )
        fn: StepFn = given
        return fn
    target, timeout_s = given.target, given.timeout_s
    if isinstance(target, ActorRef):
        ref = target
        return _ask_local(lambda: ref, timeout_s)
    if target.node == node:
        actor = target.actor
        return _ask_local(lambda: actors.ref(actor), timeout_s)
    ask = getattr(transport, "ask", None)
    if ask is None:
        raise ConfigError(
            f"saga step {name!r} is handled by {target.actor}@{target.node}, on another node, "
            f"but this node's transport ({type(transport).__name__}) cannot ask other nodes; "
            "use NatsTransport, or an async callable"
        )
    asker: _Asker = transport  # type: ignore[assignment]
    return _ask_remote(asker, target, node, timeout_s)


def _is_async(given: object) -> bool:
    """Whether calling `given` makes a coroutine: an async function (or a partial of
    one) or an object whose `__call__` is one."""
    return inspect.iscoroutinefunction(given) or inspect.iscoroutinefunction(
        getattr(given, "__call__", None)  # noqa: B004 - the method itself is inspected
    )


def _ask_local(ref: Callable[[], ActorRef[Any]], timeout_s: float) -> StepFn:
    async def call_actor(call: StepCall) -> Any:
        return await ref().ask(call, timeout_s=timeout_s)

    return call_actor


def _ask_remote(asker: _Asker, to: Address, node: str, timeout_s: float) -> StepFn:
    async def call_remote(call: StepCall) -> Any:
        try:
            return await asker.ask(to, call, timeout_s=timeout_s, from_node=node)
        except RemoteError as exc:
            if exc.error_type == StepError.__name__:
                # The remote step failed on purpose: keep its retriable flag.
                raise StepError(exc.error, retriable=exc.retriable) from exc
            raise

    return call_remote


__all__ = ["DEFAULT_TIMEOUT_S", "ActorStep", "step_function"]
