"""`dtxn bench`: the protocol matrix's JSON shape, its narrowing flags, bad flags and the plots.

Every test narrows the matrix to one or two tiny cells on memory durability and
overrides the counts, so each run takes well under a second or two; no test
looks at the figures themselves (the machine is shared, speed is not asserted).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import ModuleType

import pytest
from dtxn.bench import report, txn
from dtxn.runtime.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--protocol", "2pc", "--participants", "1", "--concurrency", "1", "--durability", "memory"]


@pytest.fixture(autouse=True)
def tiny_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    # Three transactions per client task, at most half a second per cell.
    monkeypatch.setattr(txn, "run", functools.partial(txn.run, sizes=(3, 0.5)))


def bench_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["bench", "--json", "--no-plots", *argv]) == 0
    parsed: dict[str, object] = json.loads(capsys.readouterr().out)
    return parsed


def test_json_prints_one_object_with_results_and_baselines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = bench_json(capsys, *TINY)
    assert set(out) == {"results", "baselines"}
    results = out["results"]
    assert isinstance(results, list) and len(results) == 1
    cell = results[0]
    assert set(report.CELL_KEYS) <= set(cell)
    assert (cell["protocol"], cell["participants"], cell["concurrency"], cell["durability"]) == (
        "2pc", 1, 1, "memory",
    )
    for key in ("tx_per_s", "p50_ms", "p99_ms", "messages_per_tx", "fsyncs_per_tx"):
        assert isinstance(cell[key], float), key
    baselines = out["baselines"]
    assert isinstance(baselines, dict)
    assert set(baselines) == {"sqlite_forced_commits_per_s", "floor_2pc_tx_per_s"}
    assert isinstance(baselines["sqlite_forced_commits_per_s"], float)
    assert set(baselines["floor_2pc_tx_per_s"]) == {"1"}


def test_the_narrowing_flags_take_comma_separated_lists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = bench_json(
        capsys,
        "--protocol", "2pc,3pc", "--participants", "1,2", "--concurrency", "1,2",
        "--durability", "memory",
    )
    results = out["results"]
    assert isinstance(results, list)
    cells = {(c["protocol"], c["participants"], c["concurrency"], c["durability"])
             for c in results}
    assert cells == {
        (p, n, c, "memory") for p in ("2pc", "3pc") for n in (1, 2) for c in (1, 2)
    }
    baselines = out["baselines"]
    assert isinstance(baselines, dict)
    # One floor figure per concurrency run, keyed by the concurrency as a string.
    assert set(baselines["floor_2pc_tx_per_s"]) == {"1", "2"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--concurrency", "0"], "must be at least 1"),
        (["--concurrency", "1,many"], "'many' is not a whole number"),
        (["--participants", "1,,2"], "comma-separated list"),
        (["--protocol", "4pc"], "unknown protocol '4pc'"),
        (["--durability", "fast"], "unknown durability 'fast'"),
        (["--suite", "wal", "--protocol", "2pc"], "only narrow the txn suite"),
    ],
)
def test_bad_flag_values_exit_with_code_2_and_say_why(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *argv])
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err


def test_the_plots_are_written_as_png_files_and_their_paths_printed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["bench", *TINY]) == 0
    out = capsys.readouterr().out
    assert "baselines (same run, same disk)" in out
    for name in (report.THROUGHPUT_PNG, report.LATENCY_PNG):
        # The default folder is ./dtxn-bench.
        path = tmp_path / "dtxn-bench" / name
        assert path.read_bytes().startswith(PNG_SIGNATURE)
        assert f"plot: {path}" in out


def test_json_mode_keeps_stdout_to_the_object_and_writes_plots_to_out(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["bench", "--json", "--out", str(tmp_path / "plots"), *TINY]) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)) == {"results", "baselines"}
    assert "plot: " in captured.err
    assert (tmp_path / "plots" / report.THROUGHPUT_PNG).read_bytes().startswith(PNG_SIGNATURE)


def test_plots_are_skipped_with_a_message_when_matplotlib_is_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> ModuleType:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(report, "load_pyplot", missing)
    assert main(["bench", "--out", str(tmp_path / "plots"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "plots skipped: matplotlib is not installed" in out
    assert not (tmp_path / "plots").exists()


def test_other_suites_stay_reachable_and_all_narrows_only_the_txn_suite(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    calls: dict[str, dict[str, object]] = {}
    for name in ("actors", "wal", "sagas", "pg", "nats"):
        module = importlib.import_module(f"dtxn.bench.{name}")

        def stub(name: str = name, **kwargs: object) -> dict[str, object]:
            calls[name] = kwargs
            return {"suite": name}

        monkeypatch.setattr(module, "run", stub)
    assert main(["bench", "--suite", "sagas", "--quick", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sagas": {"suite": "sagas"}}
    assert calls == {"sagas": {"quick": True}}
    assert main(["bench", "--suite", "all", "--json", *TINY]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"actors", "wal", "txn", "sagas", "pg", "nats"}
    assert [(c["protocol"], c["concurrency"]) for c in out["txn"]["results"]] == [("2pc", 1)]
