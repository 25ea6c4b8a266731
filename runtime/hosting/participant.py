"""The participant host of one `Resource`: runs participant machines and calls the resource."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dtxn.protocols.effects import (
    Effect,
    InvokeResource,
    LocalVoteCast,
    Outcome,
    ResourceApplied,
    ResourceOp,
)
from dtxn.protocols.messages import Message, Prepare, Protocol, Vote
from dtxn.protocols.paxos import PaxosParticipant
from dtxn.protocols.paxos_messages import PaxosPrepare
from dtxn.protocols.threepc import ThreePCParticipant
from dtxn.protocols.twopc import (
    TwoPCParticipant,
    answer_for_finished,
    answer_for_unknown_participant,
)
from dtxn.runtime.hosting._host import HostServices, MachineHost
from dtxn.runtime.hosting._workers import WorkerPool
from dtxn.runtime.resource import Resource

log = logging.getLogger("dtxn.txn")

Sleep = Callable[[float], Coroutine[Any, Any, None]]


class ParticipantHost(MachineHost):
    role = "participant"

    def __init__(
        self,
        services: HostServices,
        name: str,
        node: str,
        resource: Resource,
        pool: WorkerPool,
        sleep: Sleep,
    ) -> None:
        super().__init__(services, name, node)
        self.resource = resource
        self.pool = pool
        self._sleep = sleep
        # Bound once: a bound method is an object too.
        self._invoke_bound = self._invoke
        # The runtime's `machine_factory` (simulator mutation tests), if any.
        self._wrap: Callable[[Any], Any] | None = getattr(services, "machine_factory", None)

    def new_machine(
        self, txid: str, protocol: Protocol
    ) -> TwoPCParticipant | ThreePCParticipant | PaxosParticipant:
        machine: TwoPCParticipant | ThreePCParticipant | PaxosParticipant
        if protocol is Protocol.TWO_PC:
            machine = TwoPCParticipant(txid, self.me)
        elif protocol is Protocol.PAXOS:
            machine = PaxosParticipant(txid, self.me)
        else:
            machine = ThreePCParticipant(txid, self.me)
        if self._wrap is not None:
            machine = self._wrap(machine)
        return machine

    def deliver(self, message: Message) -> None:
        txid = message.txid
        txn = self.txns.get(txid)
        if txn is None and txid not in self.finished:
            if isinstance(message, Prepare):
                self.add(txid, self.new_machine(txid, message.protocol))
            elif isinstance(message, PaxosPrepare):
                self.add(txid, self.new_machine(txid, Protocol.PAXOS))
            txn = self.txns.get(txid)
        self._deliver(txid, txn, message)

    def answer_unknown(self, message: Message) -> list[Effect] | None:
        outcome = self.finished.get(message.txid)
        if outcome is not None:
            return answer_for_finished(message.txid, self.me, outcome, message)
        return answer_for_unknown_participant(message.txid, self.me, message)

    def in_doubt(self) -> int:
        count = 0
        for txn in self.txns.values():
            machine = txn.machine
            if machine is not None and getattr(machine, "in_doubt", False):
                count += 1
        return count

    def on_invoke(self, txid: str, effect: InvokeResource) -> None:
        # A function and its arguments rather than a lambda: a lambda over
        # them costs a function, a closure and a cell per name, all of which
        # the garbage collector scans while the call waits for a worker.
        self.pool.submit_call(self._invoke_bound, txid, effect)

    def _invoke(self, txid: str, effect: InvokeResource) -> Coroutine[Any, Any, None]:
        if effect.op is ResourceOp.PREPARE:
            return self._prepare(txid, effect.payload)
        return self._apply(txid, effect.op)

    async def _prepare(self, txid: str, payload: Any) -> None:
        try:
            vote = await self.resource.prepare(txid, payload)
        except Exception as exc:  # noqa: BLE001 - a failed prepare is a NO vote, reported
            log.warning("txid=%s %s: prepare raised %r; voting no", txid, self.me, exc)
            self.dispatch(txid, LocalVoteCast(Vote.NO, f"prepare raised {exc!r}"))
            return
        if not isinstance(vote, Vote):
            reason = f"prepare returned {vote!r}, not a Vote"
            log.warning("txid=%s %s: %s; voting no", txid, self.me, reason)
            self.dispatch(txid, LocalVoteCast(Vote.NO, reason))
            return
        self.dispatch(txid, LocalVoteCast(vote))

    async def _apply(self, txid: str, op: ResourceOp) -> None:
        # The decision is final, so it is applied until the resource accepts it.
        delay_s = 0.01
        while True:
            try:
                if op is ResourceOp.COMMIT:
                    await self.resource.commit(txid)
                else:
                    await self.resource.abort(txid)
            except Exception as exc:  # noqa: BLE001 - logged, counted and retried
                self.services.counters.resource_retries += 1
                log.error(
                    "txid=%s %s: %s raised %r; retrying in %.2fs",
                    txid,
                    self.me,
                    op.value,
                    exc,
                    delay_s,
                )
                await self._sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
                continue
            break
        self.dispatch(txid, ResourceApplied(op))

    def on_decide(self, txid: str, outcome: Outcome, reason: str) -> None:
        return None

