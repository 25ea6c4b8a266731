"""Observability: trace event streams, trace hooks, txid on log lines, OpenTelemetry spans."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from dtxn.protocols.choose import Capabilities, Requirements
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Vote
from dtxn.runtime import Runtime, otel
from dtxn.runtime.observe import TraceEvent, TraceStream, TxidFilter
from nodes import Ledger
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

pytestmark = pytest.mark.anyio

PIDS = ("a@n", "b@n")


def runtime(*, b_votes: Vote = Vote.YES, telemetry: bool | None = False) -> Runtime:
    return Runtime(
        "n", resources={"a": Ledger(), "b": Ledger(b_votes)}, telemetry=telemetry,
        tracer_provider=_PROVIDER if telemetry is not False else None,
    )


async def test_a_trace_stream_sees_sends_receives_forces_and_the_decision() -> None:
    events: list[TraceEvent] = []
    async with runtime() as rt, rt.trace_events(max_buffered=1000) as stream:
        outcome = await rt.transact(dict.fromkeys(PIDS))
        with anyio.fail_after(5):
            async for event in stream:
                events.append(event)
                if event.what == "decide" and event.actor == "coordinator@n":
                    break
    mine = [e for e in events if e.txid == outcome.txid]
    whats = {e.what for e in mine}
    assert {"send", "receive", "force", "forced", "decide"} <= whats
    assert all(e.node == "n" and isinstance(e.detail, str) for e in mine)
    assert any(e.what == "send" and e.detail.startswith("prepare(") for e in mine)
    assert [e.time_s for e in events] == sorted(e.time_s for e in events)


async def test_a_full_trace_stream_drops_the_oldest_events_and_counts_them() -> None:
    async with runtime() as rt, rt.trace_events(max_buffered=3) as stream:
        await rt.transact(dict.fromkeys(PIDS))
        assert stream.dropped > 0
        kept = [stream.receive_nowait() for _ in range(3)]
        assert stream.receive_nowait() is None
    assert all(event is not None for event in kept)


async def test_a_trace_stream_ends_when_its_block_exits_and_when_the_runtime_stops() -> None:
    async with runtime() as rt:
        async with rt.trace_events() as stream:
            pass
        assert [e async for e in stream] == []
        async with rt.trace_events() as other:
            pass
    assert other.closed
    assert not rt.tracing


def test_max_buffered_must_be_positive() -> None:
    async def main() -> None:
        async with runtime() as rt:
            with pytest.raises(ConfigError, match="max_buffered"):
                async with rt.trace_events(max_buffered=0):
                    pass

    anyio.run(main)


async def test_off_trace_unsubscribes_a_hook_and_refuses_an_unknown_one() -> None:
    seen: list[str] = []

    def hook(txid: str, actor: str, what: str, detail: Any) -> None:
        seen.append(what)

    async with runtime() as rt:
        rt.on_trace(hook)
        await rt.transact(dict.fromkeys(PIDS))
        count = len(seen)
        assert count > 0
        rt.off_trace(hook)
        assert not rt.tracing
        await rt.transact(dict.fromkeys(PIDS))
        assert len(seen) == count
        with pytest.raises(ConfigError, match="not a trace hook"):
            rt.off_trace(hook)


def test_trace_stream_push_after_close_is_ignored() -> None:
    stream = TraceStream(2)
    stream.close()
    stream.push(TraceEvent(0.0, "n", "t", "a@n", "log", "x"))
    assert stream.receive_nowait() is None


async def test_log_lines_about_a_transaction_carry_its_txid() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TxidFilter())
    handler.setFormatter(logging.Formatter("%(txid)s %(name)s %(message)s"))
    logger = logging.getLogger("dtxn")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with runtime() as rt:
            outcome = await rt.transact(
                dict.fromkeys(PIDS), protocol="auto",
                requirements=Requirements(consistency="strong"),
                capabilities=dict.fromkeys(PIDS, Capabilities(prepare=True)),
            )
        logging.getLogger("dtxn.other").info("no transaction here")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = out.getvalue().splitlines()
    assert any(line.startswith(f"{outcome.txid} dtxn.runtime") for line in lines)
    assert "- dtxn.other no transaction here" in lines


# -- OpenTelemetry -------------------------------------------------------------------

# A provider of the tests' own, never the global one: the global provider
# would make every later runtime in this process record spans.
_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    _EXPORTER.clear()
    return _EXPORTER


@pytest.mark.parametrize("b_votes", [Vote.YES, Vote.NO])
async def test_a_transaction_is_a_span_with_phase_children_and_named_attributes(
    exporter: InMemorySpanExporter, b_votes: Vote
) -> None:
    async with runtime(b_votes=b_votes, telemetry=True) as rt:
        outcome = await rt.transact(dict.fromkeys(PIDS), protocol="2pc")
        assert rt._otel is not None and not rt._otel.txns
        assert not rt.tracing
    spans = exporter.get_finished_spans()
    [root] = [s for s in spans if s.name == "dtxn.transaction"]
    assert root.attributes is not None
    assert root.attributes["dtxn.txid"] == outcome.txid
    assert root.attributes["dtxn.protocol"] == "2pc"
    assert root.attributes["dtxn.outcome"] == outcome.outcome.value
    children = [s for s in spans if s.parent is not None and s.parent.span_id ==
                root.context.span_id]
    names = {s.name for s in children}
    assert "dtxn.prepare" in names
    [prepare] = [s for s in children if s.name == "dtxn.prepare"]
    votes = [e for e in prepare.events if e.name == "dtxn.vote"]
    assert {e.attributes["dtxn.vote"] for e in votes if e.attributes} >= {b_votes.value}
    if outcome.committed:
        assert {"dtxn.decision", "dtxn.force"} <= names
        forced = [s for s in children if s.name == "dtxn.force"]
        assert any(s.attributes and s.attributes["dtxn.record"] == "CoordCommitted"
                   for s in forced)
    decisions = [e for s in children for e in s.events if e.name == "dtxn.decide"]
    assert decisions


async def test_auto_puts_the_rule_on_the_span(exporter: InMemorySpanExporter) -> None:
    async with runtime(telemetry=True) as rt:
        await rt.transact(
            dict.fromkeys(PIDS), protocol="auto",
            requirements=Requirements(consistency="strong"),
            capabilities=dict.fromkeys(PIDS, Capabilities(prepare=True)),
        )
    [root] = [s for s in exporter.get_finished_spans() if s.name == "dtxn.transaction"]
    assert root.attributes is not None
    assert (root.attributes["dtxn.protocol"], root.attributes["dtxn.rule"]) == ("2pc", 3)


async def test_telemetry_false_makes_no_spans(exporter: InMemorySpanExporter) -> None:
    async with runtime(telemetry=False) as rt:
        await rt.transact(dict.fromkeys(PIDS))
        assert rt._otel is None
    assert exporter.get_finished_spans() == ()


async def test_the_api_without_an_sdk_provider_starts_no_span_per_transaction(
    monkeypatch: pytest.MonkeyPatch, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry import trace

    noop = otel.load(trace.NoOpTracerProvider())
    assert noop is not None and not noop.live()
    live = otel.load(_PROVIDER)
    assert live is not None and live.live()
    # The global provider: the API's proxy until an SDK provider is set.
    current: list[trace.TracerProvider] = [trace.ProxyTracerProvider()]
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: current[0])
    follows = otel.load()
    assert follows is not None and not follows.live()
    async with Runtime("n", resources={"a": Ledger()}, telemetry=True) as rt:
        assert rt._otel is not None

        def begin(*args: object) -> None:
            raise AssertionError("no span may be started without an SDK provider")

        monkeypatch.setattr(rt._otel, "begin", begin)
        assert (await rt.transact({"a@n": None})).committed
        assert not rt._otel.txns and not rt.tracing
    current[0] = _PROVIDER  # an SDK provider set later is picked up
    assert follows.live()


def test_without_opentelemetry_telemetry_is_inert_or_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry makes `import opentelemetry` raise ImportError.
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert otel.load() is None
    rt = runtime(telemetry=None)
    assert rt._otel is None and not rt.tracing
    with pytest.raises(ConfigError, match="opentelemetry-api"):
        runtime(telemetry=True)

    async def main() -> None:
        async with rt:
            assert (await rt.transact(dict.fromkeys(PIDS))).committed

    anyio.run(main)


def test_the_getting_started_page_shows_the_web_service_example_verbatim() -> None:
    root = Path(__file__).resolve().parents[2]
    example = (root / "examples" / "web_service.py").read_text()
    assert f"```python\n{example}```" in (root / "docs" / "getting-started.md").read_text()


def test_the_web_service_example_runs_and_exits(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, str(root / "examples" / "web_service.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "'outcome': 'committed'" in result.stdout
    assert "'outcome': 'aborted'" in result.stdout
