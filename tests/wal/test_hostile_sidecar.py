"""A damaged `-wal` sidecar of a coordinator's SQLite WAL (issue 14, finding 2).

SQLite drops every frame from the first damaged one on, silently. Before this
fix the coordinator then recovered a short log, said nothing, and presumed
abort for committed transfers it had forgotten: a participant still in doubt
aborted what the other had committed (money created). Now the store scans the
sidecar before SQLite opens it, keeps a copy, marks the log as possibly short
(durably), says so (CRITICAL log, `statistics()`, `dtxn inspect` exit 3), and
the coordinator presumes no abort while the mark stands.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.messages import Timeouts
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.cli import main as dtxn_main
from dtxn.runtime.resources import SqliteResource
from dtxn.runtime.wal import SqliteWal, accept_loss, read_suspect, read_wal, scan_sidecar
from nodes import eventually
from sidecar_child import move

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("sidecar_child.py")
TIMEOUTS = Timeouts(votes_s=5.0, acks_s=0.2, decision_s=0.3, retry_max_s=0.6)


def _child(*args: object) -> str:
    done = subprocess.run(
        [sys.executable, str(CHILD), *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def _truncate_middle(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 7])  # mid-frame


def _balance(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        ((total,),) = db.execute("SELECT sum(balance) FROM accounts").fetchall()
        return int(total)
    finally:
        db.close()


# -- the scan --------------------------------------------------------------------------


def test_a_sidecar_left_by_a_killed_process_scans_clean(tmp_path: Path) -> None:
    _child("records", tmp_path, 60)
    scan = scan_sidecar(tmp_path / "coord.wal")
    assert scan is not None and scan.damage is None, scan
    assert scan.commits >= 60
    assert len(read_wal(tmp_path / "coord.wal")) == 60


@pytest.mark.parametrize("damage", [_flip_middle, _truncate_middle])
def test_damage_in_the_middle_of_a_sidecar_is_found(tmp_path: Path, damage: Any) -> None:
    _child("records", tmp_path, 60)
    damage(tmp_path / "coord.wal-wal")
    scan = scan_sidecar(tmp_path / "coord.wal")
    assert scan is not None and scan.damage is not None
    assert "checksum" in scan.damage or "truncated mid-frame" in scan.damage
    # What SQLite itself does with it: silently keeps a prefix.
    assert len(read_wal(tmp_path / "coord.wal")) < 60


def test_frames_of_an_older_generation_after_a_checkpoint_are_not_damage(
    tmp_path: Path,
) -> None:
    db = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (a BLOB)")
    for _ in range(40):
        db.execute("INSERT INTO t VALUES (?)", (os.urandom(500),))
    db.execute("PRAGMA wal_checkpoint(RESTART)")
    db.execute("INSERT INTO t VALUES (?)", (os.urandom(500),))  # reuses the file, new salts
    scan = scan_sidecar(tmp_path / "x.db")
    db.close()
    assert scan is not None and scan.damage is None, scan
    assert scan.frames < 10 < scan.size // 4096


# -- the store ---------------------------------------------------------------------------


async def test_a_damaged_sidecar_marks_the_log_durably_and_keeps_a_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _child("records", tmp_path, 60)
    _flip_middle(tmp_path / "coord.wal-wal")
    with caplog.at_level(logging.CRITICAL, logger="dtxn.wal"):
        async with SqliteWal(tmp_path / "coord.wal") as wal:
            assert wal.log_may_be_short is not None
            assert "fails its checksum" in wal.log_may_be_short
    assert any("presumes no abort" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "coord.wal-wal.damaged-1").is_file()
    # The mark outlives the sidecar (SQLite checkpointed and dropped it on close).
    async with SqliteWal(tmp_path / "coord.wal") as again:
        assert again.log_may_be_short is not None
    assert read_suspect(tmp_path / "coord.wal") is not None
    assert accept_loss(tmp_path / "coord.wal") is not None
    assert read_suspect(tmp_path / "coord.wal") is None
    async with SqliteWal(tmp_path / "coord.wal") as cleared:
        assert cleared.log_may_be_short is None


def test_dtxn_inspect_warns_and_exits_3_on_a_damaged_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _child("records", tmp_path, 60)
    assert dtxn_main(["inspect", str(tmp_path / "coord.wal")]) == 0
    _truncate_middle(tmp_path / "coord.wal-wal")
    assert dtxn_main(["inspect", str(tmp_path / "coord.wal")]) == 3
    err = capsys.readouterr().err
    assert "may have lost forced records" in err and "truncated mid-frame" in err
    assert dtxn_main(["inspect", str(tmp_path / "coord.wal"), "--json"]) == 3
    document = json.loads(capsys.readouterr().out)
    assert "truncated mid-frame" in document["log_may_be_short"]


# -- the split it caused ------------------------------------------------------------------


@pytest.mark.parametrize("damage", [_flip_middle, _truncate_middle])
async def test_a_coordinator_with_a_damaged_log_presumes_no_abort(
    tmp_path: Path, damage: Any
) -> None:
    """The finding: committed transfers still unacknowledged at bank-a, the coordinator
    killed before a checkpoint, its sidecar damaged. The coordinator must not answer
    "abort" for what it forgot. bank-b committed, but a 2PC participant applies no
    peer's word (docs/protocols.md, "Who may decide"), so bank-a stays in doubt,
    holding its prepared branches, for an operator: never aborted, never split."""
    unacked = json.loads(_child("bank", tmp_path, 40, 3))
    assert len(unacked) == 3
    damage(tmp_path / "coord.wal-wal")
    transport = InProcessTransport()
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    b = SqliteResource(tmp_path / "b.sqlite", name="b", branch=move)
    async with (
        a,
        b,
        Runtime("bank-a", transport=transport, wal_path=tmp_path / "a.wal",
                resources={"ledger": a}) as bank_a,
        Runtime("bank-b", transport=transport, wal_path=tmp_path / "b.wal",
                resources={"ledger": b}) as bank_b,
        Runtime("coord", transport=transport, wal_path=tmp_path / "coord.wal",
                timeouts=TIMEOUTS) as coord,
    ):
        assert coord.log_may_be_short is not None
        assert coord.statistics().txn.log_may_be_short == coord.log_may_be_short
        # bank-a asks on recovery; the coordinator refuses to presume, again and again.
        await eventually(
            lambda: coord.statistics().txn.presumptions_refused >= 2 * len(unacked))
        for txid in unacked:
            assert bank_b.status(txid).outcome == "committed"
            assert bank_a.status(txid).in_doubt
        with anyio.fail_after(5):
            assert sorted(await a.in_doubt_txids()) == sorted(unacked)
    # Nothing was aborted: bank-a's debits are still prepared, bank-b's credits landed.
    assert _balance(tmp_path / "b.sqlite") == 10_000 + 43


async def test_without_a_peer_that_knows_the_participant_stays_in_doubt(
    tmp_path: Path,
) -> None:
    """The same loss, and bank-b's log lost too (say it is restored from a backup):
    nobody can prove the outcome, so bank-a stays in doubt for an operator."""
    unacked = json.loads(_child("bank", tmp_path, 5, 2))
    _flip_middle(tmp_path / "coord.wal-wal")
    transport = InProcessTransport()
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    async with (
        a,
        Runtime("bank-a", transport=transport, wal_path=tmp_path / "a.wal",
                resources={"ledger": a}) as bank_a,
        Runtime("coord", transport=transport, wal_path=tmp_path / "coord.wal",
                timeouts=TIMEOUTS) as coord,
    ):
        await eventually(lambda: coord.statistics().txn.presumptions_refused >= 4)
        for txid in unacked:
            assert bank_a.status(txid).in_doubt
        with anyio.fail_after(5):
            assert sorted(await a.in_doubt_txids()) == sorted(unacked)
