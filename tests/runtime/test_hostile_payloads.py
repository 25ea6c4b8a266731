"""Hostile bytes over a real private nats-server: a message that cannot be decoded is
one dropped message with at most one rate-limited log line, never a dead node.

Issue 14, finding 4: a msgpack payload nested 200,000 levels deep (in a
PREPARE's payload from a peer, or in a TransactRequest to the gateway) made
msgspec raise RecursionError inside the transport's task, and the node died.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import msgspec
import nats  # type: ignore[import-untyped]
import pytest
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import CodecError, ConfigError
from dtxn.protocols.messages import Prepare, Protocol, Timeouts
from dtxn.runtime import Runtime
from dtxn.runtime.cli.node import GATEWAY, TransactRequest, gateway, submit
from dtxn.runtime.servers import nats_server
from dtxn.runtime.transport.limits import (
    MAX_NESTING,
    decode_bounded,
    nesting_exceeds,
    wire_problem,
)
from dtxn.runtime.transport.nats import NatsTransport
from nodes import Ledger, eventually

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=2.0, acks_s=0.2, decision_s=0.3, retry_max_s=0.5)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}
DEEP = 200_000
NODES = ["coord", "bank-a", "bank-b", "client"]


def _with_payload(message: object, payload: bytes) -> bytes:
    """`message` encoded with its payload field replaced by raw msgpack `payload`."""
    marker = "\x00payload-goes-here\x00"
    encoded = msgspec.msgpack.encode(message)
    marker_bytes = msgspec.msgpack.encode(marker)
    assert encoded.count(marker_bytes) == 1
    return encoded.replace(marker_bytes, payload)


def _deep(levels: int) -> bytes:
    return b"\x91" * levels + b"\xc0"  # [[[...[nil]...]]]


@asynccontextmanager
async def banks(
    url: str, stack: AsyncExitStack, **options: Any
) -> AsyncIterator[tuple[Runtime, dict[str, Runtime], dict[str, Ledger]]]:
    """A coordinator with a gateway and two participant nodes, each on its own connection."""
    ledgers = {name: Ledger() for name in ("bank-a", "bank-b")}
    runtimes: dict[str, Runtime] = {}
    for name, ledger in ledgers.items():
        t = await stack.enter_async_context(
            NatsTransport(url, peers=NODES, coordinators=["coord"], **options)
        )
        runtimes[name] = await stack.enter_async_context(
            Runtime(name, transport=t, resources={"ledger": ledger}, timeouts=FAST)
        )
    t = await stack.enter_async_context(NatsTransport(url, peers=NODES, **options))
    coord = await stack.enter_async_context(Runtime("coord", transport=t, timeouts=FAST))
    t.serve("coord", GATEWAY, gateway(coord), TransactRequest)
    await t.wait_subscribed()
    yield coord, runtimes, ledgers


def _transport(rt: Runtime) -> NatsTransport:
    assert isinstance(rt.transport, NatsTransport)
    return rt.transport


async def test_a_prepare_payload_nested_200000_deep_from_a_peer_is_dropped_and_the_node_lives(
) -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        coord, runtimes, ledgers = await stack.enter_async_context(banks(server.url, stack))
        rogue = await nats.connect(server.url)
        # Sent as the coordinator would send it (the subject names coord; with
        # NATS permissions only coord could publish it): an authenticated peer.
        prepare = Prepare("evil-deep", "coordinator@coord", Protocol.TWO_PC,
                          ("ledger@bank-a",), "\x00payload-goes-here\x00")
        await rogue.publish("dtxn.bank-a.ledger.coord", _with_payload(prepare, _deep(DEEP)))
        await rogue.flush()
        bank_a = _transport(runtimes["bank-a"])
        await eventually(lambda: bank_a.statistics().undeliverable == 1)
        await rogue.close()
        # The node lives on and commits the next transfer.
        assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
        await eventually(lambda: ledgers["bank-a"].balance == -10)
        assert "evil-deep" not in ledgers["bank-a"].prepared
        [letter] = runtimes["bank-a"].system.dead_letters()
        assert f"nested more than {MAX_NESTING} levels deep" in letter.reason


async def test_a_transact_request_nested_200000_deep_gets_an_error_and_the_gateway_lives(
) -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        coord, _, ledgers = await stack.enter_async_context(banks(server.url, stack))
        rogue = await nats.connect(server.url)
        request = TransactRequest({"ledger@bank-a": "\x00payload-goes-here\x00"})
        answer = await rogue.request(
            "dtxn.coord.gateway.client", _with_payload(request, _deep(DEEP)), timeout=10
        )
        await rogue.close()
        reply = msgspec.msgpack.decode(answer.data)
        assert reply[0] is False
        assert reply[2] == "CodecError"
        assert "nested more than" in reply[3]
        # The gateway still runs transactions.
        client = await stack.enter_async_context(NatsTransport(server.url, peers=NODES))
        done = await submit(client, "coord", TRANSFER, client="client")
        assert done.outcome == "committed"
        await eventually(lambda: ledgers["bank-b"].balance == 10)
        assert _transport(coord).statistics().undeliverable == 1


async def test_a_message_over_the_size_limit_is_dropped_before_it_is_decoded() -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        coord, runtimes, ledgers = await stack.enter_async_context(
            banks(server.url, stack, max_message_bytes=16_384)
        )
        rogue = await nats.connect(server.url)
        big = Prepare("evil-big", "coordinator@coord", Protocol.TWO_PC,
                      ("ledger@bank-a",), "x" * 65_536)
        await rogue.publish("dtxn.bank-a.ledger.coord", msgspec.msgpack.encode(big))
        await rogue.flush()
        await rogue.close()
        bank_a = _transport(runtimes["bank-a"])
        await eventually(lambda: bank_a.statistics().undeliverable == 1)
        [letter] = runtimes["bank-a"].system.dead_letters()
        assert "over the limit of 16384" in letter.reason
        assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
        assert "evil-big" not in ledgers["bank-a"].prepared


async def test_a_thousand_malformed_messages_cost_a_few_log_lines_and_are_all_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dtxn")
    async with nats_server() as server, AsyncExitStack() as stack:
        coord, runtimes, _ = await stack.enter_async_context(banks(server.url, stack))
        rogue = await nats.connect(server.url)
        for i in range(500):
            await rogue.publish("dtxn.bank-a.ledger.coord", b"\xff\x00garbage")
            await rogue.publish("dtxn.bank-a.ledger.coord", _deep(1_000 + i))
        await rogue.flush()
        await rogue.close()
        bank_a = _transport(runtimes["bank-a"])
        await eventually(lambda: bank_a.statistics().undeliverable == 1_000)
        assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    print(*lines, sep="\n")
    # One line per message for the first five, then one per 10 s: each says
    # how many it held back.
    assert 1 <= len(lines) <= 10
    assert all("malformed" in line for line in lines)


def test_the_nesting_scan_counts_containers_not_bytes_that_look_like_them() -> None:
    # Strings, binaries and extensions full of container-like bytes nest nothing.
    flat = msgspec.msgpack.encode(
        ["\x91" * 500, b"\x9f" * 500, msgspec.msgpack.Ext(1, b"\xdc" * 500), {"k": 1.5}]
    )
    assert not nesting_exceeds(flat, 2)
    assert nesting_exceeds(flat, 1)
    nested: Any = 0
    for _ in range(MAX_NESTING):
        nested = [nested, "\x91\x91"]
    at_limit = msgspec.msgpack.encode(nested)
    assert wire_problem(at_limit) is None
    assert wire_problem(msgspec.msgpack.encode([nested])) is not None
    # Claimed lengths far beyond the bytes there are end the scan, not the node.
    assert not nesting_exceeds(b"\xdd\xff\xff\xff\xff" + b"\x01" * 100)
    assert nesting_exceeds(b"\xdf\x00\x00\x00\x05" * 100)


def test_every_decode_failure_is_a_codec_error() -> None:
    decoder = msgspec.msgpack.Decoder(Any)
    for data in (_deep(DEEP), b"\xc1", b"\x92\x01", b"x" * (2 << 20)):
        with pytest.raises(CodecError):
            decode_bounded(decoder, data)
    # Within the bounds, a RecursionError of the decoder is one too.
    with pytest.raises(CodecError, match="recursion"):
        decode_bounded(decoder, _deep(DEEP), max_nesting=DEEP + 1)


def test_limits_must_be_positive_ints() -> None:
    with pytest.raises(ConfigError, match="max_message_bytes"):
        NatsTransport("nats://127.0.0.1:4222", max_message_bytes=0)
    with pytest.raises(ConfigError, match="max_nesting"):
        NatsTransport("nats://127.0.0.1:4222", max_nesting=True)
