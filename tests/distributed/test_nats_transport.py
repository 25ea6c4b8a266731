"""NatsTransport against a real private nats-server: transactions, asks, auth, TLS, outages,
spoofed senders and malformed bytes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import anyio
import msgspec
import nats  # type: ignore[import-untyped]
import pytest
from dtxn.actors import Actor, AskTimeout, Rejected
from dtxn.protocols.effects import Outcome
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Decision, Prepare, Protocol, Timeouts
from dtxn.protocols.saga import RetryPolicy, SagaDefinition, SagaStep
from dtxn.protocols.saga.records import SagaState
from dtxn.runtime import Runtime, UnknownNode, UnknownTransaction
from dtxn.runtime.hosting.saga_steps import ActorStep
from dtxn.runtime.hosting.sagas import StepCall, StepError
from dtxn.runtime.servers import NatsServer, nats_server
from dtxn.runtime.transport import Address
from dtxn.runtime.transport.nats import NatsTransport, RemoteError, tls_context
from nodes import Ledger, eventually

pytestmark = pytest.mark.anyio

FAST = Timeouts(votes_s=1.0, acks_s=0.2, decision_s=0.3, retry_max_s=0.5)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10, "ledger@bank-c": 0}


RUNTIMES: dict[str, Runtime] = {}
RUNTIMES_PERM: dict[str, Runtime] = {}


@asynccontextmanager
async def three_banks(
    url: str, stack: AsyncExitStack, **auth: Any
) -> AsyncIterator[tuple[Runtime, dict[str, Ledger]]]:
    """A coordinator node and three participant nodes, each on its own NATS connection.

    The participant runtimes are left in RUNTIMES by node name.
    """
    ledgers = {name: Ledger() for name in ("bank-a", "bank-b", "bank-c")}
    nodes = ["coord", *ledgers]
    for name, ledger in ledgers.items():
        t = await stack.enter_async_context(
            NatsTransport(url, peers=nodes, coordinators=["coord"], **auth)
        )
        RUNTIMES[name] = await stack.enter_async_context(
            Runtime(name, transport=t, resources={"ledger": ledger}, timeouts=FAST)
        )
    t = await stack.enter_async_context(NatsTransport(url, peers=nodes, **auth))
    coord = await stack.enter_async_context(Runtime("coord", transport=t, timeouts=FAST))
    yield coord, ledgers


async def test_a_2pc_and_a_3pc_transaction_commit_across_nats_connections() -> None:
    async with (
        nats_server() as server,
        AsyncExitStack() as stack,
        three_banks(server.url, stack) as (coord, ledgers),
    ):
        for protocol in ("2pc", "3pc"):
            outcome = await coord.transact(TRANSFER, protocol=protocol)
            assert outcome.outcome is Outcome.COMMITTED
        await eventually(lambda: all(len(lg.committed) == 2 for lg in ledgers.values()))
        assert [lg.balance for lg in ledgers.values()] == [-20, 20, 0]


async def test_a_no_vote_over_nats_aborts_everywhere() -> None:
    async with (
        nats_server() as server,
        AsyncExitStack() as stack,
        three_banks(server.url, stack) as (coord, ledgers),
    ):
        from dtxn.protocols.messages import Vote

        ledgers["bank-c"].vote = Vote.NO
        outcome = await coord.transact(TRANSFER)
        assert outcome.outcome is Outcome.ABORTED
        await eventually(lambda: len(ledgers["bank-a"].aborted) == 1)
        assert all(lg.balance == 0 and not lg.prepared for lg in ledgers.values())


async def test_transactions_survive_a_nats_outage_without_splitting() -> None:
    async with (
        nats_server() as server,
        AsyncExitStack() as stack,
        three_banks(server.url, stack) as (coord, ledgers),
    ):
        outcomes: list[Outcome] = []

        async def one() -> None:
            outcomes.append((await coord.transact(TRANSFER)).outcome)

        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
            await eventually(lambda: len(outcomes) >= 3, within_s=20)
            server.kill()  # an outage in the middle of the batch
            await anyio.lowlevel.checkpoint()
            await server.start()
        assert len(outcomes) == 20
        committed = outcomes.count(Outcome.COMMITTED)
        # Every participant ends with exactly the committed transfers: none split.
        await eventually(
            lambda: all(len(lg.committed) == committed and not lg.prepared
                        for lg in ledgers.values()),
            within_s=30,
        )
        assert ledgers["bank-a"].balance == -10 * committed
        assert ledgers["bank-b"].balance == 10 * committed


class Echo(Actor[str]):
    async def receive(self, message: str) -> str:
        if message == "fail":
            raise Rejected("asked to fail")
        return message.upper()


class Sum(msgspec.Struct):
    values: list[int]


async def test_ask_and_serve_over_request_reply() -> None:
    async with nats_server() as server, AsyncExitStack() as stack:
        t_a = await stack.enter_async_context(NatsTransport(server.url))
        rt_a = await stack.enter_async_context(Runtime("a", transport=t_a))
        await rt_a.spawn(Echo, name="echo")

        async def total(request: Sum) -> int:
            return sum(request.values)

        t_a.serve("a", "sum", total, Sum)
        t_b = await stack.enter_async_context(NatsTransport(server.url))
        await stack.enter_async_context(Runtime("b", transport=t_b))
        assert await t_b.ask(Address("a", "echo"), "hi", reply_type=str) == "HI"
        assert await t_b.ask(Address("a", "sum"), Sum([1, 2, 3]), reply_type=int) == 6
        with pytest.raises(RemoteError, match="asked to fail"):
            await t_b.ask(Address("a", "echo"), "fail")
        with pytest.raises(RemoteError, match="CodecError: malformed message"):
            await t_b.ask(Address("a", "echo"), 42)  # decoded as the actor's type: not a str
        with pytest.raises(RemoteError, match="ActorNotFound"):
            await t_b.ask(Address("a", "nobody"), "hi")
        with pytest.raises(UnknownNode):
            await t_b.ask(Address("zed", "echo"), "hi", timeout_s=1.0)
        t_a.serve("a", "slow", _never, Any)
        with pytest.raises(AskTimeout):
            await t_b.ask(Address("a", "slow"), "x", timeout_s=0.2)


class RemoteDesk(Actor[StepCall]):
    """A hotel desk on its own node: books, cancels, or refuses for good."""

    calls: ClassVar[list[str]] = []

    async def receive(self, call: StepCall) -> str:
        RemoteDesk.calls.append(f"{call.op.value}:{call.payload}")
        if call.payload == "sold-out":
            raise StepError("no rooms left", retriable=False)
        return f"room for {call.payload}"


STAY = SagaDefinition("stay", (
    SagaStep("hotel", "book_hotel", "cancel_hotel", retry=RetryPolicy(max_attempts=3)),
    SagaStep("flight", "book_flight", "cancel_flight", ("hotel",)),
))


async def test_saga_steps_run_on_a_participant_actor_on_another_node() -> None:
    RemoteDesk.calls = []
    flights: list[str] = []

    async def book_flight(call: StepCall) -> str:
        flights.append(str(call.payload))
        if call.payload == "no-flight":
            raise StepError("no seats", retriable=False)
        return "seat"

    async def cancel_flight(call: StepCall) -> None:
        return None

    async with nats_server() as server, AsyncExitStack() as stack:
        t_hotels = await stack.enter_async_context(NatsTransport(server.url))
        hotels = await stack.enter_async_context(Runtime("hotels", transport=t_hotels))
        await hotels.spawn(RemoteDesk, name="desk")
        t_travel = await stack.enter_async_context(NatsTransport(server.url))
        travel = Runtime("travel", transport=t_travel)
        travel.register_saga(STAY, {
            "book_hotel": ActorStep("desk@hotels", timeout_s=5),
            "cancel_hotel": "desk@hotels",
            "book_flight": book_flight,
            "cancel_flight": cancel_flight,
        })
        await stack.enter_async_context(travel)
        done = await travel.run_saga("stay", "ada")
        assert done.state is SagaState.COMPLETED
        assert done.results["hotel"] == "room for ada"
        undone = await travel.run_saga("stay", "no-flight")
        assert undone.state is SagaState.COMPENSATED
        refused = await travel.run_saga("stay", "sold-out")
        assert refused.state is SagaState.COMPENSATED
        assert "no rooms left" in refused.reason
    assert RemoteDesk.calls == [
        "action:ada",
        "action:no-flight",
        "compensation:no-flight",
        "action:sold-out",  # retriable=False crossed the wire: one attempt of three
    ]
    assert flights == ["ada", "no-flight"]


async def _never(_: Any) -> None:
    await anyio.Event().wait()


async def _raw_client(url: str, **auth: Any) -> Any:
    return await nats.connect(url, **auth)


async def test_spoofed_senders_and_strangers_are_rejected_and_change_nothing() -> None:
    async with (
        nats_server() as server,
        AsyncExitStack() as stack,
        three_banks(server.url, stack) as (coord, ledgers),
    ):
        ledger_a = ledgers["bank-a"]
        gate = ledger_a.gate = anyio.Event()
        result: list[Outcome] = []

        async def run() -> None:
            result.append((await coord.transact(TRANSFER)).outcome)

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await eventually(lambda: any(coord.coordinator.txns))
            txid = next(iter(coord.coordinator.txns))
            rogue = await _raw_client(server.url)
            enc = msgspec.msgpack.encode
            bank_b = RUNTIMES["bank-b"]
            before = bank_b.wal.statistics().records_committed
            # 1. mallory claims to be the coordinator: subject says mallory.
            await rogue.publish("dtxn.bank-b.ledger.mallory",
                                enc(Decision(txid, "coordinator@coord", False)))
            # 2. bank-c (a peer) speaks for the coordinator.
            await rogue.publish("dtxn.bank-b.ledger.bank-c",
                                enc(Decision(txid, "coordinator@coord", False)))
            # 3. a peer that is not a coordinator sends PREPARE.
            await rogue.publish(
                "dtxn.bank-b.ledger.bank-c",
                enc(Prepare("evil-1", "coordinator@bank-c", Protocol.TWO_PC,
                            ("ledger@bank-b",), 1_000_000)),
            )
            # 4. garbage bytes from a peer.
            await rogue.publish("dtxn.bank-b.ledger.coord", b"\xff\x00garbage")
            await rogue.flush()
            transport = bank_b.transport
            assert isinstance(transport, NatsTransport)
            await eventually(lambda: transport.statistics().rejected >= 3)
            await eventually(lambda: transport.statistics().undeliverable >= 1)
            await rogue.close()
            gate.set()
        assert result == [Outcome.COMMITTED]  # the forged aborts changed nothing
        await eventually(lambda: ledgers["bank-b"].committed != [])
        assert "evil-1" not in ledgers["bank-b"].prepared
        assert ledgers["bank-b"].balance == 10
        assert bank_b.wal.statistics().records_committed >= before
        assert bank_b.statistics().txn.violations == 0


async def test_token_and_user_password_auth_are_passed_through() -> None:
    async with nats_server(token="s3cret") as server:
        with pytest.raises(ConfigError, match="cannot connect to NATS"):
            async with NatsTransport(server.url, token="wrong", connect_timeout_s=1):
                pass
        async with AsyncExitStack() as stack, three_banks(server.url, stack, token="s3cret") as (
            coord, _
        ):
            assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
    users = [{"user": "dtxn", "password": "pw"}]
    async with (
        nats_server(users=users) as server,
        AsyncExitStack() as stack,
        three_banks(server.url, stack, user="dtxn", password="pw") as (coord, _),
    ):
        assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED


async def test_nkeys_auth(tmp_path: Path) -> None:
    import nkeys  # type: ignore[import-untyped]

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "node.nk"
    seed_file.write_bytes(seed)
    async with nats_server(users=[{"nkey": public}]) as server, AsyncExitStack() as stack:
        async with three_banks(server.url, stack, nkeys_seed=str(seed_file)) as (coord, _):
            assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
        with pytest.raises(ConfigError, match="cannot connect"):
            async with NatsTransport(server.url, connect_timeout_s=1):
                pass


def _make_certificates(root: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=dtxn-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", "server.pem")
    return root / "ca.pem", root / "server.pem", root / "server.key"


async def test_tls_is_passed_through(tmp_path: Path) -> None:
    ca, cert, key = _make_certificates(tmp_path)
    async with nats_server(tls_cert=cert, tls_key=key) as server, AsyncExitStack() as stack:
        assert server.url.startswith("tls://")
        tls = tls_context(str(ca))
        async with three_banks(server.url, stack, tls=tls) as (coord, _):
            assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
        with pytest.raises(ConfigError, match="cannot connect"):
            # Without trusting the private CA the handshake fails.
            async with NatsTransport(server.url, tls=tls_context(), connect_timeout_s=1):
                pass


async def test_nats_permissions_stop_a_node_from_publishing_as_another() -> None:
    def node_user(name: str) -> dict[str, object]:
        return {
            "user": name, "password": "pw",
            "publish": [f"dtxn.*.*.{name}", "_INBOX.>"],
            "subscribe": [f"dtxn.{name}.>", "_INBOX.>"],
        }

    users = [node_user(n) for n in ("coord", "bank-a", "bank-b", "bank-c")]
    async with nats_server(users=users) as server, AsyncExitStack() as stack:
        ledgers = {name: Ledger() for name in ("bank-a", "bank-b", "bank-c")}
        for name, ledger in ledgers.items():
            t = await stack.enter_async_context(
                NatsTransport(server.url, user=name, password="pw")
            )
            RUNTIMES_PERM[name] = await stack.enter_async_context(
                Runtime(name, transport=t, resources={"ledger": ledger}, timeouts=FAST)
            )
        t = await stack.enter_async_context(NatsTransport(server.url, user="coord", password="pw"))
        coord = await stack.enter_async_context(Runtime("coord", transport=t, timeouts=FAST))
        assert (await coord.transact(TRANSFER)).outcome is Outcome.COMMITTED
        # bank-c's credentials cannot publish on a subject that names coord as the sender:
        # the server drops it. A marker on bank-c's own subject, sent after it on the
        # same connection (NATS keeps a publisher's order), proves it was not delivered.
        bank_b = RUNTIMES_PERM["bank-b"].transport
        assert isinstance(bank_b, NatsTransport)
        # Let the transaction's own traffic (decision, acks) settle first.
        await eventually(lambda: all(lg.committed for lg in ledgers.values()))
        await eventually(lambda: not coord.coordinator.txns)
        before = bank_b.statistics()
        rogue = await nats.connect(server.url, user="bank-c", password="pw")
        await rogue.publish("dtxn.bank-b.ledger.coord",
                            msgspec.msgpack.encode(Decision("t-x", "coordinator@coord", True)))
        await rogue.publish("dtxn.bank-b.ledger.bank-c", b"marker")
        await rogue.flush()
        await eventually(lambda: bank_b.statistics().undeliverable > before.undeliverable)
        after = bank_b.statistics()
        assert after.received == before.received + 1  # only the marker arrived
        assert after.undeliverable == before.undeliverable + 1
        assert after.rejected == before.rejected
        await rogue.close()


async def test_bad_configuration_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="at least one server"):
        NatsTransport([])
    with pytest.raises(ConfigError, match="one NATS authentication"):
        NatsTransport("nats://127.0.0.1:1", token="t", user="u", password="p")
    with pytest.raises(ConfigError, match="go together"):
        NatsTransport("nats://127.0.0.1:1", user="u")
    with pytest.raises(ConfigError, match="cannot travel over NATS"):
        NatsTransport("nats://127.0.0.1:1", peers=["bank.a"])
    with pytest.raises(ConfigError, match="cannot connect to NATS"):
        async with NatsTransport("nats://127.0.0.1:1", connect_timeout_s=1):
            pass


async def test_a_server_can_be_restarted_on_its_port(tmp_path: Path) -> None:
    # The outage test relies on kill() + start() keeping the URL.
    async with nats_server() as server:
        url = server.url
        server.kill()
        await server.start()
        assert server.url == url
        assert isinstance(server, NatsServer)
        nc = await nats.connect(url)
        await nc.close()


async def test_a_gateway_runs_transactions_only_for_its_configured_clients() -> None:
    """Issue 14, finding 5: a participant node's own credentials could submit
    transfers through the coordinator's gateway; `[gateway] clients` stops that."""
    from dtxn.runtime.cli.node import GATEWAY, TransactReply, TransactRequest, gateway, submit

    async with nats_server() as server, AsyncExitStack() as stack:
        ledger = Ledger()
        t_bank = await stack.enter_async_context(NatsTransport(server.url))
        await stack.enter_async_context(
            Runtime("bank-a", transport=t_bank, resources={"ledger": ledger}, timeouts=FAST)
        )
        t_coord = await stack.enter_async_context(NatsTransport(server.url))
        coord = await stack.enter_async_context(
            Runtime("coord", transport=t_coord, timeouts=FAST)
        )
        t_coord.serve("coord", GATEWAY, gateway(coord), TransactRequest, clients=["teller"])
        t_teller = await stack.enter_async_context(NatsTransport(server.url))
        await stack.enter_async_context(Runtime("teller", transport=t_teller))

        with pytest.raises(RemoteError, match=r"NotAllowed: .*not a configured client"):
            await submit(t_bank, "coord", {"ledger@bank-a": -10}, client="bank-a",
                         txid="stolen", timeout_s=5.0)
        assert t_coord.statistics().rejected == 1
        with pytest.raises(UnknownTransaction):
            coord.status("stolen")  # nothing was started

        reply = await submit(t_teller, "coord", {"ledger@bank-a": -10}, client="teller",
                             timeout_s=5.0)
        assert isinstance(reply, TransactReply) and reply.outcome == "committed"
