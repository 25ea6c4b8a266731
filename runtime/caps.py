"""What a caller may ask of a node: the timeout cap and the checks of `transact`'s arguments.

Shared by `Runtime` (its own timeouts and every `transact`: timeouts, txid,
participants, payloads, Paxos Commit's acceptors) and `node.toml`
(`[node] max_timeout_s`, `[timeouts]`), so both refuse the same values.
Every check runs before anything is sent or logged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec
from dtxn.protocols.errors import ConfigError, TransactionError
from dtxn.protocols.messages import Timeouts
from dtxn.runtime.hosting.acceptor import ACCEPTOR_ACTOR
from dtxn.runtime.hosting.coordinator import COORDINATOR_ACTOR
from dtxn.runtime.transport import Address, UnknownNode

# The longest timeout a transaction may ask for, unless a node says otherwise
# (`Runtime(max_timeout_s=...)`, `[node] max_timeout_s`): a client's
# `votes_s=1e300` would otherwise hold a row's lock for ever.
MAX_TIMEOUT_S = 60.0


def check_max_timeout(value: object, where: str) -> float:
    """`value` as a cap: a finite number of seconds > 0, else `ConfigError`."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value < float("inf")  # False for nan too
    ):
        raise ConfigError(f"{where} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def check_timeouts(timeouts: object, cap: float, where: str) -> None:
    """Every field a finite number of seconds in (0, cap]: `TypeError` for a wrong
    type, `ConfigError` for a value out of range."""
    if not isinstance(timeouts, Timeouts):
        raise TypeError(
            f"{where} must be a dtxn.protocols.messages.Timeouts, "
            f"got {type(timeouts).__name__} {timeouts!r}"
        )
    for field in Timeouts.__struct_fields__:
        value = getattr(timeouts, field)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{where}.{field} must be a number of seconds, got {value!r}")
        if not 0 < value <= cap:  # False for nan too
            raise ConfigError(
                f"{where}.{field} must be a positive number of seconds, finite and at "
                f"most this node's max_timeout_s ({cap!r} s); got {value!r}"
            )


# What a caller-chosen transaction id may be: it names WAL records, log lines
# and replies, so it is bounded and printable.
TXID_MAX = 128
_TXID_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{TXID_MAX}}}")
# Every transport that encodes (in-process with encode=True, NATS) uses
# msgspec's default msgpack encoder: payloads are checked with the same.
_PAYLOAD_ENCODER = msgspec.msgpack.Encoder()


def parse_pid(pid: str) -> Address:
    actor, sep, node = pid.partition("@")
    if not sep or not actor or not node:
        raise TransactionError(f"participant {pid!r} must be written 'actor@node'")
    return Address(node, actor)


def participant_items(
    participants: object,
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """(pids as given, payloads) of a mapping or an iterable of (pid, payload) pairs."""
    if isinstance(participants, Mapping):
        return tuple(participants), tuple(participants.values())
    if isinstance(participants, str | bytes) or not isinstance(participants, Iterable):
        raise TypeError(
            "participants must map 'actor@node' to payloads, or be (pid, payload) pairs; "
            f"got {type(participants).__name__} {participants!r}"
        )
    pids: list[Any] = []
    payloads: list[Any] = []
    for item in participants:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError(f"participants must be (pid, payload) pairs, got {item!r}")
        pids.append(participant_pid(item[0]))  # here, before it is hashed
        payloads.append(item[1])
    return tuple(pids), tuple(payloads)


def participant_pid(given: object) -> str:
    """`actor@node` for a participant given as such a str or as an `Address`."""
    if isinstance(given, Address):
        pid = str(given)
    elif isinstance(given, str):
        pid = given
    else:
        raise TypeError(
            f"participant {given!r} must be an 'actor@node' str or an Address, "
            f"not {type(given).__name__}"
        )
    actor, _, node = pid.partition("@")
    if pid.count("@") != 1 or not actor or not node:
        raise TransactionError(
            f"participant {pid!r} must be written 'actor@node' (exactly one '@')"
        )
    return pid


def check_txid(txid: object) -> None:
    if not isinstance(txid, str):
        raise TypeError(f"txid must be a str, got {type(txid).__name__} {txid!r}")
    if not _TXID_RE.fullmatch(txid):
        raise TransactionError(
            f"txid {txid[:TXID_MAX + 1]!r} must be 1-{TXID_MAX} of letters, digits "
            "and _ . : -"
        )


def check_payloads(pids: tuple[str, ...], payloads: tuple[Any, ...]) -> None:
    """Encode every payload as the wire will, so none fails after another was sent."""
    for pid, payload in zip(pids, payloads, strict=True):
        try:
            _PAYLOAD_ENCODER.encode(payload)
        except (TypeError, ValueError, OverflowError, RecursionError,
                msgspec.EncodeError) as exc:
            raise TypeError(
                f"the payload for participant {pid!r} cannot be encoded for the wire "
                f"(msgpack): {exc}; nothing was sent"
            ) from exc


def paxos_placement(
    me: str,
    pids: tuple[str, ...],
    fault_tolerance: object,
    acceptors: object,
    knows_node: Callable[[str], bool] | None,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(acceptor pids, leader pids) of a Paxos Commit transaction coordinated on node `me`.

    Acceptors: the nodes in `acceptors` if given (2F+1 distinct node names),
    else the participants' distinct nodes in order, then `me`, the first
    2F+1 of them (F = `fault_tolerance`, default 1). Leaders: this node's
    coordinator, then those of the participants' nodes, in the order a
    backup takes over. Raises `ConfigError` (or `UnknownNode` for an
    acceptor node the transport knows is not there); changes nothing.
    """
    f: int | None = None
    if fault_tolerance is not None:
        if (
            isinstance(fault_tolerance, bool)
            or not isinstance(fault_tolerance, int)
            or fault_tolerance < 1
        ):
            raise ConfigError(
                f"fault_tolerance must be an int >= 1 (acceptors that may fail), "
                f"got {fault_tolerance!r}"
            )
        f = fault_tolerance
    part_nodes = tuple(dict.fromkeys(pid.partition("@")[2] for pid in pids))
    nodes: tuple[str, ...]
    if acceptors is not None:
        if isinstance(acceptors, str | bytes) or not isinstance(acceptors, Iterable):
            raise ConfigError(
                f"acceptors must be a list of node names, got {type(acceptors).__name__} "
                f"{acceptors!r}"
            )
        nodes = tuple(acceptors)
        for node in nodes:
            if not isinstance(node, str) or not node or "@" in node:
                raise ConfigError(
                    f"acceptors must name nodes (non-empty str without '@'), got {node!r}"
                )
        if len(set(nodes)) != len(nodes):
            raise ConfigError(f"acceptors name a node twice: {list(nodes)!r}")
        if len(nodes) % 2 == 0:
            raise ConfigError(
                f"Paxos Commit needs 2F+1 acceptors (an odd number), got {len(nodes)}: "
                f"{list(nodes)!r}"
            )
        if f is not None and len(nodes) != 2 * f + 1:
            raise ConfigError(
                f"fault_tolerance={f} needs {2 * f + 1} acceptors, but acceptors names "
                f"{len(nodes)}: {list(nodes)!r}"
            )
        if knows_node is not None:
            for node in nodes:
                if knows_node(node) is False:
                    raise UnknownNode(
                        f"acceptor node {node!r} is unknown to this node's transport; "
                        "nothing was sent"
                    )
    else:
        need = 2 * (f or 1) + 1
        candidates = part_nodes if me in part_nodes else (*part_nodes, me)
        nodes = candidates[:need]
        if len(nodes) < need:
            raise ConfigError(
                f"Paxos Commit with fault_tolerance={f or 1} needs {need} acceptors on "
                f"distinct nodes, but the participants' nodes and the coordinator's give "
                f"only {len(nodes)} ({', '.join(nodes)}): {need - len(nodes)} short; "
                "name them with acceptors=[...] or lower fault_tolerance"
            )
    leaders = tuple(f"{COORDINATOR_ACTOR}@{node}" for node in dict.fromkeys((me, *part_nodes)))
    return tuple(f"{ACCEPTOR_ACTOR}@{node}" for node in nodes), leaders


__all__ = [
    "MAX_TIMEOUT_S",
    "TXID_MAX",
    "check_max_timeout",
    "check_payloads",
    "check_timeouts",
    "check_txid",
    "parse_pid",
    "participant_items",
    "participant_pid",
    "paxos_placement",
]
