"""How `dtxn bench` shows the protocol matrix: progress bar, table, JSON object and PNG plots.

Measuring lives in `dtxn.bench.txn`; this module only turns its plain-data
result into things for people (a rich table, two PNG plots) and for machines
(one JSON object with `results` and `baselines`). rich and matplotlib are
optional: without rich the table is plain text, without matplotlib the plots
are skipped with a message saying how to get them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

# The keys every entry of `results` carries in the JSON object, in this order.
CELL_KEYS = (
    "protocol",
    "participants",
    "concurrency",
    "durability",
    "tx_per_s",
    "p50_ms",
    "p99_ms",
    "messages_per_tx",
    "fsyncs_per_tx",
)
THROUGHPUT_PNG = "throughput.png"
LATENCY_PNG = "latency.png"
MISSING_MATPLOTLIB = (
    "plots skipped: matplotlib is not installed"
    " (pip install 'dtxn[bench]' or pip install matplotlib)"
)


def _finite(value: Any) -> Any:
    # json.dumps writes NaN, which strict JSON parsers reject: an empty cell says null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def machine_report(results: dict[str, Any]) -> dict[str, Any]:
    """The one object `--json` prints: `results` (one entry per cell) and `baselines`."""
    cells = []
    for cell in results["results"]:
        named = {key: _finite(cell[key]) for key in CELL_KEYS}
        extra = {key: _finite(value) for key, value in cell.items() if key not in named}
        cells.append(named | extra)
    base = results["baselines"]
    return {
        "results": cells,
        "baselines": {
            "sqlite_forced_commits_per_s": _finite(base["sqlite_forced_commits_per_s"]),
            "floor_2pc_tx_per_s": {
                str(c): _finite(rate) for c, rate in base["floor_2pc_tx_per_s"].items()
            },
        },
    }


def baselines_line(results: dict[str, Any]) -> str:
    base = results["baselines"]
    floor = ", ".join(
        f"c{c}: {rate:,.0f} tx/s" for c, rate in base["floor_2pc_tx_per_s"].items()
    )
    return (
        f"baselines (same run, same disk): raw sqlite forced commits "
        f"{base['sqlite_forced_commits_per_s']:,.0f}/s; hand-written 2PC floor "
        f"({base['floor_participants']} participants) {floor}"
    )


def print_table(results: dict[str, Any], out: TextIO | None = None) -> None:
    """The results table (rich when installed), then the baselines line."""
    from dtxn.bench.txn import table_rows

    header, rows = table_rows(results)
    title = f"dtxn atomic commit ({results['loop']}, sqlite {results['sqlite_version']})"
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title, file=out)
        print("  ".join(f"{h:>10}" for h in header), file=out)
        for row in rows:
            print("  ".join(f"{cell:>10}" for cell in row), file=out)
        print(baselines_line(results), file=out)
        return
    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    # Ten columns need about 120 characters; a pipe would otherwise get 80.
    console = Console(file=out, width=max(120, Console(file=out).width))
    console.print(table)
    console.print(baselines_line(results), highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar(total: int, *, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A callback for `txn.run(progress=...)` that advances a rich bar on stderr.

    stderr keeps stdout clean for the table or the JSON object; without rich, or
    when disabled, the callback does nothing.
    """
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        enabled = False
    if not enabled:
        yield lambda label: None
        return
    bar = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("measuring baselines", total=total)

    def advance(label: str) -> None:
        bar.update(task, advance=1, description=f"done: {label}")

    with bar:
        yield advance


def load_pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (no display); raises ImportError when absent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(cell: dict[str, Any]) -> str:
    return f"{cell['protocol']} x{cell['participants']} {cell['durability']}"


def write_plots(results: dict[str, Any], out: Path) -> tuple[list[Path], str | None]:
    """Write the throughput and latency PNGs into `out`; (paths, why skipped or None)."""
    try:
        plt = load_pyplot()
    except ImportError:
        return [], MISSING_MATPLOTLIB
    out.mkdir(parents=True, exist_ok=True)
    return [_throughput(plt, results, out / THROUGHPUT_PNG),
            _latency(plt, results, out / LATENCY_PNG)], None


def _throughput(plt: Any, results: dict[str, Any], path: Path) -> Path:
    lines: dict[str, list[tuple[int, float]]] = {}
    for cell in results["results"]:
        lines.setdefault(_label(cell), []).append((cell["concurrency"], cell["tx_per_s"]))
    base = results["baselines"]
    floor = sorted((int(c), rate) for c, rate in base["floor_2pc_tx_per_s"].items())
    fig, ax = plt.subplots(figsize=(8, 5))
    try:
        for label, points in lines.items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        if floor:
            xs, ys = zip(*floor, strict=True)
            ax.plot(xs, ys, marker="s", linestyle="--", color="black",
                    label=f"hand-written 2PC floor x{base['floor_participants']} full")
        ax.axhline(base["sqlite_forced_commits_per_s"], color="grey", linestyle=":",
                   label="raw sqlite forced commits/s")
        ax.set_xscale("log", base=2)
        ticks = sorted({c["concurrency"] for c in results["results"]} | {c for c, _ in floor})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("committed transactions / s")
        ax.set_title("dtxn atomic commit: throughput against concurrency")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _latency(plt: Any, results: dict[str, Any], path: Path) -> Path:
    cells = results["results"]
    names = [f"{_label(c)}\nc{c['concurrency']}" for c in cells]
    p50 = [_zero_if_nan(c["p50_ms"]) for c in cells]
    p99 = [_zero_if_nan(c["p99_ms"]) for c in cells]
    width = 0.4
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(cells) + 2), 5))
    try:
        xs = list(range(len(cells)))
        ax.bar([x - width / 2 for x in xs], p50, width, label="p50")
        ax.bar([x + width / 2 for x in xs], p99, width, label="p99")
        ax.set_xticks(xs, names, rotation=45, ha="right", fontsize="small")
        ax.set_ylabel("transact latency (ms)")
        if any(v > 0 for v in p99):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter("{x:g}")
            ax.yaxis.set_minor_formatter("")
        ax.set_title("dtxn atomic commit: latency per cell")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _zero_if_nan(value: float) -> float:
    return value if math.isfinite(value) else 0.0
