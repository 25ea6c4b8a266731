"""The write-ahead log: durability, group commit, discards, corruption, failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from dtxn.protocols.errors import ConfigError, LogCorruptError
from dtxn.runtime.wal import (
    Durability,
    GroupCommitWal,
    MemoryWal,
    SqliteWal,
    WalError,
    WalFormatError,
    WalFull,
    WalStore,
    make_wal,
    read_wal,
    record_checksum,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class Disk:
    """Where a node keeps its log: `store()` opens it again, as a restarted node would."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self._memory: MemoryWal | None = None

    def store(self) -> GroupCommitWal:
        if self.kind == "sqlite":
            return SqliteWal(self.path)
        if self._memory is None:
            self._memory = MemoryWal()
        return self._memory


@pytest.fixture(params=["sqlite", "memory"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Disk:
    return Disk(request.param, tmp_path / "node.wal")


@pytest.fixture
def wal_path(tmp_path: Path) -> Path:
    return tmp_path / "node.wal"


def summary(entries: list[Any]) -> list[tuple[int, str, str, bytes]]:
    return [(e.lsn, e.txid, e.kind, e.data) for e in entries]


@pytest.fixture
def sqlite_db(wal_path: Path) -> Iterator[sqlite3.Connection]:
    """A second, plain sqlite3 connection to the WAL file, for tampering with it."""
    with closing(sqlite3.connect(wal_path, isolation_level=None)) as db:
        yield db


# -- durability and order --------------------------------------------------------


async def test_forced_records_survive_closing_and_reopening(disk: Disk) -> None:
    async with disk.store() as store:
        assert await store.force("t1", "prepared", b"\x01\x02") == 1
        assert await store.force("t2", "commit", b"") == 2
    async with disk.store() as store:
        assert summary(await store.read_all()) == [
            (1, "t1", "prepared", b"\x01\x02"),
            (2, "t2", "commit", b""),
        ]


async def test_concurrent_forces_share_commits(disk: Disk) -> None:
    lsns: list[int] = []

    async def force(i: int) -> None:
        lsns.append(await store.force(f"t{i}", "prepared", b"x" * i))

    async with disk.store() as store, anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(force, i)
    stats = store.statistics()
    assert stats.forces == 200
    assert stats.commits < stats.forces
    assert stats.largest_batch > 1
    assert sorted(lsns) == list(range(1, 201))
    async with disk.store() as store:
        assert len(await store.read_all()) == 200


async def test_lazy_appends_before_a_force_become_durable_with_it() -> None:
    wal = MemoryWal()
    async with wal:
        wal.append("t1", "begin", b"a")
        wal.append("t2", "begin", b"b")
        assert wal.statistics().commits == 0
        assert await wal.force("t1", "commit", b"c") == 3
        assert wal.statistics().commits == 1
        wal.crash()
    assert [e.lsn for e in wal.entries()] == [1, 2, 3]


async def test_sqlite_lazy_appends_are_on_disk_once_a_later_force_returns(wal_path: Path) -> None:
    async with SqliteWal(wal_path) as store:
        store.append("t1", "begin", b"a")
        assert read_wal(wal_path) == []
        await store.force("t2", "prepared", b"b")
        assert summary(read_wal(wal_path)) == [
            (1, "t1", "begin", b"a"),
            (2, "t2", "prepared", b"b"),
        ]


async def test_lazy_appends_are_written_when_the_store_closes(disk: Disk) -> None:
    async with disk.store() as store:
        store.append("t1", "end", b"e")
    assert store.statistics().commits == 1
    async with disk.store() as store:
        assert summary(await store.read_all()) == [(1, "t1", "end", b"e")]


async def test_lazy_appends_are_committed_once_lazy_records_max_wait() -> None:
    wal = MemoryWal(lazy_records_max=3)
    async with wal:
        wal.append("t", "a", b"")
        wal.append("t", "b", b"")
        await wait_all_tasks_blocked()
        assert wal.statistics().commits == 0
        wal.append("t", "c", b"")
        await wait_all_tasks_blocked()
        assert wal.statistics().commits == 1
        assert [e.kind for e in wal.entries()] == ["a", "b", "c"]


async def test_records_come_back_in_lsn_order(disk: Disk) -> None:
    handed_in: list[tuple[str, str]] = []
    async with disk.store() as store:
        for i in range(30):
            txid, kind = f"t{i % 4}", f"k{i}"
            handed_in.append((txid, kind))
            if i % 3:
                store.append(txid, kind, b"")
            else:
                await store.force(txid, kind, b"")
    async with disk.store() as store:
        entries = await store.read_all()
    assert [e.lsn for e in entries] == list(range(1, 31))
    assert [(e.txid, e.kind) for e in entries] == handed_in


async def test_a_waiting_force_does_not_stop_others_from_appending_and_forcing() -> None:
    wal = MemoryWal()
    async with wal, anyio.create_task_group() as tg:
        wal.stall_commits()
        tg.start_soon(wal.force, "t1", "prepared", b"")
        await wait_all_tasks_blocked()
        wal.append("t2", "begin", b"")
        tg.start_soon(wal.force, "t2", "prepared", b"")
        await wait_all_tasks_blocked()
        assert [e.txid for e in wal.entries(pending=True)] == ["t2", "t2"]
        wal.resume_commits()
    assert [e.lsn for e in wal.entries()] == [1, 2, 3]
    assert wal.statistics().commits == 2


# -- discards and LSNs -------------------------------------------------------------


async def test_discard_removes_the_records_of_ended_transactions_only(disk: Disk) -> None:
    async with disk.store() as store:
        await store.force("t1", "prepared", b"")  # 1
        await store.force("t2", "prepared", b"")  # 2
        store.append("t1", "commit", b"")  # 3
        store.discard(["t1"])
        store.append("t1", "begin", b"reused")  # 4: handed in after the discard, kept
        await store.force("t3", "prepared", b"")  # 5
        assert [e.lsn for e in await store.read_all()] == [2, 4, 5]
        assert store.statistics().discards == 1
    async with disk.store() as store:
        assert [e.lsn for e in await store.read_all()] == [2, 4, 5]


async def test_discard_before_keeps_the_tombstone_and_later_records(disk: Disk) -> None:
    async with disk.store() as store:
        await store.force("t1", "started", b"")  # 1
        store.append("t1", "step", b"")  # 2
        end = await store.force("t1", "finished", b"")  # 3
        await store.force("t2", "started", b"")  # 4
        store.discard(["t1"], before=end)
        await store.force("t2", "finished", b"")  # 5
        assert [(e.lsn, e.kind) for e in await store.read_all()] == [
            (3, "finished"), (4, "started"), (5, "finished"),
        ]
        # A bound past the next LSN deletes no record handed in later.
        store.discard(["t2"], before=10_000)
        store.append("t2", "again", b"")  # 6
    async with disk.store() as store:
        assert [e.lsn for e in await store.read_all()] == [3, 6]
        for bad in (0, -1, True, 1.5, "3"):
            with pytest.raises(TypeError, match="positive LSN"):
                store.discard(["t1"], before=bad)  # type: ignore[arg-type]
        assert [e.lsn for e in await store.read_all()] == [3, 6]


async def test_drop_deletes_exactly_the_records_named(disk: Disk) -> None:
    async with disk.store() as store:
        # Two writers on one node log under the same txid; each drops its own.
        await store.force("t1", "coordinator", b"")  # 1
        await store.force("t1", "participant", b"")  # 2
        store.append("t1", "participant-end", b"")  # 3
        store.drop([2])
        await store.force("t2", "other", b"")  # 4
        assert [(e.lsn, e.kind) for e in await store.read_all()] == [
            (1, "coordinator"), (3, "participant-end"), (4, "other"),
        ]
        store.drop([99, 2])  # gone or never there: ignored
        store.drop(range(1, 2))
        assert store.statistics().drops == 4
    async with disk.store() as store:
        assert [e.lsn for e in await store.read_all()] == [3, 4]
        for bad in (0, -3, True, 2.0, "3"):
            with pytest.raises(TypeError, match="positive LSNs"):
                store.drop([bad])  # type: ignore[list-item]
        assert [e.lsn for e in await store.read_all()] == [3, 4]


async def test_discards_wait_for_a_batch_or_the_close(wal_path: Path) -> None:
    async with SqliteWal(wal_path, discard_batch=3) as store:
        for kind in ("a", "b", "c", "d"):
            await store.force("t1", kind, b"")  # 1-4
        store.drop([1, 2])
        await store.force("t2", "e", b"")  # 5: the two drops wait
        assert [e.lsn for e in await store.read_all()] == [1, 2, 3, 4, 5]
        store.drop([3])
        await store.force("t2", "f", b"")  # 6: three now, carried
        assert [e.lsn for e in await store.read_all()] == [4, 5, 6]
        store.drop([4])
    async with SqliteWal(wal_path) as store:  # closing carried the last one
        assert [e.lsn for e in await store.read_all()] == [5, 6]
    with pytest.raises(ConfigError, match="discard_batch"):
        SqliteWal(wal_path, discard_batch=2000)
    with pytest.raises(ConfigError, match="discard_batch"):
        SqliteWal(wal_path, discard_batch=0)


async def test_discard_refuses_a_single_str(disk: Disk) -> None:
    async with disk.store() as store:
        with pytest.raises(TypeError, match="iterable"):
            store.discard("t1")


async def test_lsns_keep_rising_after_every_record_is_discarded(disk: Disk) -> None:
    async with disk.store() as store:
        await store.force("t1", "prepared", b"")
        await store.force("t1", "commit", b"")
        store.discard(["t1"])
    async with disk.store() as store:
        assert await store.read_all() == []
        assert await store.force("t2", "prepared", b"") == 3


async def test_statistics_count_records_forces_commits_and_bytes(disk: Disk) -> None:
    async with disk.store() as store:
        store.append("t1", "begin", b"12")
        store.append("t2", "begin", b"345")
        await store.force("t1", "prepared", b"6789")
        await store.force("t2", "prepared", b"0")
        stats = store.statistics()
    assert stats.records_appended == 4
    assert stats.forces == 2
    assert stats.commits == 2
    assert stats.records_committed == 4
    assert stats.largest_batch == 3
    assert stats.mean_batch == 2.0
    assert stats.bytes_written == 10


def test_the_checksum_covers_lsn_txid_kind_and_data() -> None:
    base = record_checksum(7, "t1", "prepared", b"data")
    assert record_checksum(8, "t1", "prepared", b"data") != base
    assert record_checksum(7, "t2", "prepared", b"data") != base
    assert record_checksum(7, "t1", "commit", b"data") != base
    assert record_checksum(7, "t1", "prepared", b"date") != base
    # Field boundaries count: bytes cannot slide from one field to the next.
    assert record_checksum(7, "ab", "c", b"") != record_checksum(7, "a", "bc", b"")


# -- crashes and failures ------------------------------------------------------------


async def test_crash_keeps_exactly_the_forced_prefix() -> None:
    wal = MemoryWal()
    async with wal:
        wal.append("t1", "begin", b"")  # 1
        assert await wal.force("t1", "prepared", b"") == 2
        wal.append("t2", "begin", b"")  # 3
        wal.stall_commits()
        async with anyio.create_task_group() as tg:

            async def doomed() -> None:
                with pytest.raises(WalError, match="crashed"):
                    await wal.force("t2", "prepared", b"")  # 4, its commit in flight

            tg.start_soon(doomed)
            await wait_all_tasks_blocked()
            wal.append("t3", "begin", b"")  # 5, still in the buffer
            wal.crash()
        with pytest.raises(WalError, match="crashed"):
            wal.append("t3", "prepared", b"")
    assert [(e.lsn, e.kind) for e in wal.entries()] == [(1, "begin"), (2, "prepared")]
    async with wal:
        assert [e.lsn for e in await wal.read_all()] == [1, 2]
        assert await wal.force("t4", "prepared", b"") == 3


async def test_a_memory_commit_failure_reaches_every_waiting_force() -> None:
    wal = MemoryWal()
    errors: list[WalError] = []

    async def force(i: int) -> None:
        with pytest.raises(WalError) as info:
            await wal.force(f"t{i}", "prepared", b"")
        errors.append(info.value)

    async with wal:
        wal.stall_commits()
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(force, i)
            await wait_all_tasks_blocked()
            wal.fail_next_commit()
            wal.resume_commits()
        assert len(errors) == 5
        assert all("injected fsync error" in str(error) for error in errors)
        with pytest.raises(WalError, match="injected fsync error"):
            wal.append("t9", "begin", b"")
        with pytest.raises(WalError, match="injected fsync error"):
            await wal.force("t9", "prepared", b"")
    assert wal.entries() == []


async def test_a_sqlite_commit_failure_reaches_every_waiting_force(
    wal_path: Path, sqlite_db: sqlite3.Connection
) -> None:
    errors: list[WalError] = []

    async def force(i: int) -> None:
        with pytest.raises(WalError) as info:
            await store.force(f"t{i}", "prepared", b"")
        errors.append(info.value)

    async with SqliteWal(wal_path, busy_timeout_ms=0) as store:
        await store.force("t0", "prepared", b"")
        sqlite_db.execute("BEGIN IMMEDIATE")  # another writer holds the lock: commits fail
        try:
            async with anyio.create_task_group() as tg:
                for i in range(1, 6):
                    tg.start_soon(force, i)
        finally:
            sqlite_db.rollback()
        assert len(errors) == 5
        for error in errors:
            assert str(wal_path) in str(error)
            assert isinstance(error.__cause__, sqlite3.OperationalError)
        with pytest.raises(WalError, match="locked"):
            store.append("t9", "begin", b"")
    assert [e.txid for e in read_wal(wal_path)] == ["t0"]


async def test_cancelling_the_block_fails_waiting_forces_instead_of_leaving_them_hanging() -> None:
    wal = MemoryWal()
    errors: list[WalError] = []
    opened = anyio.Event()
    scope = anyio.CancelScope()

    async def node() -> None:
        with scope:
            async with wal:
                wal.stall_commits()
                opened.set()
                await anyio.Event().wait()

    async def transaction() -> None:
        await opened.wait()
        with pytest.raises(WalError, match="stopped before its records were durable") as info:
            await wal.force("t1", "prepared", b"")
        errors.append(info.value)

    async with anyio.create_task_group() as tg:
        tg.start_soon(node)
        tg.start_soon(transaction)
        await opened.wait()
        await wait_all_tasks_blocked()
        scope.cancel()
    assert len(errors) == 1
    assert wal.entries() == []


async def test_a_failure_no_caller_saw_is_raised_when_the_block_exits() -> None:
    wal = MemoryWal()
    with pytest.raises(WalError, match="injected fsync error"):
        async with wal:
            wal.append("t1", "end", b"")
            wal.fail_next_commit()


async def test_the_store_refuses_writes_when_it_is_not_open(disk: Disk) -> None:
    store = disk.store()
    with pytest.raises(WalError, match="not open"):
        store.append("t1", "begin", b"")
    with pytest.raises(WalError, match="not open"):
        await store.force("t1", "begin", b"")
    async with store:
        pass
    with pytest.raises(WalError, match="not open"):
        store.discard(["t1"])


async def test_append_raises_wal_full_and_force_waits_for_room() -> None:
    wal = MemoryWal(pending_records_max=4, lazy_records_max=4)
    async with wal:
        for kind in "abcd":
            wal.append("t1", kind, b"")
        with pytest.raises(WalFull):
            wal.append("t1", "e", b"")
        assert await wal.force("t1", "e", b"") == 5
    assert [e.kind for e in wal.entries()] == ["a", "b", "c", "d", "e"]


# -- corruption and format -----------------------------------------------------------


@pytest.mark.parametrize("column", ["data", "txid", "kind"])
async def test_a_flipped_byte_raises_log_corrupt_error_naming_the_lsn_and_file(
    wal_path: Path, sqlite_db: sqlite3.Connection, column: str
) -> None:
    async with SqliteWal(wal_path) as store:
        for i in range(3):
            await store.force(f"t{i}", "prepared", b"payload")
    (value,) = sqlite_db.execute(f"SELECT {column} FROM records WHERE lsn = 2").fetchone()
    raw = value.encode() if isinstance(value, str) else value
    flipped = bytes([raw[0] ^ 0x01]) + raw[1:]
    tampered = flipped.decode() if isinstance(value, str) else flipped
    sqlite_db.execute(f"UPDATE records SET {column} = ? WHERE lsn = 2", (tampered,))

    with pytest.raises(LogCorruptError, match="lsn=2") as info:
        read_wal(wal_path)
    assert str(wal_path) in str(info.value)
    async with SqliteWal(wal_path) as store:
        with pytest.raises(LogCorruptError, match="lsn=2"):
            await store.read_all()


async def test_a_row_of_the_wrong_type_is_reported_as_corrupt(
    wal_path: Path, sqlite_db: sqlite3.Connection
) -> None:
    async with SqliteWal(wal_path) as store:
        await store.force("t1", "prepared", b"payload")
    sqlite_db.execute("UPDATE records SET data = 'text' WHERE lsn = 1")
    with pytest.raises(LogCorruptError, match="lsn=1 has data of type str"):
        read_wal(wal_path)


async def test_a_flipped_byte_in_memory_raises_log_corrupt_error() -> None:
    wal = MemoryWal()
    async with wal:
        await wal.force("t1", "prepared", b"payload")
        wal.corrupt(1)
        with pytest.raises(LogCorruptError, match="lsn=1"):
            await wal.read_all()


async def test_a_sqlite_file_of_another_application_is_refused(
    wal_path: Path, sqlite_db: sqlite3.Connection
) -> None:
    sqlite_db.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(WalFormatError, match=r"is not a dtxn WAL.*users"):
        async with SqliteWal(wal_path):
            pass
    with pytest.raises(WalFormatError, match="is not a dtxn WAL"):
        read_wal(wal_path)
    # Refusing did not convert the file to a WAL journal.
    assert sqlite_db.execute("PRAGMA journal_mode").fetchone() == ("delete",)


async def test_a_file_that_is_not_a_database_is_refused(wal_path: Path) -> None:
    await anyio.Path(wal_path).write_bytes(
        b"this is a text file, not a dtxn write-ahead log\n" * 100
    )
    with pytest.raises(WalFormatError, match=r"is not a dtxn WAL.*not a database"):
        async with SqliteWal(wal_path):
            pass
    with pytest.raises(WalFormatError, match="not a database"):
        read_wal(wal_path)


async def test_a_wal_of_another_schema_version_is_refused(
    wal_path: Path, sqlite_db: sqlite3.Connection
) -> None:
    async with SqliteWal(wal_path):
        pass
    sqlite_db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(WalFormatError, match=r"schema version '2'.*reads version 1"):
        async with SqliteWal(wal_path):
            pass
    with pytest.raises(WalFormatError, match="schema version '2'"):
        read_wal(wal_path)


async def test_a_wal_with_the_wrong_records_table_is_refused(
    wal_path: Path, sqlite_db: sqlite3.Connection
) -> None:
    async with SqliteWal(wal_path):
        pass
    sqlite_db.execute("ALTER TABLE records ADD COLUMN extra TEXT")
    with pytest.raises(WalFormatError, match="columns"):
        async with SqliteWal(wal_path):
            pass


async def test_a_wal_of_another_node_is_refused(wal_path: Path) -> None:
    async with SqliteWal(wal_path, node="node-a"):
        pass
    with pytest.raises(ConfigError, match="WAL of node 'node-a', not of 'node-b'"):
        async with SqliteWal(wal_path, node="node-b"):
            pass


async def test_the_schema_is_version_1_as_documented(
    wal_path: Path, sqlite_db: sqlite3.Connection
) -> None:
    async with SqliteWal(wal_path, node="node-a") as store:
        await store.force("t1", "prepared", b"\x00")
    assert dict(sqlite_db.execute("SELECT key, value FROM meta")) == {
        "format": "dtxn-wal",
        "schema_version": "1",
        "node": "node-a",
    }
    columns = [(row[1], row[2]) for row in sqlite_db.execute("PRAGMA table_info(records)")]
    assert columns == [
        ("lsn", "INTEGER"),
        ("txid", "TEXT"),
        ("kind", "TEXT"),
        ("data", "BLOB"),
        ("checksum", "INTEGER"),
    ]
    assert [row[1] for row in sqlite_db.execute("PRAGMA index_list(records)")] == ["records_txid"]
    assert sqlite_db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    (checksum,) = sqlite_db.execute("SELECT checksum FROM records").fetchone()
    assert checksum == record_checksum(1, "t1", "prepared", b"\x00")


async def test_read_wal_reads_a_running_node_without_disturbing_it(wal_path: Path) -> None:
    async with SqliteWal(wal_path) as store:
        await store.force("t1", "prepared", b"")
        assert [e.lsn for e in read_wal(wal_path)] == [1]
        assert await store.force("t2", "prepared", b"") == 2
        assert [e.lsn for e in read_wal(wal_path)] == [1, 2]
    assert [e.lsn for e in read_wal(wal_path)] == [1, 2]
    with pytest.raises(ConfigError, match="no WAL"):
        read_wal(wal_path.with_name("missing.wal"))
    assert not wal_path.with_name("missing.wal").exists()


# -- durability modes and configuration ------------------------------------------------


@pytest.mark.parametrize(("durability", "synchronous"), [("full", "FULL"), ("normal", "NORMAL")])
async def test_the_durability_mode_sets_sqlite_synchronous(
    wal_path: Path, durability: str, synchronous: str
) -> None:
    store = make_wal(wal_path, durability=durability)
    assert isinstance(store, SqliteWal)
    async with store:
        assert await store.settings() == {"journal_mode": "wal", "synchronous": synchronous}


def test_memory_durability_makes_a_memory_wal() -> None:
    assert isinstance(make_wal(None, durability=Durability.MEMORY), MemoryWal)


def test_both_backends_implement_the_wal_store_port(wal_path: Path) -> None:
    stores: list[WalStore] = [MemoryWal(), SqliteWal(wal_path)]
    assert len(stores) == 2


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: make_wal(p, durability="fast"), "unknown WAL durability 'fast'"),
        (lambda p: make_wal(None), "give the WAL a path"),
        (lambda p: SqliteWal(p, durability="memory"), "use MemoryWal"),
        (lambda p: SqliteWal(p.parent), "is a directory"),
        (lambda p: SqliteWal(p.parent / "missing" / "node.wal"), "does not exist"),
        (lambda p: SqliteWal(""), "non-empty"),
        (lambda p: SqliteWal(":memory:"), "durability='memory'"),
        (lambda p: SqliteWal(42), "str or os.PathLike"),  # type: ignore[arg-type]
        (lambda p: SqliteWal(p, node=""), "node name"),
        (lambda p: SqliteWal(p, busy_timeout_ms=-1), "busy_timeout_ms"),
        (lambda p: MemoryWal(lazy_records_max=0), "lazy_records_max must be an int >= 1"),
        (lambda p: MemoryWal(pending_records_max=8, lazy_records_max=9), "must not exceed"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_wrong_configuration_raises_config_error(wal_path: Path, build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build(wal_path)
