"""Invariant checkers for simulated atomic commit, fed event by event.

The simulator calls the `on_*` methods as things happen (a message is sent
or delivered, a record is forced, a process decides, a resource applies an
operation, a node restarts); each check runs at the event that could break
it, and `finish` runs the end-of-run checks. Violations are collected, never
raised from inside the runtime's callbacks (where an exception would be
taken for a bug of the node); the simulator turns them into one readable
error with the seed and a replayable schedule.

  S1  no transaction is committed by one process and aborted by another;
  S2  a transaction commits only if every participant voted yes or read-only;
  S3  a decision never changes at a process, across crashes;
  S4  log before send: a coordinator's COMMIT follows its forced c-commit
      record, a participant's YES vote its forced p-prepared record;
  S5  a prepared 2PC participant aborts only when told abort;
  S6  answers match real outcomes: no process sends a decision (first-hand,
      remembered or presumed) opposite to one some process has reached;
  C   client history: an outcome reported committed to a caller is committed
      at every participant that voted yes, at the end;
  L   liveness: once faults stop, every transaction finishes in bounded time
      (for 3PC in its fail-stop model this is non-blocking);
  R   no resource keeps a prepared branch (a YES it never committed or
      aborted) of a transaction its participant ended;
  F   no participant ends a transaction with an outcome that only a forged
      decision (the `forge` fault: sent by a compromised node, made by
      nobody) told it, and that its coordinator did not decide;
  E   no node's runtime raises (in the simulator every exception is a bug).

`SagaChecker` does the same for orchestrated sagas, fed with every effect
that got past a step service's idempotency barrier (the effective journal):

  G1  each saga's effects are T1..Tn, or T1..Tj then Cj..C1: a compensation
      only after its action, after the compensations of every step that
      depends on it, and never followed by its action or a dependent's;
  G2  nothing is compensated once the pivot's action took effect, and a saga
      past its pivot ends completed;
  G3  no action or compensation takes effect twice through the orchestrator
      (a resumed saga never re-runs a completed step's effect);
  G4  no duplicate delivery has an effect a first delivery already had;
  G5  a saga that ended leaves no pending mark (semantic lock) behind;
  L   after healing every saga ends completed or compensated, or stuck when
      one of its compensations is scripted to fail for good.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec
from dtxn.protocols.messages import Decision, Protocol, Vote, VoteCast
from dtxn.protocols.records import Record, kind_of
from dtxn.protocols.saga.records import StepOp

__all__ = ["Checker", "SagaChecker", "SagaShape", "Violation"]

COORDINATOR = "coordinator"


class Violation(msgspec.Struct, frozen=True):
    """One broken invariant: its code (S1..S5, C, L), when, and what happened."""

    code: str
    at_s: float
    txid: str
    detail: str

    def __str__(self) -> str:
        return f"{self.code} at t={self.at_s:.4f}s, txid {self.txid}: {self.detail}"


class Checker:
    """Collects the facts of one simulated run and the invariants they break."""

    def __init__(self, protocols: dict[str, Protocol], members: dict[str, tuple[str, ...]]) -> None:
        self.protocols = protocols
        self.members = members
        self.violations: list[Violation] = []
        self.now_s = 0.0
        self._forced: set[tuple[str, str, str]] = set()
        self._decided: dict[tuple[str, str], str] = {}
        self._by_outcome: dict[str, dict[str, set[str]]] = {}
        self._votes: dict[str, dict[str, Vote]] = {}
        self._told_abort: set[tuple[str, str]] = set()
        self._applied: dict[str, dict[str, set[str]]] = {}
        # (pid, txid) whose resource prepared YES and has not committed or aborted since.
        self._held: set[tuple[str, str]] = set()
        # (pid, txid) -> the outcomes forged decisions delivered to pid claimed.
        self._forged: dict[tuple[str, str], set[str]] = {}

    def _fail(self, code: str, txid: str, detail: str) -> None:
        self.violations.append(Violation(code, self.now_s, txid, detail))

    # -- events ------------------------------------------------------------------

    def on_forced(self, pid: str, txid: str, record: Record) -> None:
        self._forced.add((pid, txid, kind_of(record)))

    def on_durable(self, pid: str, txid: str, kind: str) -> None:
        """A record found durable at restart (its force may never have been reported)."""
        self._forced.add((pid, txid, kind))

    def on_send(self, message: object) -> None:
        if isinstance(message, Decision):
            groups = self._by_outcome.get(message.txid)
            opposite = "aborted" if message.commit else "committed"
            if groups is not None and groups.get(opposite):
                said = "COMMIT" if message.commit else "ABORT"
                self._fail("S6", message.txid,
                           f"{message.sender} answered {said} but {sorted(groups[opposite])} "
                           f"decided {opposite}")
            if message.commit and message.sender.partition("@")[0] == COORDINATOR and (
                (message.sender, message.txid, "c-commit") not in self._forced
            ):
                self._fail("S4", message.txid,
                           f"{message.sender} sent COMMIT before forcing its c-commit record")
        elif isinstance(message, VoteCast):
            votes = self._votes.setdefault(message.txid, {})
            votes.setdefault(message.sender, message.vote)
            if message.vote is Vote.YES and (
                (message.sender, message.txid, "p-prepared") not in self._forced
            ):
                self._fail("S4", message.txid,
                           f"{message.sender} voted YES before forcing its p-prepared record")

    def on_deliver(self, to: str, message: object) -> None:
        if isinstance(message, Decision) and not message.commit:
            self._told_abort.add((to, message.txid))

    def on_forged(self, to: str, message: object) -> None:
        """A decision nobody made reached `to` (the network let it through)."""
        if isinstance(message, Decision):
            outcome = "committed" if message.commit else "aborted"
            self._forged.setdefault((to, message.txid), set()).add(outcome)

    def on_decide(self, pid: str, txid: str, outcome: str) -> None:
        key = (pid, txid)
        before = self._decided.get(key)
        if before is None:
            self._decided[key] = outcome
        elif before != outcome:
            self._fail("S3", txid, f"{pid} decided {before}, later {outcome}")
        groups = self._by_outcome.setdefault(txid, {"committed": set(), "aborted": set()})
        groups.setdefault(outcome, set()).add(pid)
        if groups["committed"] and groups["aborted"]:
            self._fail("S1", txid, f"committed at {sorted(groups['committed'])} but aborted "
                                   f"at {sorted(groups['aborted'])}")
        if outcome == "committed":
            votes = self._votes.get(txid, {})
            missing = [
                p for p in self.members.get(txid, ())
                if votes.get(p) not in (Vote.YES, Vote.READ_ONLY)
            ]
            if missing:
                self._fail("S2", txid, f"{pid} committed without a yes vote from {missing}")
        elif (
            outcome == "aborted"
            and self.protocols.get(txid) is Protocol.TWO_PC
            and pid.partition("@")[0] != COORDINATOR
            and (pid, txid, "p-prepared") in self._forced
            and key not in self._told_abort
        ):
            self._fail("S5", txid, f"{pid} was prepared and aborted without an abort decision")

    def on_held(self, pid: str, txid: str) -> None:
        """`pid`'s resource answered YES: it holds the branch until commit or abort."""
        self._held.add((pid, txid))

    def holding(self, pid: str) -> list[str]:
        """The txids whose prepared branch `pid`'s resource holds now, sorted."""
        return sorted(txid for holder, txid in self._held if holder == pid)

    def on_applied(self, pid: str, txid: str, op: str) -> None:
        self._held.discard((pid, txid))
        applied = self._applied.setdefault(txid, {"commit": set(), "abort": set()})
        applied[op].add(pid)
        if applied["commit"] and applied["abort"]:
            self._fail("S1", txid, f"resources committed at {sorted(applied['commit'])} and "
                                   f"aborted at {sorted(applied['abort'])}")

    def on_error(self, node: str, error: BaseException) -> None:
        """A node's runtime raised: in the simulator that is always a bug."""
        cause = error.__cause__ or error.__context__
        detail = f"node {node} raised {error!r}"
        if cause is not None:
            detail += f" (caused by {cause!r})"
        self._fail("E", "-", detail)

    def decisions(self) -> dict[str, str]:
        """Each decided transaction's outcome: "committed", "aborted" (or "split", an S1 break)."""
        found: dict[str, str] = {}
        for txid, groups in self._by_outcome.items():
            committed, aborted = bool(groups.get("committed")), bool(groups.get("aborted"))
            if committed or aborted:
                found[txid] = "split" if committed and aborted else (
                    "committed" if committed else "aborted")
        return found

    # -- the end -------------------------------------------------------------------

    def finish(
        self,
        committed_to_client: list[str],
        unfinished: dict[str, list[str]],
        for_an_operator: Collection[str] = (),
    ) -> None:
        """The end checks. `for_an_operator`: txids left in doubt on purpose (their
        coordinator knows its log lost records): exempt from C and L, never from S1."""
        for txid in committed_to_client:
            if txid in for_an_operator:
                continue
            done = self._applied.get(txid, {}).get("commit", set())
            missing = sorted(
                p for p, vote in self._votes.get(txid, {}).items()
                if vote is Vote.YES and p not in done
            )
            if missing:
                self._fail("C", txid, f"reported committed to the client but not committed "
                                      f"at {missing}")
        coordinators = {
            txid: outcome for (pid, txid), outcome in self._decided.items()
            if pid.partition("@")[0] == COORDINATOR
        }
        for (pid, txid), forged in sorted(self._forged.items()):
            decided = self._decided.get((pid, txid))
            # A coordinator that never decided presumes abort.
            real = coordinators.get(txid, "aborted")
            if decided is not None and decided in forged and decided != real:
                self._fail("F", txid, f"{pid} ended {decided} on a forged decision; its "
                                      f"coordinator decided {real}")
        for txid, where in sorted(unfinished.items()):
            if txid in for_an_operator:
                continue
            self._fail("L", txid, f"still unfinished after the liveness phase at {where}")
        for pid, txid in sorted(self._held):
            decided = self._decided.get((pid, txid))
            if decided is not None and txid not in unfinished:
                self._fail("R", txid, f"the resource at {pid} still holds its prepared branch, "
                                      f"though {pid} ended the transaction {decided}")


class SagaShape(msgspec.Struct, frozen=True):
    """What the saga checker needs of one saga: its DAG, pivot and scripted stuck step."""

    deps: tuple[tuple[int, ...], ...]
    pivot: int = -1
    stuck: int = -1

    def descendants(self) -> list[frozenset[int]]:
        """For each step, the steps that depend on it, directly or not."""
        below: list[set[int]] = [set() for _ in self.deps]
        for k in range(len(self.deps) - 1, -1, -1):
            for d in self.deps[k]:
                below[d] |= below[k] | {k}
        return [frozenset(b) for b in below]

    def after_pivot(self) -> frozenset[int]:
        """The steps that depend on the pivot (retried until they succeed)."""
        if self.pivot < 0:
            return frozenset()
        return self.descendants()[self.pivot]


class SagaChecker:
    """Checks G1-G5 and liveness of simulated sagas from their effective journals."""

    def __init__(self, shapes: dict[str, SagaShape]) -> None:
        self.shapes = shapes
        self._below = {sid: shape.descendants() for sid, shape in shapes.items()}
        self.journal: dict[str, list[tuple[int, StepOp]]] = {}
        self.violations: list[Violation] = []
        self.now_s = 0.0
        self._refused: set[str] = set()

    def _fail(self, code: str, saga: str, detail: str) -> None:
        self.violations.append(Violation(code, self.now_s, saga, detail))

    def on_compensation_refused(self, saga: str, step: int) -> None:
        """A compensation scripted to fail for good was delivered (stuck is now expected)."""
        if step == self.shapes[saga].stuck:
            self._refused.add(saga)

    def on_effect(self, saga: str, step: int, op: StepOp, *, duplicate: bool) -> None:
        """An action or compensation of `saga` took effect at its service."""
        journal = self.journal.setdefault(saga, [])
        done = set(journal)
        name = f"{'T' if op is StepOp.ACTION else 'C'}{step}"
        journal.append((step, op))
        if (step, op) in done:
            how = "a duplicate delivery" if duplicate else "re-issued by the orchestrator"
            self._fail("G4" if duplicate else "G3", saga, f"{name} took effect twice ({how})")
            return
        shape = self.shapes[saga]
        below = self._below[saga][step]
        if op is StepOp.ACTION:
            if (step, StepOp.COMPENSATION) in done:
                self._fail("G1", saga, f"{name} took effect after its compensation")
            undone = sorted(d for d in range(len(shape.deps))
                            if step in self._below[saga][d]
                            and (d, StepOp.COMPENSATION) in done)
            if undone:
                self._fail("G1", saga, f"{name} took effect after its dependency was "
                                       f"compensated (C{undone[0]})")
            return
        if (step, StepOp.ACTION) not in done:
            self._fail("G1", saga, f"{name} took effect without its action T{step}")
        if shape.pivot >= 0 and (shape.pivot, StepOp.ACTION) in done:
            self._fail("G2", saga, f"{name} took effect after the pivot T{shape.pivot}")
        early = sorted(d for d in below
                       if (d, StepOp.ACTION) in done and (d, StepOp.COMPENSATION) not in done)
        if early:
            self._fail("G1", saga, f"{name} took effect before C{early[0]} (T{early[0]} "
                                   f"depends on T{step}): not in reverse order")

    def on_error(self, node: str, error: BaseException) -> None:
        """The orchestrator's runtime (or a step service) raised: always a bug."""
        cause = error.__cause__ or error.__context__
        detail = f"{node} raised {error!r}" + (f" (caused by {cause!r})" if cause else "")
        self._fail("E", "-", detail)

    def finish(self, ends: dict[str, str], pending: dict[str, bool]) -> None:
        """End-of-run checks, given each saga's end and the pending marks still set."""
        for saga, end in sorted(ends.items()):
            shape = self.shapes[saga]
            journal = self.journal.get(saga, [])
            acted = {s for s, op in journal if op is StepOp.ACTION}
            undone = {s for s, op in journal if op is StepOp.COMPENSATION}
            if end == "completed":
                if len(acted) != len(shape.deps) or undone:
                    self._fail("G1", saga, f"completed with actions {sorted(acted)} and "
                                           f"compensations {sorted(undone)}")
            elif end == "compensated":
                if acted - undone:
                    self._fail("G1", saga, f"compensated but T{sorted(acted - undone)} "
                                           f"were never undone")
                if shape.pivot >= 0 and shape.pivot in acted:
                    self._fail("G2", saga, f"compensated after its pivot T{shape.pivot}")
            elif end == "stuck":
                if saga not in self._refused:
                    self._fail("L", saga, "stuck though no compensation it ran is scripted "
                                          "to fail for good")
            elif end == "lost":
                if journal:
                    self._fail("L", saga, f"lost after a restart with effects {journal}")
            elif end != "not-submitted":
                self._fail("L", saga, f"still {end} after the liveness phase")
            if end in ("completed", "compensated") and pending.get(saga):
                self._fail("G5", saga, f"ended {end} with its pending mark still set")

