"""Hypothesis strategies for simulated workloads and fault schedules.

    from hypothesis import given
    from dtxn.testing import check, scenarios

    @given(scenarios(protocol="2pc"))
    def test_my_bank_stays_atomic(scenario):
        check(scenario, resource_factory=lambda node: MyBank())

Every strategy draws plain data (a `Scenario`), so hypothesis shrinks it and
prints it; the run itself is deterministic in the scenario, as stateful and
shrinking tests need.

`payloads=` (a strategy) gives your resources your own prepare payloads, one
drawn per participant of each transaction, instead of scripted votes: your
`prepare` then decides the vote. `scenarios` also draws redelivery faults
(`redelivery_faults`): each crashes a participant of a transaction right
after its resource applied that transaction's prepare, commit or abort
(commit most often), before the participant logged it, so the resource is
called again for the same txid - the moment a non-idempotent resource breaks.
"""

from __future__ import annotations

from typing import Any

import msgspec
from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime.sim import (
    COORDINATOR_NODE,
    NODE_FAULTS,
    Fault,
    NetworkFaults,
    Scenario,
    TxnSpec,
    fail_stop,
)
from hypothesis import strategies as st

__all__ = [
    "fault_schedules",
    "network_faults",
    "redelivery_faults",
    "scenarios",
    "transactions",
    "workloads",
]

TIMES_S = st.integers(0, 2000).map(lambda ms: ms / 1000)
SUBMIT_TIMES_S = st.integers(0, 500).map(lambda ms: ms / 1000)
VOTES = st.sampled_from([Vote.YES, Vote.YES, Vote.YES, Vote.NO, Vote.READ_ONLY])


def node_names(participants: int) -> list[str]:
    return [COORDINATOR_NODE, *(f"p{i}" for i in range(1, participants + 1))]


def as_json(payload: Any) -> Any:
    """`payload` as a replayed schedule carries it: its JSON form (TypeError if it has none)."""
    try:
        return msgspec.json.decode(msgspec.json.encode(payload))
    except (TypeError, msgspec.EncodeError) as exc:
        raise TypeError(f"a prepare payload must encode as JSON to replay, got {payload!r}: "
                        f"{exc}") from exc


@st.composite
def transactions(draw: st.DrawFn, participants: int = 3,
                 payloads: st.SearchStrategy[Any] | None = None) -> TxnSpec:
    """One transaction: a non-empty set of participant nodes, each with a scripted vote.

    With `payloads`, each participant gets a payload drawn from it (in its
    JSON form, as a replay gives it) and its resource decides the vote.
    """
    chosen = draw(st.lists(st.integers(1, participants), min_size=1, max_size=participants,
                           unique=True))
    chosen.sort()
    at_s = draw(SUBMIT_TIMES_S)
    if payloads is not None:
        drawn = tuple(as_json(draw(payloads)) for _ in chosen)
        return TxnSpec(at_s, tuple(chosen), (Vote.YES,) * len(chosen), drawn)
    votes = tuple(draw(VOTES) for _ in chosen)
    return TxnSpec(at_s, tuple(chosen), votes)


def workloads(
    participants: int = 3, *, max_txns: int = 3,
    payloads: st.SearchStrategy[Any] | None = None,
) -> st.SearchStrategy[tuple[TxnSpec, ...]]:
    """A workload: 1..max_txns transactions over `participants` nodes."""
    return st.lists(transactions(participants, payloads), min_size=1,
                    max_size=max_txns).map(tuple)


# Commit and prepare redelivery are what users' resources get wrong most often.
REDELIVERY_KINDS = st.sampled_from(["crashcommit", "crashprepare", "crashabort", "crashcommit",
                                   "crashprepare"])


@st.composite
def _redelivery(draw: st.DrawFn, txns: tuple[TxnSpec, ...]) -> Fault:
    # Armed at one transaction's submit time on one of its participants, so it
    # strikes that transaction's call unless an earlier one comes first.
    txn = draw(st.sampled_from(txns))
    node = f"p{draw(st.sampled_from(txn.participants))}"
    return Fault(txn.at_s, draw(REDELIVERY_KINDS), nodes=(node,))


def redelivery_faults(
    txns: tuple[TxnSpec, ...], *, max_faults: int = 2
) -> st.SearchStrategy[tuple[Fault, ...]]:
    """Up to `max_faults` redelivery faults aimed at the participants of `txns`."""
    return st.lists(_redelivery(txns), max_size=max_faults).map(tuple)


@st.composite
def _fault(
    draw: st.DrawFn, participants: int, partitions: bool, storage: bool, forgery: bool = False
) -> Fault:
    names = node_names(participants)
    kinds = ["crash", "crashforce", "crashforced", "crashvote", "restart"]
    # A pause (SIGSTOP past every timeout) is outside 3PC's model, as a partition is.
    kinds += ["part", "heal", "pause"] if partitions else []
    if storage:
        kinds += ["stall", "resume", "fsyncfail", "walcut"]
    if forgery:
        kinds += ["forge"]
    kind = draw(st.sampled_from(kinds))
    # A crashvote strikes the node's next prepare: armed while transactions
    # are still being submitted, or it would rarely meet one.
    at_s = draw(SUBMIT_TIMES_S if kind == "crashvote" else TIMES_S)
    if kind == "walcut":
        return Fault(at_s, kind, nodes=(COORDINATOR_NODE,))  # a coordinator's damaged log
    if kind == "forge":  # a participant node: the coordinator's word is the decision
        return Fault(at_s, kind, nodes=(draw(st.sampled_from(names[1:])),))
    if kind in NODE_FAULTS:
        return Fault(at_s, kind, nodes=(draw(st.sampled_from(names)),))
    if kind == "part":
        side = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names) - 1,
                             unique=True))
        rest = [n for n in names if n not in side]
        return Fault(at_s, "part", groups=(tuple(sorted(side)), tuple(rest)))
    return Fault(at_s, "heal")


def fault_schedules(
    participants: int = 3,
    *,
    partitions: bool = True,
    storage: bool = True,
    max_faults: int = 4,
    forgery: bool = False,
) -> st.SearchStrategy[tuple[Fault, ...]]:
    """Timed crashes, restarts, partitions, heals, fsync faults and forgers, sorted by time."""
    return st.lists(_fault(participants, partitions, storage, forgery), max_size=max_faults).map(
        lambda faults: tuple(sorted(faults, key=lambda f: f.at_s))
    )


def network_faults(*, lossy: bool = True) -> st.SearchStrategy[NetworkFaults]:
    """Drop, duplicate and jitter rates (swarm testing: the rates themselves vary).

    `lossy=False` keeps links reliable (no drops), as 3PC's model requires.
    """
    return st.builds(
        NetworkFaults,
        drop=st.sampled_from([0.0, 0.02, 0.1] if lossy else [0.0]),
        duplicate=st.sampled_from([0.0, 0.05, 0.2]),
        delay_s=st.just(0.001),
        jitter_s=st.sampled_from([0.0, 0.005, 0.05]),
    )


@st.composite
def scenarios(
    draw: st.DrawFn,
    protocol: Protocol | str = Protocol.TWO_PC,
    participants: int = 3,
    *,
    partitions: bool | None = None,
    storage: bool | None = None,
    forgery: bool | None = None,
    max_txns: int = 3,
    max_faults: int = 4,
    payloads: st.SearchStrategy[Any] | None = None,
    max_redeliveries: int = 2,
) -> Scenario:
    """A whole scenario: a workload, timed faults, redelivery faults, network fault rates.

    `payloads` draws your own prepare payloads (see `transactions`);
    `max_redeliveries=0` leaves out the redelivery faults.

    3PC stays in its fail-stop model (no partitions, reliable links, no stalled
    fsyncs, never every process of a transaction down) unless
    `partitions` (which also brings message loss) or `storage` say otherwise.
    Forged decisions (`forgery`, the `forge` fault) come by default with 2PC
    only: 3PC's termination lets any member decide as the elected backup.
    """
    proto = Protocol(protocol)
    if partitions is None:
        partitions = proto is Protocol.TWO_PC
    if storage is None:
        storage = proto is Protocol.TWO_PC
    if forgery is None:
        forgery = proto is Protocol.TWO_PC
    txns = draw(workloads(participants, max_txns=max_txns, payloads=payloads))
    faults = draw(fault_schedules(participants, partitions=partitions, storage=storage,
                                  max_faults=max_faults, forgery=forgery))
    if max_redeliveries:
        faults = tuple(sorted(faults + draw(redelivery_faults(txns, max_faults=max_redeliveries)),
                              key=lambda f: f.at_s))
    if proto is Protocol.THREE_PC and not partitions and not storage:
        faults = tuple(fail_stop(list(faults), list(txns)))
    seed = draw(st.integers(0, 2**32 - 1))
    network = draw(network_faults(lossy=partitions))
    return Scenario(proto, participants, seed, txns, faults, network)
