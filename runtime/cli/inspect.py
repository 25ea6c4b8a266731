"""`dtxn inspect WAL`: what a node's write-ahead log says about its transactions and sagas.

Reads the log through `read_wal` (a separate read-only SQLite connection, so
it is safe on the WAL of a running node), decodes every record and folds
each (transaction, actor) group into a `TxnSummary`: its role, protocol and
the last state its records prove. In-doubt participants (PREPARED, no
decision) and stuck sagas are flagged. A log that cannot be read or decoded
is reported as one error line and exit code 2, never a traceback.

The derived states follow the record tables in protocols/records.py and
protocols/saga/records.py:

    coordinator   pre-committed (3PC) | committed | aborted | ended
    participant   prepared (IN DOUBT) | pre-committed (committable, 3PC) | committed | aborted
                  | commit/abort by operator, to apply at start (OPERATOR, `dtxn resolve`)
                  | committed/aborted by operator (OPERATOR: the applied resolution's tombstone)
    saga          running | compensating | stuck | completed | compensated
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sqlite3
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import msgspec
from dtxn.protocols.errors import DtxnError, LogCorruptError
from dtxn.protocols.messages import Protocol
from dtxn.protocols.paxos_messages import Ballot
from dtxn.protocols.paxos_records import (
    PAXOS_RECORD_TYPES,
    PaxosAcceptorState,
    PaxosLeaderBallot,
    PaxosLeaderEnded,
    PaxosPartEnded,
    PaxosRecord,
)
from dtxn.protocols.records import (
    AtomicRecord,
    CoordAborted,
    CoordChose,
    CoordCommitted,
    CoordEnded,
    CoordPreCommitted,
    PartAborted,
    PartCommitted,
    PartPreCommitted,
    PartPrepared,
    PartResolved,
    Record,
)
from dtxn.protocols.saga.records import (
    CompensationFailed,
    CompensationStarted,
    CompensationSucceeded,
    SagaFinishedRecord,
    SagaRecord,
    SagaStarted,
    SagaStuck,
    StepFailedRecord,
    StepStarted,
    StepSucceededRecord,
)
from dtxn.runtime.hosting import LOG_DECODER
from dtxn.runtime.wal import WalEntry, accept_loss, read_suspect, read_wal

__all__ = [
    "DecodedRecord",
    "TxnSummary",
    "add_inspect_parser",
    "decode_entries",
    "inspect_wal",
    "run_inspect",
    "summarize",
]

EXIT_OK = 0
EXIT_UNKNOWN_TXID = 1
EXIT_UNREADABLE = 2
EXIT_LOG_SHORT = 3  # the log may have lost forced records (a damaged sidecar)


class _AnyLogEntry(msgspec.Struct, frozen=True, array_like=True):
    """`hosting.LogEntry` over both record families (saga hosts write saga records)."""

    actor: str
    record: AtomicRecord | SagaRecord | PaxosRecord


_ANY_DECODER = msgspec.msgpack.Decoder(_AnyLogEntry)


class DecodedRecord(msgspec.Struct, frozen=True):
    """One WAL record with the actor that wrote it and its decoded protocol record."""

    lsn: int
    txid: str
    kind: str
    actor: str
    record: Record


class TxnSummary(msgspec.Struct, frozen=True):
    """What one actor's records say about one transaction or saga."""

    txid: str
    actor: str
    role: str  # "coordinator", "participant", "saga"; Paxos also "leader", "acceptor"
    protocol: str | None  # "2pc", "3pc", "paxos", "saga"; None when no record says
    state: str
    in_doubt: bool
    stuck: bool
    records: int
    first_lsn: int
    last_lsn: int


def decode_entries(entries: Iterable[WalEntry], where: str) -> list[DecodedRecord]:
    """Decode every entry, or raise `LogCorruptError` naming the first that is not a record."""
    decoded: list[DecodedRecord] = []
    for entry in entries:
        actor: str
        record: Record
        try:
            log_entry = LOG_DECODER.decode(entry.data)
            actor, record = log_entry.actor, log_entry.record
        except msgspec.DecodeError:
            # LOG_DECODER may know only the atomic-commit records; saga hosts
            # write saga records through the same envelope.
            try:
                any_entry = _ANY_DECODER.decode(entry.data)
            except msgspec.DecodeError as exc:
                raise LogCorruptError(
                    f"WAL {where}: record lsn={entry.lsn} (txid {entry.txid!r}, kind"
                    f" {entry.kind!r}) is not a dtxn log entry: {exc}"
                ) from exc
            actor, record = any_entry.actor, any_entry.record
        decoded.append(DecodedRecord(entry.lsn, entry.txid, entry.kind, actor, record))
    return decoded


_COORDINATOR_RECORDS = (CoordChose, CoordPreCommitted, CoordCommitted, CoordAborted, CoordEnded)
_PARTICIPANT_RECORDS = (PartPrepared, PartPreCommitted, PartCommitted, PartAborted, PartResolved)
_COORDINATOR_STATES: dict[type[Record], str] = {
    CoordChose: "chose (presumed abort)",
    CoordPreCommitted: "pre-committed",
    CoordCommitted: "committed",
    CoordAborted: "aborted",
    CoordEnded: "ended",
}
_PARTICIPANT_STATES: dict[type[Record], str] = {
    PartPrepared: "prepared",
    PartPreCommitted: "pre-committed",
    PartCommitted: "committed",
    PartAborted: "aborted",
}


def _atomic_summary(txid: str, actor: str, records: list[DecodedRecord]) -> TxnSummary:
    coordinator = any(isinstance(r.record, _COORDINATOR_RECORDS) for r in records)
    states = _COORDINATOR_STATES if coordinator else _PARTICIPANT_STATES
    protocol: str | None = None
    state = "unknown"
    for item in records:
        found = getattr(item.record, "protocol", None)
        if isinstance(found, Protocol) and protocol is None:
            protocol = found.value
        if isinstance(item.record, PartResolved):
            state = _resolved_state(item.record, pending=state in ("prepared", "pre-committed"))
        else:
            state = states.get(type(item.record), state)
    if protocol is None and coordinator and state == "aborted":
        # Schema 1: a 2PC coordinator's abort writes nothing; only 3PC logs c-abort.
        protocol = Protocol.THREE_PC.value
    return TxnSummary(
        txid,
        actor,
        "coordinator" if coordinator else "participant",
        protocol,
        state,
        in_doubt=not coordinator and state == "prepared",
        stuck=False,
        records=len(records),
        first_lsn=records[0].lsn,
        last_lsn=records[-1].lsn,
    )


def _resolved_state(record: PartResolved, *, pending: bool) -> str:
    if pending:
        return f"{'commit' if record.commit else 'abort'} by operator, to apply at start"
    return f"{'committed' if record.commit else 'aborted'} by operator"


def resolutions(records: Iterable[DecodedRecord]) -> list[DecodedRecord]:
    """The operators' decisions (`dtxn resolve`) among `records`."""
    return [item for item in records if isinstance(item.record, PartResolved)]


def _saga_summary(txid: str, actor: str, records: list[DecodedRecord]) -> TxnSummary:
    backward = False
    stuck_steps: set[str] = set()
    finished: str | None = None
    for item in records:
        match item.record:
            case StepFailedRecord(exhausted=True):
                backward = True
            case CompensationStarted() | CompensationSucceeded() | CompensationFailed():
                backward = True
            case SagaStuck(step=step):
                stuck_steps.add(step)
            case SagaFinishedRecord(state=end):
                finished = end.value
        match item.record:
            # Progress on a stuck step means an operator resumed or forced it.
            case StepStarted(step=step) | StepSucceededRecord(step=step):
                stuck_steps.discard(step)
            case CompensationStarted(step=step) | CompensationSucceeded(step=step):
                stuck_steps.discard(step)
    if finished is not None:
        state = finished
    elif stuck_steps:
        state = "stuck"
    else:
        state = "compensating" if backward else "running"
    return TxnSummary(
        txid,
        actor,
        "saga",
        "saga",
        state,
        in_doubt=False,
        stuck=state == "stuck",
        records=len(records),
        first_lsn=records[0].lsn,
        last_lsn=records[-1].lsn,
    )


_SAGA_RECORDS = (
    SagaStarted,
    StepStarted,
    StepSucceededRecord,
    StepFailedRecord,
    CompensationStarted,
    CompensationSucceeded,
    CompensationFailed,
    SagaStuck,
    SagaFinishedRecord,
)


_PAXOS_LEADER = (PaxosLeaderBallot, PaxosLeaderEnded)


def _ballot(ballot: Ballot | None) -> str:
    return "-" if ballot is None else f"({ballot.round},{ballot.node or '-'})"


def _paxos_state(record: Record) -> str:
    if isinstance(record, PaxosAcceptorState):
        value = "nothing" if record.accepted_value is None else record.accepted_value.value
        return (
            f"{record.instance}: promised {_ballot(record.promised)}, accepted {value}"
            f" at {_ballot(record.accepted_ballot)}"
        )
    if isinstance(record, PaxosLeaderBallot):
        return f"ballot round {record.round} over {len(record.acceptors)} acceptors"
    if isinstance(record, PaxosLeaderEnded | PaxosPartEnded):
        return "committed" if record.committed else "aborted"
    return "prepared"  # PaxosPartPrepared


def _paxos_summary(txid: str, actor: str, records: list[DecodedRecord]) -> TxnSummary:
    """A Paxos Commit role: the acceptor's state per instance (the last record of each)."""
    kinds = {type(r.record) for r in records}
    if PaxosAcceptorState in kinds:
        role = "acceptor"
        last: dict[str, str] = {}
        for item in records:
            record = item.record
            assert isinstance(record, PaxosAcceptorState)
            last[record.instance] = _paxos_state(record)
        state = "; ".join(last.values())
    else:
        role = "leader" if kinds & set(_PAXOS_LEADER) else "participant"
        state = _paxos_state(records[-1].record)
    return TxnSummary(
        txid,
        actor,
        role,
        Protocol.PAXOS.value,
        state,
        in_doubt=role == "participant" and state == "prepared",
        stuck=False,
        records=len(records),
        first_lsn=records[0].lsn,
        last_lsn=records[-1].lsn,
    )


def summarize(records: Iterable[DecodedRecord]) -> list[TxnSummary]:
    """One summary per (transaction, actor), in the order of their first record."""
    groups: dict[tuple[str, str], list[DecodedRecord]] = {}
    for item in records:
        groups.setdefault((item.txid, item.actor), []).append(item)
    summaries = []
    for (txid, actor), group in groups.items():
        if any(isinstance(r.record, _SAGA_RECORDS) for r in group):
            summaries.append(_saga_summary(txid, actor, group))
        elif all(isinstance(r.record, PAXOS_RECORD_TYPES) for r in group):
            summaries.append(_paxos_summary(txid, actor, group))
        else:
            summaries.append(_atomic_summary(txid, actor, group))
    return summaries


def inspect_wal(path: str | os.PathLike[str]) -> tuple[list[DecodedRecord], list[TxnSummary]]:
    """Read, decode and summarize the WAL at `path` (read-only; blocks the calling thread)."""
    decoded = decode_entries(read_wal(path), os.fspath(path))
    return decoded, summarize(decoded)


# -- output ----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """`value` as JSON-able builtins, with structs as objects (not msgspec's arrays)."""
    if isinstance(value, msgspec.Struct):
        return {name: _plain(getattr(value, name)) for name in value.__struct_fields__}
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.hex()
    return value


def _fields(record: Record) -> dict[str, Any]:
    fields = _plain(record)
    assert isinstance(fields, dict)
    fields.pop("txid", None)
    return fields


def _record_json(item: DecodedRecord) -> dict[str, Any]:
    return {"lsn": item.lsn, "actor": item.actor, "kind": item.kind, "fields": _fields(item.record)}


def _flag(summary: TxnSummary) -> str:
    if summary.in_doubt:
        return "IN DOUBT"
    if summary.stuck:
        return "STUCK"
    if "by operator" in summary.state:
        return "OPERATOR"
    return ""


_HEADERS = ("TXID", "ACTOR", "ROLE", "PROTOCOL", "STATE", "RECORDS", "LSN", "")


def _row(summary: TxnSummary) -> tuple[str, ...]:
    return (
        summary.txid,
        summary.actor,
        summary.role,
        summary.protocol or "?",
        summary.state,
        str(summary.records),
        f"{summary.first_lsn}-{summary.last_lsn}",
        _flag(summary),
    )


def _headline(where: str, summaries: list[TxnSummary]) -> str:
    in_doubt = sum(s.in_doubt for s in summaries)
    stuck = sum(s.stuck for s in summaries)
    return (
        f"WAL {where}: {len(summaries)} transactions and sagas, {in_doubt} in doubt,"
        f" {stuck} stuck"
    )


def _print_plain_table(rows: list[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


def _rich_console(out: TextIO) -> Any:
    try:
        from rich.console import Console
    except ImportError:
        return None
    # Off a terminal rich assumes 80 columns and would cut transaction ids.
    width = None if out.isatty() else 200
    return Console(file=out, width=width, highlight=False)


def render_summary(
    where: str, summaries: list[TxnSummary], out: TextIO, *, use_rich: bool | None = None
) -> None:
    """The summary table: a rich table (in-doubt red, stuck yellow) if rich is there, else text."""
    console = _rich_console(out) if use_rich is not False else None
    if console is None:
        print(_headline(where, summaries), file=out)
        if summaries:
            _print_plain_table([_HEADERS, *(_row(s) for s in summaries)], out)
        return
    from rich.table import Table

    # The headline stays one plain line (a table title would wrap to the table's width).
    console.print(_headline(where, summaries), markup=False)
    if not summaries:
        return
    table = Table()
    for header in _HEADERS:
        table.add_column(header, no_wrap=True)
    for summary in summaries:
        style = "bold red" if summary.in_doubt else "bold yellow" if summary.stuck else None
        table.add_row(*_row(summary), style=style)
    console.print(table)


def render_records(txid: str, records: list[DecodedRecord], out: TextIO) -> None:
    """One transaction's records in LSN order, each with its fields."""
    print(f"transaction {txid}: {len(records)} records", file=out)
    for item in records:
        fields = " ".join(
            f"{name}={json.dumps(value, sort_keys=True)}"
            for name, value in _fields(item.record).items()
        )
        print(f"  lsn={item.lsn} {item.actor} {item.kind} {fields}".rstrip(), file=out)


# -- command line ----------------------------------------------------------------


def add_inspect_parser(subparsers: Any) -> None:
    """Add `inspect` to the `dtxn` subcommands (`subparsers` from `add_subparsers`)."""
    parser = subparsers.add_parser(
        "inspect",
        help="list the transactions and sagas in a WAL file, flagging in-doubt and stuck ones",
        description=(
            "Read a node's WAL (read-only: safe while the node runs) and list each transaction"
            " and saga with its role, protocol and state. Exit code 2 if the file cannot be"
            " read as a dtxn WAL, 1 if --txid names a transaction the WAL does not hold,"
            " 3 if the log may have lost forced records (a damaged -wal sidecar): then"
            " its listing may miss decisions, and an operator must resolve what is in"
            " doubt before clearing the mark with --accept-loss."
        ),
    )
    parser.add_argument("wal", help="the WAL file (a node's SQLite log)")
    parser.add_argument("--txid", help="print this transaction's records in LSN order")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--accept-loss",
        action="store_true",
        help="clear the mark a damaged sidecar left (stop the node first; restart it after)",
    )


def run_inspect(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Carry out `dtxn inspect` as parsed into `args`; return the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    where = os.fspath(args.wal)
    try:
        if getattr(args, "accept_loss", False):
            cleared = accept_loss(where)
            print(
                f"dtxn inspect: WAL {where}: "
                + (f"cleared the mark ({cleared})" if cleared else "no mark to clear"),
                file=err,
            )
        decoded, summaries = inspect_wal(where)
        suspect = read_suspect(where)
    except (DtxnError, sqlite3.Error, OSError) as exc:
        print(f"dtxn inspect: error: {exc}", file=err)
        return EXIT_UNREADABLE
    if suspect is not None:
        print(
            f"dtxn inspect: WARNING: WAL {where} may have lost forced records: {suspect}. "
            "Transactions below may be missing; its node presumes no abort for what it "
            "does not know (docs/wal.md).",
            file=err,
        )
    done = EXIT_OK if suspect is None else EXIT_LOG_SHORT
    txid: str | None = getattr(args, "txid", None)
    as_json = bool(getattr(args, "json", False))
    if txid is not None:
        records = [item for item in decoded if item.txid == txid]
        if not records:
            print(f"dtxn inspect: WAL {where} holds no records of transaction {txid!r}", file=err)
            return EXIT_UNKNOWN_TXID
        if as_json:
            found = [_plain(s) for s in summaries if s.txid == txid]
            document = {
                "wal": where,
                "txid": txid,
                "summaries": found,
                "records": [_record_json(item) for item in records],
            }
            print(json.dumps(document, indent=2), file=out)
        else:
            render_records(txid, records, out)
        return done
    if as_json:
        document = {
            "wal": where,
            "records": len(decoded),
            "in_doubt": sum(s.in_doubt for s in summaries),
            "stuck": sum(s.stuck for s in summaries),
            "log_may_be_short": suspect,
            "transactions": [_plain(s) for s in summaries],
            "resolved_by_operator": [_record_json(item) for item in resolutions(decoded)],
        }
        print(json.dumps(document, indent=2), file=out)
    else:
        render_summary(where, summaries, out)
        for item in resolutions(decoded):
            print(f"resolved by an operator: {_resolution_line(item)}", file=out)
    return done


def _resolution_line(item: DecodedRecord) -> str:
    record = item.record
    assert isinstance(record, PartResolved)
    outcome = "commit" if record.commit else "abort"
    return f"{item.txid} {item.actor} {outcome} (heuristic, lsn={item.lsn}): {record.reason}"
