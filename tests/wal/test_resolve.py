"""`dtxn resolve`: an operator decides a branch its coordinator can no longer decide.

The scenario of tests/wal/test_hostile_sidecar.py: transfers commit while every
decision to bank-a is lost, the process is killed, the coordinator's sidecar is
damaged. The coordinator then refuses to presume abort and bank-a, which takes
no peer's word, stays in doubt for ever, holding its rows. An operator reads
bank-b's log, resolves bank-a's stopped log, and bank-a's next start applies it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.errors import ConfigError, LogCorruptError
from dtxn.protocols.messages import Protocol, Timeouts, Vote
from dtxn.protocols.records import PartPrepared, PartResolved, kind_of
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.cli import main as dtxn_main
from dtxn.runtime.hosting import LOG_ENCODER, LogEntry
from dtxn.runtime.resources import SqliteResource
from dtxn.runtime.wal import (
    LogEnvelope,
    LogInUse,
    LogMayBeShort,
    ResolveRefused,
    SqliteWal,
    read_wal,
    resolve_in_doubt,
)
from nodes import eventually
from sidecar_child import create, move

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("sidecar_child.py")
TIMEOUTS = Timeouts(votes_s=5.0, acks_s=0.2, decision_s=0.3, retry_max_s=0.6)
REASON = "bank-b's log (dtxn inspect b.wal --txid) shows p-commit; ticket OPS-7"


def _bank_child(where: Path, settled: int, unacked: int) -> list[str]:
    """Run the child of test_hostile_sidecar: `unacked` transfers leave bank-a in doubt."""
    done = subprocess.run(
        [sys.executable, str(CHILD), "bank", str(where), str(settled), str(unacked)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    txids = json.loads(done.stdout)
    assert isinstance(txids, list) and len(txids) == unacked
    return [str(t) for t in txids]


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def _balance(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        ((total,),) = db.execute("SELECT sum(balance) FROM accounts").fetchall()
        return int(total)
    finally:
        db.close()


def _files(wal: Path) -> dict[str, str]:
    """Digest of the database and its sidecar. The -shm index is SQLite's scratch, and an
    empty sidecar holds nothing (any connection, read-only ones too, may create one)."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in (wal, wal.with_name(wal.name + "-wal"))
        if path.exists() and path.stat().st_size > 0
    }


def _rows(wal: Path) -> list[tuple[Any, ...]]:
    """Every stored row as it is, checksum unchecked, through a read-only connection."""
    db = sqlite3.connect(wal.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return db.execute("SELECT * FROM records ORDER BY lsn").fetchall()
    finally:
        db.close()


def _inspect(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    capsys.readouterr()
    code = dtxn_main(["inspect", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _resolve(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = dtxn_main(["resolve", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _runtimes(where: Path, transport: InProcessTransport, a: SqliteResource,
              b: SqliteResource) -> tuple[Runtime, Runtime, Runtime]:
    return (
        Runtime("bank-a", transport=transport, wal_path=where / "a.wal",
                resources={"ledger": a}),
        Runtime("bank-b", transport=transport, wal_path=where / "b.wal",
                resources={"ledger": b}),
        Runtime("coord", transport=transport, wal_path=where / "coord.wal", timeouts=TIMEOUTS),
    )


# -- end to end ---------------------------------------------------------------------------


async def test_an_operator_resolves_commit_from_the_peers_log_and_the_node_applies_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unacked = _bank_child(tmp_path, 40, 3)
    _flip_middle(tmp_path / "coord.wal-wal")
    transport = InProcessTransport()
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    b = SqliteResource(tmp_path / "b.sqlite", name="b", branch=move)
    rt_a, rt_b, rt_c = _runtimes(tmp_path, transport, a, b)
    # 1. The trouble: the coordinator cannot say, bank-a stays in doubt.
    async with a, b, rt_a as bank_a, rt_b, rt_c as coord:
        await eventually(lambda: coord.statistics().txn.presumptions_refused >= len(unacked))
        assert all(bank_a.status(txid).in_doubt for txid in unacked)
    # 2. With the nodes stopped, the operator reads the logs.
    code, a_log = _inspect(capsys, str(tmp_path / "a.wal"))
    assert code == 0 and a_log["in_doubt"] == len(unacked)
    for txid in unacked:
        code, b_view = _inspect(capsys, str(tmp_path / "b.wal"), "--txid", txid)
        assert code == 0
        assert [s["state"] for s in b_view["summaries"]] == ["committed"]
        # 3. ... and resolves bank-a's branch as bank-b's log says.
        code, out, err = _resolve(capsys, str(tmp_path / "a.wal"), txid, "commit",
                                  "--reason", REASON)
        assert code == 0, err
        assert "commit recorded" in out and txid in out
    code, a_log = _inspect(capsys, str(tmp_path / "a.wal"))
    assert code == 0 and a_log["in_doubt"] == 0
    rows = {t["txid"]: t for t in a_log["transactions"]}
    for txid in unacked:
        assert rows[txid]["state"] == "commit by operator, to apply at start"
    assert sorted(r["fields"]["reason"] for r in a_log["resolved_by_operator"]) == [REASON] * 3
    # 4. bank-a starts again: the branches commit, the rows are free, nothing is lost.
    transport = InProcessTransport()
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    b = SqliteResource(tmp_path / "b.sqlite", name="b", branch=move)
    rt_a, rt_b, rt_c = _runtimes(tmp_path, transport, a, b)
    async with a, b, rt_a as bank_a, rt_b, rt_c as coord:
        await eventually(lambda: all(
            bank_a.status(txid).outcome == "committed" for txid in unacked))
        with anyio.fail_after(5):
            assert await a.in_doubt_txids() == []
        # The rows the branches held take a new transfer at once.
        for i in range(1, len(unacked) + 1):
            transfer = {"ledger@bank-a": (i, -1), "ledger@bank-b": (i, 1)}
            with anyio.fail_after(10):
                assert (await coord.transact(transfer)).committed
        assert bank_a.statistics().txn.violations == 0
    assert _balance(tmp_path / "a.sqlite") == 10_000 - 40 - 3 - 3
    assert _balance(tmp_path / "a.sqlite") + _balance(tmp_path / "b.sqlite") == 20_000
    # 5. The log keeps who decided and why: the p-resolved is the tombstone.
    code, a_log = _inspect(capsys, str(tmp_path / "a.wal"))
    rows = {t["txid"]: t for t in a_log["transactions"]}
    for txid in unacked:
        assert (rows[txid]["state"], rows[txid]["records"]) == ("committed by operator", 1)
    assert len(a_log["resolved_by_operator"]) == 3
    capsys.readouterr()
    assert dtxn_main(["inspect", str(tmp_path / "a.wal")]) == 0
    table = capsys.readouterr().out
    assert "OPERATOR" in table and f"resolved by an operator: {unacked[0]} ledger commit" in table
    # 6. And a restart from that tombstone still knows the outcome.
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    async with a, Runtime("bank-a", transport=InProcessTransport(), wal_path=tmp_path / "a.wal",
                          resources={"ledger": a}) as bank_a:
        assert all(bank_a.status(txid).outcome == "committed" for txid in unacked)


async def test_a_wrong_abort_is_applied_and_the_disagreeing_coordinator_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Resolving abort works, and shows the danger: here the coordinator's log is intact
    and says commit. bank-a aborts as told (its rows free again), the coordinator keeps
    sending COMMIT, and bank-a never applies it: each one is counted and logged."""
    unacked = _bank_child(tmp_path, 5, 2)
    for txid in unacked:
        done = resolve_in_doubt(tmp_path / "a.wal", txid, "abort", "a wrong guess")
        assert not done.commit and [actor for actor, _ in done.branches] == ["ledger"]
    transport = InProcessTransport()
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    b = SqliteResource(tmp_path / "b.sqlite", name="b", branch=move)
    rt_a, rt_b, rt_c = _runtimes(tmp_path, transport, a, b)
    with caplog.at_level(logging.WARNING, logger="dtxn.txn"):
        async with a, b, rt_a as bank_a, rt_b, rt_c as coord:
            await eventually(lambda: all(
                bank_a.status(txid).outcome == "aborted" for txid in unacked))
            with anyio.fail_after(5):
                assert await a.in_doubt_txids() == []
            await eventually(lambda: bank_a.statistics().txn.violations >= len(unacked))
            # The coordinator still waits for the acks of its commit.
            assert all(coord.status(txid).roles == {"coordinator": "committed"}
                       for txid in unacked)
            assert all(bank_a.status(txid).outcome == "aborted" for txid in unacked)
    assert any(
        "protocol violation" in r.getMessage() and "ended aborted here" in r.getMessage()
        for r in caplog.records
    )
    # The split a wrong resolution makes: bank-b's credits landed, bank-a's debits did not.
    assert _balance(tmp_path / "a.sqlite") == 10_000 - 5
    assert _balance(tmp_path / "b.sqlite") == 10_000 + 5 + 2


async def test_a_3pc_participant_in_doubt_is_resolved_through_the_same_recovery(
    tmp_path: Path,
) -> None:
    """A prepared 3PC branch, its p-prepared in a stopped node's log (its coordinator and
    peer gone): resolved commit, the next start commits the resource's branch."""
    create(tmp_path / "a.sqlite")
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    async with a:
        assert await a.prepare("t3", (0, -7)) is Vote.YES
    prepared = PartPrepared("t3", Protocol.THREE_PC, "coordinator@coord",
                            ("ledger@bank-a", "ledger@bank-b"))
    async with SqliteWal(tmp_path / "a.wal", node="bank-a") as wal:
        await wal.force("t3", kind_of(prepared),
                        LOG_ENCODER.encode(LogEntry("ledger", prepared)))
    done = resolve_in_doubt(tmp_path / "a.wal", "t3", "commit", REASON)
    (entry,) = [e for e in read_wal(tmp_path / "a.wal") if e.kind == "p-resolved"]
    assert entry.lsn == done.branches[0][1]
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    async with a, Runtime("bank-a", transport=InProcessTransport(),
                          wal_path=tmp_path / "a.wal", resources={"ledger": a}) as bank_a:
        await eventually(lambda: bank_a.status("t3").outcome == "committed")
        with anyio.fail_after(5):
            assert await a.in_doubt_txids() == []
    assert _balance(tmp_path / "a.sqlite") == 10_000 - 7


def test_the_record_it_writes_is_the_runtimes_own_log_entry() -> None:
    record = PartResolved("t", Protocol.TWO_PC, True, "why")
    assert LOG_ENCODER.encode(LogEnvelope("ledger", record)) == LOG_ENCODER.encode(
        LogEntry("ledger", record)
    )


# -- refusals: each leaves the files as they were ------------------------------------------


@pytest.fixture
def banks(tmp_path: Path) -> list[str]:
    """bank-a in doubt about the returned txids; no node running (a killed process's files)."""
    return _bank_child(tmp_path, 3, 2)


def _refused(tmp_path: Path, wal: str, txid: str, outcome: str, error: type[Exception],
             says: str) -> None:
    path = tmp_path / wal
    before, rows = _files(path), _rows(path)
    with pytest.raises(error, match=says):
        resolve_in_doubt(path, txid, outcome, REASON)
    assert _files(path) == before
    assert _rows(path) == rows


def test_it_refuses_a_transaction_the_log_does_not_hold(tmp_path: Path, banks: list[str]) -> None:
    _refused(tmp_path, "a.wal", "no-such-txid", "commit", ResolveRefused, "holds no records")


def test_it_refuses_a_branch_that_already_committed(tmp_path: Path, banks: list[str]) -> None:
    _refused(tmp_path, "b.wal", banks[0], "commit", ResolveRefused, "not in doubt here")
    _refused(tmp_path, "b.wal", banks[0], "abort", ResolveRefused,
             "already committed .* refusing to split it")


def test_it_refuses_where_nothing_was_prepared(tmp_path: Path, banks: list[str]) -> None:
    # The coordinator's log holds its own records of the transfer, no participant's.
    _refused(tmp_path, "coord.wal", banks[0], "commit", ResolveRefused, "not in doubt here")


def test_it_refuses_a_branch_already_resolved(tmp_path: Path, banks: list[str]) -> None:
    resolve_in_doubt(tmp_path / "a.wal", banks[0], "commit", REASON)
    _refused(tmp_path, "a.wal", banks[0], "abort", ResolveRefused, "already resolved")


def test_it_refuses_a_log_whose_sidecar_is_damaged(tmp_path: Path, banks: list[str]) -> None:
    _flip_middle(tmp_path / "a.wal-wal")
    _refused(tmp_path, "a.wal", banks[0], "commit", LogMayBeShort, "may have lost forced")


def test_it_refuses_a_log_marked_as_possibly_short(tmp_path: Path, banks: list[str]) -> None:
    db = sqlite3.connect(tmp_path / "a.wal", isolation_level=None)
    db.execute("INSERT INTO meta VALUES ('log_may_be_short', 'a test says so')")
    db.close()
    _refused(tmp_path, "a.wal", banks[0], "commit", LogMayBeShort, "a test says so")


def test_it_refuses_a_record_that_fails_its_checksum(tmp_path: Path, banks: list[str]) -> None:
    db = sqlite3.connect(tmp_path / "a.wal", isolation_level=None)
    db.execute("UPDATE records SET checksum = checksum + 1 WHERE txid = ?", (banks[1],))
    db.close()
    _refused(tmp_path, "a.wal", banks[0], "commit", LogCorruptError, "fails its checksum")


def test_it_refuses_without_a_reason_or_with_an_unknown_outcome(
    tmp_path: Path, banks: list[str]
) -> None:
    before = _files(tmp_path / "a.wal")
    with pytest.raises(ConfigError, match="needs a reason"):
        resolve_in_doubt(tmp_path / "a.wal", banks[0], "commit", "  ")
    with pytest.raises(ConfigError, match="'commit' or 'abort'"):
        resolve_in_doubt(tmp_path / "a.wal", banks[0], "maybe", REASON)
    assert _files(tmp_path / "a.wal") == before


async def test_it_refuses_the_log_of_a_running_node(
    tmp_path: Path, banks: list[str]
) -> None:
    transport = InProcessTransport()
    a = SqliteResource(tmp_path / "a.sqlite", name="a", branch=move)
    async with a, Runtime("bank-a", transport=transport, wal_path=tmp_path / "a.wal",
                          resources={"ledger": a}) as bank_a:
        assert bank_a.status(banks[0]).in_doubt
        records = read_wal(tmp_path / "a.wal")
        with pytest.raises(LogInUse, match="stop its node first"):
            resolve_in_doubt(tmp_path / "a.wal", banks[0], "commit", REASON)
        # From another process, as an operator would run it.
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [sys.executable, "-m", "dtxn.runtime.cli", "resolve", str(tmp_path / "a.wal"),
                 banks[0], "commit", "--reason", REASON],
                check=False,
            )
        stderr = done.stderr.decode()
        assert done.returncode == 4, stderr
        assert "is in use" in stderr and "Traceback" not in stderr
        assert read_wal(tmp_path / "a.wal") == records
        assert bank_a.status(banks[0]).in_doubt
    assert not any(e.kind == "p-resolved" for e in read_wal(tmp_path / "a.wal"))


# -- the command line ----------------------------------------------------------------------


def test_dtxn_resolve_exit_codes(
    tmp_path: Path, banks: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    a_wal = str(tmp_path / "a.wal")
    assert _resolve(capsys, a_wal, "nope", "commit", "--reason", REASON)[0] == 1
    code, _, err = _resolve(capsys, a_wal, banks[0], "commit", "--reason", "")
    assert code == 2 and "needs a reason" in err
    code, _, err = _resolve(capsys, str(tmp_path / "missing.wal"), banks[0], "commit",
                            "--reason", REASON)
    assert code == 2 and "no WAL" in err
    (tmp_path / "junk.wal").write_bytes(b"not a database" * 100)
    assert _resolve(capsys, str(tmp_path / "junk.wal"), banks[0], "commit",
                    "--reason", REASON)[0] == 2
    code, out, err = _resolve(capsys, a_wal, banks[0], "abort", "--reason", REASON)
    assert code == 0 and "abort recorded" in out, err
    code, _, err = _resolve(capsys, a_wal, banks[0], "abort", "--reason", REASON)
    assert code == 1 and "already resolved" in err
    code, _, err = _resolve(capsys, a_wal, banks[1], "commit", "--reason", REASON)
    assert code == 0, err
    _flip_middle(tmp_path / "coord.wal-wal")
    assert _resolve(capsys, str(tmp_path / "coord.wal"), banks[0], "commit",
                    "--reason", REASON)[0] == 3
    with pytest.raises(SystemExit):
        dtxn_main(["resolve", a_wal, banks[0], "commit"])  # --reason is required
