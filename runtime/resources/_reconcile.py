"""What a resource's own prepared state must become, by the log of the runtime hosting it.

A resource with durable prepared state of its own (SQLite markers, PostgreSQL
gids) can disagree with the participant's log after a crash: the participant
forced p-abort (it answered an inquiry "abort" while its `prepare` was still
running) and crashed before `resource.abort` ran; or it forced nothing at all
(it crashed before PREPARED). The log is the truth, so `fate` tells a
resource, per prepared txid, what to do:

- ABORT: the log says the branch aborted, or does not know it (it was never
  voted YES: presumed abort). Roll it back.
- COMMIT: the log says the branch committed. Commit it.
- PROTOCOL: the transaction is live here (in doubt, committing, aborting,
  preparing): leave it to the protocol, which will finish it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from dtxn.runtime._runtime import UnknownTransaction

if TYPE_CHECKING:
    from dtxn.runtime._runtime import Runtime

# Role values `Runtime.status` reports once a participant has ended (its
# `finished` outcomes) or is in a final machine state.
_ENDED_ABORTED = frozenset({"aborted", "read_only"})
_ENDED_COMMITTED = frozenset({"committed"})


class Fate(enum.Enum):
    ABORT = "abort"
    COMMIT = "commit"
    PROTOCOL = "protocol"


def fate(runtime: Runtime, resource: object, txid: str) -> Fate:
    """What `runtime`'s log says `resource`'s prepared branch of `txid` must become.

    Only the participants that host `resource` on `runtime` count (the
    coordinator on the same node may know the txid too). When `runtime` does
    not host `resource`, a txid it knows in any role is left to the protocol.
    """
    mine = [key for key, hosted in runtime.resources.items() if hosted is resource]
    try:
        roles = runtime.status(txid).roles
    except UnknownTransaction:
        return Fate.ABORT
    if not mine:
        return Fate.PROTOCOL if roles else Fate.ABORT
    states = [roles[key] for key in mine if key in roles]
    if not states:
        return Fate.ABORT
    if all(state in _ENDED_ABORTED for state in states):
        return Fate.ABORT
    if all(state in _ENDED_COMMITTED for state in states):
        return Fate.COMMIT
    return Fate.PROTOCOL


__all__ = ["Fate", "fate"]
