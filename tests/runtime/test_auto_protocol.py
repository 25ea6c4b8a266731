"""protocol="auto": the chooser's pick runs, and is recorded in the WAL, the log and the trace."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from dtxn.protocols.choose import Capabilities, NoProtocolFits, Requirements
from dtxn.protocols.errors import ConfigError
from dtxn.protocols.messages import Protocol
from dtxn.protocols.records import CoordChose
from dtxn.runtime import InProcessTransport, Runtime
from dtxn.runtime.hosting import LOG_DECODER
from dtxn.runtime.wal import read_wal
from nodes import Ledger

pytestmark = pytest.mark.anyio

PIDS = ("a@n", "b@n")
ATOMIC = Capabilities(prepare=True)
THREE_PC = Capabilities(prepare=True, pre_commit=True)


def runtime(tmp_path: Path) -> Runtime:
    return Runtime(
        "n", wal_path=tmp_path / "n.db", resources={"a": Ledger(), "b": Ledger()},
        telemetry=False,
    )


def chose_records(path: Path) -> list[CoordChose]:
    records = [LOG_DECODER.decode(entry.data).record for entry in read_wal(path)]
    return [r for r in records if isinstance(r, CoordChose)]


@pytest.mark.parametrize(
    ("must_not_block", "caps", "expected", "rule"),
    [(False, ATOMIC, Protocol.TWO_PC, 3), (True, THREE_PC, Protocol.THREE_PC, 4)],
)
async def test_auto_runs_the_protocol_the_decision_table_picks_and_records_why(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    must_not_block: bool,
    caps: Capabilities,
    expected: Protocol,
    rule: int,
) -> None:
    traced: list[tuple[str, str, Any]] = []
    requirements = Requirements(
        consistency="strong", must_not_block_on_coordinator_failure=must_not_block
    )
    caplog.set_level(logging.INFO, logger="dtxn.runtime")
    async with runtime(tmp_path) as rt:
        rt.on_trace(lambda txid, actor, what, detail: traced.append((txid, what, detail)))
        outcome = await rt.transact(
            {pid: 1 for pid in PIDS},
            protocol="auto",
            requirements=requirements,
            capabilities={pid: caps for pid in PIDS},
        )
    assert outcome.committed
    [chose] = chose_records(tmp_path / "n.db")
    assert (chose.txid, chose.protocol, chose.rule) == (outcome.txid, expected, rule)
    assert chose.reason
    assert (outcome.txid, "chose", chose) in traced
    # The protocol that ran is the one chosen: 3PC forces a pre-commit record.
    forced = {type(detail).__name__ for _, what, detail in traced if what == "forced"}
    assert ("CoordPreCommitted" in forced) is (expected is Protocol.THREE_PC)
    [line] = [r for r in caplog.records if "chose" in r.getMessage()]
    assert line.txid == outcome.txid  # type: ignore[attr-defined]


async def test_recovery_skips_a_choice_the_coordinator_never_acted_on(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        outcome = await rt.transact(
            dict.fromkeys(PIDS),
            protocol="auto",
            requirements=Requirements(consistency="strong"),
            capabilities=dict.fromkeys(PIDS, ATOMIC),
        )
        # A choice whose transaction never got further (a crash right after it).
        rt._record_choice("lost-1", Protocol.TWO_PC, _choice())
    assert outcome.committed
    async with runtime(tmp_path) as rt:
        assert "lost-1" not in rt.coordinator.txns
        assert rt.status("lost-1").outcome == "aborted"


def _choice() -> Any:
    from dtxn.protocols.choose import Choice

    return Choice("2pc", "test", 3)


async def test_auto_without_requirements_or_capabilities_is_a_config_error(
    tmp_path: Path,
) -> None:
    async with runtime(tmp_path) as rt:
        with pytest.raises(ConfigError, match="needs requirements and capabilities"):
            await rt.transact(dict.fromkeys(PIDS), protocol="auto")
        with pytest.raises(ConfigError, match="needs capabilities"):
            await rt.transact(
                dict.fromkeys(PIDS), protocol="auto",
                requirements=Requirements(consistency="strong"),
            )
        with pytest.raises(ConfigError, match=r"none given for \['b@n'\]"):
            await rt.transact(
                dict.fromkeys(PIDS), protocol="auto",
                requirements=Requirements(consistency="strong"),
                capabilities={"a@n": ATOMIC},
            )
        with pytest.raises(ConfigError, match="need protocol='auto'"):
            await rt.transact(
                dict.fromkeys(PIDS), requirements=Requirements(consistency="strong")
            )


async def test_auto_choosing_a_saga_points_to_run_saga(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        with pytest.raises(ConfigError, match="run_saga"):
            await rt.transact(
                dict.fromkeys(PIDS), protocol="auto",
                requirements=Requirements(consistency="eventual"),
                capabilities=dict.fromkeys(PIDS, Capabilities(compensation=True)),
            )
    assert chose_records(tmp_path / "n.db") == []


async def test_auto_names_the_participant_no_protocol_fits(tmp_path: Path) -> None:
    async with runtime(tmp_path) as rt:
        with pytest.raises(NoProtocolFits, match="'b@n'"):
            await rt.transact(
                dict.fromkeys(PIDS), protocol="auto",
                requirements=Requirements(consistency="strong"),
                capabilities={"a@n": ATOMIC, "b@n": Capabilities(compensation=True)},
            )


NON_BLOCKING = Requirements(
    consistency="strong", must_not_block_on_coordinator_failure=True, partitions_possible=True
)


async def test_auto_runs_paxos_commit_where_no_blocking_and_partitions_rule_out_2pc_and_3pc(
    tmp_path: Path,
) -> None:
    transport = InProcessTransport()
    pids = ("ledger@bank-a", "ledger@bank-b")
    async with (
        Runtime("bank-a", transport=transport, wal_path=tmp_path / "a.db",
                resources={"ledger": Ledger()}, telemetry=False),
        Runtime("bank-b", transport=transport, wal_path=tmp_path / "b.db",
                resources={"ledger": Ledger()}, telemetry=False),
        Runtime("coord", transport=transport, wal_path=tmp_path / "c.db",
                telemetry=False) as rt,
    ):
        outcome = await rt.transact(
            dict.fromkeys(pids, 1), protocol="auto", requirements=NON_BLOCKING,
            capabilities=dict.fromkeys(pids, ATOMIC),
        )
        assert outcome.committed, outcome
    [chose] = chose_records(tmp_path / "c.db")
    assert (chose.txid, chose.protocol, chose.rule) == (outcome.txid, Protocol.PAXOS, 1)
    assert "acceptors" in chose.reason


async def test_auto_choosing_paxos_without_room_for_its_acceptors_changes_nothing(
    tmp_path: Path,
) -> None:
    """One node cannot host 2F+1 acceptors: a clear error, and no choice in the log."""
    async with runtime(tmp_path) as rt:
        with pytest.raises(ConfigError, match="acceptor"):
            await rt.transact(
                dict.fromkeys(PIDS, 1), protocol="auto", requirements=NON_BLOCKING,
                capabilities=dict.fromkeys(PIDS, ATOMIC),
            )
    assert chose_records(tmp_path / "n.db") == []
