"""The demo's stage and scenario registry: nodes that crash and restart, on real SQLite WALs.

Each `dtxn demo` scenario is one small async function registered with `@scenario`; it
gets a `Stage` (nodes on one recording transport, each with its own SQLite WAL
in the scenario's directory, and a `Timeline`), drives transactions, crashes
and restarts nodes, and records what it observes with `stage.note` and
`stage.check`. After it returns, the invariants of every transfer it made are
checked (`check_transfers`: atomic, money conserved, a commit reported to the
caller is applied everywhere); `dtxn.runtime.demo` then prints the timeline and
writes the diagrams. Any failed check makes the demo exit non-zero.

Adding a scenario (in a module that `dtxn.runtime.demo` imports):

    @scenario("5", "my-case", "Title", "What it shows, in a sentence or two.")
    async def my_case(stage: Stage) -> None:
        ...
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus
from dtxn.protocols.messages import Timeouts, Vote
from dtxn.runtime._runtime import Runtime, UnknownTransaction
from dtxn.runtime.caps import parse_pid
from dtxn.runtime.clock import Clock
from dtxn.runtime.demo._render import Check
from dtxn.runtime.demo._timeline import Timeline
from dtxn.runtime.hosting.coordinator import COORDINATOR_ACTOR, TxnOutcome
from dtxn.runtime.resource import Resource
from dtxn.runtime.transport import Address, InProcessTransport

__all__ = [
    "SCENARIOS",
    "SEED",
    "TIMEOUTS",
    "Account",
    "Scenario",
    "Stage",
    "Transfer",
    "check_transfers",
    "scenario",
]

# Short timeouts so that the whole demo takes seconds; see docs/protocols.md.
TIMEOUTS = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
POLL_S = 0.01
SEED = 6  # one seed for every clock: the same transaction ids on every run


# -- the pieces a scenario plays with ------------------------------------------------


class Account:
    """A bank account as a 2PC/3PC resource; it stands for a database and outlives crashes.

    `prepare` holds the amount (and votes NO if the balance would go below zero or
    above `limit`); `commit` applies it; both are idempotent.
    """

    def __init__(self, pid: str, balance: int, timeline: Timeline, *, limit: int | None) -> None:
        self.pid = pid
        self.balance = balance
        self.limit = limit
        self.timeline = timeline
        self.held: dict[str, int] = {}
        self.committed: list[str] = []
        self.aborted: list[str] = []
        self.refused: list[str] = []

    async def prepare(self, txid: str, payload: Any) -> Vote:
        amount = int(payload)
        after = self.balance + sum(self.held.values()) + amount
        if after < 0:
            self.timeline.work(self.pid, f"refuse: {self.balance} < {-amount}")
            self.refused.append(txid)
            return Vote.NO
        if self.limit is not None and after > self.limit:
            self.timeline.work(self.pid, f"refuse: {after} > limit {self.limit}")
            self.refused.append(txid)
            return Vote.NO
        self.held[txid] = amount
        self.timeline.work(self.pid, f"hold {amount:+d}, has {self.balance}")
        return Vote.YES

    async def commit(self, txid: str) -> None:
        if txid in self.held:
            before = self.balance
            self.balance += self.held.pop(txid)
            self.committed.append(txid)
            self.timeline.work(self.pid, f"balance {before} → {self.balance}")

    async def abort(self, txid: str) -> None:
        if self.held.pop(txid, None) is not None:
            self.timeline.work(self.pid, "release hold")
        if txid not in self.aborted:
            self.aborted.append(txid)

    def state_of(self, txid: str) -> str:
        if txid in self.committed:
            return "committed"
        if txid in self.aborted:
            return "aborted"
        if txid in self.refused:
            return "voted no"
        return "in doubt" if txid in self.held else "untouched"


class RecordingTransport(InProcessTransport):
    """The in-process transport (encoding as on a wire) that puts every send on the timeline."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(encode=True)
        self.timeline = timeline

    def send_nowait(self, to: Address, message: object) -> None:
        self.timeline.message(str(to), message, delivered=to.node in self.nodes())
        super().send_nowait(to, message)


class Transfer(msgspec.Struct):
    """A transaction a scenario ran, for the end-of-scenario invariants."""

    txid: str
    accounts: tuple[Account, ...]
    reported: TxnOutcome | None = None  # what the caller was told; None: no answer


class _Node:
    """One runtime in a task of the stage's task group, so it can crash and restart."""

    def __init__(self, factory: Callable[[], Runtime]) -> None:
        self.factory = factory
        self.rt: Runtime | None = None
        self.running = False
        self.crashed = False
        self.stop = anyio.Event()
        self.done = anyio.Event()

    async def serve(self, *, task_status: TaskStatus[Runtime]) -> None:
        try:
            async with self.factory() as rt:  # the factory adds the timeline's trace hook
                self.rt = rt
                self.running = True
                task_status.started(rt)
                await self.stop.wait()
        finally:
            self.running = False
            self.done.set()


class Stage:
    """The nodes of one scenario: real runtimes, one SQLite WAL each, one recording transport."""

    def __init__(
        self, directory: Path, tg: TaskGroup, timeline: Timeline, clock: Clock
    ) -> None:
        self.directory = directory
        self.timeline = timeline
        self.clock = clock
        self.transport = RecordingTransport(timeline)
        self.checks: list[Check] = []
        self.transfers: list[Transfer] = []
        self.accounts: dict[str, Account] = {}
        self.initial_balances: dict[str, int] = {}
        self._tg = tg
        self._nodes: dict[str, _Node] = {}
        self._columns: dict[str, list[str]] = {}

    # -- building ----------------------------------------------------------------

    def coordinator(self, node: str) -> None:
        """Declare a node that coordinates (its WAL is `<node>.db`)."""
        self.add_node(node, {}, [f"{COORDINATOR_ACTOR}@{node}"])

    def bank(self, node: str, balance: int, *, limit: int | None = None) -> Account:
        """Declare a bank node holding one account, the resource `ledger`."""
        pid = f"ledger@{node}"
        account = Account(pid, balance, self.timeline, limit=limit)
        self.accounts[node] = account
        self.initial_balances[node] = balance
        self.add_node(node, {"ledger": account}, [pid])
        return account

    def add_node(
        self, node: str, resources: Mapping[str, Resource], columns: list[str]
    ) -> None:
        """Declare any node: its resources and the actors shown as timeline columns."""
        wal = self.directory / f"{node}.db"

        def factory() -> Runtime:
            rt = Runtime(node, clock=self.clock, transport=self.transport, wal_path=wal,
                         resources=resources, timeouts=TIMEOUTS)
            # Hooked before it starts, so that what recovery does is on the timeline too.
            rt.on_trace(self.timeline.trace)
            return rt

        self._nodes[node] = _Node(factory)
        self._columns[node] = columns
        for column in columns:
            self.timeline.declare(column)

    # -- running -----------------------------------------------------------------

    async def start(self, node: str) -> Runtime:
        """Start (or restart, running recovery from its WAL) `node`."""
        entry = self._nodes[node]
        if entry.running:
            raise RuntimeError(f"node {node!r} is already running")
        if entry.rt is not None:
            for column in self._columns[node]:
                self.timeline.restart(column, "RESTART, recovery")
        entry.stop, entry.done = anyio.Event(), anyio.Event()
        entry.crashed = False
        rt: Runtime = await self._tg.start(entry.serve)
        return rt

    async def start_all(self) -> None:
        for node in self._nodes:
            await self.start(node)
        if not self.timeline.events:
            self.timeline.start()  # time 0 is when every node is up, not when WALs opened

    def runtime(self, node: str) -> Runtime:
        rt = self._nodes[node].rt
        if rt is None:
            raise RuntimeError(f"node {node!r} was never started")
        return rt

    def is_down(self, node: str) -> bool:
        return not self._nodes[node].running

    def crash(self, node: str) -> None:
        """Crash `node` at once (callable from a trace hook: it sends and writes no more)."""
        entry = self._nodes[node]
        if entry.rt is None or not entry.running or entry.crashed:
            return
        entry.crashed = True
        entry.rt.crash()
        for column in self._columns[node]:
            self.timeline.crash(column, "CRASH (process dies)")

    async def wait_down(self, node: str) -> None:
        await self._nodes[node].done.wait()

    def submit(
        self,
        node: str,
        participants: Mapping[str, int],
        protocol: str,
        timeouts: Timeouts | None = None,
    ) -> Transfer:
        """Start a transfer from `node` in the background; its `reported` fills in on reply."""
        rt = self.runtime(node)
        txid = rt.new_txid()
        accounts = tuple(self.accounts[parse_pid(pid).node] for pid in participants)
        transfer = Transfer(txid, accounts)
        self.transfers.append(transfer)
        self._tg.start_soon(self._client, rt, transfer, dict(participants), protocol, timeouts)
        return transfer

    async def transact(
        self,
        node: str,
        participants: Mapping[str, int],
        protocol: str,
        timeouts: Timeouts | None = None,
    ) -> Transfer:
        """Run a transfer from `node` and wait for the caller's answer."""
        transfer = self.submit(node, participants, protocol, timeouts)
        await self.wait_until(lambda: transfer.reported is not None or self.is_down(node))
        return transfer

    async def _client(
        self,
        rt: Runtime,
        transfer: Transfer,
        participants: dict[str, int],
        protocol: str,
        timeouts: Timeouts | None,
    ) -> None:
        try:
            outcome = await rt.transact(
                participants, protocol=protocol, txid=transfer.txid, timeouts=timeouts
            )
        except asyncio.CancelledError:
            # The runtime cancels a caller's reply when its coordinator crashes; only a
            # cancellation of this task itself must go on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            self.timeline.note(f"the caller got no answer: {rt.node} crashed", "")
            return
        transfer.reported = outcome
        self.timeline.note(f"the caller is told: {outcome.outcome.value}"
                           f"{' (' + outcome.reason + ')' if outcome.reason else ''}")

    async def wait_until(self, condition: Callable[[], bool], within_s: float = 5.0) -> bool:
        """Poll `condition` on the stage's clock; False if it still fails after `within_s`."""
        waited_s = 0.0
        while not condition():
            if waited_s >= within_s:
                return False
            await self.clock.sleep(POLL_S)
            waited_s += POLL_S
        return True

    async def sleep(self, delay_s: float) -> None:
        await self.clock.sleep(delay_s)

    def status(self, node: str, txid: str) -> str:
        """What `node`'s runtime says of `txid`, for notes (`in doubt`, roles, outcome)."""
        try:
            status = self.runtime(node).status(txid)
        except UnknownTransaction:
            return "unknown"
        roles = ", ".join(f"{role}: {state}" for role, state in status.roles.items())
        return f"in_doubt={status.in_doubt} ({roles})"

    def outcome(self, node: str, txid: str) -> str | None:
        """The outcome `node` knows for `txid` (None while undecided, down or unknown)."""
        if self.is_down(node):
            return None
        try:
            return self.runtime(node).status(txid).outcome
        except UnknownTransaction:
            return None

    # -- narrating and checking -----------------------------------------------------

    def note(self, text: str, actor: str = "") -> None:
        self.timeline.note(text, actor)

    def check(self, name: str, passed: bool, detail: str = "") -> bool:
        self.checks.append((name, passed, detail))
        return passed

    async def close(self) -> None:
        for entry in self._nodes.values():
            if entry.running:
                entry.stop.set()
                await entry.done.wait()


def check_transfers(stage: Stage) -> None:
    """The invariants every scenario must keep, for every transfer it ran."""
    for transfer in stage.transfers:
        states = {account.pid: account.state_of(transfer.txid) for account in transfer.accounts}
        committed = [pid for pid, state in states.items() if state == "committed"]
        stage.check(
            f"atomic: {transfer.txid} committed at every bank or at none, and finished",
            "in doubt" not in states.values() and len(committed) in (0, len(states)),
            ", ".join(f"{pid} {state}" for pid, state in states.items()),
        )
        if transfer.reported is not None and transfer.reported.committed:
            missing = [pid for pid, state in states.items() if state != "committed"]
            stage.check(
                f"the commit reported to the caller of {transfer.txid} is applied everywhere",
                not missing,
                f"not committed at {missing}" if missing else "",
            )
    if stage.accounts:
        total = sum(account.balance for account in stage.accounts.values())
        initial = sum(stage.initial_balances.values())
        stage.check("money is conserved: balances sum to the same total", total == initial,
                    f"{initial} before, {total} after")


# -- the registry ------------------------------------------------------------------


class Scenario(msgspec.Struct, frozen=True):
    """One demo scenario: `key` orders and selects it; `slug` names its files."""

    key: str
    slug: str
    title: str
    about: str
    run: Callable[[Stage], Awaitable[None]]


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    key: str, slug: str, title: str, about: str
) -> Callable[[Callable[[Stage], Awaitable[None]]], Callable[[Stage], Awaitable[None]]]:
    """Register the decorated `async def f(stage)` as demo scenario `key`."""

    def register(
        function: Callable[[Stage], Awaitable[None]],
    ) -> Callable[[Stage], Awaitable[None]]:
        if key in SCENARIOS:
            raise ValueError(f"demo scenario {key!r} is registered twice")
        SCENARIOS[key] = Scenario(key, slug, title, about, function)
        return function

    return register
