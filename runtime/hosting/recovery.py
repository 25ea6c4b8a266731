"""Recovery: rebuild every unfinished transaction of a node from its WAL.

Runs before the node accepts messages, so that no message about a recovered
transaction is answered by presumption while its machine is being rebuilt.
Replaying is two-step: `rebuild` feeds each (actor, txid) group its records
(RecordRecovered) without side effects; after the transport is attached,
`resume` sends RecoveryDone so each machine re-sends decisions or asks for them.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec
from dtxn.protocols.effects import Outcome, RecordRecovered, RecoveryDone
from dtxn.protocols.errors import ConfigError, LogCorruptError
from dtxn.protocols.messages import Protocol
from dtxn.protocols.paxos import PaxosAcceptor, PaxosLeader, PaxosParticipant
from dtxn.protocols.paxos_records import (
    PAXOS_RECORD_TYPES,
    PaxosLeaderBallot,
    PaxosLeaderEnded,
    PaxosPartEnded,
)
from dtxn.protocols.records import (
    CoordAborted,
    CoordChose,
    CoordEnded,
    PartAborted,
    PartCommitted,
    Record,
)
from dtxn.protocols.saga.records import SagaFinishedRecord, SagaStarted
from dtxn.protocols.threepc import ThreePCCoordinator, ThreePCParticipant
from dtxn.protocols.twopc import TwoPCCoordinator, TwoPCParticipant
from dtxn.runtime.hosting._host import LOG_DECODER, LogEntry, MachineHost
from dtxn.runtime.hosting.acceptor import AcceptorHost
from dtxn.runtime.hosting.coordinator import CoordinatorHost
from dtxn.runtime.hosting.participant import ParticipantHost
from dtxn.runtime.hosting.sagas import SagaHost, SagaOutcome
from dtxn.runtime.wal import WalEntry

Pending = list[tuple[MachineHost, str]]

# The records that end an atomic-commit transaction at one process (what its
# machine keeps as a tombstone when it compacts): nothing after them matters.
_ENDS = (CoordEnded, CoordAborted, PartCommitted, PartAborted, PaxosPartEnded, PaxosLeaderEnded)


def decode_entries(entries: list[WalEntry], where: str) -> list[tuple[WalEntry, LogEntry]]:
    decoded = []
    for entry in entries:
        try:
            decoded.append((entry, LOG_DECODER.decode(entry.data)))
        except msgspec.DecodeError as exc:
            raise LogCorruptError(
                f"WAL {where}: record at LSN {entry.lsn} (txid {entry.txid!r}, kind "
                f"{entry.kind!r}) is not a dtxn log entry: {exc}"
            ) from exc
    return decoded


def rebuild(entries: list[WalEntry], hosts: Mapping[str, MachineHost], where: str) -> Pending:
    """Replay records into fresh machines; return the (host, txid) pairs to resume."""
    groups: dict[tuple[str, str], list[Record]] = {}
    # Each (actor, txid)'s LSNs, CoordChose included: compaction drops exactly
    # these, never by txid (the node's hosts share the log and the txids).
    lsns: dict[tuple[str, str], list[int]] = {}
    chose: set[tuple[str, str]] = set()
    for entry, log_entry in decode_entries(entries, where):
        key = (log_entry.actor, entry.txid)
        lsns.setdefault(key, []).append(entry.lsn)
        if isinstance(log_entry.record, CoordChose):
            # Informational (which protocol `auto` picked); no machine replays it.
            chose.add(key)
            continue
        groups.setdefault(key, []).append(log_entry.record)
    pending: Pending = []
    for actor, txid in sorted(chose - groups.keys()):
        # Chose a protocol, then crashed before any decision record: presumed
        # abort. The choice is kept as the tombstone.
        host = hosts.get(actor)
        if host is not None:
            host.compact(txid, lsns[(actor, txid)], keep=True)
            host.remember(txid, Outcome.ABORTED)
    for (actor, txid), records in groups.items():
        host = hosts.get(actor)
        if host is None:
            raise ConfigError(
                f"WAL {where} holds records of {actor!r} for transaction {txid!r}, but this "
                f"runtime hosts no such actor (known: {', '.join(sorted(hosts))}); "
                "configure that resource again before starting"
            )
        protocol = Protocol.TWO_PC
        if isinstance(records[0], PAXOS_RECORD_TYPES):
            protocol = Protocol.PAXOS
        for record in records:
            found = getattr(record, "protocol", None)
            if isinstance(found, Protocol):
                protocol = found
                break
        if isinstance(host, SagaHost):
            last = records[-1]
            if isinstance(last, SagaFinishedRecord):
                # Ended: only its tombstone is needed (a log written before
                # sagas compacted themselves is compacted now).
                host.compact(txid, lsns[(actor, txid)], keep=True)
                host.remember_ended(SagaOutcome(txid, last.state, last.reason))
                continue
            first = records[0]
            if not isinstance(first, SagaStarted):
                raise LogCorruptError(
                    f"WAL {where}: saga {txid!r} starts with {type(first).__name__}, "
                    "not a saga-started record"
                )
            host.add(txid, host.machine_for(txid, first.definition, first.version))
            host.txns[txid].lsns = lsns[(actor, txid)]
            for record in records:
                host.dispatch(txid, RecordRecovered(record))
            pending.append((host, txid))
            continue
        machine: (
            TwoPCCoordinator
            | ThreePCCoordinator
            | TwoPCParticipant
            | ThreePCParticipant
            | PaxosParticipant
            | PaxosLeader
            | PaxosAcceptor
        )
        if isinstance(host, AcceptorHost):
            machine = host.new_machine(txid)
        elif isinstance(host, CoordinatorHost):
            if protocol is Protocol.PAXOS:
                first = records[0]
                if not isinstance(first, PaxosLeaderBallot):
                    raise LogCorruptError(
                        f"WAL {where}: Paxos leader of {txid!r} starts with "
                        f"{type(first).__name__}, not a ballot record"
                    )
                machine = PaxosLeader(
                    txid, host.me, first.acceptors, backups=first.leaders, timeouts=first.timeouts
                )
            elif protocol is Protocol.TWO_PC:
                machine = TwoPCCoordinator(txid, host.me)
            else:
                machine = ThreePCCoordinator(txid, host.me)
        else:
            assert isinstance(host, ParticipantHost)
            machine = host.new_machine(txid, protocol)
        host.add(txid, machine)
        if isinstance(records[-1], _ENDS):
            # Ended (maybe before its records were compacted: a crash before
            # the drop's commit, or a log from before compaction): compact now.
            host.compact(txid, lsns[(actor, txid)], keep=True)
        else:
            host.txns[txid].lsns = lsns[(actor, txid)]
        for record in records:
            host.dispatch(txid, RecordRecovered(record))
        pending.append((host, txid))
    return pending


def resume(pending: Pending) -> None:
    for host, txid in pending:
        host.dispatch(txid, RecoveryDone())
