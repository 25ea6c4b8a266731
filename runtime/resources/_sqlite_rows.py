"""The synchronous half of `SqliteResource`: the branch's row API, undo images and row locks.

Everything here runs on the aiosqlite connection's own thread, inside a local
transaction its caller opened with BEGIN IMMEDIATE. Nothing here commits; an
exception leaves the rollback to the caller, so a failure changes nothing.

Tables (created by `SCHEMA`, shared by every SqliteResource on the file):
- `dtxn_prepared(resource, txid, writes)`: one marker per prepared branch;
- `dtxn_undo(resource, txid, seq, tbl, op, key, image)`: one row per write,
  `key` the msgpack list of primary-key values, `image` the msgpack
  before-image (`[columns, values]`; NULL for an insert, whose undo is a delete);
- `dtxn_locks(tbl, key, resource, txid)`: primary key (tbl, key), so a row has
  at most one holder, from its prepare until its decision.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec
from dtxn.protocols.errors import DtxnError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dtxn_prepared (resource TEXT NOT NULL, txid TEXT NOT NULL,"
    " writes INTEGER NOT NULL, PRIMARY KEY (resource, txid))",
    "CREATE TABLE IF NOT EXISTS dtxn_undo (resource TEXT NOT NULL, txid TEXT NOT NULL,"
    " seq INTEGER NOT NULL, tbl TEXT NOT NULL, op TEXT NOT NULL, key BLOB NOT NULL, image BLOB,"
    " PRIMARY KEY (resource, txid, seq))",
    "CREATE TABLE IF NOT EXISTS dtxn_locks (tbl TEXT NOT NULL, key BLOB NOT NULL,"
    " resource TEXT NOT NULL, txid TEXT NOT NULL, PRIMARY KEY (tbl, key))",
    "CREATE INDEX IF NOT EXISTS dtxn_locks_by_txid ON dtxn_locks (resource, txid)",
)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder()
_VALUE_TYPES = (int, float, str, bytes, type(None))
_NUMBER = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
# What a branch may compile on its own: reads. Writes go through SqliteBranch.
_READ_ACTIONS = frozenset(
    {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
)
_ACTION_NAMES = {
    sqlite3.SQLITE_INSERT: "INSERT into",
    sqlite3.SQLITE_UPDATE: "UPDATE",
    sqlite3.SQLITE_DELETE: "DELETE from",
    sqlite3.SQLITE_TRANSACTION: "transaction control",
    sqlite3.SQLITE_SAVEPOINT: "SAVEPOINT",
    sqlite3.SQLITE_PRAGMA: "PRAGMA",
    sqlite3.SQLITE_ATTACH: "ATTACH",
}

Key = tuple[Any, ...]


class SqliteResourceError(DtxnError):
    """Raised when a SqliteResource or its branch is misused (bad txid, table, column or write)."""


class RowLocked(SqliteResourceError):
    """Raised when a branch touches a row another prepared transaction holds until its decision."""

    def __init__(self, message: str, *, holder: str, table: str, key: Key) -> None:
        super().__init__(message)
        self.holder = holder
        self.table = table
        self.key = key


class UndoCorrupt(SqliteResourceError):
    """Raised when abort finds an undo row it cannot read or apply; nothing is changed."""


class _Table:
    """A user table as the branch API sees it: canonical name, columns, primary key."""

    def __init__(self, db: sqlite3.Connection, table: str) -> None:
        if not isinstance(table, str) or not table.isidentifier():
            raise SqliteResourceError(f"table name {table!r} is not an identifier")
        if table.lower().startswith(("dtxn_", "sqlite_")):
            raise SqliteResourceError(f"table {table!r} belongs to dtxn or SQLite, not a branch")
        found = db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
            (table,),
        ).fetchone()
        if found is None:
            raise SqliteResourceError(f"no table {table!r} in the database")
        self.name = str(found[0])
        info = db.execute(f'PRAGMA table_info("{self.name}")').fetchall()
        self.columns = tuple(str(row[1]) for row in info)
        self.by_lower = {c.lower(): c for c in self.columns}
        ranked = sorted((row[5], str(row[1]), str(row[2])) for row in info if row[5] > 0)
        if not ranked:
            raise SqliteResourceError(
                f"table {self.name!r} has no PRIMARY KEY; SqliteResource identifies rows by it"
            )
        self.pk = tuple(name for _, name, _ in ranked)
        self.affinity = tuple(_affinity(decl) for _, _, decl in ranked)
        self.rowid_alias = len(ranked) == 1 and ranked[0][2].upper() == "INTEGER"
        self.where = " AND ".join(f'"{c}" = ?' for c in self.pk)
        self.select = f'SELECT {", ".join(_q(c) for c in self.columns)} FROM "{self.name}"'

    def column(self, name: str) -> str:
        if not isinstance(name, str) or not name.isidentifier():
            raise SqliteResourceError(f"column name {name!r} is not an identifier")
        found = self.by_lower.get(name.lower())
        if found is None:
            raise SqliteResourceError(f"table {self.name!r} has no column {name!r}")
        return found

    def key(self, key: Any) -> Key:
        """`key` as a tuple of primary-key values, converted as SQLite's column affinity would."""
        values = tuple(key) if isinstance(key, tuple | list) else (key,)
        if len(values) != len(self.pk):
            raise SqliteResourceError(
                f"key {key!r} of table {self.name!r} must give {len(self.pk)} value(s), for"
                f" {', '.join(self.pk)}"
            )
        pairs = zip(values, self.affinity, strict=True)
        return tuple(_normalize(value, affinity, self.name) for value, affinity in pairs)


class SqliteBranch:
    """What a branch writes through: each write records its undo image and locks its row.

    `conn` is the raw `sqlite3.Connection`, open for reads (SELECT); a write,
    transaction control or PRAGMA through it is refused (it could not be undone).
    """

    def __init__(self, db: sqlite3.Connection, resource: str, txid: str) -> None:
        self.conn = db
        self.resource = resource
        self.txid = txid
        self.writes = 0
        self.locks = 0
        self._tables: dict[str, _Table] = {}
        self._internal = False
        self._own_changes = 0
        self._denied: str | None = None

    def read(self, table: str, key: Any, *, lock: bool = False) -> dict[str, Any] | None:
        """The row of `table` with primary key `key` as a dict, or None; lock=True holds it."""
        with self._api():
            t, k = self._target(table, key)
            self._check_lock(t, k)
            row = self._select(t, k)
            if lock:
                self._lock(t, k)
        return None if row is None else dict(zip(t.columns, row, strict=True))

    def insert(self, table: str, row: Mapping[str, Any]) -> Key:
        """Insert `row` (column -> value); return its primary key (a generated rowid too)."""
        with self._api():
            t = self._table(table)
            given = {t.column(c): _value(v, t.name) for c, v in row.items()}
            key: Key | None = None
            if all(c in given for c in t.pk):
                key = t.key(tuple(given[c] for c in t.pk))
                self._check_lock(t, key)
            elif not t.rowid_alias:
                raise SqliteResourceError(
                    f"an insert into {t.name!r} must give its primary key {', '.join(t.pk)}"
                )
            cols = ", ".join(_q(c) for c in given)
            marks = ", ".join("?" for _ in given)
            cursor = self.conn.execute(
                f'INSERT INTO "{t.name}" ({cols}) VALUES ({marks})', tuple(given.values())
            )
            if key is None:
                key = (cursor.lastrowid,)
                # SQLite reuses the largest rowid once it is deleted: maybe by a prepared delete.
                self._check_lock(t, key)
            self._record(t, "insert", key, None)
        return key

    def update(self, table: str, key: Any, changes: Mapping[str, Any]) -> bool:
        """Set `changes` (column -> value) on the row `key`; False if there is no such row."""
        with self._api():
            t, k = self._target(table, key)
            sets = {t.column(c): _value(v, t.name) for c, v in changes.items()}
            moved = [c for c in sets if c in t.pk]
            if moved:
                raise SqliteResourceError(
                    f"update of {t.name!r} changes primary key column(s) {moved}: delete the"
                    " row and insert it under its new key instead"
                )
            self._check_lock(t, k)
            before = self._select(t, k)
            if before is None or not sets:
                return before is not None
            assignments = ", ".join(f"{_q(c)} = ?" for c in sets)
            self.conn.execute(
                f'UPDATE "{t.name}" SET {assignments} WHERE {t.where}', (*sets.values(), *k)
            )
            self._record(t, "update", k, before)
        return True

    def delete(self, table: str, key: Any) -> bool:
        """Delete the row `key`; False if there is no such row."""
        with self._api():
            t, k = self._target(table, key)
            self._check_lock(t, k)
            before = self._select(t, k)
            if before is None:
                return False
            self.conn.execute(f'DELETE FROM "{t.name}" WHERE {t.where}', k)
            self._record(t, "delete", k, before)
        return True

    def run(self, branch: Callable[[SqliteBranch, Any], object], payload: Any) -> None:
        """Call the branch with writes outside this API refused, then check it left none."""
        db = self.conn
        start = db.total_changes
        db.set_authorizer(self._authorize)
        try:
            branch(self, payload)
        except sqlite3.DatabaseError as exc:
            if self._denied is None:
                raise
            raise self._refusal() from exc
        finally:
            db.set_authorizer(None)
        if self._denied is not None:
            raise self._refusal()
        stray = db.total_changes - start - self._own_changes
        if stray or not db.in_transaction:
            raise SqliteResourceError(
                f"the branch of {self.txid!r} changed {stray} row(s) or ended the local"
                " transaction outside tx.insert/update/delete; that cannot be undone"
            )

    # -- internals ---------------------------------------------------------------

    @contextlib.contextmanager
    def _api(self) -> Iterator[None]:
        start = self.conn.total_changes
        self._internal = True
        try:
            yield
        finally:
            self._internal = False
            self._own_changes += self.conn.total_changes - start

    def _authorize(self, action: int, arg1: str | None, *_: str | None) -> int:
        if self._internal or action in _READ_ACTIONS:
            return sqlite3.SQLITE_OK
        if self._denied is None:
            what = _ACTION_NAMES.get(action, f"schema change (authorizer action {action})")
            self._denied = f"{what} {arg1 or ''}".strip()
        return sqlite3.SQLITE_DENY

    def _refusal(self) -> SqliteResourceError:
        return SqliteResourceError(
            f"the branch of {self.txid!r} tried {self._denied} through tx.conn; write with"
            " tx.insert/update/delete, which record what abort must undo"
        )

    def _table(self, table: str) -> _Table:
        found = self._tables.get(table)
        if found is None:
            found = self._tables[table] = _Table(self.conn, table)
        return found

    def _target(self, table: str, key: Any) -> tuple[_Table, Key]:
        t = self._table(table)
        return t, t.key(key)

    def _select(self, t: _Table, key: Key) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self.conn.execute(
            f"{t.select} WHERE {t.where}", key
        ).fetchone()
        return row

    def _check_lock(self, t: _Table, key: Key) -> None:
        holder = lock_holder(self.conn, t.name, key)
        if holder is not None and holder != (self.resource, self.txid):
            raise RowLocked(
                f"row {t.name}{list(key)} is locked by transaction {holder[1]!r} (prepared at"
                f" resource {holder[0]!r}, waiting for its decision); {self.txid!r} cannot"
                " touch it",
                holder=holder[1],
                table=t.name,
                key=key,
            )

    def _lock(self, t: _Table, key: Key) -> None:
        if lock_holder(self.conn, t.name, key) is None:
            self.conn.execute(
                "INSERT INTO dtxn_locks (tbl, key, resource, txid) VALUES (?, ?, ?, ?)",
                (t.name, _ENCODER.encode(list(key)), self.resource, self.txid),
            )
            self.locks += 1

    def _record(self, t: _Table, op: str, key: Key, before: tuple[Any, ...] | None) -> None:
        self.writes += 1
        image = None if before is None else _ENCODER.encode([list(t.columns), list(before)])
        self.conn.execute(
            "INSERT INTO dtxn_undo (resource, txid, seq, tbl, op, key, image)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (self.resource, self.txid, self.writes, t.name, op, _ENCODER.encode(list(key)), image),
        )
        self._lock(t, key)


def lock_holder(db: sqlite3.Connection, table: str, key: Key) -> tuple[str, str] | None:
    """(resource, txid) holding the row `key` of `table` (canonical name), or None."""
    row = db.execute(
        "SELECT resource, txid FROM dtxn_locks WHERE tbl = ? AND key = ?",
        (table, _ENCODER.encode(list(key))),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def pending_txid(db: sqlite3.Connection, table: str, key: Any) -> str | None:
    """The txid whose prepared, undecided change holds row `key` of `table`, or None.

    For readers outside dtxn, with their own `sqlite3.Connection`: what they
    read of such a row is the prepared value, which abort may still undo.
    """
    t = _Table(db, table)
    holder = lock_holder(db, t.name, t.key(key))
    return None if holder is None else holder[1]


def apply_undo(db: sqlite3.Connection, resource: str, txid: str) -> int:
    """Restore every before-image of `txid`, newest first; return how many were applied.

    All undo rows are read and checked before the first is applied, so a
    garbled row raises `UndoCorrupt` with nothing changed.
    """
    rows = db.execute(
        "SELECT seq, tbl, op, key, image FROM dtxn_undo WHERE resource = ? AND txid = ?"
        " ORDER BY seq DESC",
        (resource, txid),
    ).fetchall()
    steps = [_undo_step(db, resource, txid, *row) for row in rows]
    for sql, params, fallback in steps:
        try:
            cursor = db.execute(sql, params)
            if cursor.rowcount == 0 and fallback is not None:
                db.execute(*fallback)
        except sqlite3.Error as exc:
            raise SqliteResourceError(
                f"abort of {txid!r} at {resource!r} cannot restore a row ({exc}); was it"
                " changed by a writer outside dtxn? Nothing was changed."
            ) from exc
    return len(steps)


Statement = tuple[str, tuple[Any, ...]]


def _undo_step(
    db: sqlite3.Connection, resource: str, txid: str, seq: Any, tbl: Any, op: Any, key: Any,
    image: Any,
) -> tuple[str, tuple[Any, ...], Statement | None]:
    try:
        t = _Table(db, str(tbl))
        values = _DECODER.decode(key)
        if not isinstance(values, list) or len(values) != len(t.pk):
            raise ValueError(f"key {values!r} does not fit primary key {t.pk}")
        k = tuple(_value(v, t.name) for v in values)
        if op == "insert" and image is None:
            return f'DELETE FROM "{t.name}" WHERE {t.where}', k, None
        if op not in ("update", "delete") or not isinstance(image, bytes):
            raise ValueError(f"op {op!r} with image {image!r:.40}")
        columns, before = _DECODER.decode(image)
        cols = [_q(t.column(c)) for c in columns]
        row = tuple(_value(v, t.name) for v in before)
        if len(cols) != len(row) or not cols:
            raise ValueError(f"{len(cols)} columns but {len(row)} values")
    except (DtxnError, ValueError, TypeError, msgspec.DecodeError) as exc:
        raise UndoCorrupt(
            f"abort of {txid!r} at resource {resource!r}: undo row seq={seq} (table {tbl!r},"
            f" op {op!r}) is unreadable: {exc}; nothing was changed, the branch stays prepared"
        ) from exc
    insert = (
        f'INSERT INTO "{t.name}" ({", ".join(cols)}) VALUES ({", ".join("?" for _ in cols)})',
        row,
    )
    if op == "delete":
        return insert[0], insert[1], None
    assignments = ", ".join(f"{c} = ?" for c in cols)
    return f'UPDATE "{t.name}" SET {assignments} WHERE {t.where}', (*row, *k), insert


def _q(column: str) -> str:
    return f'"{column}"'


def _value(value: Any, table: str) -> Any:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, _VALUE_TYPES):
        raise SqliteResourceError(
            f"value {value!r} for table {table!r} is a {type(value).__name__}, not one of"
            " int, float, str, bytes or None"
        )
    return value


def _affinity(declared: str) -> str:
    """SQLite's column affinity for a declared type (section 3.1 of its datatype docs)."""
    d = declared.upper()
    if "INT" in d:
        return "INTEGER"
    if "CHAR" in d or "CLOB" in d or "TEXT" in d:
        return "TEXT"
    if "BLOB" in d or not d:
        return "BLOB"
    if "REAL" in d or "FLOA" in d or "DOUB" in d:
        return "REAL"
    return "NUMERIC"


def _normalize(value: Any, affinity: str, table: str) -> Any:
    """A key value as SQLite would store it, so that 1, 1.0 and '1' lock the same row."""
    value = _value(value, table)
    if value is None:
        raise SqliteResourceError(f"a primary key value of table {table!r} is None")
    numeric = affinity in ("INTEGER", "NUMERIC", "REAL")
    if isinstance(value, str) and numeric and _NUMBER.fullmatch(value):
        value = float(value) if any(ch in value for ch in ".eE") else int(value)
    if affinity in ("INTEGER", "NUMERIC") and isinstance(value, float) and value.is_integer():
        return int(value) if -(2**63) <= value < 2**63 else value
    if affinity == "REAL" and isinstance(value, int):
        return float(value)
    if affinity == "TEXT" and isinstance(value, int | float):
        return str(value) if isinstance(value, int) else repr(value)
    return value


__all__ = [
    "SCHEMA",
    "RowLocked",
    "SqliteBranch",
    "SqliteResourceError",
    "UndoCorrupt",
    "apply_undo",
    "lock_holder",
    "pending_txid",
]
