"""`dtxn simulate` and `dtxn replay`."""

from __future__ import annotations

import json

import pytest
from dtxn.runtime.cli import main

SPLIT = (
    "3pc n=3 seed=0 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y,p3=y ; "
    "part@0.0025 c|p1,p2,p3 ; heal@5"
)


@pytest.mark.parametrize("protocol", ["2pc", "3pc"])
def test_simulate_json_reports_exactly_the_four_numbers(
    protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--protocol", protocol, "--schedules", "20", "--seed", "9", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"schedules", "events", "violations", "schedules_per_s"}
    assert report["schedules"] == 20 and isinstance(report["violations"], int)
    assert report["events"] > 20 * 20 and report["schedules_per_s"] > 0
    # A violation (found by the sweep, not by this format test) makes the exit status 1.
    assert code == (1 if report["violations"] else 0)


def test_simulate_is_the_same_in_one_process_and_in_several(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["simulate", "--schedules", "60", "--seed", "2", "--json"])
    alone = json.loads(capsys.readouterr().out)
    main(["simulate", "--schedules", "60", "--seed", "2", "--json", "--jobs", "2"])
    split = json.loads(capsys.readouterr().out)
    assert (alone["events"], alone["violations"]) == (split["events"], split["violations"])


def test_simulate_prints_a_summary_without_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--schedules", "5"]) == 0
    assert "5 schedules" in capsys.readouterr().out


def test_replay_prints_a_readable_trace(capsys: pytest.CaptureFixture[str]) -> None:
    text = "2pc n=2 seed=4 drop=0 dup=0 delay=0.001 jitter=0 ; tx@0 p1=y,p2=y ; crash@0.0015 c"
    assert main(["replay", text]) == 0
    out = capsys.readouterr().out
    assert "crash     c" in out
    assert "deliver   c->r@p1 Prepare(" in out
    assert "force     r@p1 t0 PartPrepared(" in out


def test_replay_of_a_violating_schedule_shows_it_and_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["replay", SPLIT]) == 1
    assert "VIOLATION S1" in capsys.readouterr().out


def test_replay_rejects_text_that_is_not_a_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "2pc ; nonsense@1 x"]) == 2
    assert "cannot read schedule" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["2pc", "saga"])
def test_simulate_show_prints_schedules_replay_runs_as_the_sweep_did(
    protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["simulate", "--protocol", protocol, "--schedules", "1", "--seed", "4", "--show", "1"])
    out = capsys.readouterr().out
    shown = [line for line in out.splitlines() if line.startswith("schedule 0: ")]
    assert len(shown) == 1, out
    swept_events = int(out.split(" schedules, ")[1].split(" events")[0])
    text = shown[0].removeprefix("schedule 0: ")
    main(["replay", text])
    replayed = capsys.readouterr().out
    assert f"# {swept_events} events," in replayed


def test_replay_wraps_long_details_under_their_column(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    main(["replay", SPLIT])
    lines = capsys.readouterr().out.splitlines()
    events = [line for line in lines if not line.startswith(("#", "VIOLATION"))]
    assert events and all(len(line) <= 80 for line in events), max(events, key=len)
    assert any(line.startswith(" " * 22) for line in events)  # a wrapped detail
