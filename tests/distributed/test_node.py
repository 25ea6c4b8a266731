"""`dtxn node --config`: configuration errors, a real node process, SIGTERM and restart."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Vote
from dtxn.runtime.cli.node import start_process, submit
from dtxn.runtime.cli.node_config import load
from dtxn.runtime.servers import nats_server
from dtxn.runtime.transport.nats import NatsTransport

pytestmark = pytest.mark.anyio

GOOD = """
[node]
name = "shop"
wal = "shop.wal"

[nats]
servers = ["nats://127.0.0.1:4222"]

[timeouts]
votes_s = 2.0

[gateway]
enabled = true

[[resources]]
name = "stock"
kind = "python"
factory = "shopres:make"
options = { vote = "yes" }
"""

RESOURCE_MODULE = '''
from dtxn.protocols.messages import Vote


class Stock:
    def __init__(self, vote):
        self.vote = Vote(vote)

    async def prepare(self, txid, payload):
        if payload == "refuse":
            raise ValueError("out of stock")
        return self.vote

    async def commit(self, txid):
        pass

    async def abort(self, txid):
        pass


def make(vote):
    return Stock(vote)
'''


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    (tmp_path / "shopres.py").write_text(RESOURCE_MODULE)
    return path


def test_a_good_config_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    config = load(write(tmp_path, GOOD))
    assert config.node.name == "shop"
    assert config.timeouts.votes_s == 2.0 and config.timeouts.acks_s == 1.0
    assert config.path(config.node.wal) == (tmp_path / "shop.wal").resolve()
    assert config.resources[0].options == {"vote": "yes"}


def test_a_gateway_names_the_clients_it_serves(tmp_path: Path) -> None:
    assert load(write(tmp_path, GOOD)).gateway.clients is None  # any node, as before
    text = GOOD.replace("enabled = true", 'enabled = true\nclients = ["web", "teller-1"]')
    assert load(write(tmp_path, text)).gateway.clients == ["web", "teller-1"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[node]", "[nodes]"), "unknown field|Object missing required field `node`"),
        (('servers = ["nats://127.0.0.1:4222"]', "servers = []"), "at least one URL"),
        (('kind = "python"', 'kind = "oracle"'), "kind must be one of"),
        (('factory = "shopres:make"', 'branch = "x:y"'), "needs factory"),
        (("votes_s = 2.0", "votes_s = -1"), "votes_s must be a positive number"),
        (("votes_s = 2.0", "vote_s = 2.0"), "unknown keys"),
        (('wal = "shop.wal"', 'wal = "shop.wal"\ndurability = "fast"'), "durability"),
        (("[gateway]", "[gateway\n"), "not valid TOML"),
        (('name = "shop"', "name = 7"), "Expected `str`"),
    ],
)
def test_config_mistakes_are_clear_errors(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, GOOD.replace(*change, 1)))


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read node config"):
        load(tmp_path / "absent.toml")


def _dtxn(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dtxn.runtime.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_dtxn_node_exits_2_on_a_bad_config_or_module(tmp_path: Path) -> None:
    done = _dtxn("node", "--config", str(write(tmp_path, GOOD.replace("[node]", "[nod]"))),
                 cwd=tmp_path)
    assert done.returncode == 2 and "dtxn node:" in done.stderr
    done = _dtxn("node", "--config",
                 str(write(tmp_path, GOOD.replace("shopres:make", "nosuchmodule:make"))),
                 cwd=tmp_path)
    assert done.returncode == 2 and "cannot import 'nosuchmodule'" in done.stderr
    done = _dtxn("node", "--config", str(write(tmp_path, GOOD)), cwd=tmp_path)
    # No NATS server on 4222 here: a clear error, not a traceback.
    assert done.returncode == 2 and "cannot connect to NATS" in done.stderr, done.stderr


async def _start(config: Path) -> Any:
    return await start_process(config, config.parent / "node.log")


async def test_a_node_process_runs_transactions_for_clients_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    async with nats_server() as server:
        config = write(tmp_path, GOOD.replace("nats://127.0.0.1:4222", server.url))
        process = await _start(config)
        try:
            async with NatsTransport(server.url) as client:
                yes = await submit(client, "shop", {"stock@shop": 1}, client="web", txid="o-1")
                assert (yes.txid, yes.outcome) == ("o-1", "committed")
                no = await submit(client, "shop", {"stock@shop": "refuse"}, client="web")
                assert no.outcome == "aborted" and "out of stock" in no.reason
                again = await submit(client, "shop", {"stock@shop": 1}, client="web", txid="o-1")
                assert again.outcome == "committed"  # a resubmitted txid is not run twice
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await process.wait()
            await process.aclose()
        assert code == 0, (tmp_path / "node.log").read_text()
        # The WAL survives the process: a restart recovers and still knows o-1.
        process = await _start(config)
        try:
            async with NatsTransport(server.url) as client:
                again = await submit(client, "shop", {"stock@shop": 1}, client="web", txid="o-1")
                assert again.outcome == "committed"
        finally:
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                assert await process.wait() == 0
            await process.aclose()
    assert Vote.YES  # the resource module votes with dtxn's Vote


def test_postgres_and_sqlite_resources_are_built_from_the_config(tmp_path: Path) -> None:
    from dtxn.runtime.cli.node import build_resource
    from dtxn.runtime.resources.postgres import PostgresResource
    from dtxn.runtime.resources.sqlite import SqliteResource

    (tmp_path / "branches.py").write_text(
        "def move(tx, payload):\n    pass\n\nasync def pg_move(conn, payload):\n    pass\n"
    )
    text = GOOD + '''
[[resources]]
name = "ledger"
kind = "sqlite"
path = "ledger.sqlite"
branch = "branches:move"

[[resources]]
name = "bank"
kind = "postgres"
dsn = "postgresql://app@127.0.0.1:1/bank"
branch = "branches:pg_move"
resource_name = "bank-a-ledger"
'''
    config = load(write(tmp_path, text))
    sqlite = build_resource(config, config.resources[1])
    assert isinstance(sqlite, SqliteResource) and sqlite.name == "ledger@shop"
    pg = build_resource(config, config.resources[2])
    assert isinstance(pg, PostgresResource) and pg.gid("t1") == "dtxn:bank-a-ledger:t1"
    bad = load(write(tmp_path, text.replace("branches:move", "branches:nothing")))
    with pytest.raises(ConfigError, match="has no 'nothing'"):
        build_resource(bad, bad.resources[1])
