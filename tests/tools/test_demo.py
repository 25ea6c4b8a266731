"""`dtxn demo`: the scenarios run, their timelines and diagrams say what happened, and a
broken invariant makes the command fail."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dtxn.protocols.messages import Decision, Prepare, Protocol
from dtxn.runtime.cli import main
from dtxn.runtime.demo import (
    SCENARIOS,
    Stage,
    Timeline,
    render_mermaid,
    render_terminal,
    run_demo,
    scenario,
)
from dtxn.runtime.demo import sagas as demo_sagas
from dtxn.runtime.hosting.sagas import StepCall

SLUGS = {key: f"{key}-{s.slug}" for key, s in SCENARIOS.items()}


def test_the_demo_runs_every_scenario_and_exits_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--dir", str(tmp_path), "--no-color"]) == 0
    out = capsys.readouterr().out
    assert {"1a", "1b", "2a", "2b", "3", "4"} <= set(SCENARIOS)
    for key in SCENARIOS:
        assert f"Scenario {key} " in out
    assert "CRASH (process dies)" in out
    assert "termination protocol: ledger@bank-a is elected backup coordinator" in out
    assert "status(txid).in_doubt: bank-a True, bank-b True" in out
    assert "RESTART, recovery" in out
    assert "refuse: 80 > limit 60" in out
    assert out.index("cancelled car-7") < out.index("cancelled hotel-42")
    assert "told: reserved by an order in progress (order-1)" in out
    assert "customer is told: order-2 compensated (step 'payment' failed: card declined)" in out
    assert "FAILED" not in out
    assert "invariant checks passed" in out


def test_the_demo_writes_a_mermaid_diagram_and_an_html_page_per_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_demo(tmp_path, keys=["2a"], color=False) == 0
    capsys.readouterr()
    mmd = (tmp_path / f"{SLUGS['2a']}.mmd").read_text(encoding="utf-8")
    page = (tmp_path / f"{SLUGS['2a']}.html").read_text(encoding="utf-8")
    assert mmd.startswith("sequenceDiagram\n")
    for text in ("coordinator@coord", "ledger@bank-a", "ledger@bank-b", "prepare -30",
                 "vote yes", "precommit", "state-request r0", "COMMIT", "CRASH"):
        assert text in mmd, text
        assert text in page, text
    assert "-x" in mmd  # a message lost because its receiver was down
    assert "<svg" in page and "<table>" in page and '<pre class="mermaid">' in page
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org", "")
    for node in ("coord", "bank-a", "bank-b"):
        assert (tmp_path / SLUGS["2a"] / f"{node}.db").exists()
    assert "2a" in (tmp_path / "index.html").read_text(encoding="utf-8")


def test_a_broken_invariant_makes_the_demo_exit_non_zero(tmp_path: Path) -> None:
    def tamper(key: str, stage: Stage) -> None:
        stage.accounts["bank-b"].balance += 1  # money from nowhere

    out = io.StringIO()
    assert run_demo(tmp_path, keys=["1a"], out=out, color=False, before_checks=tamper) == 1
    assert "FAILED" in out.getvalue()
    assert "money is conserved: balances sum to the same total: 150 before, 151 after" in (
        out.getvalue()
    )


def test_the_saga_scenarios_write_their_wal_the_shop_database_and_diagrams(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_demo(tmp_path, keys=["3", "4"], color=False) == 0
    out = capsys.readouterr().out
    assert "forced compensation-started" in out and "» call cancel_car #1" in out
    assert "read lamp (READ_PENDING): available=1, pending_by=order-1" in out
    assert (tmp_path / SLUGS["3"] / "travel.db").exists()
    assert (tmp_path / SLUGS["4"] / "shop.db").exists()
    assert (tmp_path / SLUGS["4"] / "shop-data.db").exists()
    mmd = (tmp_path / f"{SLUGS['3']}.mmd").read_text(encoding="utf-8")
    assert "cancelled car-7" in mmd and "cancelled hotel-42" in mmd


def test_a_compensation_applied_twice_makes_the_travel_scenario_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cancel_car_then_time_out(self: demo_sagas.Trip, call: StepCall) -> None:
        self.journal.append(f"cancel car {call.results.get('car')}")
        if call.attempt == 1:
            raise TimeoutError("the car service did not answer")  # so it is retried

    monkeypatch.setattr(demo_sagas.Trip, "cancel_car", cancel_car_then_time_out)
    out = io.StringIO()
    assert run_demo(tmp_path, keys=["3"], out=out, color=False) == 1
    assert "FAILED: no step is compensated twice" in out.getvalue()
    assert "compensated more than once: car" in out.getvalue()


def test_a_compensation_that_forgets_the_stock_makes_the_order_scenario_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def forget(self: demo_sagas.Shop, call: StepCall) -> None:
        await self.barrier.run(call, lambda db: None)  # neither the lamp nor its mark

    monkeypatch.setattr(demo_sagas.Shop, "return_stock", forget)
    out = io.StringIO()
    assert run_demo(tmp_path, keys=["4"], out=out, color=False) == 1
    text = out.getvalue()
    assert "FAILED: no pending mark is left (G5): lamp by order-2" in text
    assert "FAILED: stock is conserved" in text


def test_an_unknown_scenario_is_refused(tmp_path: Path) -> None:
    assert run_demo(tmp_path, keys=["9z"], out=io.StringIO()) == 2


def test_the_dtxn_console_script_runs_the_demo_within_30_seconds(tmp_path: Path) -> None:
    dtxn = shutil.which("dtxn") or str(Path(sys.executable).parent / "dtxn")
    done = subprocess.run(
        [dtxn, "demo", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "termination protocol" in done.stdout
    assert len(list(tmp_path.glob("*.html"))) == len(SCENARIOS) + 1  # and index.html


def test_a_scenario_key_can_be_registered_only_once() -> None:
    async def again(stage: Stage) -> None:
        return None

    with pytest.raises(ValueError, match="1a"):
        scenario("1a", "again", "again", "again")(again)


def test_the_terminal_timeline_draws_arrows_between_actor_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)  # plain text without rich
    now = iter([0.0, 0.0, 0.001, 0.002, 0.003])
    timeline = Timeline(lambda: next(now))
    timeline.start()
    for actor in ("coordinator@c", "ledger@a", "ledger@b"):
        timeline.declare(actor)
    timeline.message("ledger@b", Prepare("t1", "coordinator@c", Protocol.TWO_PC, ()),
                     delivered=True)
    timeline.crash("ledger@a")
    timeline.message("ledger@a", Decision("t1", "ledger@b", True), delivered=False)
    out = io.StringIO()
    render_terminal(timeline, out)
    lines = out.getvalue().splitlines()
    assert "coordinator@c" in lines[0] and "ledger@b" in lines[0]
    assert "├" in lines[1] and "prepare" in lines[1] and "▶│" in lines[1]
    assert "✖ CRASH" in lines[2]
    assert "✗" in lines[3] and "COMMIT" in lines[3] and "┤" in lines[3]
    mermaid = render_mermaid("t", timeline)
    assert "P0->>P2: prepare" in mermaid and "P2-xP1: COMMIT" in mermaid
