"""`dtxn demo`: run the scenarios that motivate dtxn and show what happened.

Every registered scenario (`dtxn.runtime.demo._stage.SCENARIOS`; scenarios 1
and 2 live in `demo.atomic`, 3 and 4 in `demo.sagas`) runs on fresh runtimes with one SQLite WAL per
node, under `DIR/<key>-<slug>/`. For each, the timeline is printed (actors as
columns, messages as arrows) and `DIR/<key>-<slug>.mmd` (Mermaid) and
`DIR/<key>-<slug>.html` (a self-contained page) are written, plus
`DIR/index.html`. The exit status is 1 if any invariant failed.
"""

from __future__ import annotations

import html
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import anyio
import msgspec
from dtxn.runtime.clock import Clock
from dtxn.runtime.demo import atomic, sagas  # noqa: F401 - register scenarios 1-2, 3-4
from dtxn.runtime.demo._render import Check, render_html, render_mermaid
from dtxn.runtime.demo._stage import SCENARIOS, SEED, Scenario, Stage, check_transfers, scenario
from dtxn.runtime.demo._timeline import Kind, Timeline, render_terminal
from dtxn.runtime.loop import run

__all__ = [
    "BeforeChecks",
    "ScenarioResult",
    "Stage",
    "run_demo",
    "scenario",
]

SCENARIO_LIMIT_S = 10.0

BeforeChecks = Callable[[str, Stage], None]
"""A test hook called with (scenario key, stage) after a scenario ran, before its checks."""


class ScenarioResult(msgspec.Struct, frozen=True):
    """What one scenario did: its checks, size and files."""

    key: str
    title: str
    checks: list[Check]
    elapsed_s: float
    messages: int
    forced: int
    files: list[str]

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.checks)


async def play(
    scenario: Scenario, directory: Path, before_checks: BeforeChecks | None = None
) -> tuple[Stage, float]:
    """Run one scenario in `directory` (see `_fresh`) and check its invariants."""
    clock = Clock(seed=SEED)
    timeline = Timeline(clock.now)
    async with anyio.create_task_group() as tg:
        stage = Stage(directory, tg, timeline, clock)
        timeline.start()
        try:
            with anyio.fail_after(SCENARIO_LIMIT_S):
                await scenario.run(stage)
        except TimeoutError:
            stage.check(f"the scenario finishes within {SCENARIO_LIMIT_S:.0f} s", False,
                        "it was still waiting; see the end of the timeline")
        await stage.close()
        elapsed_s = timeline.elapsed_s()
        # Callers still waiting for an answer belong to nodes that are gone.
        tg.cancel_scope.cancel()
    if before_checks is not None:
        before_checks(scenario.key, stage)
    check_transfers(stage)
    return stage, elapsed_s


def _fresh(directory: Path) -> None:
    """Make `directory` with no WAL in it: every run starts from empty logs."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.db*"):
        old.unlink()


class _Printer:
    def __init__(self, out: TextIO, color: bool | None) -> None:
        self.out = out
        self.color = color
        self.console = None
        if color is not False:
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                self.console = Console(file=out, soft_wrap=True, highlight=False,
                                       force_terminal=color)

    def line(self, text: str = "", style: str = "") -> None:
        if self.console is None:
            self.out.write(text + "\n")
        else:
            from rich.text import Text

            self.console.print(Text(text, style=style or ""))


def _report(printer: _Printer, scenario: Scenario, stage: Stage, result: ScenarioResult) -> None:
    printer.line()
    printer.line(f"━━ Scenario {scenario.key} · {scenario.title} ━━", "bold")
    for line in textwrap.wrap(scenario.about, 100):
        printer.line(line)
    printer.line()
    render_terminal(stage.timeline, printer.out, color=printer.color)
    printer.line()
    for name, ok, detail in result.checks:
        mark, style = ("✔", "green") if ok else ("✖ FAILED:", "bold red")
        printer.line(f"  {mark} {name}{': ' + detail if detail else ''}", style)
    printer.line(f"  {result.messages} messages, {result.forced} forced writes, "
                 f"{result.elapsed_s:.2f} s; diagram: {', '.join(result.files)}", "dim")


def _write(scenario: Scenario, stage: Stage, directory: Path) -> list[str]:
    name = f"{scenario.key}-{scenario.slug}"
    title = f"Scenario {scenario.key}: {scenario.title}"
    mermaid = render_mermaid(title, stage.timeline)
    mmd, page = directory / f"{name}.mmd", directory / f"{name}.html"
    mmd.write_text(mermaid, encoding="utf-8")
    page.write_text(
        render_html(title, scenario.about, stage.timeline, stage.checks, mermaid),
        encoding="utf-8",
    )
    return [str(mmd), str(page)]


def _index(directory: Path, results: Sequence[ScenarioResult]) -> None:
    rows = "".join(
        f'<li><a href="{html.escape(Path(r.files[1]).name)}">Scenario {html.escape(r.key)}: '
        f"{html.escape(r.title)}</a> — {'passed' if r.passed else 'FAILED'}</li>"
        for r in results
    )
    (directory / "index.html").write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>dtxn demo</title>'
        "</head><body style=\"font-family: system-ui, sans-serif\"><h1>dtxn demo</h1>"
        f"<ul>{rows}</ul></body></html>\n",
        encoding="utf-8",
    )


def run_demo(
    directory: Path,
    *,
    keys: Sequence[str] | None = None,
    out: TextIO | None = None,
    color: bool | None = None,
    before_checks: BeforeChecks | None = None,
    use_uvloop: bool | None = None,
) -> int:
    """Run the scenarios `keys` (default: all) into `directory`; 0 if every invariant held."""
    out = out if out is not None else sys.stdout
    chosen = list(SCENARIOS) if not keys else list(keys)
    unknown = [key for key in chosen if key not in SCENARIOS]
    if unknown:
        print(f"dtxn demo: no scenario {', '.join(unknown)}; choose from "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    for key in chosen:
        _fresh(directory / f"{key}-{SCENARIOS[key].slug}")
    printer = _Printer(out, color)

    async def main() -> list[ScenarioResult]:
        results = []
        for key in chosen:
            scenario = SCENARIOS[key]
            stage, elapsed_s = await play(
                scenario, directory / f"{key}-{scenario.slug}", before_checks
            )
            files = _write(scenario, stage, directory)
            forced = sum(1 for event in stage.timeline.events if event.kind is Kind.FORCED)
            result = ScenarioResult(
                key, scenario.title, list(stage.checks), elapsed_s,
                stage.transport.statistics().messages, forced, files,
            )
            _report(printer, scenario, stage, result)
            results.append(result)
        return results

    results = run(main, use_uvloop=use_uvloop)
    _index(directory, results)
    failed = [(r.key, name, detail) for r in results for name, ok, detail in r.checks if not ok]
    total = sum(len(r.checks) for r in results)
    printer.line()
    if failed:
        printer.line(f"dtxn demo: {len(failed)} of {total} invariant checks FAILED:", "bold red")
        for key, name, detail in failed:
            printer.line(f"  scenario {key}: {name}{': ' + detail if detail else ''}", "red")
        print(f"dtxn demo: {len(failed)} invariant check(s) failed (see above)", file=sys.stderr)
        return 1
    printer.line(f"All {total} invariant checks passed in {len(results)} scenarios "
                 f"({sum(r.elapsed_s for r in results):.1f} s). Diagrams: "
                 f"{directory / 'index.html'}", "bold green")
    return 0
