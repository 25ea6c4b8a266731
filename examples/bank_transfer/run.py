"""Money across two banks, with nodes killed at random: the proof that nothing splits.

    python examples/bank_transfer/run.py --transfers 1000 --seed 1

starts, all private to this run and on loopback ports:
- one PostgreSQL server with two databases, bank_a and bank_b;
- one nats-server, with a NATS user per node whose permissions let it
  publish only as itself (docs/nats.md);
- three `dtxn node` processes: `bank-a` and `bank-b` (a `PostgresResource`
  participant each, over their database) and `coord` (the coordinator, with
  its gateway on);

then drives the transfers through the coordinator's gateway over NATS while
killing a random node with SIGKILL at random moments and restarting it. At
the end it restarts whatever is down, waits for every in-doubt transfer to be
resolved, and audits the databases: every transfer is at both banks or at
neither, a transfer reported committed is at both, one reported aborted at
neither, no prepared transaction is left, and the total balance is unchanged.
Exit status 1 if any of that fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process
from dtxn.actors import AskTimeout
from dtxn.runtime.cli.node import start_process, submit
from dtxn.runtime.clock import Clock
from dtxn.runtime.loop import run
from dtxn.runtime.servers import nats_server, postgres_server
from dtxn.runtime.transport import UnknownNode
from dtxn.runtime.transport.nats import NatsTransport, RemoteError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bank  # noqa: E402

NODES = ("coord", "bank-a", "bank-b")
PASSWORD = "example-only"
TIMEOUTS = "votes_s = 1.0\nacks_s = 0.5\ndecision_s = 0.5\nretry_max_s = 1.0\n"


def nats_users() -> list[dict[str, object]]:
    """A NATS user per node: it may publish only as itself (the subject's last token)."""
    users: list[dict[str, object]] = [
        {
            "user": node, "password": PASSWORD,
            "publish": [f"dtxn.*.*.{node}", "_INBOX.>"],
            "subscribe": [f"dtxn.{node}.>", "_INBOX.>"],
        }
        for node in NODES
    ]
    # The client may only ask the coordinator's gateway.
    users.append({
        "user": "driver", "password": PASSWORD,
        "publish": ["dtxn.coord.gateway.driver"], "subscribe": ["_INBOX.>"],
    })
    return users


def node_config(node: str, root: Path, nats_url: str, dsn: str | None) -> Path:
    lines = [
        "[node]", f'name = "{node}"', f'wal = "{node}.wal"', "",
        "[nats]", f'servers = ["{nats_url}"]', f'user = "{node}"', f'password = "{PASSWORD}"', "",
        "[timeouts]", TIMEOUTS,
    ]
    if node == "coord":
        lines += ["[peers]", 'nodes = ["bank-a", "bank-b", "driver"]', "",
                  "[gateway]", "enabled = true", ""]
    else:
        lines += ["[peers]", 'nodes = ["coord", "bank-a", "bank-b"]', 'coordinators = ["coord"]',
                  "", "[[resources]]", 'name = "ledger"', 'kind = "postgres"', f'dsn = "{dsn}"',
                  'branch = "bank:branch"', ""]
    path = root / f"{node}.toml"
    path.write_text("\n".join(lines))
    return path


class NodeProcess:
    """One `dtxn node` process, which the chaos can SIGKILL and start again."""

    def __init__(self, name: str, config: Path, log: Path) -> None:
        self.name = name
        self.config = config
        self.log = log
        self.process: Process | None = None
        self.starts = 0

    async def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
        self.process = await start_process(self.config, self.log, env=env)
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self.process.aclose()
        self.process = None

    async def stop(self) -> int:
        """SIGTERM: a clean stop; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(30):
            code = await self.process.wait()
        await self.process.aclose()
        self.process = None
        return code


@dataclass
class Report:
    transfers: int
    kills: int = 0
    outcomes: dict[str, str] = field(default_factory=dict)
    total_before: int = 0
    total_after: int = 0
    at_a: set[str] = field(default_factory=set)
    at_b: set[str] = field(default_factory=set)
    prepared_left: list[str] = field(default_factory=list)
    clean_exits: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return (
            f"{self.transfers} transfers, {self.kills} nodes killed; reported: "
            + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            + f"; at both banks: {len(self.at_a & self.at_b)}; total balance "
            f"{self.total_before} -> {self.total_after}; prepared left: "
            f"{len(self.prepared_left)}; violations: {len(self.violations)}"
        )


async def drive(
    transport: NatsTransport, report: Report, clock: Clock, concurrency: int, seed: int
) -> None:
    """Send the transfers through the coordinator's gateway, `concurrency` at a time."""
    rng = clock.rng(f"transfers-{seed}")
    plan = [
        (f"t{seed}-{i:05d}", rng.randrange(bank.ACCOUNTS), rng.randrange(bank.ACCOUNTS),
         rng.randint(1, 50))
        for i in range(report.transfers)
    ]
    queue = iter(plan)

    async def worker() -> None:
        for txid, account_a, account_b, amount in queue:
            participants = {
                "ledger@bank-a": {"id": txid, "account": account_a, "delta": -amount},
                "ledger@bank-b": {"id": txid, "account": account_b, "delta": amount},
            }
            for _ in range(200):
                try:
                    reply = await submit(transport, "coord", participants, client="driver",
                                         txid=txid, timeout_s=5.0)
                except UnknownNode:
                    await clock.sleep(0.05)  # the coordinator is down: it never saw this
                    continue
                except (AskTimeout, RemoteError) as exc:
                    report.outcomes[txid] = f"unknown ({type(exc).__name__})"
                    break
                report.outcomes[txid] = reply.outcome
                break
            else:
                report.outcomes[txid] = "unknown (coordinator down)"

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def chaos(
    nodes: Mapping[str, NodeProcess], report: Report, clock: Clock, seed: int,
    done: anyio.Event, gap_s: tuple[float, float],
) -> None:
    """Until `done`: wait a random moment, SIGKILL a random node, restart it."""
    rng = clock.rng(f"chaos-{seed}")
    names = sorted(nodes)
    while not done.is_set():
        with anyio.move_on_after(rng.uniform(*gap_s)):
            await done.wait()
        if done.is_set():
            return
        victim = nodes[rng.choice(names)]
        await victim.kill()
        report.kills += 1
        await clock.sleep(rng.uniform(0.0, 0.3))
        await victim.start()


async def settle(dsns: Mapping[str, str], clock: Clock, within_s: float = 90.0) -> None:
    """Wait until no bank holds a prepared transaction (the in-doubt ones are resolved)."""
    deadline = clock.now() + within_s
    while True:
        states = [await bank.audit(dsn) for dsn in dsns.values()]
        if not any(state.prepared for state in states) or clock.now() > deadline:
            return
        await clock.sleep(0.2)


async def run_async(
    report: Report, root: Path, nats_url: str, dsns: Mapping[str, str], *,
    concurrency: int, seed: int, kill: bool, gap_s: tuple[float, float],
) -> None:
    clock = Clock(seed=seed)
    for dsn in dsns.values():
        await bank.create(dsn)
    report.total_before = sum([(await bank.audit(dsn)).total for dsn in dsns.values()])
    nodes = {
        name: NodeProcess(name, node_config(name, root, nats_url, dsns.get(name)),
                          root / f"{name}.log")
        for name in NODES
    }
    for node in nodes.values():
        await node.start()
    try:
        async with NatsTransport(nats_url, user="driver", password=PASSWORD) as transport:
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                if kill:
                    tg.start_soon(chaos, nodes, report, clock, seed, done, gap_s)
                await drive(transport, report, clock, concurrency, seed)
                done.set()
        for node in nodes.values():
            if not node.running:
                await node.start()
        await settle(dsns, clock)
        state_a, state_b = [await bank.audit(dsn) for dsn in dsns.values()]
    finally:
        for name, node in nodes.items():
            if node.running:
                report.clean_exits[name] = await node.stop()
    report.total_after = state_a.total + state_b.total
    report.at_a, report.at_b = set(state_a.transfers), set(state_b.transfers)
    report.prepared_left = state_a.prepared + state_b.prepared
    check(report)


def check(report: Report) -> None:
    v = report.violations
    split = report.at_a ^ report.at_b
    if split:
        v.append(f"{len(split)} transfers committed at one bank only: {sorted(split)[:5]}")
    for txid, outcome in report.outcomes.items():
        if outcome == "committed" and txid not in (report.at_a & report.at_b):
            v.append(f"{txid} was reported committed but is not at both banks")
        if outcome == "aborted" and txid in (report.at_a | report.at_b):
            v.append(f"{txid} was reported aborted but is at a bank")
    if report.prepared_left:
        v.append(f"prepared transactions left: {report.prepared_left[:5]}")
    if report.total_after != report.total_before:
        v.append(f"total balance changed: {report.total_before} -> {report.total_after}")
    for name, code in report.clean_exits.items():
        if code != 0:
            v.append(f"node {name} exited {code} on SIGTERM (see its log)")


def run_example(
    transfers: int = 1000, *, concurrency: int = 8, seed: int = 1, kill: bool = True,
    gap_s: tuple[float, float] = (0.3, 1.5), workdir: Path | None = None,
) -> Report:
    """Run the whole example; the report lists any violation."""
    report = Report(transfers)
    root = workdir or Path(tempfile.mkdtemp(prefix="dtxn-bank-"))
    with postgres_server() as pg:
        pg.createdb("bank_a")
        pg.createdb("bank_b")
        dsns = {"bank-a": pg.dsn("bank_a"), "bank-b": pg.dsn("bank_b")}

        async def main() -> None:
            async with nats_server(users=nats_users()) as nats:
                await run_async(report, root, nats.url, dsns, concurrency=concurrency,
                                seed=seed, kill=kill, gap_s=gap_s)

        run(main)
    return report


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-kill", action="store_true", help="run without killing nodes")
    parser.add_argument("--dir", type=Path, default=None, help="keep configs, WALs, logs here")
    args = parser.parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    report = run_example(args.transfers, concurrency=args.concurrency, seed=args.seed,
                         kill=not args.no_kill, workdir=args.dir)
    print(report.summary())
    for violation in report.violations:
        print("VIOLATION:", violation)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(cli())
