"""The acceptor host of a node: one Paxos Commit acceptor per transaction, for any coordinator.

Every runtime hosts one (actor "acceptor"); which nodes' acceptors a Paxos
Commit transaction uses is chosen by its coordinator (`dtxn.runtime.caps`).
An acceptor is created by the first phase 1a or 2a of a transaction, forces
its state before each answer (the machine's `ForceLog` parks the answer
until durable) and drops its records once every participant has reported
the outcome applied (`PaxosApplied`).
"""

from __future__ import annotations

from dtxn.protocols.effects import Effect, Ignored, Outcome, Send
from dtxn.protocols.messages import Decision, Message
from dtxn.protocols.paxos import PaxosAcceptor
from dtxn.protocols.paxos_messages import Phase1a, Phase2a
from dtxn.runtime.hosting._host import HostServices, MachineHost

ACCEPTOR_ACTOR = "acceptor"


class AcceptorHost(MachineHost):
    role = "acceptor"

    def __init__(self, services: HostServices, node: str) -> None:
        super().__init__(services, ACCEPTOR_ACTOR, node)

    def new_machine(self, txid: str) -> PaxosAcceptor:
        return PaxosAcceptor(txid, self.me)

    def deliver(self, message: Message) -> None:
        txid = message.txid
        txn = self.txns.get(txid)
        if txn is None and isinstance(message, Phase1a | Phase2a) and txid not in self.finished:
            self.add(txid, self.new_machine(txid))
            txn = self.txns.get(txid)
        self._deliver(txid, txn, message)

    def answer_unknown(self, message: Message) -> list[Effect] | None:
        outcome = self.finished.get(message.txid)
        leader_ballot = isinstance(message, Phase1a) or (
            isinstance(message, Phase2a) and message.ballot.round > 0
        )
        if outcome is not None and leader_ballot:
            # A leader still balloting for a transaction every participant
            # applied: what they applied, not a blank acceptor's promise.
            committed = outcome is Outcome.COMMITTED
            return [Send(message.sender, Decision(message.txid, self.me, committed))]
        # A `PaxosApplied` after the records were dropped, or a stray message.
        return [Ignored(f"{type(message).__name__} for {message.txid!r}, not held by {self.me}")]
