"""`dtxn resolve LOG TXID commit|abort --reason TEXT`: an operator decides a branch in doubt.

The command line of `dtxn.runtime.wal.resolve_in_doubt`, run on a stopped
participant node's WAL. Every refusal writes nothing and exits non-zero with
one line on stderr, never a traceback (docs/operations.md):

    0  resolved: the node applies the outcome when it next starts
    1  refused: the transaction is unknown in this log, not in doubt here,
       already resolved, or this log already holds the other outcome
    2  the file cannot be read as a dtxn WAL, or its records fail their checks
    3  the log may have lost forced records (a damaged sidecar, or its mark)
    4  the log is in use: its node (or another process) has it open
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from typing import Any, TextIO

from dtxn.protocols.errors import DtxnError
from dtxn.runtime.wal import LogInUse, LogMayBeShort, ResolveRefused, resolve_in_doubt

__all__ = ["add_resolve_parser", "run_resolve"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREADABLE = 2
EXIT_LOG_SHORT = 3
EXIT_IN_USE = 4


def add_resolve_parser(subparsers: Any) -> None:
    """Add `resolve` to the `dtxn` subcommands (`subparsers` from `add_subparsers`)."""
    parser = subparsers.add_parser(
        "resolve",
        help="decide, as an operator, a transaction left in doubt in a stopped node's WAL",
        description=(
            "Write an operator's heuristic decision for TXID's prepared branches into the WAL"
            " of a STOPPED participant node; the node applies it to its resource when it next"
            " starts, as if its coordinator had decided. A wrong outcome splits the"
            " transaction: learn it first from the other members' logs (dtxn inspect). Exit"
            " codes: 0 resolved, 1 refused (unknown, not in doubt, already resolved, or"
            " contradicted by this log), 2 unreadable or corrupt log, 3 log may be short,"
            " 4 log in use. A refusal changes nothing."
        ),
    )
    parser.add_argument("wal", help="the stopped participant node's WAL file")
    parser.add_argument("txid", help="the transaction in doubt")
    parser.add_argument("outcome", choices=["commit", "abort"], help="the outcome to apply")
    parser.add_argument(
        "--reason",
        required=True,
        help="why: where the outcome was found (kept in the log with the decision)",
    )


def run_resolve(
    args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Carry out `dtxn resolve` as parsed into `args`; return the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    where = os.fspath(args.wal)
    try:
        done = resolve_in_doubt(where, args.txid, args.outcome, args.reason)
    except LogInUse as exc:
        print(f"dtxn resolve: refused: {exc}", file=err)
        return EXIT_IN_USE
    except LogMayBeShort as exc:
        print(f"dtxn resolve: refused: {exc}", file=err)
        return EXIT_LOG_SHORT
    except ResolveRefused as exc:
        print(f"dtxn resolve: refused: {exc}", file=err)
        return EXIT_REFUSED
    except (DtxnError, sqlite3.Error, OSError) as exc:
        print(f"dtxn resolve: error: {exc}", file=err)
        return EXIT_UNREADABLE
    branches = ", ".join(f"{actor} (lsn {lsn})" for actor, lsn in done.branches)
    print(
        f"dtxn resolve: WAL {where}: {args.outcome} recorded for transaction {done.txid!r}, "
        f"branch {branches}, by an operator: {done.reason}. Start the node to apply it.",
        file=out,
    )
    return EXIT_OK
