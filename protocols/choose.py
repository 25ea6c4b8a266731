"""Choosing 2PC, 3PC, Paxos Commit or a saga from what the caller needs and can do.

Pure and deterministic: `choose_protocol(requirements, participants)` walks
the decision table below (documented, with the trade-offs, in
docs/choosing.md) and returns the first row that applies, as a `Choice`
carrying the protocol, the row number and a sentence saying why. A
requirement that no protocol can meet with these participants raises
`NoProtocolFits`, naming the constraint and the participants that lack a
capability; the chooser never quietly settles for a weaker guarantee.

    row  consistency        must not block  partitions  participants                 result
    1    immediate/strong   yes             yes         all prepare                  paxos
    2    immediate/strong   any             any         one cannot prepare           error
    3    immediate/strong   no              any         all prepare                  2pc
    4    immediate/strong   yes             no          all prepare and pre-commit   3pc
    5    immediate/strong   yes             no          one cannot pre-commit        paxos
    6    eventual           any             any         all compensate               saga
    7    eventual           any             any         one cannot compensate        error

Row numbers are stable (the runtime writes them to the WAL with the choice):
rows 1 and 5 were errors before Paxos Commit and keep their numbers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Literal

import msgspec
from dtxn.protocols.errors import ConfigError

__all__ = [
    "Capabilities",
    "Choice",
    "Consistency",
    "NoProtocolFits",
    "Requirements",
    "choose_protocol",
]

ChosenProtocol = Literal["2pc", "3pc", "paxos", "saga"]


class NoProtocolFits(ConfigError):
    """Raised when no protocol meets the requirements with these participants."""

    def __init__(self, message: str, *, rule: int, participants: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: The row of the decision table that refused.
        self.rule = rule
        #: The participants lacking the capability the row needs (empty if none is to blame).
        self.participants = participants


class Consistency(enum.Enum):
    """What a reader may see while, and after, the transaction runs."""

    #: All or nothing, isolated: no reader ever sees one participant's effect
    #: without the others' (participants hold their prepared state until the decision).
    IMMEDIATE = "immediate"
    #: All or nothing, never undone by a compensation; isolation is whatever
    #: each participant's prepared state gives. Needs atomic commit, like IMMEDIATE.
    STRONG = "strong"
    #: Intermediate states are visible and a failure is undone by compensations,
    #: so the participants converge to all or nothing eventually.
    EVENTUAL = "eventual"


class Requirements(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller needs from the transaction."""

    consistency: Consistency | str
    #: Participants must be able to finish while the coordinator is down.
    must_not_block_on_coordinator_failure: bool = False
    #: The network may split the participants into groups that cannot talk.
    partitions_possible: bool = False


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What one participant can do."""

    #: Can hold a prepared state across a crash (XA-style): needed by 2PC, 3PC and Paxos Commit.
    prepare: bool = False
    #: Can record a pre-commit and answer a backup's state request: needed by 3PC.
    pre_commit: bool = False
    #: Has a compensating action that semantically undoes its step: needed by a saga.
    compensation: bool = False


class Choice(msgspec.Struct, frozen=True):
    """The protocol chosen, the decision-table row that chose it, and why."""

    protocol: ChosenProtocol
    reason: str
    rule: int


_ATOMIC = (Consistency.IMMEDIATE, Consistency.STRONG)

# What Paxos Commit costs, in the terms of Gray & Lamport's normal case (N
# participants, 2F+1 acceptors); stated in every reason that picks it.
_PAXOS_TRADE = (
    "the trade: it decides only while F+1 of its 2F+1 acceptors are up and can talk to a"
    " leader, and it costs more than 2PC: (N+1)(F+3)-2 messages and N+F+1 forced writes"
    " against 2PC's 3N-1 and N+1 (Gray & Lamport, docs/paxos.md)"
)


def _consistency(value: object) -> Consistency:
    if isinstance(value, Consistency):
        return value
    try:
        return Consistency(value)
    except ValueError:
        names = ", ".join(repr(c.value) for c in Consistency)
        raise ConfigError(f"unknown consistency {value!r}; choose one of {names}") from None


def _checked(
    requirements: object, participants: object
) -> tuple[Consistency, bool, bool, dict[str, Capabilities]]:
    if not isinstance(requirements, Requirements):
        raise ConfigError(f"requirements must be a Requirements, got {requirements!r}")
    consistency = _consistency(requirements.consistency)
    flags = {
        "must_not_block_on_coordinator_failure": requirements.must_not_block_on_coordinator_failure,
        "partitions_possible": requirements.partitions_possible,
    }
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise ConfigError(f"requirement {name} must be a bool, got {flag!r}")
    if not isinstance(participants, Mapping) or not participants:
        raise ConfigError(
            "participants must be a non-empty mapping of name to Capabilities,"
            f" got {participants!r}"
        )
    checked: dict[str, Capabilities] = {}
    for name, caps in participants.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"participant names must be non-empty str, got {name!r}")
        if not isinstance(caps, Capabilities):
            raise ConfigError(
                f"participant {name!r}: capabilities must be Capabilities, got {caps!r}"
            )
        if caps.pre_commit and not caps.prepare:
            raise ConfigError(
                f"participant {name!r} claims pre_commit without prepare; a 3PC participant"
                " must first be able to prepare"
            )
        checked[name] = caps
    return (
        consistency,
        requirements.must_not_block_on_coordinator_failure,
        requirements.partitions_possible,
        checked,
    )


def _names(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def choose_protocol(
    requirements: Requirements, participants: Mapping[str, Capabilities]
) -> Choice:
    """The protocol that meets `requirements` with `participants`, by the module's table.

    Raises `NoProtocolFits` when no protocol can (naming the participants
    lacking a capability) and `ConfigError` when the arguments are malformed.
    """
    consistency, must_not_block, partitions, parts = _checked(requirements, participants)
    if consistency in _ATOMIC:
        cannot_prepare = sorted(name for name, caps in parts.items() if not caps.prepare)
        if cannot_prepare:
            raise NoProtocolFits(
                f"{consistency.value} consistency needs every participant to prepare (2PC,"
                f" 3PC or Paxos Commit), but {_names(cannot_prepare)} cannot; a saga would"
                " give only eventual consistency: ask for consistency='eventual' if that is"
                " acceptable",
                rule=2,
                participants=tuple(cannot_prepare),
            )
        if not must_not_block:
            return Choice(
                "2pc",
                f"{consistency.value} consistency and every participant can prepare; blocking"
                " while the coordinator is down is acceptable, so 2PC (fewer messages and"
                " forced writes than 3PC or Paxos Commit, and safe under partitions)",
                3,
            )
        if partitions:
            return Choice(
                "paxos",
                f"{consistency.value} consistency, participants must not block when the"
                " coordinator fails, the network may partition, and every participant can"
                " prepare, which is all Paxos Commit needs: it is non-blocking and still safe"
                " under any timing, partitions and process pauses (3PC could split there);"
                f" {_PAXOS_TRADE}",
                1,
            )
        no_pre_commit = sorted(name for name, caps in parts.items() if not caps.pre_commit)
        if no_pre_commit:
            return Choice(
                "paxos",
                f"{consistency.value} consistency and participants must not block when the"
                f" coordinator fails, but {_names(no_pre_commit)} cannot pre-commit, so 3PC"
                " cannot run; Paxos Commit needs only prepare and is safe under any timing,"
                f" partitions and process pauses; {_PAXOS_TRADE}",
                5,
            )
        return Choice(
            "3pc",
            f"{consistency.value} consistency, participants must not block when the"
            " coordinator fails, no partitions expected, and every participant supports"
            " pre-commit: 3PC (its termination protocol finishes without the coordinator"
            " while any participant is up, with no acceptors to run, and in dtxn it sends"
            " fewer messages than Paxos Commit: 6N against 4N(F+1)); safe only while no"
            " process pauses and no message is delayed or lost past its timeouts, else"
            " the participants can decide differently: if that can happen, say"
            " partitions_possible=True to get Paxos Commit",
            4,
        )
    cannot_compensate = sorted(name for name, caps in parts.items() if not caps.compensation)
    if cannot_compensate:
        raise NoProtocolFits(
            "eventual consistency is served by a saga, which needs a compensation at every"
            f" participant, but {_names(cannot_compensate)} has none; if every participant"
            " can prepare, ask for strong consistency to use 2PC",
            rule=7,
            participants=tuple(cannot_compensate),
        )
    return Choice(
        "saga",
        "eventual consistency and every participant can compensate: a saga (no locks held"
        " across participants, never blocks; intermediate states are visible)",
        6,
    )
