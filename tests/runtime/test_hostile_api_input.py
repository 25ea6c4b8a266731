"""Hostile API input (issue 14, finding 7): every bad argument is refused at the call that is
wrong, before anything is sent or logged, and leaves no lock behind."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Timeouts
from dtxn.protocols.saga import SagaDefinition, SagaStep
from dtxn.runtime import InProcessTransport, Runtime, UnknownNode
from dtxn.runtime.cli.node import GATEWAY, TransactRequest, gateway, start_process, submit
from dtxn.runtime.cli.node_config import load
from dtxn.runtime.resources.sqlite import SqliteResource
from dtxn.runtime.servers import nats_server
from dtxn.runtime.transport import Address
from dtxn.runtime.transport.nats import NatsTransport, RemoteError
from nodes import Ledger
from sqlite_files import create_ledger, leftovers, move

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=2.0, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}










class Bank(msgspec.Struct):
    coord: Runtime
    transport: InProcessTransport
    path_a: Path
    path_b: Path

    def nothing_started(self, before: tuple[int, int]) -> bool:
        """Whether no message went out and no transaction began since `before`."""
        return self.snapshot() == before and not self.coord.coordinator.txns

    def snapshot(self) -> tuple[int, int]:
        return self.transport.statistics().messages, self.coord.statistics().txn.started


@asynccontextmanager
async def bank(tmp: Path, **coord_options: Any) -> AsyncIterator[Bank]:
    """A coordinator and two participants whose ledgers are SQLite files, on a wire codec."""
    transport = InProcessTransport(encode=True)
    path_a, path_b = tmp / "a.sqlite", tmp / "b.sqlite"
    create_ledger(path_a)
    create_ledger(path_b)
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(SqliteResource(path_a, name="ledger-a", branch=move))
        b = await stack.enter_async_context(SqliteResource(path_b, name="ledger-b", branch=move))
        for node, resource in (("bank-a", a), ("bank-b", b)):
            await stack.enter_async_context(
                Runtime(node, transport=transport, resources={"ledger": resource})
            )
        coord = await stack.enter_async_context(
            Runtime("coord", transport=transport, timeouts=FAST, **coord_options)
        )
        yield Bank(coord, transport, path_a, path_b)


async def _refused_then_a_transfer_commits(
    tmp: Path, error: type[Exception], match: str, **transact: Any
) -> None:
    """`transact(**transact)` raises `error`, sends and begins nothing; the row stays free."""
    async with bank(tmp) as b:
        before = b.snapshot()
        with pytest.raises(error, match=match):
            await b.coord.transact(**transact)
        assert b.nothing_started(before)
        assert leftovers(b.path_a) == (0, 0, 0)
        outcome = await b.coord.transact(TRANSFER)
        assert outcome.committed, outcome


# -- payloads ------------------------------------------------------------------------


async def test_a_payload_that_cannot_be_encoded_leaves_no_participant_prepared(
    tmp_path: Path,
) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, TypeError, "ledger@bank-b",
        participants={"ledger@bank-a": -10, "ledger@bank-b": object()},
    )


# -- timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        pytest.param(float("nan"), ConfigError, id="nan"),
        pytest.param(float("inf"), ConfigError, id="inf"),
        pytest.param(1e300, ConfigError, id="1e300"),
        pytest.param(0.0, ConfigError, id="zero"),
        pytest.param(-1.0, ConfigError, id="negative"),
        pytest.param(True, TypeError, id="True"),
        pytest.param("5", TypeError, id="a-string"),
    ],
)
async def test_a_timeout_that_is_not_a_finite_positive_number_within_the_cap_is_refused(
    tmp_path: Path, value: Any, error: type[Exception]
) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, error, "votes_s", participants=TRANSFER, timeouts=Timeouts(votes_s=value)
    )


async def test_timeouts_given_as_a_dict_are_a_type_error_naming_the_argument(
    tmp_path: Path,
) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, TypeError, "timeouts", participants=TRANSFER, timeouts={"votes_s": 1.0}
    )


async def test_a_timeout_above_the_runtimes_own_cap_is_refused_naming_the_cap(
    tmp_path: Path,
) -> None:
    async with bank(tmp_path, max_timeout_s=10.0) as b:
        with pytest.raises(ConfigError, match="max_timeout_s"):
            await b.coord.transact(TRANSFER, timeouts=Timeouts(retry_max_s=11.0))
        assert (await b.coord.transact(TRANSFER, timeouts=Timeouts(retry_max_s=10.0))).committed


def test_a_runtime_whose_own_timeouts_exceed_its_cap_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="max_timeout_s"):
        Runtime("n", timeouts=Timeouts(votes_s=61.0))
    for cap in (float("nan"), float("inf"), 0, True, "300"):
        with pytest.raises(ConfigError, match="max_timeout_s"):
            Runtime("n", max_timeout_s=cap)  # type: ignore[arg-type]


# -- participants and txids ------------------------------------------------------------


async def test_a_participant_with_two_at_signs_is_refused(tmp_path: Path) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, TransactionError, "actor@node",
        participants={"ledger@bank-a": -10, "ledger@bank-b@x": 10},
    )


async def test_a_participant_that_is_neither_a_string_nor_an_address_is_a_type_error(
    tmp_path: Path,
) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, TypeError, "participant", participants=[("ledger@bank-a", -10), (7, 10)],
    )


async def test_a_participant_given_as_an_address_takes_part(tmp_path: Path) -> None:
    async with bank(tmp_path) as b:
        outcome = await b.coord.transact(
            [(Address("bank-a", "ledger"), -10), (Address("bank-b", "ledger"), 10)]
        )
        assert outcome.committed, outcome


async def test_a_participant_on_a_node_the_transport_never_knew_fails_at_once(
    tmp_path: Path,
) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, UnknownNode, "bank-z",
        participants={"ledger@bank-a": -10, "ledger@bank-z": 10},
    )


async def test_a_participant_on_a_node_outside_the_nats_peers_fails_at_once() -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        t = await stack.enter_async_context(NatsTransport(server.url, peers=["coord"]))
        ledger = Ledger()
        coord = await stack.enter_async_context(
            Runtime("coord", transport=t, timeouts=FAST, resources={"ledger": ledger})
        )
        await t.wait_subscribed()
        sent = t.statistics().messages
        with pytest.raises(UnknownNode, match="bank-z"):
            await coord.transact({"ledger@coord": 1, "ledger@bank-z": 1})
        assert t.statistics().messages == sent and not coord.coordinator.txns
        assert not ledger.prepared
        assert (await coord.transact({"ledger@coord": 1})).committed


async def test_a_txid_that_is_not_a_string_is_a_type_error(tmp_path: Path) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, TypeError, "txid", participants=TRANSFER, txid=17
    )


@pytest.mark.parametrize(
    "txid",
    [
        pytest.param("", id="empty"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("order 17\n", id="whitespace"),
        pytest.param("t@x", id="an-at-sign"),
    ],
)
async def test_a_txid_outside_the_allowed_form_is_refused(tmp_path: Path, txid: str) -> None:
    await _refused_then_a_transfer_commits(
        tmp_path, TransactionError, "txid", participants=TRANSFER, txid=txid
    )


# -- sagas ---------------------------------------------------------------------------


def _saga(name: str, version: int = 1) -> SagaDefinition:
    return SagaDefinition(name, (SagaStep("hotel", "book_hotel", "cancel_hotel"),),
                          version=version)


def _step(result: str) -> Any:
    async def step(call: Any) -> str:
        return result

    return step


async def _undo(call: Any) -> None:
    return None


def test_a_sync_step_function_is_refused_when_the_saga_is_registered() -> None:
    rt = Runtime("travel")

    def book_hotel(call: Any) -> str:
        return "room 12"

    for steps in ({"book_hotel": book_hotel, "cancel_hotel": _undo},
                  {"book_hotel": _step("room"), "cancel_hotel": lambda call: None}):
        with pytest.raises(ConfigError, match="async"):
            rt.register_saga(_saga("trip"), steps)
    assert not rt.sagas.definitions


def test_an_object_with_an_async_call_method_is_a_step_function() -> None:
    class Desk:
        async def __call__(self, call: Any) -> str:
            return "room 12"

    rt = Runtime("travel")
    rt.register_saga(_saga("trip"), {"book_hotel": Desk(), "cancel_hotel": _undo})
    assert ("trip", 1) in rt.sagas.definitions


async def test_two_versions_registered_side_by_side_each_run_their_own_actions() -> None:
    rt = Runtime("travel")
    rt.register_saga(_saga("trip", 1), {"book_hotel": _step("v1"), "cancel_hotel": _undo})
    rt.register_saga(_saga("trip", 2), {"book_hotel": _step("v2"), "cancel_hotel": _undo})
    async with rt:
        old = await rt.run_saga("trip", version=1)
        new = await rt.run_saga("trip")
    assert (old.results, new.results) == ({"hotel": "v1"}, {"hotel": "v2"})


async def test_two_sagas_that_name_the_same_action_each_run_their_own_function() -> None:
    rt = Runtime("travel")
    rt.register_saga(_saga("trip"), {"book_hotel": _step("trip's"), "cancel_hotel": _undo})
    rt.register_saga(_saga("conference"), {"book_hotel": _step("conference's"),
                                            "cancel_hotel": _undo})
    async with rt:
        trip = await rt.run_saga("trip")
        conference = await rt.run_saga("conference")
    assert (trip.results, conference.results) == (
        {"hotel": "trip's"}, {"hotel": "conference's"}
    )


async def test_a_saga_may_still_use_steps_an_earlier_registration_gave() -> None:
    rt = Runtime("travel")
    rt.register_saga(_saga("trip"), {"book_hotel": _step("room"), "cancel_hotel": _undo})
    rt.register_saga(_saga("trip", 2), {})
    async with rt:
        assert (await rt.run_saga("trip", version=2)).results == {"hotel": "room"}


def test_a_step_name_two_earlier_registrations_disagree_on_must_be_given() -> None:
    rt = Runtime("travel")
    rt.register_saga(_saga("trip"), {"book_hotel": _step("a"), "cancel_hotel": _undo})
    rt.register_saga(_saga("conference"), {"book_hotel": _step("b"), "cancel_hotel": _undo})
    with pytest.raises(ConfigError, match="book_hotel"):
        rt.register_saga(_saga("trip", 2), {})
    assert ("trip", 2) not in rt.sagas.definitions


def test_a_different_definition_under_a_registered_name_and_version_is_refused() -> None:
    rt = Runtime("travel")
    steps = {"book_hotel": _step("a"), "cancel_hotel": _undo, "book_car": _step("c"),
             "cancel_car": _undo}
    rt.register_saga(_saga("trip"), steps)
    changed = SagaDefinition("trip", (SagaStep("car", "book_car", "cancel_car"),))
    with pytest.raises(ConfigError, match="v1"):
        rt.register_saga(changed, steps)
    assert rt.sagas.definitions[("trip", 1)] == _saga("trip")


# -- the gateway ---------------------------------------------------------------------


async def test_the_gateway_refuses_a_clients_timeouts_above_the_nodes_cap() -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        nodes = ["coord", "bank-a", "web"]
        ledger = Ledger()
        t = await stack.enter_async_context(NatsTransport(server.url, peers=nodes))
        await stack.enter_async_context(
            Runtime("bank-a", transport=t, resources={"ledger": ledger})
        )
        t = await stack.enter_async_context(NatsTransport(server.url, peers=nodes))
        coord = await stack.enter_async_context(
            Runtime("coord", transport=t, timeouts=FAST, max_timeout_s=60.0)
        )
        t.serve("coord", GATEWAY, gateway(coord), TransactRequest)
        await t.wait_subscribed()
        client = await stack.enter_async_context(NatsTransport(server.url))
        for hostile in (Timeouts(votes_s=1e300), Timeouts(decision_s=float("inf")),
                        Timeouts(retry_max_s=61.0)):
            with pytest.raises(RemoteError, match="max_timeout_s") as refused:
                await submit(client, "coord", {"ledger@bank-a": 5}, client="web",
                             timeouts=hostile)
            assert refused.value.error_type == "ConfigError"
        assert not ledger.prepared and not coord.coordinator.txns
        reply = await submit(client, "coord", {"ledger@bank-a": 5}, client="web",
                             timeouts=Timeouts(votes_s=60.0))
        assert reply.outcome == "committed", reply


async def test_the_gateway_answers_a_malformed_participant_with_an_error_and_keeps_serving(
) -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        t = await stack.enter_async_context(NatsTransport(server.url))
        coord = await stack.enter_async_context(
            Runtime("coord", transport=t, timeouts=FAST, resources={"ledger": Ledger()})
        )
        t.serve("coord", GATEWAY, gateway(coord), TransactRequest)
        await t.wait_subscribed()
        client = await stack.enter_async_context(NatsTransport(server.url))
        with pytest.raises(RemoteError, match="actor@node"):
            await submit(client, "coord", {"ledger@coord@x": 5}, client="web")
        reply = await submit(client, "coord", {"ledger@coord": 5}, client="web")
        assert reply.outcome == "committed", reply


NODE_TOML = """
[node]
name = "coord"
wal = "coord.wal"
max_timeout_s = 30.0

[nats]
servers = ["{url}"]

[gateway]
enabled = true

[[resources]]
name = "stock"
kind = "python"
factory = "stockres:make"
"""

STOCK_MODULE = """
from dtxn.protocols.messages import Vote


class Stock:
    async def prepare(self, txid, payload):
        return Vote.YES

    async def commit(self, txid):
        pass

    async def abort(self, txid):
        pass


def make():
    return Stock()
"""


async def test_a_node_process_refuses_a_clients_timeouts_above_its_configured_cap(
    tmp_path: Path,
) -> None:
    async with nats_server() as server:
        config = tmp_path / "node.toml"
        config.write_text(NODE_TOML.format(url=server.url))
        (tmp_path / "stockres.py").write_text(STOCK_MODULE)
        process = await start_process(config, tmp_path / "node.log")
        try:
            async with NatsTransport(server.url) as client:
                with pytest.raises(RemoteError, match=r"max_timeout_s \(30\.0 s\)") as refused:
                    await submit(client, "coord", {"stock@coord": 1}, client="web",
                                 txid="h-1", timeouts=Timeouts(votes_s=31.0))
                assert refused.value.error_type == "ConfigError"
                # Nothing was started under h-1: running it now is a first run.
                reply = await submit(client, "coord", {"stock@coord": 1}, client="web",
                                     txid="h-1", timeouts=Timeouts(votes_s=30.0))
                assert (reply.txid, reply.outcome) == ("h-1", "committed"), reply
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await process.wait()
            await process.aclose()
        assert code == 0, (tmp_path / "node.log").read_text()


def test_a_node_config_caps_timeouts_at_60_s_unless_it_says_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[node]\nname = "n"\nwal = "n.wal"\n[nats]\nservers = ["nats://x:4222"]\n'
                    "[timeouts]\nvotes_s = 61.0\n")
    with pytest.raises(ConfigError, match=r"votes_s .*max_timeout_s \(60\.0 s\)"):
        load(path)


def test_a_node_config_whose_timeouts_exceed_its_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    head = '[node]\nname = "n"\nwal = "n.wal"\n{cap}\n[nats]\nservers = ["nats://x:4222"]\n'
    path.write_text(head.format(cap="max_timeout_s = 20.0") + "[timeouts]\nvotes_s = 30.0\n")
    with pytest.raises(ConfigError, match="max_timeout_s"):
        load(path)
    path.write_text(head.format(cap="max_timeout_s = 20.0") + "[timeouts]\nvotes_s = 20.0\n")
    assert load(path).node.max_timeout_s == 20.0
    for cap in ("0", "-1", "nan", "inf"):
        path.write_text(head.format(cap=f"max_timeout_s = {cap}"))
        with pytest.raises(ConfigError, match="max_timeout_s"):
            load(path)
