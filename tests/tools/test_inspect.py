"""`dtxn inspect`: real WALs written by real transactions, read back while and after nodes run."""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.messages import Protocol, Timeouts, Vote
from dtxn.protocols.records import (
    CoordPreCommitted,
    PartPreCommitted,
    PartPrepared,
    Record,
    kind_of,
)
from dtxn.protocols.saga.records import (
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaFinishedRecord,
    SagaStarted,
    SagaState,
    SagaStuck,
    StepFailedRecord,
    StepOp,
    StepStarted,
    StepSucceededRecord,
)
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.cli.inspect import add_inspect_parser, inspect_wal, render_summary, run_inspect
from dtxn.runtime.hosting import LOG_ENCODER, LogEntry
from dtxn.runtime.wal import SqliteWal
from nodes import Ledger, Node, eventually

FAST = Timeouts(votes_s=0.5, acks_s=0.1, decision_s=0.2, retry_max_s=0.4)
TRANSFER = {"ledger@bank-a": -10, "ledger@bank-b": 10}


class Banks:
    """A coordinator node and two bank nodes, each on its own SQLite WAL in `tmp`."""

    def __init__(self, tmp: Path, tg: anyio.abc.TaskGroup) -> None:
        self.transport = InProcessTransport()
        self.a, self.b = Ledger(), Ledger()
        self.coord = Node(
            tg,
            lambda: Runtime(
                "coord", transport=self.transport, wal_path=tmp / "coord.db", timeouts=FAST
            ),
        )
        self.node_a = Node(
            tg,
            lambda: Runtime(
                "bank-a", transport=self.transport, wal_path=tmp / "a.db",
                resources={"ledger": self.a},
            ),
        )
        self.node_b = Node(
            tg,
            lambda: Runtime(
                "bank-b", transport=self.transport, wal_path=tmp / "b.db",
                resources={"ledger": self.b},
            ),
        )

    async def start(self) -> Runtime:
        await self.node_a.start()
        await self.node_b.start()
        return await self.coord.start()

    async def stop(self) -> None:
        for node in (self.coord, self.node_a, self.node_b):
            await node.stop()


def inspect(path: Path, *extra: str) -> tuple[int, str, str]:
    """Run `dtxn inspect` through its own parser; return (exit code, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="dtxn")
    add_inspect_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["inspect", str(path), *extra])
    out, err = io.StringIO(), io.StringIO()
    code = run_inspect(args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def inspect_json(path: Path, *extra: str) -> dict[str, Any]:
    code, out, err = inspect(path, "--json", *extra)
    assert code == 0, err
    document: dict[str, Any] = json.loads(out)
    return document


def by_txid(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["txid"]: row for row in document["transactions"]}


# -- real transactions -------------------------------------------------------------


@pytest.mark.anyio
async def test_inspect_lists_committed_and_aborted_transactions_with_roles_and_protocols(
    tmp_path: Path,
) -> None:
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg)
        coord = await banks.start()
        two = await coord.transact(TRANSFER, protocol="2pc")
        three = await coord.transact(TRANSFER, protocol="3pc")
        banks.b.vote = Vote.NO
        aborted = await coord.transact(TRANSFER, protocol="3pc")
        assert two.committed and three.committed and not aborted.committed
        await eventually(lambda: coord.statistics().txn.active == 0)
        await banks.stop()

    # Ended transactions keep one record each (their tombstone; docs/wal.md),
    # which names the outcome but not always the protocol.
    coord_rows = by_txid(inspect_json(tmp_path / "coord.db"))
    assert coord_rows[two.txid] | {"first_lsn": 0, "last_lsn": 0} == {
        "txid": two.txid,
        "actor": "coordinator",
        "role": "coordinator",
        "protocol": None,
        "state": "ended",
        "in_doubt": False,
        "stuck": False,
        "records": 1,
        "first_lsn": 0,
        "last_lsn": 0,
    }
    assert coord_rows[two.txid]["first_lsn"] == coord_rows[two.txid]["last_lsn"]
    assert (coord_rows[three.txid]["records"], coord_rows[three.txid]["state"]) == (1, "ended")
    assert (coord_rows[aborted.txid]["protocol"], coord_rows[aborted.txid]["state"]) == (
        "3pc",
        "aborted",
    )

    a_rows = by_txid(inspect_json(tmp_path / "a.db"))
    assert {txid: (row["role"], row["actor"], row["state"]) for txid, row in a_rows.items()} == {
        two.txid: ("participant", "ledger", "committed"),
        three.txid: ("participant", "ledger", "committed"),
        aborted.txid: ("participant", "ledger", "aborted"),
    }
    assert not any(row["in_doubt"] for row in a_rows.values())

    code, out, err = inspect(tmp_path / "a.db")
    assert (code, err) == (0, "")
    assert "3 transactions and sagas, 0 in doubt, 0 stuck" in out
    assert two.txid in out and "IN DOUBT" not in out


@pytest.mark.anyio
async def test_inspect_shows_an_in_doubt_participant_of_a_running_node_and_its_records(
    tmp_path: Path,
) -> None:
    async with anyio.create_task_group() as tg:
        banks = Banks(tmp_path, tg)
        coord = await banks.start()
        crashed = anyio.Event()

        def on_trace(txid: str, actor: str, what: str, detail: object) -> None:
            # The coordinator dies right after forcing COMMIT, before sending it:
            # both banks stay prepared, in doubt, until it comes back.
            if what == "forced" and not crashed.is_set():
                crashed.set()
                assert banks.coord.rt is not None
                banks.coord.rt.crash()

        coord.on_trace(on_trace)
        async with anyio.create_task_group() as client:
            client.start_soon(_transact_until_cancelled, coord)
            await crashed.wait()
            await eventually(lambda: bool(banks.a.prepared) and bool(banks.b.prepared))
            (txid,) = banks.a.prepared
            client.cancel_scope.cancel()

        # bank-a keeps running while its WAL is inspected.
        wal = tmp_path / "a.db"
        document = inspect_json(wal)
        assert document["in_doubt"] == 1
        (row,) = document["transactions"]
        assert row["txid"] == txid
        assert (row["role"], row["protocol"], row["state"], row["in_doubt"]) == (
            "participant",
            "2pc",
            "prepared",
            True,
        )
        code, out, _ = inspect(wal)
        assert code == 0
        assert "IN DOUBT" in out and "1 in doubt" in out

        code, out, _ = inspect(wal, "--txid", txid)
        assert code == 0
        assert out.splitlines()[0] == f"transaction {txid}: 1 records"
        assert "p-prepared" in out and 'coordinator="coordinator@coord"' in out
        assert '"ledger@bank-a"' in out
        detail = inspect_json(wal, "--txid", txid)
        (record,) = detail["records"]
        assert record["kind"] == "p-prepared" and record["actor"] == "ledger"
        assert record["fields"]["protocol"] == "2pc"
        assert record["fields"]["participants"] == ["ledger@bank-a", "ledger@bank-b"]
        assert detail["summaries"][0]["in_doubt"] is True
        # The coordinator's own log proves the decision the banks are waiting for.
        coord_rows = by_txid(inspect_json(tmp_path / "coord.db"))
        assert coord_rows[txid]["state"] == "committed"

        # Inspection left the running node alone: it finishes once the coordinator is back.
        assert banks.node_a.rt is not None and banks.node_a.rt.status(txid).in_doubt
        await banks.coord.start()
        await eventually(lambda: txid in banks.a.committed and txid in banks.b.committed)
        await eventually(lambda: by_txid(inspect_json(wal))[txid]["state"] == "committed")
        await banks.stop()


async def _transact_until_cancelled(rt: Runtime) -> None:
    await rt.transact(TRANSFER, protocol="2pc")


# -- records written directly (3PC and saga states) -----------------------------------


async def _write(path: Path, entries: Sequence[tuple[str, Record]]) -> None:
    async with SqliteWal(path) as wal:
        for actor, record in entries:
            await wal.force(
                record.txid, kind_of(record), LOG_ENCODER.encode(LogEntry(actor, record))  # type: ignore[arg-type]
            )


SAGAS: list[tuple[str, list[Record], str]] = [
    (
        "s-running",
        [StepStarted("s-running", "hotel", 1)],
        "running",
    ),
    (
        "s-compensating",
        [
            StepSucceededRecord("s-compensating", "hotel", 1),
            StepFailedRecord("s-compensating", "flight", 3, "sold out", exhausted=True),
            CompensationStarted("s-compensating", "hotel", 1),
        ],
        "compensating",
    ),
    (
        "s-stuck",
        [
            StepFailedRecord("s-stuck", "flight", 1, "no", exhausted=True),
            CompensationFailed("s-stuck", "hotel", 5, "hotel down"),
            SagaStuck("s-stuck", "hotel", StepOp.COMPENSATION, "hotel down"),
        ],
        "stuck",
    ),
    (
        "s-resumed",
        [
            SagaStuck("s-resumed", "hotel", StepOp.COMPENSATION, "hotel down"),
            CompensationSucceeded("s-resumed", "hotel", 6, forced=True, note="refunded by hand"),
        ],
        "compensating",
    ),
    (
        "s-completed",
        [
            StepSucceededRecord("s-completed", "hotel", 1),
            SagaFinishedRecord("s-completed", SagaState.COMPLETED),
        ],
        "completed",
    ),
    (
        "s-compensated",
        [
            CompensationSucceeded("s-compensated", "hotel", 1),
            SagaFinishedRecord("s-compensated", SagaState.COMPENSATED, "flight failed"),
        ],
        "compensated",
    ),
]


@pytest.mark.anyio
async def test_inspect_derives_3pc_and_saga_states_and_flags_stuck_sagas(tmp_path: Path) -> None:
    wal = tmp_path / "node.db"
    participants = ("ledger@n", "ledger@m")
    entries: list[tuple[str, Record]] = [
        ("coordinator", CoordPreCommitted("t3", Protocol.THREE_PC, participants)),
        ("ledger", PartPrepared("t3", Protocol.THREE_PC, "coordinator@n", participants)),
        ("ledger", PartPreCommitted("t3")),
        ("ledger", PartPrepared("t4", Protocol.THREE_PC, "coordinator@m", participants)),
    ]
    for txid, records, _ in SAGAS:
        entries.append(("trips", SagaStarted(txid, "trip", 1, {"who": "ada"})))
        entries.extend(("trips", record) for record in records)
    await _write(wal, entries)

    document = inspect_json(wal)
    rows = {(row["txid"], row["actor"]): row for row in document["transactions"]}
    assert rows[("t3", "coordinator")]["state"] == "pre-committed"
    assert rows[("t3", "ledger")]["state"] == "pre-committed"
    assert rows[("t3", "ledger")]["in_doubt"] is False  # committable: 3PC finishes alone
    assert rows[("t4", "ledger")]["in_doubt"] is True
    for txid, _, state in SAGAS:
        row = rows[(txid, "trips")]
        assert (row["role"], row["protocol"], row["state"]) == ("saga", "saga", state), txid
        assert row["stuck"] is (state == "stuck")
        assert row["in_doubt"] is False
    assert (document["in_doubt"], document["stuck"]) == (1, 1)

    code, out, _ = inspect(wal)
    assert code == 0
    assert "STUCK" in out and "IN DOUBT" in out

    detail = inspect_json(wal, "--txid", "s-resumed")
    assert [r["kind"] for r in detail["records"]] == [
        "saga-started",
        "saga-stuck",
        "compensation-succeeded",
    ]
    assert detail["records"][0]["fields"]["payload"] == {"who": "ada"}
    assert detail["records"][1]["fields"]["op"] == "compensation"
    assert detail["records"][2]["fields"]["note"] == "refunded by hand"
    lsns = [r["lsn"] for r in detail["records"]]
    assert lsns == sorted(lsns)


@pytest.mark.anyio
async def test_the_plain_text_table_flags_in_doubt_and_stuck_without_rich(tmp_path: Path) -> None:
    wal = tmp_path / "node.db"
    await _write(
        wal,
        [
            ("ledger", PartPrepared("t1", Protocol.TWO_PC, "coordinator@c", ("ledger@n",))),
            ("trips", SagaStarted("s1", "trip", 1)),
            ("trips", SagaStuck("s1", "car", StepOp.ACTION, "car lost")),
        ],
    )
    _, summaries = inspect_wal(wal)
    out = io.StringIO()
    render_summary(str(wal), summaries, out, use_rich=False)
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("2 transactions and sagas, 1 in doubt, 1 stuck")
    assert lines[1].split() == ["TXID", "ACTOR", "ROLE", "PROTOCOL", "STATE", "RECORDS", "LSN"]
    assert lines[2].split() == ["t1", "ledger", "participant", "2pc", "prepared", "1", "1-1",
                                "IN", "DOUBT"]
    assert lines[3].split() == ["s1", "trips", "saga", "saga", "stuck", "2", "2-3", "STUCK"]


# -- errors -----------------------------------------------------------------------------


def test_a_flipped_byte_is_a_clear_error_with_exit_code_2(tmp_path: Path) -> None:
    wal = tmp_path / "node.db"
    anyio.run(
        _write,
        wal,
        [("ledger", PartPrepared("t1", Protocol.TWO_PC, "coordinator@c", ("ledger@n",)))],
    )
    db = sqlite3.connect(wal)
    with db:
        (lsn, data) = db.execute("SELECT lsn, data FROM records ORDER BY lsn LIMIT 1").fetchone()
        flipped = bytes([data[0] ^ 0x01]) + data[1:]
        db.execute("UPDATE records SET data = ? WHERE lsn = ?", (flipped, lsn))
    db.close()
    for extra in ((), ("--json",), ("--txid", "t1")):
        code, out, err = inspect(wal, *extra)
        assert code == 2
        assert out == ""
        assert err.startswith("dtxn inspect: error: ") and err.count("\n") == 1
        assert f"lsn={lsn}" in err and "checksum" in err
        assert "Traceback" not in err


def test_a_record_that_is_no_log_entry_is_a_clear_error(tmp_path: Path) -> None:
    wal = tmp_path / "node.db"

    async def write() -> None:
        async with SqliteWal(wal) as store:
            await store.force("t1", "p-prepared", b"\x93not a log entry")

    anyio.run(write)
    code, _, err = inspect(wal)
    assert code == 2
    assert "lsn=1" in err and "not a dtxn log entry" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just some text, not a database\n" * 200, "not a dtxn WAL"),
        (None, "not a dtxn WAL"),  # an SQLite database of something else
        (b"", "not a dtxn WAL"),  # an empty file: an empty database
    ],
)
def test_a_file_that_is_not_a_wal_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "other.db"
    if content is None:
        db = sqlite3.connect(path)
        with db:
            db.execute("CREATE TABLE users (name TEXT)")
        db.close()
    else:
        path.write_bytes(content)
    code, out, err = inspect(path)
    assert (code, out) == (2, "")
    assert message in err and "Traceback" not in err


def test_a_missing_file_and_an_unknown_txid_are_clear_errors(tmp_path: Path) -> None:
    code, _, err = inspect(tmp_path / "nowhere.db")
    assert code == 2 and "no WAL at" in err
    wal = tmp_path / "node.db"
    anyio.run(_write, wal, [("trips", SagaStarted("s1", "trip", 1))])
    code, out, err = inspect(wal, "--txid", "s2")
    assert (code, out) == (1, "")
    assert "no records of transaction 's2'" in err


@pytest.mark.anyio
async def test_inspect_shows_sagas_a_runtime_ran(tmp_path: Path) -> None:
    from dtxn.protocols.saga import RetryPolicy, SagaDefinition, SagaStep
    from dtxn.runtime.hosting.sagas import StepCall, StepError

    once = RetryPolicy(max_attempts=1)
    trip = SagaDefinition(
        "trip",
        (
            SagaStep("hotel", "book_hotel", "cancel_hotel", retry=once, compensation_retry=once),
            SagaStep("flight", "book_flight", "cancel_flight", ("hotel",), retry=once,
                     compensation_retry=once),
        ),
    )
    flight_fails = [False]

    async def ok(call: StepCall) -> str:
        return "ok"

    async def book_flight(call: StepCall) -> str:
        if flight_fails[0]:
            raise StepError("sold out", retriable=False)
        return "ok"

    cancel_fails = [False]

    async def cancel_hotel(call: StepCall) -> str:
        if cancel_fails[0]:
            raise StepError("hotel api down", retriable=False)
        return "ok"

    steps = {"book_hotel": ok, "cancel_hotel": cancel_hotel, "book_flight": book_flight,
             "cancel_flight": ok}
    wal = tmp_path / "travel.db"
    async with Runtime("travel", wal_path=wal) as rt:
        rt.register_saga(trip, steps)
        completed = await rt.run_saga("trip", {"who": "ada"})
        flight_fails[0] = True
        compensated = await rt.run_saga("trip", {"who": "bob"})
        cancel_fails[0] = True
        stuck = await rt.run_saga("trip", {"who": "cy"})
        assert stuck.state is SagaState.STUCK
        rows = by_txid(inspect_json(wal))  # while the runtime still runs
    assert rows[completed.saga_id]["role"] == rows[compensated.saga_id]["role"] == "saga"
    assert rows[compensated.saga_id]["state"] in ("compensating", "compensated")
    rows = by_txid(inspect_json(wal))
    assert rows[completed.saga_id]["state"] == "completed"
    assert rows[compensated.saga_id]["state"] == "compensated"
    assert rows[stuck.saga_id]["state"] == "stuck"
    # A finished saga keeps only the record of how it ended (sagas compact
    # their history); an unfinished one keeps all of it.
    detail = inspect_json(wal, "--txid", compensated.saga_id)
    assert [record["kind"] for record in detail["records"]] == ["saga-finished"]
    detail = inspect_json(wal, "--txid", stuck.saga_id)
    kinds = [record["kind"] for record in detail["records"]]
    assert kinds[0] == "saga-started" and "compensation-failed" in kinds
    assert kinds[-1] == "saga-stuck"
