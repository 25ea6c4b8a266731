"""The actor core: mailboxes, ask, supervision, ordering, shutdown, dead letters, codecs.

Every async test runs on uvloop and on plain asyncio (see `conftest.py`). No
test measures wall time; waits for "everyone is blocked" use anyio's
`wait_all_tasks_blocked`, and time-outs are short real timers that only have
to fire, never to fire *quickly*.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest
from anyio import wait_all_tasks_blocked
from dtxn.actors import (
    Actor,
    ActorError,
    ActorFailed,
    ActorNameTaken,
    ActorStopped,
    ActorSystem,
    AskTimeout,
    DeadLetter,
    Directive,
    MailboxFull,
    Rejected,
    SupervisionPolicy,
    UnknownMessage,
)
from dtxn.protocols.errors import ConfigError
from dtxn.runtime import Clock, InProcessTransport, Runtime

if TYPE_CHECKING:
    from conftest import ManualClock

pytestmark = pytest.mark.anyio


# -- actors used by the tests --------------------------------------------------


class Recorder(Actor[Any]):
    """Appends every message to a shared list; blocks on `gate` for the message "block"."""

    def __init__(
        self,
        seen: list[Any],
        *,
        started: anyio.Event | None = None,
        gate: anyio.Event | None = None,
    ) -> None:
        self.seen = seen
        self.started = started
        self.gate = gate

    async def receive(self, message: Any) -> Any:
        self.seen.append(message)
        if message == "block":
            assert self.started is not None and self.gate is not None
            self.started.set()
            await self.gate.wait()
        return message

    async def on_stop(self) -> None:
        self.seen.append("on_stop")


class Incr(msgspec.Struct):
    pass


class Read(msgspec.Struct):
    pass


class Boom(msgspec.Struct):
    pass


class Refuse(msgspec.Struct):
    pass


class Refused(Rejected):
    """The counter refused a message; its state is still valid."""


class Counter(Actor[Incr | Read | Boom | Refuse]):
    """Volatile count; `Boom` fails the handler, `Refuse` rejects one message."""

    instances = 0

    def __init__(self, lifecycle: list[str]) -> None:
        Counter.instances += 1
        self.number = Counter.instances
        self.lifecycle = lifecycle
        self.count = 0

    async def on_start(self) -> None:
        self.lifecycle.append(f"start#{self.number}")

    async def on_stop(self) -> None:
        self.lifecycle.append(f"stop#{self.number}")

    async def receive(self, message: Incr | Read | Boom | Refuse) -> int:
        match message:
            case Incr():
                self.count += 1
            case Boom():
                raise RuntimeError(f"boom in counter #{self.number}")
            case Refuse():
                raise Refused("counter refuses this one")
        return self.count


def counter_factory(lifecycle: list[str]) -> Any:
    return lambda: Counter(lifecycle)


async def ask_expecting(exc_type: type[BaseException], ref: Any, message: object) -> str:
    """Ask and return the text of the expected error (fails the test if none)."""
    with pytest.raises(exc_type) as info:
        await ref.ask(message)
    return str(info.value)


# -- mailbox backpressure ------------------------------------------------------


async def test_await_tell_waits_for_room_and_tell_nowait_raises_mailbox_full() -> None:
    seen: list[Any] = []
    started, gate = anyio.Event(), anyio.Event()
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(
            lambda: Recorder(seen, started=started, gate=gate), name="slow", mailbox_size=2
        )
        ref.tell_nowait("block")
        await started.wait()
        ref.tell_nowait(1)
        ref.tell_nowait(2)
        with pytest.raises(MailboxFull, match=r"mailbox of actor 'slow' is full \(2 messages\)"):
            ref.tell_nowait(3)

        delivered = anyio.Event()

        async def tell_and_note() -> None:
            await ref.tell(3)
            delivered.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(tell_and_note)
            await wait_all_tasks_blocked()
            assert not delivered.is_set()
            stats = ref.statistics()
            assert (stats.queued, stats.capacity, stats.waiting_senders) == (2, 2, 1)
            gate.set()
            await delivered.wait()
    assert seen == ["block", 1, 2, 3, "on_stop"]


async def test_a_mailbox_of_size_zero_hands_each_message_straight_to_an_idle_actor() -> None:
    seen: list[Any] = []
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(lambda: Recorder(seen), name="direct", mailbox_size=0)
        await wait_all_tasks_blocked()  # the actor is idle, waiting for a message
        ref.tell_nowait(1)
        with pytest.raises(MailboxFull, match=r"\(0 messages\)"):
            ref.tell_nowait(2)
        await ref.tell(2)
        assert await ref.ask(3) == 3
    assert seen == [1, 2, 3, "on_stop"]


async def test_a_sender_cancelled_just_as_room_appears_passes_the_room_on() -> None:
    # Plain asyncio cancellation (as `asyncio.wait_for` does) can hit a sender
    # after it was woken for a free slot and before it ran; the slot must then
    # go to the next sender, or that one waits although there is room.
    seen: list[Any] = []
    started, gate, release = anyio.Event(), anyio.Event(), anyio.Event()
    senders: dict[str, asyncio.Task[None]] = {}

    class CancelsA(Recorder):
        async def receive(self, message: Any) -> Any:
            if message == "cancel a":
                senders["a"].cancel()  # "a" was just woken for the room this one left
                await release.wait()  # busy: only a passed-on wake-up lets "b" in now
            return await super().receive(message)

    with anyio.fail_after(30):  # a hang guard, not a speed check
        async with ActorSystem(Clock()) as system:
            ref = await system.spawn(
                lambda: CancelsA(seen, started=started, gate=gate), mailbox_size=1
            )
            ref.tell_nowait("block")
            await started.wait()
            ref.tell_nowait("cancel a")
            for name in ("a", "b"):
                senders[name] = asyncio.ensure_future(ref.tell(name))
                await wait_all_tasks_blocked()
            assert ref.statistics().waiting_senders == 2
            gate.set()
            await senders["b"]
            release.set()
            await asyncio.wait([senders["a"]])
    assert senders["a"].cancelled()
    assert senders["b"].exception() is None
    assert seen == ["block", "cancel a", "b", "on_stop"]


# -- ask -----------------------------------------------------------------------


class Doubler(Actor[int]):
    async def receive(self, message: int) -> int:
        return message * 2


async def test_ask_returns_the_handlers_result() -> None:
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(Doubler)
        assert [await ref.ask(n) for n in range(5)] == [0, 2, 4, 6, 8]


async def test_ask_raises_ask_timeout_when_no_reply_comes_and_the_actor_carries_on() -> None:
    seen: list[Any] = []
    started, gate = anyio.Event(), anyio.Event()
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(
            lambda: Recorder(seen, started=started, gate=gate), name="stuck"
        )
        with pytest.raises(AskTimeout, match=r"ask str to actor 'stuck' got no reply within"):
            await ref.ask("block", timeout_s=0.01)
        gate.set()
        assert await ref.ask("after", timeout_s=60) == "after"
    assert seen == ["block", "after", "on_stop"]


async def test_ask_timeout_also_bounds_the_wait_for_mailbox_room() -> None:
    seen: list[Any] = []
    started, gate = anyio.Event(), anyio.Event()
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(
            lambda: Recorder(seen, started=started, gate=gate), name="full", mailbox_size=1
        )
        ref.tell_nowait("block")
        await started.wait()
        ref.tell_nowait("queued")
        with pytest.raises(AskTimeout):
            await ref.ask("never queued", timeout_s=0.01)
        assert ref.statistics().waiting_senders == 0
        gate.set()
    assert seen == ["block", "queued", "on_stop"]


# -- errors from handlers and supervision --------------------------------------


async def test_a_rejected_error_goes_to_the_asker_and_the_actor_is_not_restarted() -> None:
    lifecycle: list[str] = []
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(counter_factory(lifecycle))
        await ref.tell(Incr())
        text = await ask_expecting(Refused, ref, Refuse())
        assert text == "counter refuses this one"
        assert await ref.ask(Read()) == 1
        stats = system.statistics()
        assert (stats.rejected, stats.failures, stats.restarts) == (1, 0, 0)
    assert len(lifecycle) == 2 and lifecycle[0].startswith("start#")


async def test_a_plain_exception_goes_to_the_asker_and_restarts_with_fresh_state() -> None:
    lifecycle: list[str] = []
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(counter_factory(lifecycle), name="counter")
        first = Counter.instances
        for _ in range(3):
            await ref.tell(Incr())
        assert await ref.ask(Read()) == 3
        text = await ask_expecting(RuntimeError, ref, Boom())
        assert text == f"boom in counter #{first}"
        assert await ref.ask(Read()) == 0, "a restarted actor must start from fresh state"
        await ref.tell(Boom())  # a failing tell is supervised the same way
        assert await ref.ask(Read()) == 0
        assert system.names() == ["counter"]
        stats = system.statistics()
        assert (stats.failures, stats.restarts, stats.rejected) == (2, 2, 0)
    assert lifecycle == [
        f"start#{first}",
        f"stop#{first}",
        f"start#{first + 1}",
        f"stop#{first + 1}",
        f"start#{first + 2}",
        f"stop#{first + 2}",
    ]


async def test_failures_beyond_the_restart_intensity_escalate_as_actor_failed() -> None:
    lifecycle: list[str] = []
    policy = SupervisionPolicy(max_restarts=2, within_s=60.0)
    with pytest.RaisesGroup(
        pytest.RaisesExc(ActorFailed, match=r"actor 'fragile' failed handling Boom.*escalated")
    ):
        async with ActorSystem(Clock()) as system:
            ref = await system.spawn(counter_factory(lifecycle), name="fragile", policy=policy)
            bystander = await system.spawn(counter_factory(lifecycle), name="bystander")
            for _ in range(2):
                await ask_expecting(RuntimeError, ref, Boom())
            assert system.statistics().restarts == 2
            await ask_expecting(RuntimeError, ref, Boom())
            await bystander.ask(Read())  # cancelled by the escalation
            await Clock().sleep(60)
            pytest.fail("the third failure within 60 s did not escalate")
    # on_stop ran for the escalated actor and for the one cancelled with it.
    assert sum(entry.startswith("stop#") for entry in lifecycle) == 4
    assert system.names() == []


async def test_failures_further_apart_than_within_s_are_restarted(
    manual_clock: ManualClock,
) -> None:
    lifecycle: list[str] = []
    policy = SupervisionPolicy(max_restarts=1, within_s=10.0)
    with pytest.RaisesGroup(pytest.RaisesExc(ActorFailed, match="escalated")):
        async with ActorSystem(manual_clock) as system:
            ref = await system.spawn(counter_factory(lifecycle), policy=policy)
            await ask_expecting(RuntimeError, ref, Boom())
            manual_clock.advance(10.5)
            await ask_expecting(RuntimeError, ref, Boom())
            assert system.statistics().restarts == 2
            manual_clock.advance(9.5)
            await ask_expecting(RuntimeError, ref, Boom())
            await Clock().sleep(60)
            pytest.fail("two failures within 10 s did not escalate")


async def test_a_stop_policy_stops_the_actor_and_what_was_queued_becomes_dead_letters() -> None:
    lifecycle: list[str] = []
    policy = SupervisionPolicy(directive=Directive.STOP)
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(counter_factory(lifecycle), name="once", policy=policy)
        other = await system.spawn(Doubler, name="other")
        ref.tell_nowait(Boom())
        ref.tell_nowait(Incr())
        ref.tell_nowait(Read())
        await ref.wait_stopped()
        assert system.names() == ["other"]
        assert [(d.message_type, d.reason) for d in system.dead_letters()] == [
            ("Incr", "actor stopped with message queued"),
            ("Read", "actor stopped with message queued"),
        ]
        text = await ask_expecting(ActorStopped, ref, Read())
        assert "'once'" in text
        assert await other.ask(21) == 42, "the rest of the system keeps running"
        stats = system.statistics()
        assert (stats.failures, stats.restarts, stats.dead_letters) == (1, 0, 2)
    assert [entry[:5] for entry in lifecycle] == ["start", "stop#"]


async def test_a_failing_on_start_makes_spawn_raise_and_frees_the_name() -> None:
    class Broken(Actor[int]):
        async def on_start(self) -> None:
            raise ValueError("cannot open the log")

    async with ActorSystem(Clock()) as system:
        with pytest.raises(ValueError, match="cannot open the log"):
            await system.spawn(Broken, name="x")
        assert system.names() == []
        ref = await system.spawn(Doubler, name="x")
        assert await ref.ask(1) == 2


# -- ordering ------------------------------------------------------------------


async def test_one_sender_to_one_receiver_loses_and_reorders_nothing_under_load() -> None:
    seen: list[Any] = []
    total = 100_000
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(lambda: Recorder(seen), mailbox_size=64)
        for n in range(total):
            await ref.tell(n)
    assert seen[:-1] == list(range(total))
    assert system.statistics().messages_handled == total


async def test_each_of_several_senders_is_delivered_in_fifo_order() -> None:
    seen: list[Any] = []
    senders, per_sender = 4, 5_000

    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(lambda: Recorder(seen), mailbox_size=8)

        async def send_all(sender: int) -> None:
            for seq in range(per_sender):
                if seq % 3 == 0:
                    await ref.ask((sender, seq))
                else:
                    await ref.tell((sender, seq))

        async with anyio.create_task_group() as tg:
            for sender in range(senders):
                tg.start_soon(send_all, sender)

    messages = seen[:-1]
    assert len(messages) == senders * per_sender
    for sender in range(senders):
        assert [seq for s, seq in messages if s == sender] == list(range(per_sender))
    first_of_1 = messages.index((1, 0))
    assert first_of_1 < messages.index((0, per_sender - 1)), "senders should interleave"


# -- shutdown ------------------------------------------------------------------


async def test_leaving_the_block_drains_queued_messages_then_runs_on_stop() -> None:
    seen: list[Any] = []
    started, gate = anyio.Event(), anyio.Event()
    async with ActorSystem(Clock()) as system:
        ref = await system.spawn(lambda: Recorder(seen, started=started, gate=gate))
        ref.tell_nowait("block")
        await started.wait()
        for n in range(5):
            ref.tell_nowait(n)
        gate.set()
        assert seen == ["block"]
    assert seen == ["block", 0, 1, 2, 3, 4, "on_stop"]
    assert system.statistics().dead_letters == 0


async def test_aclose_without_drain_cancels_and_fails_every_queued_ask_and_tell() -> None:
    seen: list[Any] = []
    letters: list[DeadLetter] = []
    started, gate = anyio.Event(), anyio.Event()
    results: dict[str, object] = {}
    async with ActorSystem(Clock()) as system:
        system.on_dead_letter(letters.append)
        ref = await system.spawn(
            lambda: Recorder(seen, started=started, gate=gate), name="busy"
        )

        async def ask_into(key: str, message: str) -> None:
            try:
                results[key] = await ref.ask(message)
            except ActorStopped as exc:
                results[key] = exc

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask_into, "in flight", "block")
            await started.wait()
            tg.start_soon(ask_into, "queued", "later")
            await wait_all_tasks_blocked()
            ref.tell_nowait("tell 1")
            ref.tell_nowait("tell 2")
            assert ref.statistics().queued == 3
            await system.aclose(drain=False)
        assert system.names() == []

    assert seen == ["block", "on_stop"]
    assert "stopped while handling ask str" in str(results["in flight"])
    assert "stopped before handling ask str" in str(results["queued"])
    assert [(d.message, d.reason) for d in letters] == [
        ("tell 1", "actor stopped with message queued"),
        ("tell 2", "actor stopped with message queued"),
    ]


async def test_messages_to_a_stopped_actor_are_counted_dead_letters_and_hooks_see_them() -> None:
    letters: list[DeadLetter] = []
    async with ActorSystem(Clock()) as system:
        system.on_dead_letter(letters.append)
        ref = await system.spawn(Doubler, name="gone")
        await system.stop("gone")
        await ref.tell(1)
        ref.tell_nowait(2)
        text = await ask_expecting(ActorStopped, ref, 3)
        assert text == "actor 'gone' is stopped; ask int failed"
        assert system.statistics().dead_letters == 2
    assert [(d.recipient, d.message, d.reason) for d in letters] == [
        ("gone", 1, "actor stopped"),
        ("gone", 2, "actor stopped"),
    ]


# -- unknown and malformed messages --------------------------------------------


class Ping(msgspec.Struct):
    pass


class Pong(msgspec.Struct):
    pass


class Pinger(Actor[Ping | Read]):
    async def receive(self, message: Ping | Read) -> str:
        return "pong"


async def test_an_unknown_message_type_is_refused_clearly_and_the_actor_keeps_running() -> None:
    async with ActorSystem(Clock()) as system:
        ref: Any = await system.spawn(Pinger, name="pinger")
        text = await ask_expecting(UnknownMessage, ref, Pong())
        assert text == "actor 'pinger' (Pinger) does not accept Pong; it accepts Ping, Read"
        await ref.tell("not even a struct")
        assert await ref.ask(Ping()) == "pong"
        (letter,) = system.dead_letters()
        assert letter.reason.startswith("rejected: actor 'pinger' (Pinger) does not accept str")
        stats = system.statistics()
        assert (stats.rejected, stats.restarts, stats.failures) == (2, 0, 0)


T = TypeVar("T")


class Generic1(Actor[T]):
    async def receive(self, message: T) -> T:
        return message


class PingOnly(Generic1[Ping]):
    pass


def test_a_subclass_of_a_generic_actor_accepts_the_type_it_was_given() -> None:
    assert PingOnly.accepts == (Ping,)
    assert PingOnly.message_type is Ping
    assert Generic1.accepts == (object,)


class KvMessage(msgspec.Struct, tag_field="type", frozen=True, array_like=True):
    """Messages of the key-value actor: a tagged union, as on the wire."""


class Put(KvMessage, tag="put", frozen=True):
    key: str
    value: int


class Get(KvMessage, tag="get", frozen=True):
    key: str


class Kv(Actor[Put | Get]):
    def __init__(self, received: list[KvMessage]) -> None:
        self.received = received
        self.data: dict[str, int] = {}

    async def receive(self, message: Put | Get) -> int | None:
        self.received.append(message)
        match message:
            case Put(key=key, value=value):
                self.data[key] = value
                return None
            case Get(key=key):
                return self.data.get(key)


async def test_messages_round_trip_between_nodes_through_msgpack() -> None:
    received: list[KvMessage] = []
    transport = InProcessTransport(encode=True)
    async with (
        Runtime("node-a", transport=transport) as a,
        Runtime("node-b", transport=transport) as b,
    ):
        ref = await b.spawn(lambda: Kv(received), name="kv")
        put = Put("x", 7)
        await a.send(b.address("kv"), put)
        await a.send(b.address("kv"), Get("x"))
        assert await ref.ask(Get("x")) == 7
    assert received == [Put("x", 7), Get("x"), Get("x")]
    assert received[0] is not put, "the message must have gone through the codec"
    stats = transport.statistics()
    assert (stats.messages, stats.undeliverable) == (2, 0)
    assert stats.bytes > 0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xc1", id="not-msgpack"),
        pytest.param(msgspec.msgpack.encode(["delete", "x"]), id="unknown-tag"),
        pytest.param(msgspec.msgpack.encode(["put", "x", "seven"]), id="wrong-field-type"),
    ],
)
async def test_malformed_bytes_are_reported_and_the_actor_keeps_running(data: bytes) -> None:
    received: list[KvMessage] = []
    transport = InProcessTransport(encode=True)
    async with Runtime("node-a", transport=transport) as rt:
        ref = await rt.spawn(lambda: Kv(received), name="kv")
        await transport.deliver_bytes(rt.address("kv"), data)
        await rt.send(rt.address("kv"), Put("x", 1))
        assert await ref.ask(Get("x")) == 1
        (letter,) = rt.system.dead_letters()
        assert letter.recipient == "kv"
        assert letter.message_type == "bytes"
        assert letter.reason.startswith(f"malformed message for kv@node-a ({len(data)} bytes): ")
        assert rt.statistics().undeliverable == 1
        assert transport.statistics().undeliverable == 1
    assert received == [Put("x", 1), Get("x")]


# -- configuration -------------------------------------------------------------


@pytest.mark.parametrize("size", [-1, 2.5, True, math.inf, "8"])
async def test_an_invalid_mailbox_size_is_refused(size: Any) -> None:
    async with ActorSystem(Clock()) as system:
        with pytest.raises(ConfigError, match=r"mailbox_size must be an int >= 0, got "):
            await system.spawn(Doubler, mailbox_size=size)
        assert system.names() == []


async def test_a_duplicate_or_malformed_actor_name_is_refused() -> None:
    async with ActorSystem(Clock(), name="sys") as system:
        await system.spawn(Doubler, name="a")
        with pytest.raises(ActorNameTaken, match=r"an actor named 'a' is already running in 'sys'"):
            await system.spawn(Doubler, name="a")
        for bad in ["", "a@b"]:
            with pytest.raises(ConfigError, match="actor name must be a non-empty str"):
                await system.spawn(Doubler, name=bad)
        assert system.names() == ["a"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_restarts": -1}, "max_restarts must be an int >= 0"),
        ({"within_s": 0.0}, "within_s must be finite and > 0"),
        ({"within_s": math.nan}, "within_s must be finite and > 0"),
        ({"directive": "restart"}, "directive must be a Directive"),
    ],
)
def test_an_invalid_supervision_policy_is_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SupervisionPolicy(**kwargs)


async def test_spawning_outside_the_block_or_while_closing_is_refused() -> None:
    system = ActorSystem(Clock(), name="sys")
    with pytest.raises(ActorError, match="actor system 'sys' is not running"):
        await system.spawn(Doubler)
    async with system:
        await system.aclose()
        with pytest.raises(ActorError, match="actor system 'sys' is closing"):
            await system.spawn(Doubler)
