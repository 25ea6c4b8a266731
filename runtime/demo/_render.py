"""Sequence diagrams of a demo timeline: Mermaid source and a self-contained HTML page.

The HTML page needs no network: it draws its own SVG sequence diagram and a
plain table of the same events, and carries the Mermaid source in a
`<pre class="mermaid">` for anyone who wants to render it with mermaid.js.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from dtxn.runtime.demo._timeline import Event, Kind, Timeline

__all__ = ["Check", "render_html", "render_mermaid"]

Check = tuple[str, bool, str]  # name, passed, detail

ROW_H = 26
HEAD_H = 56
LEFT_W = 84
LANE_W = 230
COLORS = {
    Kind.SEND: "#1f6feb",
    Kind.LOST: "#cf222e",
    Kind.FORCED: "#8250df",
    Kind.LOG: "#6e7781",
    Kind.DECIDE: "#1a7f37",
    Kind.TIMER: "#9a6700",
    Kind.WORK: "#0969da",
    Kind.CRASH: "#cf222e",
    Kind.RESTART: "#1a7f37",
    Kind.NOTE: "#7d4e00",
}


def _mermaid_text(text: str) -> str:
    # ';' and '#' are syntax in Mermaid labels; keep labels on one line.
    return text.replace(";", ",").replace("#", "no. ").replace("\n", " ")


def render_mermaid(title: str, timeline: Timeline) -> str:
    """A Mermaid `sequenceDiagram` of the timeline."""
    ids = {actor: f"P{i}" for i, actor in enumerate(timeline.actors)}
    lines = ["sequenceDiagram", f"    title {_mermaid_text(title)}"]
    for actor, ident in ids.items():
        lines.append(f"    participant {ident} as {_mermaid_text(actor)}")
    first, last = (ids[timeline.actors[0]], ids[timeline.actors[-1]]) if ids else ("", "")
    for event in timeline.events:
        text = _mermaid_text(event.text)
        stamp = f"{event.at_s * 1000:.0f} ms"
        match event.kind:
            case Kind.SEND:
                lines.append(f"    {ids[event.actor]}->>{ids[event.to]}: {text}")
            case Kind.LOST:
                lines.append(f"    {ids[event.actor]}-x{ids[event.to]}: {text} (lost: node down)")
            case Kind.CRASH:
                lines.append(f"    Note over {ids[event.actor]}: ✖ {text} at {stamp}")
            case Kind.RESTART:
                lines.append(f"    Note over {ids[event.actor]}: ▲ {text} at {stamp}")
            case Kind.NOTE if not event.actor:
                span = first if first == last else f"{first},{last}"
                lines.append(f"    Note over {span}: {text}")
            case _:
                lines.append(f"    Note right of {ids[event.actor]}: {text}")
    return "\n".join(lines) + "\n"


# -- HTML ----------------------------------------------------------------------------


def _svg(timeline: Timeline) -> str:
    actors = timeline.actors
    x = {actor: LEFT_W + i * LANE_W + LANE_W // 2 for i, actor in enumerate(actors)}
    width = LEFT_W + LANE_W * max(len(actors), 1) + 180
    height = HEAD_H + ROW_H * (len(timeline.events) + 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="ui-monospace, monospace" font-size="12">',
        "<defs>",
    ]
    for kind in (Kind.SEND, Kind.LOST):
        out.append(
            f'<marker id="head-{kind.value}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerWidth="8" markerHeight="8" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{COLORS[kind]}"/></marker>'
        )
    out.append("</defs>")
    # Lifelines: solid while up, dashed red while crashed.
    down_since: dict[str, float] = {}
    segments: list[tuple[str, float, float, bool]] = []
    for row, event in enumerate(timeline.events, 1):
        y = HEAD_H + row * ROW_H
        if event.kind is Kind.CRASH:
            down_since[event.actor] = y
        elif event.kind is Kind.RESTART and event.actor in down_since:
            segments.append((event.actor, down_since.pop(event.actor), y, True))
    for actor, since in down_since.items():
        segments.append((actor, since, height, True))
    for actor in actors:
        out.append(
            f'<line x1="{x[actor]}" y1="{HEAD_H}" x2="{x[actor]}" y2="{height}" '
            'stroke="#8c959f" stroke-width="1.5"/>'
        )
    for actor, y1, y2, _ in segments:
        out.append(
            f'<line x1="{x[actor]}" y1="{y1}" x2="{x[actor]}" y2="{y2}" stroke="#ffffff" '
            f'stroke-width="4"/><line x1="{x[actor]}" y1="{y1}" x2="{x[actor]}" y2="{y2}" '
            'stroke="#cf222e" stroke-width="1.5" stroke-dasharray="4 4"/>'
        )
    for actor in actors:
        out.append(
            f'<rect x="{x[actor] - LANE_W // 2 + 8}" y="8" width="{LANE_W - 16}" height="32" '
            f'rx="6" fill="#f6f8fa" stroke="#57606a"/><text x="{x[actor]}" y="29" '
            f'text-anchor="middle" font-weight="bold">{html.escape(actor)}</text>'
        )
    for row, event in enumerate(timeline.events, 1):
        out.append(_svg_event(event, HEAD_H + row * ROW_H, x, width))
    out.append("</svg>")
    return "\n".join(out)


def _svg_event(event: Event, y: int, x: dict[str, int], width: int) -> str:
    color = COLORS[event.kind]
    text = html.escape(event.text)
    stamp = (
        f'<text x="{LEFT_W - 10}" y="{y + 4}" text-anchor="end" fill="#57606a">'
        f"{event.at_s * 1000:.0f} ms</text>"
    )
    if event.kind in (Kind.SEND, Kind.LOST):
        x1, x2 = x[event.actor], x[event.to]
        dash = ' stroke-dasharray="6 4"' if event.kind is Kind.LOST else ""
        shape = (
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{color}" stroke-width="1.6"'
            f'{dash} marker-end="url(#head-{event.kind.value})"/>'
            f'<text x="{(x1 + x2) / 2}" y="{y - 5}" text-anchor="middle" fill="{color}">'
            f'{text}{" ✗ lost" if event.kind is Kind.LOST else ""}</text>'
        )
        return stamp + shape
    if event.kind is Kind.NOTE and not event.actor:
        return stamp + (
            f'<rect x="{LEFT_W}" y="{y - 10}" width="{width - LEFT_W - 20}" height="20" '
            f'fill="#fff8c5" stroke="#d4a72c"/><text x="{LEFT_W + 8}" y="{y + 4}" '
            f'fill="{color}" font-style="italic">{text}</text>'
        )
    cx = x[event.actor]
    box_w = min(len(event.text) * 7.3 + 16, LANE_W * 2.6)
    fill = {Kind.CRASH: "#cf222e", Kind.RESTART: "#1a7f37"}.get(event.kind, "#ffffff")
    ink = "#ffffff" if event.kind in (Kind.CRASH, Kind.RESTART) else color
    return stamp + (
        f'<rect x="{cx - 6}" y="{y - 10}" width="{box_w}" height="20" rx="4" fill="{fill}" '
        f'stroke="{color}"/><text x="{cx + 2}" y="{y + 4}" fill="{ink}">{text}</text>'
    )


def _table(timeline: Timeline) -> str:
    head = "".join(f"<th>{html.escape(actor)}</th>" for actor in timeline.actors)
    rows = [f"<table><thead><tr><th>t (ms)</th>{head}</tr></thead><tbody>"]
    for event in timeline.events:
        cells = []
        for actor in timeline.actors:
            cell = ""
            if event.kind in (Kind.SEND, Kind.LOST):
                if actor == event.actor:
                    lost = " (lost: node down)" if event.kind is Kind.LOST else ""
                    cell = f"{event.text} → {event.to}{lost}"
                elif actor == event.to and event.kind is Kind.SEND:
                    cell = f"← {event.text}"
            elif actor == event.actor or (event.kind is Kind.NOTE and not event.actor):
                cell = event.text if actor == event.actor or actor == timeline.actors[0] else ""
            cells.append(f'<td class="{event.kind.value}">{html.escape(cell)}</td>')
        rows.append(f"<tr><td>{event.at_s * 1000:.0f}</td>{''.join(cells)}</tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 20px; } .about { max-width: 900px; }
.checks li.pass::marker { content: "✔ "; color: #1a7f37; }
.checks li.fail { color: #cf222e; font-weight: bold; } .checks li.fail::marker { content: "✖ "; }
table { border-collapse: collapse; font: 12px ui-monospace, monospace; margin-top: 12px; }
td, th { border: 1px solid #d0d7de; padding: 2px 8px; text-align: left; }
td.send { color: #1f6feb; } td.lost { color: #cf222e; } td.forced { color: #8250df; }
td.decide { color: #1a7f37; font-weight: bold; } td.crash { background: #ffebe9; }
td.restart { background: #dafbe1; }
td.work { color: #0969da; } td.log { color: #6e7781; }
td.note { font-style: italic; color: #7d4e00; }
.diagram { overflow-x: auto; border: 1px solid #d0d7de; padding: 8px; }
pre.mermaid { background: #f6f8fa; padding: 8px; }
"""


def render_html(
    title: str, about: str, timeline: Timeline, checks: Sequence[Check], mermaid: str
) -> str:
    """A page that reads without any network: SVG diagram, event table, Mermaid source."""
    items = "".join(
        f'<li class="{"pass" if ok else "fail"}">{html.escape(name)}'
        f"{': ' + html.escape(detail) if detail else ''}</li>"
        for name, ok, detail in checks
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="about">{html.escape(about)}</p>
<h2>Invariants</h2><ul class="checks">{items}</ul>
<h2>Sequence diagram</h2>
<p>Arrows are messages (dashed red: lost, the receiver was down); boxes on a lifeline are
local events: <b style="color:#8250df">forced</b> log writes (fsync),
<b style="color:#1a7f37">decisions</b>, timeouts, resource work; a dashed red lifeline is
a crashed node.</p>
<div class="diagram">{_svg(timeline)}</div>
<h2>Events</h2>
{_table(timeline)}
<h2>Mermaid source</h2>
<p>The same diagram for any Mermaid renderer (e.g. paste into a Markdown file).</p>
<pre class="mermaid">{html.escape(mermaid)}</pre>
</body></html>
"""
