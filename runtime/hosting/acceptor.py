"""The acceptor host of a node: one Paxos Commit acceptor per transaction, for any coordinator.

Every runtime hosts one (actor "acceptor"); which nodes' acceptors a Paxos
Commit transaction uses is chosen by its coordinator (`dtxn.runtime.caps`).
An acceptor is created by the first phase 1a or 2a of a transaction, forces
its state before each answer (the machine's `ForceLog` parks the answer
until durable) and drops its records once every participant has reported
the outcome applied (`PaxosApplied`).
"""

from __future__ import annotations

from dtxn.protocols.effects import Effect, Ignored
from dtxn.protocols.messages import Message
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
        if txn is None and isinstance(message, Phase1a | Phase2a):
            self.add(txid, self.new_machine(txid))
            txn = self.txns.get(txid)
        self._deliver(txid, txn, message)

    def answer_unknown(self, message: Message) -> list[Effect] | None:
        # A `PaxosApplied` after the records were dropped, or a stray message.
        return [Ignored(f"{type(message).__name__} for {message.txid!r}, not held by {self.me}")]
