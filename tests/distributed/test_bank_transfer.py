"""examples/bank_transfer: 1,000 transfers across two PostgreSQL banks over NATS, nodes SIGKILLed.

Real everything: a private PostgreSQL server, a private nats-server with a
user per node, and three `dtxn node` processes, killed at random moments and
restarted. The example's own audit is the assertion.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "bank_transfer"))

import run as bank_transfer


def test_a_thousand_transfers_with_nodes_killed_never_split(tmp_path: Path) -> None:
    report = bank_transfer.run_example(1000, seed=7, workdir=tmp_path)
    assert report.violations == [], report.summary()
    assert report.kills >= 5, report.summary()  # the chaos really ran...
    outcomes = list(report.outcomes.values())
    assert len(outcomes) == 1000
    assert outcomes.count("committed") >= 500, report.summary()  # ...and so did the banks
    assert report.at_a == report.at_b
    assert report.total_after == report.total_before
    assert report.prepared_left == []
    assert set(report.clean_exits.values()) == {0}  # SIGTERM stops every node cleanly


def test_the_audit_catches_a_split_transfer() -> None:
    # The checker itself must bite: a transfer at one bank only is a violation.
    report = bank_transfer.Report(2, outcomes={"t1": "committed", "t2": "aborted"})
    report.at_a, report.at_b = {"t1", "t2"}, {"t1"}
    report.total_before, report.total_after = 10, 9
    report.prepared_left = ["dtxn:ledger@bank-a:t3"]
    bank_transfer.check(report)
    text = "\n".join(report.violations)
    assert "one bank only" in text
    assert "t2 was reported aborted" in text
    assert "prepared transactions left" in text
    assert "total balance changed" in text
