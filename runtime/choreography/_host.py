"""`Choreography`: hosts the participants on a runtime and collects the sagas' outcomes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import anyio
from anyio import CancelScope
from anyio.abc import TaskGroup, TaskStatus
from dtxn.actors import Actor, Directive, SupervisionPolicy
from dtxn.protocols.errors import ConfigError, DtxnError
from dtxn.runtime._runtime import Runtime
from dtxn.runtime.choreography._participant import (
    ChoreographyParticipant,
)
from dtxn.runtime.choreography._records import (
    _DECODER,
    OUTCOMES_ACTOR,
    SagaEvent,
    Topics,
)
from dtxn.runtime.wal import Durability, WalStore, make_wal, parse_durability

log = logging.getLogger("dtxn.choreography")


# -- the host ----------------------------------------------------------------------------


class _Outcomes(Actor[SagaEvent]):
    """Subscribed to the terminal topics: remembers each saga's final event."""

    def __init__(self, choreo: Choreography) -> None:
        self.choreo = choreo

    async def receive(self, message: SagaEvent) -> None:
        self.receive_nowait(message)

    def receive_nowait(self, message: SagaEvent) -> None:
        if message.saga_id not in self.choreo.outcomes:
            self.choreo.outcomes[message.saga_id] = message
        waiter = self.choreo._waiters.pop(message.saga_id, None)
        if waiter is not None:
            waiter.set()


class _Hosted:
    """A running participant and what stops it."""

    def __init__(self, participant: ChoreographyParticipant, scope: CancelScope,
                 closed: anyio.Event) -> None:
        self.participant = participant
        self.scope = scope  # cancelled by a crash
        self.closed = closed  # set once its WAL is closed
        self.stopping = anyio.Event()  # set by a clean stop


class Choreography:
    """Hosts choreography participants on `rt`, each with its own WAL under `wal_dir`.

        async with Choreography(rt, topics, wal_dir=d, terminal=("OrderApproved",)) as ch:
            await ch.start(lambda: Inventory(...))
            await ch.publish(SagaEvent("OrderPlaced", "order-1", {...}))
            final = await ch.wait("order-1")

    `terminal` topics end a saga; their events are collected in `outcomes`
    (the choreography subscribes itself to them on this node).
    """

    def __init__(
        self,
        rt: Runtime,
        topics: Topics,
        *,
        wal_dir: str | os.PathLike[str] | None = None,
        durability: Durability | str = Durability.FULL,
        terminal: Sequence[str] = (),
    ) -> None:
        if wal_dir is None and parse_durability(durability) is not Durability.MEMORY:
            raise ConfigError("a durable choreography needs wal_dir for its participants' WALs")
        self.rt = rt
        self.topics = topics
        self.wal_dir = Path(wal_dir) if wal_dir is not None else None
        self.durability = durability
        self.terminal = tuple(terminal)
        self.rng = rt.clock.rng("choreography")
        self.outcomes: dict[str, SagaEvent] = {}
        self._waiters: dict[str, anyio.Event] = {}
        self._factories: dict[str, Callable[[], ChoreographyParticipant]] = {}
        self._hosted: dict[str, _Hosted] = {}
        self._wals: dict[str, WalStore] = {}
        self._hooks: list[Callable[[SagaEvent], None]] = []
        self._tg: TaskGroup | None = None
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> Choreography:
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            await self.rt.spawn(lambda: _Outcomes(self), name=OUTCOMES_ACTOR)
            for topic in self.terminal:
                self.topics.subscribe(topic, self.rt.address(OUTCOMES_ACTOR))
        except BaseException as exc:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        for name in list(self._hosted):
            await self.stop(name)
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        return await stack.__aexit__(exc_type, exc, tb)

    def participant(self, name: str) -> ChoreographyParticipant:
        found = self._hosted.get(name)
        if found is None:
            raise ConfigError(f"no participant {name!r} is running in this choreography")
        return found.participant

    def running(self) -> list[str]:
        """Names of the participants hosted now (a crashed one is absent until restarted)."""
        return list(self._hosted)

    def on_event(self, hook: Callable[[SagaEvent], None]) -> None:
        """Call `hook(event)` for every event published (to trace the flow)."""
        self._hooks.append(hook)

    async def start(self, factory: Callable[[], ChoreographyParticipant]) -> None:
        """Open a participant's WAL, replay it, start its actor and resume its work."""
        if self._tg is None:
            raise DtxnError("the choreography is not running; use `async with`")
        participant = factory()
        address = self.rt.address(participant.name)
        for step in participant.steps.values():
            for topic in (step.on, *step.compensate_on):
                if address not in self.topics.subscribers(topic):
                    raise ConfigError(
                        f"participant {participant.name!r} step {step.name!r} reacts to"
                        f" {topic!r} but is not subscribed to it in the topics"
                    )
        self._factories[participant.name] = factory
        await self._tg.start(self._host, participant)

    async def _host(self, participant: ChoreographyParticipant,
                    *, task_status: TaskStatus[None]) -> None:
        path = None if self.wal_dir is None else self.wal_dir / f"{participant.name}.wal.db"
        closed = anyio.Event()
        try:
            await self._run_hosted(participant, path, closed, task_status)
        finally:
            closed.set()

    async def _run_hosted(self, participant: ChoreographyParticipant, path: Path | None,
                          closed: anyio.Event, task_status: TaskStatus[None]) -> None:
        wal = self._wals.get(participant.name)
        if wal is None:
            wal = make_wal(path, durability=self.durability,
                           node=f"{self.rt.node}/{participant.name}")
            if parse_durability(self.durability) is Durability.MEMORY:
                # A memory WAL is the participant's "disk": kept across restarts.
                self._wals[participant.name] = wal
        with CancelScope() as scope:
            async with wal, anyio.create_task_group() as tg:
                records = [_DECODER.decode(entry.data) for entry in await wal.read_all()]
                work = participant._replay(records)
                participant._wal, participant._tg, participant._choreo = wal, tg, self
                policy = SupervisionPolicy(directive=Directive.ESCALATE)
                await self.rt.spawn(lambda: participant, name=participant.name, policy=policy)
                hosted = _Hosted(participant, scope, closed)
                self._hosted[participant.name] = hosted
                task_status.started()
                for resume in work:
                    resume()
                await hosted.stopping.wait()
                # A clean stop: steps in flight are resumed from the WAL at the
                # next start; the WAL itself closes normally (lazy records kept).
                tg.cancel_scope.cancel()

    async def stop(self, name: str) -> None:
        """Stop a participant: its actor (draining), then its running steps, then its WAL."""
        hosted = self._pop(name)
        await self.rt.system.stop(name, drain=True)
        hosted.participant._tg = None
        hosted.stopping.set()
        await hosted.closed.wait()

    async def crash(self, name: str) -> None:
        """Model a crash of one participant: work in flight and unforced records are lost."""
        hosted = self._pop(name)
        wal_crash = getattr(hosted.participant._wal, "crash", None)
        if wal_crash is not None:
            wal_crash()
        hosted.participant._tg = None
        await self.rt.system.stop(name, drain=False)
        hosted.scope.cancel()
        await hosted.closed.wait()  # raises Cancelled at once when a participant crashes itself

    def _pop(self, name: str) -> _Hosted:
        hosted = self._hosted.pop(name, None)
        if hosted is None:
            raise ConfigError(f"no participant {name!r} is running in this choreography")
        return hosted

    async def restart(self, name: str) -> None:
        """Start a fresh instance of a stopped or crashed participant from its WAL."""
        await self.start(self._factories[name])

    async def publish(self, event: SagaEvent) -> None:
        """Send `event` to every subscriber of its topic (none: logged, dropped)."""
        for hook in self._hooks:
            hook(event)
        addresses = self.topics.subscribers(event.topic)
        if not addresses:
            log.warning("choreography: nobody subscribes to %r (saga %r)", event.topic,
                        event.saga_id)
        for address in addresses:
            await self.rt.send(address, event)

    def settled(self) -> bool:
        """Nothing in flight: every participant idle and every mailbox empty."""
        depths = self.rt.system.statistics().mailbox_depths
        return all(
            hosted.participant.idle() and not depths.get(name, 0)
            for name, hosted in self._hosted.items()
        ) and not depths.get(OUTCOMES_ACTOR, 0)

    async def settle(self, *, poll_s: float = 0.005) -> None:
        """Wait until `settled()` holds twice in a row (wrap in a timeout)."""
        calm = 0
        while calm < 2:
            calm = calm + 1 if self.settled() else 0
            await self.rt.clock.sleep(poll_s)

    async def wait(self, saga_id: str) -> SagaEvent:
        """The terminal event of `saga_id`, once published (wrap in a timeout)."""
        while saga_id not in self.outcomes:
            event = self._waiters.setdefault(saga_id, anyio.Event())
            await event.wait()
        return self.outcomes[saga_id]
