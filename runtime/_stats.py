"""Transaction counters of one node and their immutable snapshot."""

from __future__ import annotations

import msgspec


class Counters:
    """Mutable counters, bumped on hot paths (plain attributes: cheap)."""

    __slots__ = (
        "aborted",
        "committed",
        "dropped",
        "forces",
        "ignored",
        "messages_received",
        "messages_sent",
        "presumptions_refused",
        "resource_retries",
        "started",
        "stuck",
        "takeovers",
        "unknown_dropped",
        "violations",
    )

    def __init__(self) -> None:
        self.started = 0
        self.committed = 0
        self.aborted = 0
        self.messages_sent = 0
        self.messages_received = 0
        self.dropped = 0
        self.forces = 0
        self.ignored = 0
        self.violations = 0
        self.resource_retries = 0
        self.stuck = 0
        self.unknown_dropped = 0
        self.presumptions_refused = 0
        self.takeovers = 0


class TxnStatistics(msgspec.Struct, frozen=True):
    """Snapshot of a node's transaction counters.

    committed/aborted count outcomes decided by this node's coordinator and
    sagas it orchestrates (completed / compensated); stuck counts sagas that
    got stuck on a step an operator must resume or force;
    in_doubt counts participants here that voted yes and await a decision.
    """

    started: int
    committed: int
    aborted: int
    in_doubt: int
    active: int
    messages_sent: int
    messages_received: int
    messages_dropped: int
    forces: int
    ignored: int
    violations: int
    resource_retries: int
    stuck: int
    wal_commits: int
    wal_records: int
    wal_largest_batch: int
    wal_mean_batch: float
    # Messages about transactions not held here, dropped over their sender's budget.
    unknown_dropped: int = 0
    # Inquiries about unknown transactions not presumed aborted, because this
    # node's log may have lost records (`Runtime.log_may_be_short`).
    presumptions_refused: int = 0
    # Why this node's log may have lost forced records, or None.
    log_may_be_short: str | None = None
    # Paxos Commit transactions this node's coordinator took over as a backup leader.
    takeovers: int = 0
