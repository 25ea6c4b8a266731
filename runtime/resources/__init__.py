"""dtxn.runtime.resources: what a user plugs in as a participant.

- `SqliteResource` (`resources.sqlite`): rows in a SQLite file, with row locks,
  an undo log and prepared-branch markers; see docs/sqlite_resource.md.
- `resources.postgres.PostgresResource`: PostgreSQL prepared transactions
  (needs the `dtxn[postgres]` extra, so it is imported from its own module).
- `resources.barrier_sqlite`: the saga idempotency barrier on SQLite.
- `resources.semantic_locks`: semantic locks for saga isolation.
"""

from dtxn.runtime.resources.barrier_sqlite import SqliteBarrier
from dtxn.runtime.resources.sqlite import (
    LOCK_WAIT_S,
    RowLocked,
    SqliteBranch,
    SqliteResource,
    SqliteResourceError,
    UndoCorrupt,
    pending_txid,
)

__all__ = [
    "LOCK_WAIT_S",
    "RowLocked",
    "SqliteBarrier",
    "SqliteBranch",
    "SqliteResource",
    "SqliteResourceError",
    "UndoCorrupt",
    "pending_txid",
]
