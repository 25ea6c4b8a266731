"""The `dtxn` command line: `demo`, `version`, `inspect`, `resolve`, `bench`, `simulate`,
`replay`, `node`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from dtxn.runtime.extras import MissingExtra


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
    parser.add_argument("--version", action="version", version=f"dtxn {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run the motivating scenarios (2PC/3PC transfers, crashes) and draw their timelines",
    )
    demo.add_argument(
        "--dir",
        default=None,
        help="where to write WALs and diagrams (default: a new temporary directory, kept)",
    )
    demo.add_argument(
        "--scenario",
        default=None,
        help="comma-separated scenario keys to run (default: all), e.g. 1a,2b",
    )
    demo.add_argument("--no-color", action="store_true", help="plain text, no colours")
    commands.add_parser("version", help="print the installed dtxn version")
    from dtxn.runtime.cli.inspect import add_inspect_parser

    add_inspect_parser(commands)
    from dtxn.runtime.cli.resolve import add_resolve_parser

    add_resolve_parser(commands)
    bench = commands.add_parser(
        "bench",
        help="run the 2PC/3PC benchmark matrix against its baselines, with plots",
        description=(
            "Runs the atomic-commit matrix (protocol x participants x concurrency x "
            "durability) through real runtimes, measures in the same process the raw "
            "SQLite forced-commit rate and a hand-written 2PC floor, prints a table and "
            "writes PNG plots. --suite selects the other suites instead."
        ),
    )
    bench.add_argument(
        "--suite",
        default=None,
        choices=["all", *SUITES],
        help="run another suite, or all of them (default: the txn protocol matrix)",
    )
    bench.add_argument(
        "--quick", action="store_true", help="3 participants, small counts: under a minute"
    )
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument(
        "--protocol", metavar="LIST", type=_choices_list("protocol", ("2pc", "3pc")),
        default=None,
        help="comma-separated protocols (default: 2pc,3pc)",
    )
    bench.add_argument(
        "--participants", metavar="LIST", type=_positive_list("participants"), default=None,
        help="comma-separated participant counts (default: 1,3,8; --quick: 3)",
    )
    bench.add_argument(
        "--concurrency", metavar="LIST", type=_positive_list("concurrency"), default=None,
        help="comma-separated client counts, e.g. 1,256 (default: 1,16,256)",
    )
    bench.add_argument(
        "--durability",
        metavar="LIST",
        type=_choices_list("durability", ("full", "normal", "memory")),
        default=None,
        help="comma-separated WAL modes: full, normal, memory (default: full)",
    )
    bench.add_argument(
        "--out", default="dtxn-bench", metavar="DIR",
        help="folder for the PNG plots (default: ./dtxn-bench)",
    )
    bench.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    simulate = commands.add_parser(
        "simulate", help="run random crash/network-fault schedules in the deterministic simulator"
    )
    simulate.add_argument("--protocol", default="2pc", choices=["2pc", "3pc", "saga"])
    simulate.add_argument("--schedules", type=int, default=1000, help="how many (default 1000)")
    simulate.add_argument("--seed", type=int, default=0, help="derives every schedule (default 0)")
    simulate.add_argument("--participants", type=int, default=3, help="participant nodes")
    simulate.add_argument(
        "--txns", type=int, default=None,
        help="transactions (sagas, for --protocol saga) per schedule (default 2; 3 sagas)",
    )
    simulate.add_argument(
        "--faults", type=int, default=3, help="timed faults per schedule (default 3)"
    )
    simulate.add_argument(
        "--jobs", type=int, default=1, help="worker processes (schedules are independent)"
    )
    simulate.add_argument(
        "--show", type=int, default=0, metavar="N",
        help="also print the first N schedules run, each replayable with dtxn replay",
    )
    simulate.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: schedules, events, violations, schedules_per_s",
    )
    replay = commands.add_parser(
        "replay", help="rerun one schedule (as printed on a violation) with a readable trace"
    )
    replay.add_argument("schedule", help="the schedule text, quoted")
    node = commands.add_parser(
        "node",
        help="run one node over NATS (coordinator and/or participants) until SIGTERM",
        description="Host the node described by a TOML file (docs/nats.md): connect to NATS, "
        "start its resources, recover from its WAL, serve; SIGTERM or SIGINT stops it cleanly.",
    )
    node.add_argument("--config", required=True, metavar="FILE", help="the node.toml file")
    return parser


SUITES = ("actors", "wal", "txn", "sagas", "pg", "nats")
MATRIX_FLAGS = ("protocol", "participants", "concurrency", "durability")


def _split(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not items or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"{what}: expected a comma-separated list, got {text!r}")
    return list(dict.fromkeys(items))


def _choices_list(what: str, allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [item.lower() for item in _split(text, what)]
        bad = [item for item in items if item not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, bad))} (choose from {', '.join(allowed)})"
            )
        return items

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def _positive_list(what: str) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        numbers = []
        for item in _split(text, what):
            try:
                number = int(item)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{what}: {item!r} is not a whole number"
                ) from None
            if number < 1:
                raise argparse.ArgumentTypeError(f"{what}: {number} must be at least 1")
            numbers.append(number)
        return numbers

    parse.__name__ = what
    return parse


def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import importlib
    import json

    narrowed = [f"--{flag}" for flag in MATRIX_FLAGS if getattr(args, flag) is not None]
    if args.suite is None:
        return _bench_matrix(args)
    if narrowed and args.suite not in ("txn", "all"):
        parser.error(f"{', '.join(narrowed)} only narrow the txn suite, not --suite {args.suite}")
    if args.suite == "txn":
        return _bench_matrix(args)
    results: dict[str, object] = {}
    for name in SUITES if args.suite == "all" else (args.suite,):
        module = importlib.import_module(f"dtxn.bench.{name}")
        results[name] = module.run(quick=args.quick, **(_matrix(args) if name == "txn" else {}))
        if not args.json and hasattr(module, "print_table"):
            module.print_table(results[name])
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    return 0


def _matrix(args: argparse.Namespace) -> dict[str, Any]:
    from dtxn.bench import txn

    participants = args.participants or (
        txn.QUICK_PARTICIPANTS if args.quick else txn.PARTICIPANTS
    )
    return {
        "protocols": args.protocol or txn.PROTOCOLS,
        "participants": participants,
        "concurrency": args.concurrency or txn.CONCURRENCY,
        "durability": args.durability or txn.DURABILITY,
    }


def _bench_matrix(args: argparse.Namespace) -> int:
    """`dtxn bench`: the protocol matrix with a progress bar, table, baselines and plots."""
    import json
    from pathlib import Path

    from dtxn.bench import report, txn

    matrix = _matrix(args)
    with report.progress_bar(txn.steps(**matrix)) as progress:
        results = txn.run(args.quick, progress=progress, **matrix)
    # With --json stdout carries the object alone; everything for people goes to stderr.
    notes = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps(report.machine_report(results), indent=2))
    else:
        report.print_table(results)
    if not args.no_plots:
        paths, skipped = report.write_plots(results, Path(args.out))
        if skipped is not None:
            print(skipped, file=notes)
        for path in paths:
            print(f"plot: {path.resolve()}", file=notes)
    return 0


SIMULATE_CHUNK = 50


# One slice of a sweep: protocol, count, seed, participants, txns, faults, start.
SweepJob = tuple[str, int, int, int, int, int, int]


def _sweep_chunk(job: SweepJob, progress: Callable[[int], None] | None = None) -> Any:
    from dtxn.runtime.sim import sweep

    protocol, count, seed, participants, txns, faults, start = job
    if protocol == "saga":
        from dtxn.runtime.sim.sagas import sweep as saga_sweep

        return saga_sweep(count, seed, sagas=txns, faults=faults, start=start,
                          progress=progress)
    return sweep(protocol, count, seed, participants=participants, txns=txns, faults=faults,
                 start=start, progress=progress)


def _parallel_sweep(
    protocol: str,
    schedules: int,
    seed: int,
    participants: int,
    txns: int,
    faults: int,
    jobs: int,
    progress: Callable[[int], None] | None,
) -> Any:
    from concurrent.futures import ProcessPoolExecutor

    from dtxn.runtime.sim import SweepStatistics

    chunks = [
        (protocol, min(SIMULATE_CHUNK, schedules - start), seed, participants, txns, faults,
         start)
        for start in range(0, schedules, SIMULATE_CHUNK)
    ]
    total = SweepStatistics()
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        # map keeps chunk order, so the first failure is the lowest-numbered one.
        for part in pool.map(_sweep_chunk, chunks):
            total.schedules += part.schedules
            total.events += part.events
            total.violations += part.violations
            if total.first_failure is None:
                total.first_failure = part.first_failure
            if progress is not None:
                progress(total.schedules)
    return total


def _simulate(
    protocol: str, schedules: int, seed: int, participants: int, jobs: int, as_json: bool,
    txns: int | None = None, faults: int = 3, show: int = 0,
) -> int:
    import json
    import time  # noqa: TID251 - measuring the simulator's own wall-clock rate

    from dtxn.runtime.sim import minimize

    if txns is None:
        txns = 3 if protocol == "saga" else 2
    if schedules < 1 or participants < 1 or jobs < 1 or txns < 1 or faults < 0 or show < 0:
        print("dtxn simulate: --schedules, --participants, --txns and --jobs must be >= 1, "
              "--faults and --show >= 0", file=sys.stderr)
        return 2
    started = time.perf_counter()
    progress = None
    bar = None
    if not as_json:
        try:
            from rich.progress import Progress
        except ImportError:
            pass
        else:
            bar = Progress(transient=True)
            task = bar.add_task(f"simulating {protocol}", total=schedules)
            bar.start()

            def progress(done: int) -> None:
                bar.update(task, completed=done)

    try:
        if jobs == 1:
            stats: Any = _sweep_chunk(
                (protocol, schedules, seed, participants, txns, faults, 0), progress
            )
        else:
            stats = _parallel_sweep(protocol, schedules, seed, participants, txns, faults, jobs,
                                    progress)
    finally:
        if bar is not None:
            bar.stop()
    elapsed_s = max(time.perf_counter() - started, 1e-9)
    report = {
        "schedules": stats.schedules,
        "events": stats.events,
        "violations": stats.violations,
        "schedules_per_s": round(stats.schedules / elapsed_s, 1),
    }
    if as_json:
        print(json.dumps(report))
    else:
        print(
            f"{protocol}: {report['schedules']} schedules, {report['events']} events, "
            f"{report['violations']} with violations, {report['schedules_per_s']} schedules/s"
        )
    if show:
        out = sys.stderr if as_json else sys.stdout
        for index, text in enumerate(_sample(protocol, min(show, schedules), seed, participants,
                                             txns, faults)):
            print(f"schedule {index}: {text}", file=out)
    if stats.first_failure is not None:
        small: Any
        if protocol == "saga":
            from dtxn.runtime.sim.sagas import minimize as saga_minimize

            small, violations = saga_minimize(stats.first_failure)
        else:
            small, violations = minimize(stats.first_failure)
        out = sys.stderr if as_json else sys.stdout
        print("first violation, minimized:", file=out)
        for violation in violations[:10]:
            print(f"  {violation}", file=out)
        text = small.text()
        print(f"schedule: {text}", file=out)
        print(f"replay with: dtxn replay '{text}'", file=out)
        return 1
    return 0


def _sample(
    protocol: str, count: int, seed: int, participants: int, txns: int, faults: int
) -> list[str]:
    """The text of the first `count` schedules of a sweep, as `dtxn replay` reads them."""
    from dtxn.runtime.sim import random_scenario, schedule_seed

    if protocol == "saga":
        from dtxn.runtime.sim.sagas import random_scenario as saga_scenario
        from dtxn.runtime.sim.sagas import schedule_seed as saga_seed

        return [saga_scenario(saga_seed(seed, i), sagas=txns, faults=faults).text()
                for i in range(count)]
    return [random_scenario(schedule_seed(seed, i), protocol=protocol,
                            participants=participants, txns=txns, faults=faults).text()
            for i in range(count)]


def _trace_lines(trace: Any) -> list[str]:
    """One event per entry, its detail wrapped to the terminal under its own column."""
    import shutil
    import textwrap

    from dtxn.runtime.sim import describe

    width = max(60, shutil.get_terminal_size((100, 24)).columns)
    indent = " " * 22
    lines = []
    for at_s, what, detail in trace:
        lines.append(textwrap.fill(
            describe(detail), width=width, initial_indent=f"{at_s:10.6f}  {what:<9} ",
            subsequent_indent=indent, break_on_hyphens=False,
        ))
    return lines


def _replay(text: str) -> int:
    from dtxn.runtime.sim import Scenario, run

    if text.strip().startswith("saga"):
        return _replay_saga(text)
    try:
        scenario = Scenario.parse(text)
    except (ValueError, KeyError) as exc:
        print(f"dtxn replay: cannot read schedule: {exc}", file=sys.stderr)
        return 2
    result = run(scenario, raise_on_violation=False)
    print(f"# {scenario.text()}")
    for line in _trace_lines(result.trace):
        print(line)
    print(f"# {result.events} events, virtual time {result.virtual_s:.3f}s, "
          f"trace hash {result.trace_hash}")
    print(f"# outcomes: {result.outcomes}")
    for violation in result.violations:
        print(f"VIOLATION {violation}")
    return 1 if result.violations else 0


def _replay_saga(text: str) -> int:
    from dtxn.runtime.sim.sagas import SagaScenario, run

    try:
        scenario = SagaScenario.parse(text)
    except (ValueError, KeyError) as exc:
        print(f"dtxn replay: cannot read saga schedule: {exc}", file=sys.stderr)
        return 2
    result = run(scenario, raise_on_violation=False)
    print(f"# {scenario.text()}")
    for line in _trace_lines(result.trace):
        print(line)
    print(f"# {result.events} events, virtual time {result.virtual_s:.3f}s, "
          f"trace hash {result.trace_hash}")
    print(f"# ends: {result.outcomes}")
    for violation in result.violations:
        print(f"VIOLATION {violation}")
    return 1 if result.violations else 0


def _demo(directory: str | None, scenarios: str | None, no_color: bool) -> int:
    import tempfile
    from pathlib import Path

    from dtxn.runtime.demo import run_demo

    where = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="dtxn-demo-"))
    keys = [key.strip() for key in scenarios.split(",") if key.strip()] if scenarios else None
    print(f"dtxn demo: writing WALs and diagrams to {where}")
    return run_demo(where, keys=keys, color=False if no_color else None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo(args.dir, args.scenario, args.no_color)
    if args.command == "inspect":
        from dtxn.runtime.cli.inspect import run_inspect

        return run_inspect(args)
    if args.command == "resolve":
        from dtxn.runtime.cli.resolve import run_resolve

        return run_resolve(args)
    if args.command == "version":
        print(f"dtxn {_version()}")
        return 0
    if args.command == "bench":
        return _bench(args, parser)
    if args.command == "simulate":
        return _simulate(
            args.protocol, args.schedules, args.seed, args.participants, args.jobs, args.json,
            args.txns, args.faults, args.show,
        )
    if args.command == "replay":
        return _replay(args.schedule)
    if args.command == "node":
        try:
            from dtxn.runtime.cli.node import main as node_main
        except MissingExtra as missing:
            print(f"dtxn node: {missing}", file=sys.stderr)
            return 2
        return node_main(args.config)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
