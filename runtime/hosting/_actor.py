"""The actor wrapping a machine host: protocol messages in through a bounded mailbox."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from dtxn.actors import Actor, Rejected
from dtxn.protocols.messages import MESSAGE_TYPES, AtomicMessage, Message, Protocol, Timeouts
from dtxn.protocols.paxos_messages import PAXOS_MESSAGE_TYPES, PaxosMessage
from dtxn.runtime.hosting._host import MachineHost
from dtxn.runtime.hosting.coordinator import CoordinatorHost, TxnOutcome
from dtxn.runtime.hosting.sagas import SagaHost


class StartTxn(msgspec.Struct, frozen=True):
    """Local request to the coordinator actor: run this transaction, reply on `reply`."""

    txid: str
    protocol: Protocol
    participants: tuple[str, ...]
    payloads: tuple[Any, ...]
    timeouts: Timeouts
    cooperative: bool
    reply: Any  # asyncio.Future[TxnOutcome]; local only, never on the wire


class StartSaga(msgspec.Struct, frozen=True):
    """Local request to the saga actor: run this saga, reply on `reply`."""

    saga_id: str
    definition: Any  # SagaDefinition
    payload: Any
    reply: Any  # asyncio.Future[SagaOutcome]; local only, never on the wire


class HostActor(Actor[Any]):
    """Feeds protocol messages (and, for a coordinator, StartTxn) to its host."""

    def __init__(self, host: MachineHost) -> None:
        self.host = host

    async def receive(self, message: Any) -> None:
        self.receive_nowait(message)

    def receive_nowait(self, message: Any) -> None:
        # Hosts never await (see hosting.py), so the actor loop calls this
        # directly: no coroutine per protocol message.
        if isinstance(message, Message):
            self.host.deliver(message)
            return
        host = self.host
        if isinstance(message, StartSaga) and isinstance(host, SagaHost):
            host.begin(message.saga_id, message.definition, message.payload, message.reply)
            return
        if not isinstance(message, StartTxn) or not isinstance(host, CoordinatorHost):
            raise Rejected(f"{host.me} cannot start transactions; send StartTxn to a coordinator")
        reply: asyncio.Future[TxnOutcome] = message.reply
        host.begin(
            message.txid,
            message.protocol,
            message.participants,
            message.payloads,
            message.timeouts,
            message.cooperative,
            reply,
        )


# Set after the class statement because Actor.__init_subclass__ derives both
# from the type parameter: the host accepts protocol messages and StartTxn, and
# the wire decodes only the tagged union of protocol messages.
# Paxos Commit's messages are part of the same tagged union on the wire.
HostActor.accepts = (*MESSAGE_TYPES, *PAXOS_MESSAGE_TYPES, StartTxn, StartSaga)
HostActor.message_type = AtomicMessage | PaxosMessage
