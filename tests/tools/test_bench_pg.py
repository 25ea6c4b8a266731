"""`dtxn.bench.pg` at a tiny size on a real private server: its figures' shape and its checks.

The figures themselves are not asserted (the machine is shared); the
correctness checks are, and one test breaks a branch on purpose to show
that they catch money that vanished.
"""

from __future__ import annotations

from typing import Any

import pytest
from dtxn.bench import pg

TINY = (3, 0.5)  # three transactions per client task, at most half a second per cell


def test_the_quick_suite_measures_every_cell_and_checks_each_one() -> None:
    out = pg.run(quick=True, concurrency=(1, 2), sizes=TINY)
    cells = {(r["system"], r["concurrency"]) for r in out["results"]}
    assert cells == {(s, c) for s in pg.SYSTEMS for c in (1, 2)}
    for r in out["results"]:
        assert r["committed"] > 0, r
        for key in ("tx_per_s", "p50_ms", "p99_ms", "vs_one_db", "p50_vs_one_db"):
            assert isinstance(r[key], float), (key, r)
        assert "check" not in r
    assert out["skipped_concurrency"] == []
    assert out["fsync"] is True and out["rounds"] == 1
    assert len(out["checks"]) == len(cells)
    moved = 0
    for check in out["checks"]:
        assert check["total_unchanged"] is True
        assert check["prepared_left"] == 0
        assert check["moved_found"] == check["moved_expected"]
        moved = max(moved, check["moved_expected"])
    # Both cross-database systems moved money (warm-up included), one per committed transfer.
    two_db_and_dtxn = sum(r["committed"] for r in out["results"] if r["system"] != "one-db")
    assert moved >= two_db_and_dtxn > 0


def test_a_transfer_that_lands_in_one_database_only_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def debit_only(conn: Any, payload: Any) -> None:
        account, delta = payload
        if delta < 0:  # the credit at bank_b is dropped: money vanishes
            await conn.execute(pg.MOVE, int(account), int(delta))

    monkeypatch.setattr(pg, "_branch", debit_only)
    with pytest.raises(pg.CheckFailed, match="total_unchanged': False"):
        pg.run(quick=True, systems=("dtxn-2pc",), concurrency=(1,), sizes=TINY)
