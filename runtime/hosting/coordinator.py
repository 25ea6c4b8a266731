"""The coordinator host of a node: starts transactions and reports their outcomes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from dtxn.protocols.effects import Begin, Effect, Outcome
from dtxn.protocols.messages import DecisionRequest, Message, Protocol, Timeouts, VoteCast
from dtxn.protocols.threepc import ThreePCCoordinator
from dtxn.protocols.twopc import (
    TwoPCCoordinator,
    answer_for_finished,
    answer_for_unknown_coordinator,
)
from dtxn.runtime.hosting._host import HostServices, MachineHost

log = logging.getLogger("dtxn.runtime")

COORDINATOR_ACTOR = "coordinator"


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
    ) -> None:
        machine: TwoPCCoordinator | ThreePCCoordinator
        if protocol is Protocol.TWO_PC:
            machine = TwoPCCoordinator(txid, self.me, timeouts, cooperative=cooperative)
        else:
            machine = ThreePCCoordinator(txid, self.me, timeouts)
        self.add(txid, machine)
        if reply is not None:
            self.waiting[txid] = reply
        self.services.counters.started += 1
        self.dispatch(txid, Begin(participants, payloads))

    def answer_unknown(self, message: Message) -> list[Effect] | None:
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

    def on_decide(self, txid: str, outcome: Outcome, reason: str) -> None:
        counters = self.services.counters
        if outcome is Outcome.COMMITTED:
            counters.committed += 1
        else:
            counters.aborted += 1
        reply = self.waiting.pop(txid, None)
        if reply is not None and not reply.done():
            reply.set_result(TxnOutcome(txid, outcome, reason))
