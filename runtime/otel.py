"""OpenTelemetry spans for the transactions a node coordinates (optional).

`load()` returns a `Telemetry` when `opentelemetry-api` is importable and
None otherwise; the runtime then keeps a None and checks nothing else, so a
node without the package pays one `is not None` test per transaction.

Per transaction coordinated here (from `transact()` to its outcome):

- a root span `dtxn.transaction` with `dtxn.txid`, `dtxn.node`,
  `dtxn.protocol`, `dtxn.participants`, and at the end `dtxn.outcome`
  (and `dtxn.reason`, and `dtxn.rule` for `protocol="auto"`);
- a child span `dtxn.prepare` from the start to the coordinator's first
  forced decision record (or its decision, for an abort), with one event
  `dtxn.vote` per vote received (`dtxn.sender`, `dtxn.vote`);
- a child span `dtxn.decision` from there to the outcome, with a
  `dtxn.decide` event per process on this node that decides;
- a child span `dtxn.force` around every forced record written on this node
  for the transaction (`dtxn.actor`, `dtxn.record`).

Only spans that are recording are tracked: with the API but no SDK
configured, the spans are no-ops and the runtime does no per-event work.
Nor per-transaction work: `Telemetry.live()` tells the runtime whether the
provider can record at all (not the API's proxy before an SDK provider is
set, nor its no-op provider), looked up again only when the global provider
changes, so `transact` does not build and end a no-op root span each time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtxn.protocols.messages import VoteCast

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = ["Telemetry", "load"]

INSTRUMENTATION = "dtxn"


def load(provider: TracerProvider | None = None) -> Telemetry | None:
    """A `Telemetry` on `provider` (default: the global one), or None without opentelemetry-api."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return Telemetry(trace.get_tracer(INSTRUMENTATION, tracer_provider=provider), provider)


class _Txn:
    __slots__ = ("decision", "forces", "phase", "root")

    def __init__(self, root: Span, phase: Span) -> None:
        self.root = root
        self.phase = phase
        self.decision: Span | None = None
        self.forces: dict[str, Span] = {}


class Telemetry:
    """Spans of the transactions in flight at one coordinator."""

    def __init__(self, tracer: Tracer, provider: TracerProvider | None = None) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        #: Transactions with a recording root span, by txid.
        self.txns: dict[str, _Txn] = {}
        self._inert = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
        # A given provider other than the API's proxy is fixed; otherwise the
        # spans go to whatever the global provider is when they start.
        self._follows_global = provider is None or isinstance(provider, trace.ProxyTracerProvider)
        self._get_global = trace.get_tracer_provider
        self._provider: object = provider
        self._live = provider is not None and not isinstance(provider, self._inert)

    def live(self) -> bool:
        """Whether spans can record: False for the API alone (no SDK provider set)."""
        if self._follows_global:
            provider = self._get_global()
            if provider is not self._provider:
                self._provider = provider
                self._live = not isinstance(provider, self._inert)
        return self._live

    def _child(self, parent: Span, name: str, attributes: dict[str, Any]) -> Span:
        from opentelemetry import trace

        context = trace.set_span_in_context(parent)
        return self._tracer.start_span(name, context=context, attributes=attributes)

    def begin(
        self, txid: str, node: str, protocol: str, participants: tuple[str, ...], rule: int | None
    ) -> None:
        attributes: dict[str, Any] = {
            "dtxn.txid": txid,
            "dtxn.node": node,
            "dtxn.protocol": protocol,
            "dtxn.participants": list(participants),
        }
        if rule is not None:
            attributes["dtxn.rule"] = rule
        root = self._tracer.start_span("dtxn.transaction", attributes=attributes)
        if not root.is_recording():
            root.end()
            return
        phase = self._child(root, "dtxn.prepare", {"dtxn.txid": txid})
        self.txns[txid] = _Txn(root, phase)

    def trace(self, txid: str, actor: str, what: str, detail: Any) -> None:
        txn = self.txns.get(txid)
        if txn is None:
            return
        coordinating = actor.startswith("coordinator@")
        if what == "receive" and type(detail) is VoteCast:
            txn.phase.add_event(
                "dtxn.vote", {"dtxn.sender": detail.sender, "dtxn.vote": detail.vote.value}
            )
        elif what == "force":
            record = type(detail).__name__
            if coordinating and txn.decision is None:
                self._decided(txid, txn)
            span = self._child(
                txn.root, "dtxn.force", {"dtxn.actor": actor, "dtxn.record": record}
            )
            if actor in txn.forces:
                txn.forces[actor].end()
            txn.forces[actor] = span
        elif what == "forced":
            if actor in txn.forces:
                txn.forces.pop(actor).end()
        elif what == "decide":
            if coordinating and txn.decision is None:
                self._decided(txid, txn)
            target = txn.decision if txn.decision is not None else txn.phase
            target.add_event("dtxn.decide", {"dtxn.actor": actor, "dtxn.outcome": str(detail)})

    def _decided(self, txid: str, txn: _Txn) -> None:
        txn.phase.end()
        txn.decision = self._child(txn.root, "dtxn.decision", {"dtxn.txid": txid})

    def end(self, txid: str, outcome: str | None, reason: str, error: BaseException | None) -> None:
        txn = self.txns.pop(txid, None)
        if txn is None:
            return
        from opentelemetry.trace import Status, StatusCode

        for span in txn.forces.values():
            span.end()
        if txn.decision is None:
            txn.phase.end()
        else:
            txn.decision.end()
        root = txn.root
        if outcome is not None:
            root.set_attribute("dtxn.outcome", outcome)
        if reason:
            root.set_attribute("dtxn.reason", reason)
        if error is not None:
            root.record_exception(error)
            root.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
        root.end()
