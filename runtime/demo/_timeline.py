"""The demo's timeline: what happened, in order, and its rendering for a terminal.

A `Timeline` is filled while a scenario runs: messages (from the transport),
forced and lazy log writes, decisions and timers (from `Runtime.on_trace`),
resource work, crashes, restarts and the narrator's notes. It knows nothing of
how a scenario is driven; `dtxn.runtime.demo._render` turns the same events
into Mermaid and HTML.

In the terminal each actor is a column with a vertical lifeline; a message is
an arrow from the sender's column to the receiver's, a local event sits on its
actor's lifeline, and a crashed actor's lifeline is dotted until it restarts.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TextIO

import msgspec
from dtxn.protocols.messages import (
    Decision,
    Message,
    Prepare,
    StateReport,
    StateRequest,
    StatusReply,
    VoteCast,
)
from dtxn.protocols.records import Record, kind_of

__all__ = ["Event", "Kind", "Timeline", "describe_message", "render_terminal"]

TIME_W = 10
COLUMN_W = 24
EVENTS_MAX = 2000  # a scenario that loops would otherwise fill the terminal


class Kind(enum.Enum):
    """What a timeline row shows."""

    SEND = "send"
    LOST = "lost"  # sent to a node that is down: never delivered
    FORCED = "forced"  # a record made durable (fsync) before anything depending on it
    LOG = "log"  # a lazy record, durable with the next force
    DECIDE = "decide"
    TIMER = "timer"
    WORK = "work"  # the resource did something (prepare, commit, abort)
    CRASH = "crash"
    RESTART = "restart"
    NOTE = "note"  # the narrator: what the scenario does or observes


class Event(msgspec.Struct, frozen=True):
    """One row of a timeline; `actor` is the sender for messages, '' for a general note."""

    at_s: float
    kind: Kind
    actor: str
    text: str
    to: str = ""


def describe_message(message: object) -> str:
    """A short label for a message arrow (`vote yes`, `COMMIT`, `state-request r0`)."""
    match message:
        case Prepare(payload=payload):
            return f"prepare {payload}" if payload is not None else "prepare"
        case VoteCast(vote=vote):
            return f"vote {vote.value}"
        case Decision(commit=commit):
            return "COMMIT" if commit else "ABORT"
        case StatusReply(state=state):
            return f"status {state.value}"
        case StateRequest(round=round_):
            return f"state-request r{round_}"
        case StateReport(round=round_, state=state):
            return f"state r{round_}: {state.value}"
    tag = getattr(getattr(type(message), "__struct_config__", None), "tag", None)
    return str(tag) if isinstance(tag, str) else type(message).__name__


def describe_record(detail: Any) -> str:
    return kind_of(detail) if isinstance(detail, Record) else str(detail)


class Timeline:
    """The events of one scenario, with times relative to its start."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._t0_s: float | None = None
        self.actors: list[str] = []
        self.events: list[Event] = []
        self.truncated = 0
        self._elected: set[str] = set()

    def start(self) -> None:
        self._t0_s = self._now()

    def elapsed_s(self) -> float:
        if self._t0_s is None:
            self.start()
        assert self._t0_s is not None
        return self._now() - self._t0_s

    def declare(self, actor: str) -> None:
        """Give `actor` a column (columns appear in declaration order)."""
        if actor not in self.actors:
            self.actors.append(actor)

    def add(self, kind: Kind, actor: str, text: str, to: str = "") -> None:
        if len(self.events) >= EVENTS_MAX:
            self.truncated += 1
            return
        for name in (actor, to):
            if name:
                self.declare(name)
        self.events.append(Event(self.elapsed_s(), kind, actor, text, to))

    # -- feeds -----------------------------------------------------------------

    def message(self, to: str, message: object, *, delivered: bool) -> None:
        sender = message.sender if isinstance(message, Message) else "?"
        if isinstance(message, StateRequest) and message.txid not in self._elected:
            self._elected.add(message.txid)
            self.note(
                f"termination protocol: {sender} is elected backup coordinator "
                f"(round {message.round}) and asks the others for their state"
            )
        label = describe_message(message)
        self.add(Kind.SEND if delivered else Kind.LOST, sender, label, to)

    def trace(self, txid: str, actor: str, what: str, detail: Any) -> None:
        """A `Runtime.on_trace` hook."""
        if what == "forced":
            self.add(Kind.FORCED, actor, f"forced {describe_record(detail)}")
        elif what == "log":
            self.add(Kind.LOG, actor, f"log {describe_record(detail)}")
        elif what == "decide":
            self.add(Kind.DECIDE, actor, f"decide {detail}")
        elif what == "timer":
            self.add(Kind.TIMER, actor, f"timeout: {detail}")
        # "force" (a write requested) is left out: its "forced" follows at once.

    def work(self, actor: str, text: str) -> None:
        self.add(Kind.WORK, actor, text)

    def note(self, text: str, actor: str = "") -> None:
        self.add(Kind.NOTE, actor, text)

    def crash(self, actor: str, text: str = "CRASH") -> None:
        self.add(Kind.CRASH, actor, text)

    def restart(self, actor: str, text: str = "RESTART") -> None:
        self.add(Kind.RESTART, actor, text)


# -- terminal rendering -----------------------------------------------------------

STYLES = {
    Kind.SEND: "cyan",
    Kind.LOST: "red",
    Kind.FORCED: "bold magenta",
    Kind.LOG: "dim",
    Kind.DECIDE: "bold green",
    Kind.TIMER: "yellow",
    Kind.WORK: "blue",
    Kind.CRASH: "bold white on red",
    Kind.RESTART: "bold black on green",
    Kind.NOTE: "italic yellow",
}
MARKS = {
    Kind.FORCED: "■",
    Kind.LOG: "□",
    Kind.DECIDE: "◆",
    Kind.TIMER: "⏱",
    Kind.WORK: "●",
    Kind.CRASH: "✖",
    Kind.RESTART: "▲",
    Kind.NOTE: "»",
}

Segment = tuple[str, str]  # text, rich style ("" for none)


def _centers(timeline: Timeline) -> list[int]:
    return [TIME_W + i * COLUMN_W + COLUMN_W // 2 for i in range(len(timeline.actors))]


def _lifelines(width: int, centers: list[int], down: list[bool]) -> list[str]:
    row = [" "] * width
    for center, is_down in zip(centers, down, strict=True):
        row[center] = "┊" if is_down else "│"
    return row


def _styled(row: list[str], styles: list[str]) -> list[Segment]:
    segments: list[Segment] = []
    for char, style in zip(row, styles, strict=True):
        if segments and segments[-1][1] == style:
            segments[-1] = (segments[-1][0] + char, style)
        else:
            segments.append((char, style))
    return segments


def terminal_lines(timeline: Timeline) -> list[list[Segment]]:
    """The timeline as rows of styled segments (actors as columns)."""
    centers = _centers(timeline)
    width = TIME_W + COLUMN_W * max(len(timeline.actors), 1) + COLUMN_W
    column = {actor: i for i, actor in enumerate(timeline.actors)}
    down = [False] * len(timeline.actors)
    header = [" "] * width
    header[: len("t (ms)")] = "t (ms)"
    for actor, center in zip(timeline.actors, centers, strict=True):
        start = max(center - len(actor) // 2, TIME_W)
        header[start : start + len(actor)] = actor[: COLUMN_W - 1]
    lines: list[list[Segment]] = [[("".join(header).rstrip(), "bold")]]
    for event in timeline.events:
        row = _lifelines(width, centers, down)
        styles = ["dim"] * width
        stamp = f"{event.at_s * 1000:8.0f}  "
        row[: len(stamp)] = stamp
        style = STYLES[event.kind]
        if event.kind in (Kind.SEND, Kind.LOST):
            a, b = centers[column[event.actor]], centers[column[event.to]]
            lo, hi = min(a, b), max(a, b)
            for x in range(lo, hi + 1):
                row[x] = "─"
                styles[x] = style
            row[a] = "├" if b > a else "┤"
            if event.kind is Kind.LOST:
                row[b] = "✗"
            else:
                row[b - 1 if b > a else b + 1] = "▶" if b > a else "◀"
                row[b] = "┊" if down[column[event.to]] else "│"
            room = max(hi - lo - 3, 0)
            label = f" {event.text} " if len(event.text) + 2 <= room else event.text[:room]
            start = lo + (hi - lo - len(label)) // 2 + 1
            row[start : start + len(label)] = label
        elif event.kind is Kind.NOTE and not event.actor:
            # A general note may be longer than the lifelines are wide.
            lines.append([(stamp, ""), (f"── {event.text}", style)])
            continue
        else:
            i = column[event.actor]
            room = width - centers[i] - 2 if i == len(centers) - 1 else COLUMN_W - 2
            text = f"{MARKS[event.kind]} {event.text}"
            if event.kind is Kind.NOTE:
                room = width - centers[i]
            text = text[:room]
            row[centers[i] : centers[i] + len(text)] = text
            styles[centers[i] : centers[i] + len(text)] = [style] * len(text)
            if event.kind is Kind.CRASH:
                down[i] = True
            elif event.kind is Kind.RESTART:
                down[i] = False
        for x in range(len(stamp)):
            styles[x] = ""
        lines.append(_styled(row[:width], styles[:width]))
    if timeline.truncated:
        lines.append([(f"… {timeline.truncated} more events not shown", "dim")])
    return lines


def render_terminal(timeline: Timeline, out: TextIO, *, color: bool | None = None) -> None:
    """Print the timeline; in colour with rich when it is importable and `out` is a terminal."""
    lines = terminal_lines(timeline)
    console = None
    if color is not False:
        try:
            from rich.console import Console
            from rich.text import Text
        except ImportError:
            console = None
        else:
            console = Console(file=out, soft_wrap=True, highlight=False, force_terminal=color)
    if console is None:
        for segments in lines:
            out.write("".join(text for text, _ in segments).rstrip() + "\n")
        return
    for segments in lines:
        text = Text()
        for part, style in segments:
            text.append(part, style=style or None)
        text.rstrip()
        console.print(text)
