"""Demo scenarios 1 and 2: atomic commit of an inter-bank transfer, and a coordinator crash.

1a/1b: a 2PC transfer that commits, and one that aborts because bank B votes no.
2a/2b: the coordinator crashes right after pre-commit under 3PC (the banks
finish on their own) and right after forcing COMMIT under 2PC (the banks stay
in doubt until it restarts).
"""

from __future__ import annotations

import msgspec
from dtxn.protocols.records import CoordCommitted, PartPreCommitted
from dtxn.runtime.demo._stage import TIMEOUTS, Account, Stage, scenario
from dtxn.runtime.demo._timeline import Kind

# -- scenarios 1 and 2: atomic commit between two banks ---------------------------------

TRANSFER = {"ledger@bank-a": -30, "ledger@bank-b": 30}


def _two_banks(stage: Stage, *, b_limit: int | None = None) -> tuple[Account, Account]:
    stage.coordinator("coord")
    return stage.bank("bank-a", 100), stage.bank("bank-b", 50, limit=b_limit)


def _committed_at(txid: str, *accounts: Account) -> bool:
    return all(account.state_of(txid) == "committed" for account in accounts)


async def _settle(stage: Stage, node: str) -> bool:
    """Wait until `node` holds no unfinished transaction (acks received, END written)."""
    return await stage.wait_until(lambda: stage.runtime(node).statistics().txn.active == 0)


@scenario(
    "1a",
    "2pc-commit",
    "2PC inter-bank transfer: both banks commit",
    "Transfer 30 from an account at bank A to one at bank B: debit at A and credit at B, both "
    "or neither. A third node coordinates with two-phase commit (presumed abort). Both banks "
    "hold the amount and force PREPARED before voting yes; the coordinator forces COMMIT "
    "before sending it; each bank forces COMMITTED before acknowledging.",
)
async def transfer_commits(stage: Stage) -> None:
    a, b = _two_banks(stage)
    await stage.start_all()
    stage.note("transfer 30 from bank A to bank B by 2PC")
    transfer = await stage.transact("coord", TRANSFER, "2pc")
    done = await stage.wait_until(lambda: _committed_at(transfer.txid, a, b))
    await _settle(stage, "coord")
    stage.check("the transfer committed at both banks", done)
    stage.check("balances moved: A 100 → 70, B 50 → 80", (a.balance, b.balance) == (70, 80),
                f"A {a.balance}, B {b.balance}")


@scenario(
    "1b",
    "2pc-abort",
    "2PC inter-bank transfer: bank B votes no, both banks abort",
    "The same transfer, but bank B's account may not exceed 60 (it holds 50): B votes no. "
    "The coordinator aborts, writing nothing (presumed abort), and tells A, which had voted "
    "yes, to release its hold. Neither balance changes.",
)
async def transfer_aborts(stage: Stage) -> None:
    a, b = _two_banks(stage, b_limit=60)
    await stage.start_all()
    stage.note("transfer 30 from bank A to bank B by 2PC; B's limit is 60")
    transfer = await stage.transact("coord", TRANSFER, "2pc")
    released = await stage.wait_until(lambda: a.state_of(transfer.txid) == "aborted")
    await _settle(stage, "coord")
    reported = transfer.reported
    stage.check("the caller is told the transfer aborted",
                reported is not None and not reported.committed,
                reported.reason if reported is not None else "no answer")
    stage.check("A released its hold", released, a.state_of(transfer.txid))
    stage.check("balances unchanged: A 100, B 50", (a.balance, b.balance) == (100, 50),
                f"A {a.balance}, B {b.balance}")


@scenario(
    "2a",
    "3pc-coordinator-crash",
    "3PC: the coordinator crashes right after pre-commit; the banks finish without it",
    "The transfer by three-phase commit. Both banks vote yes, the coordinator forces "
    "PRE-COMMIT and sends it, and crashes as soon as bank A has forced its own PRE-COMMIT. "
    "The banks, committable, time out, elect a backup coordinator among themselves "
    "(termination protocol) and commit while the coordinator is still down. When it "
    "restarts, its recovery asks the banks and learns the outcome.",
)
async def threepc_finishes_without_coordinator(stage: Stage) -> None:
    a, b = _two_banks(stage)
    await stage.start_all()
    armed = [True]

    def crash_after_precommit(txid: str, actor: str, what: str, detail: object) -> None:
        if armed[0] and what == "forced" and isinstance(detail, PartPreCommitted):
            armed[0] = False
            stage.crash("coord")

    stage.runtime("bank-a").on_trace(crash_after_precommit)
    stage.note("transfer 30 by 3PC; the coordinator will crash once A is committable")
    # A longer pre-commit ack timeout: the crash must come before the coordinator,
    # tired of waiting for A's ack on a slow disk, could commit on its own.
    timeouts = msgspec.structs.replace(TIMEOUTS, acks_s=0.5)
    transfer = stage.submit("coord", TRANSFER, "3pc", timeouts)
    await stage.wait_down("coord")
    stage.note(f"coordinator down; the banks wait acks_s + decision_s "
               f"= {timeouts.acks_s + timeouts.decision_s:.1f} s, then terminate on their own")
    done = await stage.wait_until(lambda: _committed_at(transfer.txid, a, b))
    stage.check("both banks committed through the termination protocol",
                done, f"A {a.state_of(transfer.txid)}, B {b.state_of(transfer.txid)}")
    stage.check("... while the coordinator was still down", done and stage.is_down("coord"))
    stage.check(
        "the banks ran the termination protocol (a backup asked for states)",
        any(e.kind is Kind.SEND and e.text.startswith("state-request")
            for e in stage.timeline.events),
    )
    await _settle(stage, "bank-a")
    await _settle(stage, "bank-b")
    stage.note(f"bank-a: status {stage.status('bank-a', transfer.txid)}")
    await stage.start("coord")
    learned = await stage.wait_until(
        lambda: stage.outcome("coord", transfer.txid) == "committed"
    )
    stage.check("the restarted coordinator learns the outcome (committed)", learned,
                stage.status("coord", transfer.txid))


@scenario(
    "2b",
    "2pc-coordinator-crash",
    "2PC: the coordinator crashes after forcing COMMIT; the banks stay in doubt until it recovers",
    "The same crash under two-phase commit: the coordinator forces its COMMIT record and "
    "dies before sending it. Both banks voted yes, so neither may decide alone: they ask "
    "the coordinator (down) and each other (uncertain too) with backoff, and stay in doubt. "
    "When the coordinator restarts, recovery finds COMMIT in its WAL and sends it again.",
)
async def twopc_blocks_until_recovery(stage: Stage) -> None:
    a, b = _two_banks(stage)
    await stage.start_all()
    armed = [True]

    def crash_after_commit_forced(txid: str, actor: str, what: str, detail: object) -> None:
        if armed[0] and what == "forced" and isinstance(detail, CoordCommitted):
            armed[0] = False
            stage.crash("coord")

    stage.runtime("coord").on_trace(crash_after_commit_forced)
    stage.note("transfer 30 by 2PC; the coordinator will crash right after forcing COMMIT")
    transfer = stage.submit("coord", TRANSFER, "2pc")
    txid = transfer.txid
    await stage.wait_down("coord")
    blocked = True
    for _ in range(3):
        await stage.sleep(0.4)
        doubt = {node: stage.runtime(node).status(txid).in_doubt for node in ("bank-a", "bank-b")}
        stage.note("status(txid).in_doubt: "
                   + ", ".join(f"{node} {value}" for node, value in doubt.items()))
        blocked = blocked and all(doubt.values()) and a.committed == b.committed == []
    stage.check("2PC blocks: both banks in doubt, nothing applied, while the coordinator is down",
                blocked)
    await stage.start("coord")
    done = await stage.wait_until(lambda: _committed_at(txid, a, b))
    await _settle(stage, "coord")
    stage.check("after the restart, recovery re-sends COMMIT and both banks commit", done,
                f"A {a.state_of(txid)}, B {b.state_of(txid)}")
    stage.check("balances moved: A 100 → 70, B 50 → 80", (a.balance, b.balance) == (70, 80),
                f"A {a.balance}, B {b.balance}")
