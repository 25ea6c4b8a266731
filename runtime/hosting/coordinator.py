"""The coordinator host of a node: starts transactions and reports their outcomes.

For Paxos Commit it hosts the leader: the transaction's own (started by
`transact`), or a backup that takes over a transaction it does not hold when
an in-doubt participant asks it to (`dtxn.protocols.paxos.leader_for_unknown`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from dtxn.protocols.effects import Begin, Effect, Outcome
from dtxn.protocols.messages import DecisionRequest, Message, Protocol, Timeouts, VoteCast
from dtxn.protocols.paxos import (
    PaxosLeader,
    TakeOver,
    answer_for_finished_leader,
    answer_for_unknown_leader,
    leader_for_unknown,
)
from dtxn.protocols.paxos_messages import Nack as PaxosNack
from dtxn.protocols.paxos_messages import PaxosDecisionRequest, Phase1b, Phase2b
from dtxn.protocols.threepc import ThreePCCoordinator
from dtxn.protocols.twopc import (
    TwoPCCoordinator,
    answer_for_finished,
    answer_for_unknown_coordinator,
)
from dtxn.runtime.hosting._host import HostServices, MachineHost

log = logging.getLogger("dtxn.runtime")

COORDINATOR_ACTOR = "coordinator"

# What a Paxos leader is sent; about a transaction not held, never presumed on.
_LEADER_MESSAGES = (PaxosDecisionRequest, Phase1b, Phase2b, PaxosNack)


class TxnOutcome(msgspec.Struct, frozen=True, gc=False):
    """What a caller of `Runtime.transact` gets back (str and enum fields: no cycles, gc=False)."""

    txid: str
    outcome: Outcome
    reason: str = ""

    @property
    def committed(self) -> bool:
        return self.outcome is Outcome.COMMITTED


class CoordinatorHost(MachineHost):
    role = "coordinator"

    def __init__(self, services: HostServices, node: str) -> None:
        super().__init__(services, COORDINATOR_ACTOR, node)
        self.waiting: dict[str, asyncio.Future[TxnOutcome]] = {}

    def begin(
        self,
        txid: str,
        protocol: Protocol,
        participants: tuple[str, ...],
        payloads: tuple[Any, ...],
        timeouts: Timeouts,
        cooperative: bool,
        reply: asyncio.Future[TxnOutcome] | None,
        *,
        acceptors: tuple[str, ...] = (),
        leaders: tuple[str, ...] = (),
    ) -> None:
        machine: TwoPCCoordinator | ThreePCCoordinator | PaxosLeader
        if protocol is Protocol.TWO_PC:
            machine = TwoPCCoordinator(txid, self.me, timeouts, cooperative=cooperative)
        elif protocol is Protocol.PAXOS:
            machine = PaxosLeader(txid, self.me, acceptors, backups=leaders, timeouts=timeouts)
        else:
            machine = ThreePCCoordinator(txid, self.me, timeouts)
        self.add(txid, machine)
        if reply is not None:
            self.waiting[txid] = reply
        self.services.counters.started += 1
        self.dispatch(txid, Begin(participants, payloads))

    def answer_unknown(self, message: Message) -> list[Effect] | None:
        if isinstance(message, _LEADER_MESSAGES):
            return self._answer_unknown_paxos(message)
        outcome = self.finished.get(message.txid)
        if outcome is not None:
            return answer_for_finished(message.txid, self.me, outcome, message)
        short = self.services.log_may_be_short
        if short is not None and isinstance(message, DecisionRequest | VoteCast):
            # Presumed abort is only sound on a log that kept every forced
            # record; this one may not have, so "unknown" may be a lost commit.
            self.services.counters.presumptions_refused += 1
            log.error(
                "txid=%s %s: %s asks about a transaction this coordinator does not know, "
                "and its log may be short (%s): NOT presuming abort; it stays in doubt "
                "until an operator resolves it (docs/wal.md)",
                message.txid, self.me, message.sender, short,
            )
        return answer_for_unknown_coordinator(
            message.txid, self.me, message, presume=short is None
        )

    def _answer_unknown_paxos(self, message: Message) -> list[Effect] | None:
        txid = message.txid
        outcome = self.finished.get(txid)
        if outcome is not None:
            return answer_for_finished_leader(txid, self.me, outcome, message)
        leader = leader_for_unknown(txid, self.me, message)
        if leader is None:
            return answer_for_unknown_leader(txid, self.me, message)
        assert isinstance(message, PaxosDecisionRequest)
        log.warning(
            "txid=%s %s: taking over Paxos Commit transaction (asked by %s, attempt %d): "
            "phase 1 at a ballot of its own",
            txid, self.me, message.sender, message.attempt, extra={"txid": txid},
        )
        self.services.counters.takeovers += 1
        self.add(txid, leader)
        self.dispatch(txid, TakeOver(message.participants))
        self._deliver(txid, self.txns.get(txid), message)
        return None

    def on_decide(self, txid: str, outcome: Outcome, reason: str) -> None:
        counters = self.services.counters
        if outcome is Outcome.COMMITTED:
            counters.committed += 1
        else:
            counters.aborted += 1
        reply = self.waiting.pop(txid, None)
        if reply is not None and not reply.done():
            reply.set_result(TxnOutcome(txid, outcome, reason))
