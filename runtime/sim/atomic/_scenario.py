"""What a simulated atomic-commit run is made of: the replayable `Scenario` and its parts.

A `Scenario` is everything a run depends on: the protocol, the number of
participant nodes, the seed, the workload (transactions with scripted votes)
and the fault schedule. It prints as one line of text (`Scenario.text()`) and
`Scenario.parse` reads it back: that line is what a failure reports and what
`dtxn replay` takes. `random_scenario` draws one from a seed.
"""

from __future__ import annotations

from typing import Any

import msgspec
from dtxn.protocols.messages import Protocol, Vote
from dtxn.runtime.sim._harness import (
    ScheduleFailure,
    dtxn_replay,
    schedule_items,
    schedule_options,
    stream,
)
from dtxn.runtime.sim._net import NetworkFaults, TraceEntry
from dtxn.runtime.sim.invariants import Violation

__all__ = [
    "COORDINATOR_NODE",
    "FAULT_KINDS",
    "NODE_FAULTS",
    "REDELIVERY_FAULTS",
    "Fault",
    "Scenario",
    "SimResult",
    "SimulationFailure",
    "TxnSpec",
    "random_scenario",
]

COORDINATOR_NODE = "c"

VOTE_CODES = {"y": Vote.YES, "n": Vote.NO, "r": Vote.READ_ONLY}
VOTE_LETTERS = {vote: code for code, vote in VOTE_CODES.items()}
# Faults aimed at nodes: process crash/restart, and storage faults - a slow
# fsync (`stall` holds every commit until `resume`, a crash or the liveness
# phase) and a failing one (`fsyncfail`: the next commit fails, and the node
# stops, fail-stop, until it is restarted).
# `crashforce` and `crashforced` arm a crash at a boundary: when the node next
# asks for a forced write (the record is lost), or right after one becomes
# durable (before the effects that follow it, such as sends, run).
# `crashvote` arms one at the resource boundary: the node's next prepare
# applies, lingers past its peers' decision timeout (they ask it, and it
# answers "abort" from PREPARING), then the node crashes before the vote
# reaches its machine, as a slow participant killed mid-vote would.
# `walcut` crashes the node and loses the newer half of its committed log
# records, as a damaged SQLite sidecar does; the store detects it (as
# `SqliteWal`'s sidecar scan does) and marks itself. Drawn for the coordinator.
# `pause` freezes a node past every timeout (SIGSTOP): its inbox, timers and
# fsyncs wait, then it resumes (SIGCONT) with stale timers and queued messages.
# 3PC assumes no such thing (its timeouts are its failure detector), so only
# 2PC draws it by default (`pauses`).
# `forge` compromises a participant node from then on: it sends decisions
# nobody made (both outcomes, for every transaction it has seen) to the
# members and the coordinator, in its own actor's name and in other nodes'
# (the network rejects those, as NATS subject permissions do). The
# coordinator node is never the forger: its word is the decision.
# Redelivery faults arm a crash right after the node's resource next applies
# a prepare (commit, abort): the resource did it, its participant has not
# logged it, so recovery (or the coordinator's retry) calls the resource again
# for the same txid, as after a real crash at the worst moment.
REDELIVERY_FAULTS = ("crashprepare", "crashcommit", "crashabort")
NODE_FAULTS = (
    "crash", "restart", "stall", "resume", "fsyncfail", "crashforce", "crashforced",
    "crashvote", "walcut", "pause", "forge", *REDELIVERY_FAULTS,
)
FAULT_KINDS = (*NODE_FAULTS, "part", "heal")


class SimulationFailure(ScheduleFailure["Scenario"]):
    """Raised when a simulated run breaks an invariant; the message says how to replay it."""

    def __init__(self, scenario: Scenario, violations: list[Violation], *,
                 user: bool = False) -> None:
        # `dtxn replay` runs the scripted resources: a failure of yours replays with check.
        replay = _check_call if user else dtxn_replay
        super().__init__(scenario, violations, "simulation", replay)


def _check_call(text: str) -> str:
    return f"check({text!r}, resource_factory=..., final_check=...)"


class TxnSpec(msgspec.Struct, frozen=True):
    """One transaction of a workload: when it is submitted, to whom, and their votes.

    Each participant's resource gets its scripted `Vote` as the prepare
    payload, unless `payloads` is given: then it gets its own payload (in JSON
    form: lists, dicts, strings, numbers, booleans, None) and its resource
    decides the vote, so `votes` are unused.
    """

    at_s: float
    participants: tuple[int, ...]
    votes: tuple[Vote, ...]
    payloads: tuple[Any, ...] | None = None

    def prepare_payloads(self) -> tuple[Any, ...]:
        """What each participant's prepare is given: its payload, or its scripted vote."""
        return self.payloads if self.payloads is not None else self.votes


class Fault(msgspec.Struct, frozen=True):
    """One timed fault: one of `NODE_FAULTS` on nodes, a partition into groups, or heal."""

    at_s: float
    kind: str
    nodes: tuple[str, ...] = ()
    groups: tuple[tuple[str, ...], ...] = ()


class Scenario(msgspec.Struct, frozen=True):
    """A complete, replayable simulated run.

    `text()` prints it as one line ("2pc n=3 seed=7 drop=0.1 ... ; tx@0.1
    p1=y,p2=n ; crash@0.12 c ; ..."; a transaction with payloads prints as
    `tx@0.1 p1,p2 payloads=[...]`, JSON), and `parse(text)` reads that line
    back into an equal `Scenario`: what a failure prints, `dtxn replay` and
    `dtxn.testing.check` take.
    """

    protocol: Protocol = Protocol.TWO_PC
    participants: int = 3
    seed: int = 0
    txns: tuple[TxnSpec, ...] = ()
    faults: tuple[Fault, ...] = ()
    network: NetworkFaults = NetworkFaults()

    def text(self) -> str:
        """This scenario as the one line `parse` reads back."""
        net = self.network
        parts = [
            f"{self.protocol.value} n={self.participants} seed={self.seed} "
            f"drop={net.drop:g} dup={net.duplicate:g} delay={net.delay_s:g} "
            f"jitter={net.jitter_s:g}"
        ]
        for txn in self.txns:
            if txn.payloads is not None:
                members = ",".join(f"p{p}" for p in txn.participants)
                parts.append(f"tx@{txn.at_s:g} {members} payloads={payload_text(txn.payloads)}")
                continue
            members = ",".join(
                f"p{p}={VOTE_LETTERS[v]}" for p, v in zip(txn.participants, txn.votes, strict=True)
            )
            parts.append(f"tx@{txn.at_s:g} {members}")
        for fault in self.faults:
            if fault.kind == "part":
                parts.append(f"part@{fault.at_s:g} " + "|".join(",".join(g) for g in fault.groups))
            elif fault.kind == "heal":
                parts.append(f"heal@{fault.at_s:g}")
            else:
                parts.append(f"{fault.kind}@{fault.at_s:g} {','.join(fault.nodes)}")
        return " ; ".join(parts)

    @classmethod
    def parse(cls, text: str) -> Scenario:
        """Read back what `text()` printed (raises `ValueError` on anything else)."""
        words, items = schedule_items(text)
        if not words:
            raise ValueError("empty schedule")
        protocol = Protocol(words[0])
        opts = schedule_options(words)
        network = NetworkFaults(
            drop=float(opts.get("drop", 0)),
            duplicate=float(opts.get("dup", 0)),
            delay_s=float(opts.get("delay", 0.001)),
            jitter_s=float(opts.get("jitter", 0)),
        )
        txns: list[TxnSpec] = []
        faults: list[Fault] = []
        for item, kind, when, rest in items:
            at_s = float(when)
            rest = rest.strip()
            if kind == "tx":
                members, _, extra = rest.partition(" ")
                if extra:
                    txns.append(_payload_txn(item, at_s, members, extra))
                    continue
                pairs = [pair.split("=") for pair in members.split(",")]
                txns.append(TxnSpec(
                    at_s,
                    tuple(int(p.removeprefix("p")) for p, _ in pairs),
                    tuple(VOTE_CODES[v] for _, v in pairs),
                ))
            elif kind == "part":
                groups = tuple(tuple(g.split(",")) for g in rest.split("|"))
                faults.append(Fault(at_s, "part", groups=groups))
            elif kind == "heal":
                faults.append(Fault(at_s, "heal"))
            elif kind in NODE_FAULTS:
                faults.append(Fault(at_s, kind, nodes=tuple(rest.split(","))))
            else:
                raise ValueError(f"unknown schedule item {item!r}")
        return cls(protocol, int(opts.get("n", 3)), int(opts.get("seed", 0)),
                   tuple(txns), tuple(faults), network)


def payload_text(payloads: tuple[Any, ...]) -> str:
    """One transaction's payloads as JSON that fits in a schedule item.

    msgspec writes no spaces outside strings, and every ';' (the item
    separator) is escaped, so the text splits back exactly.
    """
    return msgspec.json.encode(list(payloads)).decode().replace(";", "\\u003b")


def _payload_txn(item: str, at_s: float, members: str, extra: str) -> TxnSpec:
    if not extra.startswith("payloads="):
        raise ValueError(f"schedule item {item!r}: expected payloads=[...]")
    chosen = tuple(int(p.removeprefix("p")) for p in members.split(","))
    try:
        payloads = msgspec.json.decode(extra.removeprefix("payloads="))
    except msgspec.DecodeError as exc:
        raise ValueError(f"schedule item {item!r}: payloads are not JSON: {exc}") from exc
    if not isinstance(payloads, list) or len(payloads) != len(chosen):
        raise ValueError(f"schedule item {item!r}: need one payload per participant")
    return TxnSpec(at_s, chosen, (Vote.YES,) * len(chosen), tuple(payloads))


class SimResult(msgspec.Struct):
    """What one simulated run did.

    `outcomes` is what each transaction's client was told, by txid ("t0",
    "t1", ... in workload order): "committed" or "aborted"; "info" when the
    client got no outcome (its coordinator crashed while it waited, or the
    call failed), "not-submitted" when the coordinator was down at submit
    time. `decisions` is what the processes decided, whoever told the
    client: "committed" or "aborted" for each transaction some process
    decided ("split" where S1 broke). `prepares` counts the prepare calls the
    resources answered and `prepare_errors` those that raised.
    `events` counts trace entries, `virtual_s` the virtual seconds the run
    took; `trace_hash` is the same for two runs of the same scenario.
    """

    scenario: Scenario
    trace_hash: str
    events: int
    outcomes: dict[str, str]
    violations: list[Violation]
    virtual_s: float
    trace: list[TraceEntry]
    decisions: dict[str, str] = msgspec.field(default_factory=dict)
    prepares: int = 0
    prepare_errors: int = 0
def random_scenario(
    seed: int,
    *,
    protocol: Protocol | str = Protocol.TWO_PC,
    participants: int = 3,
    txns: int = 2,
    faults: int = 3,
    partitions: bool | None = None,
    storage: bool | None = None,
    pauses: bool | None = None,
    forgery: bool | None = None,
) -> Scenario:
    """A random scenario drawn from `seed` (swarm testing: fault rates are drawn too).

    By default 3PC gets neither partitions, message loss, storage faults nor
    pauses: its model is fail-stop with reliable links and accurate timeouts,
    which a lost message, a stalled fsync or a paused process breaks. Message
    loss comes with `partitions`. Nor does it get forged decisions (`forgery`): its
    termination protocol lets any member decide as the elected backup, so a
    compromised member is outside its model (docs/protocols.md, "Who may decide").
    """
    proto = Protocol(protocol)
    rng = stream(seed, "scenario")
    if partitions is None:
        partitions = proto is Protocol.TWO_PC
    if storage is None:
        storage = proto is Protocol.TWO_PC
    if pauses is None:
        pauses = proto is Protocol.TWO_PC
    if forgery is None:
        forgery = proto is Protocol.TWO_PC
    names = [COORDINATOR_NODE, *(f"p{i}" for i in range(1, participants + 1))]
    specs = []
    for _ in range(txns):
        count = rng.randint(1, participants)
        chosen = tuple(sorted(rng.sample(range(1, participants + 1), count)))
        votes = tuple(
            rng.choices([Vote.YES, Vote.NO, Vote.READ_ONLY], weights=[8, 1, 1])[0]
            for _ in chosen
        )
        specs.append(TxnSpec(round(rng.uniform(0, 0.5), 3), chosen, votes))
    events: list[Fault] = []
    for _ in range(faults):
        at_s = round(rng.uniform(0, 2.0), 3)
        kinds = ["crash", "crash", "crashforce", "crashforced", "crashvote", "restart"]
        kinds += ["part", "heal"] if partitions else []
        if storage:
            kinds += ["stall", "resume", "fsyncfail", "walcut"]
        if pauses:
            kinds.append("pause")
        if forgery:
            kinds += ["forge"]
        kind = rng.choice(kinds)
        if kind == "crashvote":
            # Armed while transactions are being submitted (it strikes a prepare).
            at_s = round(rng.uniform(0, 0.5), 3)
        elif kind == "walcut":
            # While transactions may still be in doubt somewhere: that is when a
            # lost decision matters.
            at_s = round(rng.uniform(0.1, 1.0), 3)
        if kind == "walcut":
            events.append(Fault(at_s, kind, nodes=(COORDINATOR_NODE,)))
        elif kind == "forge":
            events.append(Fault(at_s, kind, nodes=(rng.choice(names[1:]),)))
        elif kind in NODE_FAULTS:
            events.append(Fault(at_s, kind, nodes=(rng.choice(names),)))
        elif kind == "part":
            shuffled = names[:]
            rng.shuffle(shuffled)
            cut = rng.randint(1, len(names) - 1)
            events.append(Fault(at_s, "part", groups=(
                tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:]))
            )))
        else:
            events.append(Fault(at_s, "heal"))
    events.sort(key=lambda f: f.at_s)
    if proto is Protocol.THREE_PC:
        events = fail_stop(events, specs)
    network = NetworkFaults(
        # 3PC assumes reliable links: a lost PRE-COMMIT looks like a failed
        # participant, and the coordinator commits while it aborts alone (TR3).
        drop=rng.choice([0.0, 0.0, 0.02, 0.1]) if partitions else 0.0,
        duplicate=rng.choice([0.0, 0.05, 0.2]),
        delay_s=0.001,
        jitter_s=rng.choice([0.0, 0.005, 0.05]),
    )
    return Scenario(proto, participants, seed, tuple(specs), tuple(events), network)



def fail_stop(events: list[Fault], specs: list[TxnSpec]) -> list[Fault]:
    """Keep 3PC inside its model: crashes without restarts, never every process of a txn."""
    kept: list[Fault] = []
    down: set[str] = set()
    groups = [{COORDINATOR_NODE, *(f"p{p}" for p in spec.participants)} for spec in specs]
    for fault in events:
        if fault.kind in ("restart", "stall", "resume"):
            continue
        if fault.kind in ("crash", "fsyncfail", "crashforce", "crashforced", "crashvote",
                          "walcut", *REDELIVERY_FAULTS):
            after = down | set(fault.nodes)
            if any(group <= after for group in groups):
                continue
            down = after
        kept.append(fault)
    return kept

