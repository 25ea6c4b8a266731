"""`Resource`: what a user implements to take part in a transaction as a participant.

    class Bank(Resource):
        async def prepare(self, txid: str, payload: Any) -> Vote: ...
        async def commit(self, txid: str) -> None: ...
        async def abort(self, txid: str) -> None: ...

Contract (the runtime relies on it):
- `prepare` does the branch's work and makes it durable-but-undecided, then
  answers YES (it will commit or abort on request, even after a crash), NO
  (it has undone its work itself; dtxn will not call abort for a NO) or
  READ_ONLY (it changed nothing; it is left out of phase two in 2PC).
  Raising from `prepare` counts as a NO vote, with the error as the reason.
- `commit` and `abort` may be called more than once for the same txid (after a
  crash, or when a decision is re-sent) and must be idempotent; `abort` may
  also be called for a txid that `prepare` answered YES while the decision was
  already abort, and, after a crash, for a txid whose `prepare` may not have
  run or finished at all (the participant aborted it on an inquiry while
  preparing): then it undoes whatever of that prepare is there, or nothing.
  A resource whose prepared state outlives the process should be
  `Recoverable`: a crash between its prepare and the forced PREPARED record
  leaves a branch the log never heard of, which only the resource can find.
  If they raise, the runtime retries them with backoff: the
  decision is final and must be applied.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dtxn.protocols.messages import Vote


@runtime_checkable
class Resource(Protocol):
    """A participant's local resource manager (a database branch, a service, ...)."""

    async def prepare(self, txid: str, payload: Any) -> Vote: ...

    async def commit(self, txid: str) -> None: ...

    async def abort(self, txid: str) -> None: ...


@runtime_checkable
class Recoverable(Protocol):
    """A resource with durable prepared state of its own, reconciled at start.

    `Runtime` calls `await resource.recover(runtime)` once its WAL is rebuilt
    and before the `async with` body runs; `runtime.status(txid)` then tells
    which prepared branches the protocol knows (it will resolve them) and
    which it does not (prepared before PREPARED was forced: roll them back).
    An error raised here fails the runtime's start.
    """

    async def recover(self, runtime: Any) -> None: ...


__all__ = ["Recoverable", "Resource", "Vote"]
