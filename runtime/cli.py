"""The `dtxn` command line: `dtxn --help`, `dtxn version` (more commands join later)."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version


def _version() -> str:
    try:
        return version("dtxn")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dtxn",
        description=(
            "dtxn: an asyncio, actor-based runtime for distributed transactions "
            "(2PC, 3PC, sagas) on a SQLite write-ahead log."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("version", help="print the installed dtxn version")
    bench = commands.add_parser(
        "bench", help="run the benchmark suites (actor core, WAL, atomic commit)"
    )
    bench.add_argument(
        "--suite",
        default="all",
        choices=["all", *SUITES],
        help="which suite to run (default: all)",
    )
    bench.add_argument("--quick", action="store_true", help="small counts, about a minute")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


SUITES = ("actors", "wal", "txn")


def _bench(suite: str, quick: bool, as_json: bool) -> int:
    import importlib
    import json

    results: dict[str, object] = {}
    for name in SUITES if suite == "all" else (suite,):
        module = importlib.import_module(f"dtxn.bench.{name}")
        results[name] = module.run(quick=quick)
    if as_json:
        print(json.dumps(results, indent=2, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"dtxn {_version()}")
        return 0
    if args.command == "bench":
        return _bench(args.suite, args.quick, args.json)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
