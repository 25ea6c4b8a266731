"""`dtxn.testing.check` on users' own resources: it must not give false greens.

A stock resource (prepare reserves, commit ships, abort releases) with one
deliberately non-idempotent operation is caught by `check` within
hypothesis' default 100 examples: the redelivery faults crash a participant
right after its resource applied, before the participant logged it, so the
resource is called again for the same txid, and `final_check` compares the
stock with what committed. A resource that cannot prepare fails loudly, a
`SqliteResource` is started and closed around each run, and a correct one
passes.
"""

from __future__ import annotations

import sqlite3
import time  # noqa: TID251 - measures the wall time the search takes, as the issue asks
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from dtxn.protocols.messages import Vote
from dtxn.runtime.resource import Resource
from dtxn.runtime.resources.sqlite import RowLocked, SqliteBranch, SqliteResource
from dtxn.testing import Scenario, SimResult, SimulationFailure, check, scenarios
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

STOCK = 100
# Orders of 1-5, and now and then one the stock cannot fill (its resource votes
# NO, so its peers that voted YES are told to abort).
QTYS = st.one_of(st.integers(1, 5), st.integers(1, 5), st.just(STOCK * 10))
# hypothesis' defaults (100 examples), made deterministic for CI.
DEFAULT = settings(deadline=None, database=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))


class Stock:
    """Stock on hand, reserved at prepare, shipped at commit, released at abort.

    `bug` names the one operation that forgets to check whether it already
    ran for this txid.
    """

    def __init__(self, bug: str | None = None) -> None:
        self.bug = bug
        self.on_hand = STOCK
        self.available = STOCK
        self.holds: dict[str, int] = {}
        self.orders: dict[str, int] = {}  # every txid ever prepared, never forgotten
        self.prepared_payloads: list[Any] = []

    async def prepare(self, txid: str, payload: Any) -> Vote:
        self.prepared_payloads.append(payload)
        qty = int(payload)
        if txid in self.holds and self.bug != "prepare":
            return Vote.YES  # a redelivered prepare: already reserved
        if qty > self.available:
            return Vote.NO
        self.available -= qty
        self.holds[txid] = qty
        self.orders[txid] = qty
        return Vote.YES

    async def commit(self, txid: str) -> None:
        if self.bug == "commit":
            self.on_hand -= self.orders[txid]  # deducts on every call
            self.holds.pop(txid, None)
            return
        self.on_hand -= self.holds.pop(txid, 0)

    async def abort(self, txid: str) -> None:
        if self.bug == "abort":
            self.available += self.orders.get(txid, 0)  # releases on every call
            self.holds.pop(txid, None)
            return
        self.available += self.holds.pop(txid, 0)


def committed_qty(result: SimResult, node: str) -> int:
    """What the transactions that committed took from `node`'s stock."""
    total = 0
    for index, spec in enumerate(result.scenario.txns):
        if result.decisions.get(f"t{index}") != "committed" or spec.payloads is None:
            continue
        for p, payload in zip(spec.participants, spec.payloads, strict=True):
            if f"p{p}" == node:
                total += int(payload)
    return total


def stock_adds_up(resources: Mapping[str, Resource], result: SimResult) -> None:
    for node, resource in resources.items():
        assert isinstance(resource, Stock)
        expected = STOCK - committed_qty(result, node)
        assert resource.on_hand == expected, (
            f"{node} has {resource.on_hand} on hand, expected {expected}")
        assert resource.available == resource.on_hand, (
            f"{node} has {resource.available} available but {resource.on_hand} on hand")


def search(bug: str | None) -> tuple[int, float, SimulationFailure | None]:
    """Run `check` over hypothesis' default 100 examples.

    Returns the examples run (up to the first failing one), the seconds the
    whole search took (shrinking included) and the failure, if any.
    """
    examples = 0
    first: int | None = None

    @DEFAULT
    @given(scenarios(protocol="2pc", participants=2, payloads=QTYS))
    def test(scenario: Scenario) -> None:
        nonlocal examples
        nonlocal first
        examples += 1
        try:
            check(scenario, resource_factory=lambda node: Stock(bug), final_check=stock_adds_up)
        except SimulationFailure:
            first = examples if first is None else first
            raise

    started = time.perf_counter()
    try:
        test()
    except SimulationFailure as failure:
        assert first is not None
        return first, time.perf_counter() - started, failure
    return examples, time.perf_counter() - started, None


@pytest.mark.parametrize("bug", ["commit", "abort", "prepare"])
def test_check_catches_a_non_idempotent_operation_within_100_examples(bug: str) -> None:
    examples, seconds, failure = search(bug)
    print(f"non-idempotent {bug}: caught after {examples} examples, {seconds:.1f} s")
    assert failure is not None, f"a non-idempotent {bug} passed {examples} examples"
    assert "final_check failed" in str(failure)
    # The printed schedule replays the failure outside hypothesis.
    with pytest.raises(SimulationFailure):
        check(failure.scenario, resource_factory=lambda node: Stock(bug),
              final_check=stock_adds_up, shrink=False)


def test_a_correct_stock_resource_passes_the_same_search() -> None:
    examples, seconds, failure = search(None)
    print(f"correct stock: {examples} examples, {seconds:.1f} s")
    assert failure is None, str(failure)


def test_the_user_payload_reaches_prepare_and_the_schedule_carries_it() -> None:
    scenario = Scenario.parse("2pc n=2 seed=3 drop=0 dup=0 delay=0.001 jitter=0 ; "
                              "tx@0 p1,p2 payloads=[3,4]")
    made: dict[str, Stock] = {}

    def factory(node: str) -> Stock:
        made[node] = Stock()
        return made[node]

    result = check(scenario, resource_factory=factory, final_check=stock_adds_up)
    assert made["p1"].prepared_payloads == [3]
    assert made["p2"].prepared_payloads == [4]
    assert result.decisions == {"t0": "committed"}
    assert made["p1"].on_hand == 97 and made["p2"].on_hand == 96
    assert Scenario.parse(scenario.text()) == scenario


def test_payloads_with_separators_and_spaces_round_trip_through_the_schedule_line() -> None:
    scenario = Scenario.parse("2pc n=2 seed=3 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1 "
                              "payloads=[1]")
    odd = msgspec.structs.replace(scenario, txns=(msgspec.structs.replace(
        scenario.txns[0], payloads=({"sku": "a b; c", "qty": [1, None, True]},)),))
    assert Scenario.parse(odd.text()) == odd
    with pytest.raises(ValueError, match="one payload per participant"):
        Scenario.parse("2pc n=2 seed=3 ; tx@0 p1,p2 payloads=[1]")


class Broken:
    """Every prepare raises: a resource that was never set up."""

    async def prepare(self, txid: str, payload: Any) -> Vote:
        raise RuntimeError("not started")

    async def commit(self, txid: str) -> None:
        raise AssertionError("never prepared")

    async def abort(self, txid: str) -> None:
        return None


def test_a_resource_whose_every_prepare_raises_fails_loudly() -> None:
    scenario = "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y"
    with pytest.raises(SimulationFailure) as caught:
        check(scenario, resource_factory=lambda node: Broken(), shrink=False)
    text = str(caught.value)
    assert "prepare_errors does not name" in text
    assert "every transaction aborted" in text


def test_a_declared_error_still_fails_when_every_prepare_raised() -> None:
    scenario = "2pc n=2 seed=1 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y"
    with pytest.raises(SimulationFailure, match="every transaction aborted"):
        check(scenario, resource_factory=lambda node: Broken(), shrink=False,
              prepare_errors=(RuntimeError,))
    check(scenario, resource_factory=lambda node: Broken(), shrink=False,
          prepare_errors=(RuntimeError,), allow_all_aborted=True)


def _bank(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript("CREATE TABLE accounts (id INTEGER PRIMARY KEY,"
                         " balance INTEGER NOT NULL); INSERT INTO accounts VALUES (1, 100);")
    db.close()


def move(tx: SqliteBranch, payload: Any) -> None:
    row = tx.read("accounts", 1, lock=True)
    assert row is not None
    tx.update("accounts", 1, {"balance": row["balance"] + int(payload)})


def balance(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        (value,) = db.execute("SELECT balance FROM accounts WHERE id = 1").fetchone()
        return int(value)
    finally:
        db.close()


def test_a_sqlite_bank_is_started_checked_and_closed_in_every_example(tmp_path: Path) -> None:
    runs: list[dict[str, SqliteResource]] = []

    def factory(node: str) -> SqliteResource:
        path = tmp_path / f"run{len(runs)}-{node}.db"
        _bank(path)
        resource = SqliteResource(path, name="bank", branch=move)
        if not runs or node in runs[-1]:
            runs.append({})
        runs[-1][node] = resource
        return resource

    def sums_match(resources: Mapping[str, Resource], result: SimResult) -> None:
        for node, resource in resources.items():
            assert isinstance(resource, SqliteResource)
            expected = 100 + committed_qty(result, node)
            assert balance(Path(resource.path)) == expected, f"{node} balance"

    @settings(max_examples=15, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(scenarios(protocol="2pc", participants=2, payloads=st.integers(-5, 5)))
    def test(scenario: Scenario) -> None:
        # Two transactions on one row: the second is refused with RowLocked while
        # the first is prepared, a refusal that must be declared.
        check(scenario, resource_factory=factory, final_check=sums_match,
              prepare_errors=(RowLocked,))

    test()
    assert len(runs) >= 15
    for resources in runs:
        for resource in resources.values():
            assert resource._conn is None, "the resource was left open after its run"
