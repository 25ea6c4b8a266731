"""`dtxn node --config node.toml`: one node process over NATS.

The process connects to NATS, starts the configured resources, opens its
SQLite WAL and runs recovery (every unfinished transaction is driven to its
end), then serves until SIGTERM or SIGINT, when it stops cleanly: the
mailboxes drain, queued messages are published, resources close. A SIGKILL
loses nothing that was forced; the next start recovers.

With `[gateway] enabled = true` the node also runs transactions for clients
over NATS request-reply: `await submit(transport, "coord", {...})` from any
process (see `submit`), answered with a `TransactReply`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import Process
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Timeouts
from dtxn.runtime._runtime import Runtime, UnknownTransaction
from dtxn.runtime.cli.node_config import NodeConfig, ResourceSection, import_object
from dtxn.runtime.hosting.coordinator import COORDINATOR_ACTOR
from dtxn.runtime.resource import Resource
from dtxn.runtime.transport import Address
from dtxn.runtime.transport.nats import NatsTransport, tls_context
from dtxn.runtime.wal import WalError

log = logging.getLogger("dtxn.node")

GATEWAY = "gateway"


class TransactRequest(msgspec.Struct, frozen=True):
    """Run one transaction on the gateway's node (its coordinator)."""

    participants: dict[str, Any]
    protocol: str = "2pc"
    txid: str | None = None
    timeouts: Timeouts | None = None


class TransactReply(msgspec.Struct, frozen=True):
    txid: str
    outcome: str  # "committed", "aborted", or "pending" (a resubmitted txid still running)
    reason: str = ""


def transport_for(config: NodeConfig) -> NatsTransport:
    nats = config.nats
    tls = None
    if nats.tls_ca is not None or nats.tls_cert is not None:
        tls = tls_context(
            None if nats.tls_ca is None else str(config.path(nats.tls_ca)),
            None if nats.tls_cert is None else str(config.path(nats.tls_cert)),
            None if nats.tls_key is None else str(config.path(nats.tls_key)),
        )
    return NatsTransport(
        nats.servers,
        prefix=nats.prefix,
        token=nats.token,
        user=nats.user,
        password=nats.password,
        nkeys_seed=None if nats.nkeys_seed is None else str(config.path(nats.nkeys_seed)),
        tls=tls,
        peers=config.peers.nodes,
        coordinators=config.peers.coordinators,
        name=config.node.name,
    )


def build_resource(config: NodeConfig, section: ResourceSection) -> Resource:
    where = f"[[resources]] {section.name!r}"
    name = section.resource_name or f"{section.name}@{config.node.name}"
    if section.kind == "python":
        assert section.factory is not None
        factory = import_object(section.factory, config.base, f"{where} factory")
        resource = factory(**section.options)
    else:
        assert section.branch is not None
        branch = import_object(section.branch, config.base, f"{where} branch")
        if section.kind == "postgres":
            from dtxn.runtime.resources.postgres import PostgresResource

            resource = PostgresResource(section.dsn, name=name, branch=branch, **section.options)
        else:
            from dtxn.runtime.resources.sqlite import SqliteResource

            assert section.path is not None
            resource = SqliteResource(
                config.path(section.path), name=name, branch=branch, **section.options
            )
    if not isinstance(resource, Resource):
        raise ConfigError(f"{where}: {type(resource).__name__} is not a Resource")
    return resource


def gateway(rt: Runtime) -> Callable[[TransactRequest], Any]:
    """The handler of `TransactRequest`s: run the transaction, or report a known txid."""

    async def handle(request: TransactRequest) -> TransactReply:
        if request.txid is not None:
            try:
                status = rt.status(request.txid)
            except UnknownTransaction:
                pass
            else:
                # A client retrying after a timeout or a crash of this node.
                known = status.outcome or status.roles.get(COORDINATOR_ACTOR)
                if known not in ("committed", "aborted"):
                    known = "pending"
                return TransactReply(request.txid, str(known))
        outcome = await rt.transact(
            request.participants,
            protocol=request.protocol,
            txid=request.txid,
            timeouts=request.timeouts,
        )
        return TransactReply(outcome.txid, outcome.outcome.value, outcome.reason)

    return handle


async def submit(
    transport: NatsTransport,
    coordinator: str,
    participants: dict[str, Any],
    *,
    client: str,
    txid: str | None = None,
    protocol: str = "2pc",
    timeouts: Timeouts | None = None,
    timeout_s: float = 10.0,
) -> TransactReply:
    """Ask node `coordinator`'s gateway to run a transaction; `client` names the asker.

    `timeouts` (default: the node's) must each be at most the node's
    `max_timeout_s`, else the reply is a `RemoteError` with `error_type`
    "ConfigError" and nothing was started.
    """
    request = TransactRequest(participants, protocol, txid, timeouts)
    reply: TransactReply = await transport.ask(
        Address(coordinator, GATEWAY), request, timeout_s=timeout_s,
        reply_type=TransactReply, from_node=client,
    )
    return reply


async def serve(config: NodeConfig, *, ready: Callable[[Runtime], None] | None = None) -> None:
    """Run the node until SIGTERM or SIGINT, then stop cleanly."""
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_watch_signals, stop)
        async with AsyncExitStack() as stack:
            await _run_node(config, stack, stop, ready)
        tg.cancel_scope.cancel()  # the signal watcher


async def _run_node(
    config: NodeConfig,
    stack: AsyncExitStack,
    stop: anyio.Event,
    ready: Callable[[Runtime], None] | None,
) -> None:
    # Build everything the config names before connecting anywhere, so a
    # mistake (a module that does not import) fails fast and alone.
    resources = {section.name: build_resource(config, section) for section in config.resources}
    transport = await stack.enter_async_context(transport_for(config))
    for resource in resources.values():
        if hasattr(resource, "__aenter__"):
            await stack.enter_async_context(resource)  # type: ignore[arg-type]
    rt = await stack.enter_async_context(
        Runtime(
            config.node.name,
            transport=transport,
            wal_path=config.path(config.node.wal),
            durability=config.node.durability,
            resources=resources,
            timeouts=config.timeouts,
            resource_concurrency=config.node.resource_concurrency,
            max_timeout_s=config.node.max_timeout_s,
        )
    )
    if config.gateway.enabled:
        transport.serve(
            config.node.name, GATEWAY, gateway(rt), TransactRequest,
            clients=config.gateway.clients,
        )
    await transport.wait_subscribed()
    log.info("node %s ready: resources %s, gateway %s", config.node.name,
             ", ".join(resources) or "none", "on" if config.gateway.enabled else "off")
    if ready is not None:
        ready(rt)
    await stop.wait()
    log.info("node %s stopping", config.node.name)


async def _watch_signals(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            stop.set()
            return


async def start_process(
    config: Path, log: Path, *, env: Mapping[str, str] | None = None, within_s: float = 60.0
) -> Process:
    """Start `dtxn node --config CONFIG` as a child process, its log appended to `log`;
    return it once it printed that it is ready (its subscriptions are in force).

    Tests, benchmarks and the bank example use it; stop it with SIGTERM.
    """
    with log.open("ab") as log_file:
        process = await anyio.open_process(
            [sys.executable, "-m", "dtxn.runtime.cli", "node", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=log_file, cwd=config.parent,
            env=dict(env) if env is not None else {**os.environ},
        )
    assert process.stdout is not None
    seen = b""
    with anyio.fail_after(within_s):
        while b"ready" not in seen:
            try:
                seen += await process.stdout.receive()
            except anyio.EndOfStream:
                await process.aclose()
                raise ConfigError(
                    f"dtxn node --config {config} exited before it was ready; see {log}"
                ) from None
    return process


def main(config_path: str) -> int:
    """The `dtxn node` command: exit 0 after a clean stop, 2 on a configuration error,
    3 when the node stopped because its WAL could not be written."""
    from dtxn.runtime.cli.node_config import load
    from dtxn.runtime.loop import run

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"dtxn node: {exc}", file=sys.stderr)
        return 2

    def announce(rt: Runtime) -> None:
        print(f"dtxn node {rt.node}: ready", flush=True)

    try:
        run(lambda: serve(config, ready=announce))
    except Exception as exc:
        # Task groups wrap errors; a configuration problem is reported plainly.
        errors = _leaves(exc)
        if errors and all(isinstance(error, WalError) for error in errors):
            # The node stopped because its WAL cannot be written (fail-stop):
            # a supervisor must see it, so the exit is non-zero (docs/wal.md).
            for error in errors:
                print(f"dtxn node {config.node.name}: stopped: {error}", file=sys.stderr)
            return 3
        if not all(isinstance(error, ConfigError | TransactionError) for error in errors):
            raise
        for error in errors:
            print(f"dtxn node {config.node.name}: {error}", file=sys.stderr)
        return 2
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


__all__ = [
    "GATEWAY",
    "TransactReply",
    "TransactRequest",
    "gateway",
    "main",
    "serve",
    "start_process",
    "submit",
]
