"""The saga simulator: scenarios, the G1-G5 checkers, mutation tests and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from dtxn.protocols.saga.records import StepOp
from dtxn.runtime.cli import main
from dtxn.runtime.sim.invariants import SagaChecker, SagaShape
from dtxn.runtime.sim.sagas import (
    SagaFault,
    SagaScenario,
    SagaSimulationFailure,
    SagaSpec,
    definition_of,
    random_scenario,
    run,
    schedule_seed,
    sweep,
)
from dtxn.testing import saga_scenarios
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

LINEAR3 = ((), (0,), (1,))
# Mutants must be caught within this many random schedules of a sweep.
MUTANT_SCHEDULES_MAX = 50


def one(spec: SagaSpec, *faults: SagaFault, duplicate: float = 0.0) -> SagaScenario:
    return SagaScenario(seed=7, sagas=(spec,), faults=faults, duplicate=duplicate)


# -- scenarios and determinism ----------------------------------------------------------


def test_a_saga_scenario_reads_back_from_its_text() -> None:
    for seed in range(30):
        scenario = random_scenario(seed)
        assert SagaScenario.parse(scenario.text()) == scenario


def test_a_saga_schedule_replays_with_the_same_trace_hash() -> None:
    for seed in range(5):
        first = run(random_scenario(seed), raise_on_violation=False)
        again = run(random_scenario(seed), raise_on_violation=False)
        assert (first.trace_hash, first.events) == (again.trace_hash, again.events)


def test_saga_traces_do_not_depend_on_string_hash_randomization() -> None:
    program = (
        "from dtxn.runtime.sim.sagas import run, random_scenario\n"
        "print([run(random_scenario(s), raise_on_violation=False).trace_hash "
        "for s in range(6)])\n"
    )
    hashes = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout
        for hash_seed in (1, 2)
    }
    assert len(hashes) == 1


# -- the correct orchestrator and barrier --------------------------------------------------


def test_a_saga_without_faults_completes_with_every_action_once() -> None:
    result = run(one(SagaSpec(0.0, LINEAR3)))
    assert result.outcomes == {"s0": "completed"}
    effects = [d for _, what, d in result.trace if what == "effect"]
    assert [e[1:3] for e in effects] == [("k0", "action"), ("k1", "action"), ("k2", "action")]


def test_a_failing_step_compensates_the_completed_ones_in_reverse_order() -> None:
    result = run(one(SagaSpec(0.0, LINEAR3, fail=2)))
    assert result.outcomes == {"s0": "compensated"}
    effects = [d[1:3] for _, what, d in result.trace if what == "effect"]
    assert effects == [("k0", "action"), ("k1", "action"),
                       ("k1", "compensation"), ("k0", "compensation")]


def test_a_compensation_failing_for_good_leaves_the_saga_stuck_as_expected() -> None:
    result = run(one(SagaSpec(0.0, LINEAR3, fail=2, stuck=0)))
    assert result.outcomes == {"s0": "stuck"}
    assert result.violations == []


def test_a_saga_past_its_pivot_completes_despite_flaky_later_steps() -> None:
    scenario = SagaScenario(seed=3, sagas=(SagaSpec(0.0, LINEAR3, pivot=1),), flaky=0.5)
    assert run(scenario).outcomes == {"s0": "completed"}


def test_an_orchestrator_crash_mid_saga_resumes_without_repeating_an_effect() -> None:
    spec = SagaSpec(0.0, ((), (0,), (0,), (1, 2)), fail=3)
    for at_s in (0.005, 0.02, 0.05):
        result = run(one(spec, SagaFault(at_s, "crash"), SagaFault(at_s + 0.2, "restart"),
                         duplicate=0.5))
        assert result.outcomes == {"s0": "compensated"}


@pytest.mark.parametrize("kind", ["crashforce", "crashforced"])
def test_crashes_at_force_boundaries_keep_every_saga_invariant(kind: str) -> None:
    for at_s in (0.0, 0.01, 0.03):
        scenario = one(SagaSpec(0.0, LINEAR3, fail=2), SagaFault(at_s, kind),
                       SagaFault(0.5, "restart"), duplicate=0.3)
        result = run(scenario)
        assert result.outcomes["s0"] in ("compensated", "lost")


def test_random_saga_schedules_keep_every_invariant() -> None:
    stats = sweep(150, 2026)
    assert stats.violations == 0, stats.first_failure and stats.first_failure.text()
    assert stats.events > 150 * 20


# -- mutation tests: the tester bites -------------------------------------------------------


def test_an_orchestrator_compensating_in_forward_order_is_caught() -> None:
    with pytest.raises(SagaSimulationFailure) as caught:
        run(one(SagaSpec(0.0, LINEAR3, fail=2)), orchestrator="forward")
    assert {v.code for v in caught.value.violations} == {"G1"}
    assert "dtxn replay 'saga seed=7" in str(caught.value)
    stats = sweep(MUTANT_SCHEDULES_MAX, 1, orchestrator="forward")
    assert stats.violations > 0


def test_a_barrier_ignoring_duplicates_is_caught() -> None:
    with pytest.raises(SagaSimulationFailure) as caught:
        run(one(SagaSpec(0.0, LINEAR3), duplicate=1.0), barrier="ignore-duplicates")
    assert "G4" in {v.code for v in caught.value.violations}
    stats = sweep(MUTANT_SCHEDULES_MAX, 1, barrier="ignore-duplicates")
    assert stats.violations > 0


def test_mutants_are_caught_within_a_bounded_number_of_schedules_for_every_seed() -> None:
    for mutant in ({"orchestrator": "forward"}, {"barrier": "ignore-duplicates"}):
        for seed in range(3):
            for index in range(MUTANT_SCHEDULES_MAX):
                scenario = random_scenario(schedule_seed(seed, index))
                if run(scenario, raise_on_violation=False, **mutant).violations:
                    break
            else:
                pytest.fail(f"{mutant} survived {MUTANT_SCHEDULES_MAX} schedules of seed {seed}")


# Hypothesis, not only seeded sweeps: each mutant is found within this many
# generated scenarios (derandomized, so the bound is checked the same way every
# run), and the correct orchestrator and barrier pass the very same search.
HYPOTHESIS_EXAMPLES_MAX = 40
SEARCH = settings(
    max_examples=HYPOTHESIS_EXAMPLES_MAX,
    database=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
    deadline=None,
)
DAG4 = ((), (0,), (0,), (1, 2))
MUTANTS = [
    pytest.param({"orchestrator": "forward"}, {"G1"}, id="compensates-in-forward-order"),
    pytest.param({"barrier": "ignore-duplicates"}, {"G3", "G4"}, id="barrier-ignores-duplicates"),
]


def hypothesis_search(shape: tuple[tuple[int, ...], ...], variant: dict[str, str],
                      codes: set[str]) -> tuple[SagaScenario, int]:
    """The first generated scenario in which `variant` breaks one of `codes`, and its rank."""
    tried = 0

    def breaks(scenario: SagaScenario) -> bool:
        nonlocal tried
        tried += 1
        result = run(scenario, raise_on_violation=False, hash_trace=False, **variant)
        return bool(codes & {v.code for v in result.violations})

    definition = definition_of(0, SagaSpec(0.0, shape))
    return find(saga_scenarios(definition), breaks, settings=SEARCH), tried


@pytest.mark.parametrize("shape", [LINEAR3, DAG4], ids=["linear", "dag"])
@pytest.mark.parametrize(("variant", "codes"), MUTANTS)
def test_hypothesis_catches_each_saga_mutant_within_a_bounded_number_of_examples(
    shape: tuple[tuple[int, ...], ...], variant: dict[str, str], codes: set[str]
) -> None:
    scenario, tried = hypothesis_search(shape, variant, codes)
    assert tried <= HYPOTHESIS_EXAMPLES_MAX
    with pytest.raises(SagaSimulationFailure, match="dtxn replay 'saga seed="):
        run(SagaScenario.parse(scenario.text()), **variant)


@pytest.mark.parametrize("shape", [LINEAR3, DAG4], ids=["linear", "dag"])
def test_the_correct_orchestrator_and_barrier_pass_the_same_hypothesis_search(
    shape: tuple[tuple[int, ...], ...],
) -> None:
    with pytest.raises(NoSuchExample):
        hypothesis_search(shape, {}, {"G1", "G2", "G3", "G4", "G5", "L", "E"})


# -- the checker on its own ------------------------------------------------------------------


def checker(pivot: int = -1, stuck: int = -1) -> SagaChecker:
    return SagaChecker({"s": SagaShape(LINEAR3, pivot, stuck)})


def test_the_saga_checker_flags_compensations_out_of_reverse_order() -> None:
    c = checker()
    for step in (0, 1):
        c.on_effect("s", step, StepOp.ACTION, duplicate=False)
    c.on_effect("s", 0, StepOp.COMPENSATION, duplicate=False)
    assert [v.code for v in c.violations] == ["G1"]


def test_the_saga_checker_flags_an_action_after_its_compensation() -> None:
    c = checker()
    c.on_effect("s", 0, StepOp.ACTION, duplicate=False)
    c.on_effect("s", 0, StepOp.COMPENSATION, duplicate=False)
    c.on_effect("s", 1, StepOp.ACTION, duplicate=False)
    assert [v.code for v in c.violations] == ["G1"]


def test_the_saga_checker_flags_a_compensation_after_the_pivot() -> None:
    c = checker(pivot=1)
    c.on_effect("s", 0, StepOp.ACTION, duplicate=False)
    c.on_effect("s", 1, StepOp.ACTION, duplicate=False)
    c.on_effect("s", 0, StepOp.COMPENSATION, duplicate=False)
    assert "G2" in {v.code for v in c.violations}


def test_the_saga_checker_tells_a_re_issued_effect_from_a_duplicated_one() -> None:
    c = checker()
    c.on_effect("s", 0, StepOp.ACTION, duplicate=False)
    c.on_effect("s", 0, StepOp.ACTION, duplicate=False)
    c.on_effect("s", 0, StepOp.ACTION, duplicate=True)
    assert [v.code for v in c.violations] == ["G3", "G4"]


def test_the_saga_checker_flags_pending_marks_and_unexpected_ends() -> None:
    c = checker()
    for step in (0, 1, 2):
        c.on_effect("s", step, StepOp.ACTION, duplicate=False)
    c.finish({"s": "completed"}, {"s": True})
    assert [v.code for v in c.violations] == ["G5"]
    c = checker()
    c.finish({"s": "stuck"}, {})
    assert [v.code for v in c.violations] == ["L"]
    c = checker(stuck=0)
    c.on_compensation_refused("s", 0)
    c.finish({"s": "stuck"}, {})
    assert c.violations == []


# -- the CLI -------------------------------------------------------------------------------


def test_simulate_saga_json_reports_exactly_the_four_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["simulate", "--protocol", "saga", "--schedules", "20", "--seed", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"schedules", "events", "violations", "schedules_per_s"}
    assert report["schedules"] == 20 and report["violations"] == 0 and code == 0


def test_simulate_saga_is_the_same_in_one_process_and_in_several(
    capsys: pytest.CaptureFixture[str],
) -> None:
    main(["simulate", "--protocol", "saga", "--schedules", "60", "--seed", "2", "--json"])
    alone = json.loads(capsys.readouterr().out)
    main(["simulate", "--protocol", "saga", "--schedules", "60", "--seed", "2", "--json",
          "--jobs", "2"])
    split = json.loads(capsys.readouterr().out)
    assert (alone["events"], alone["violations"]) == (split["events"], split["violations"])


def test_replay_prints_a_saga_schedule_trace(capsys: pytest.CaptureFixture[str]) -> None:
    text = one(SagaSpec(0.0, LINEAR3, fail=2), SagaFault(0.01, "crash"),
               SagaFault(0.2, "restart")).text()
    assert main(["replay", text]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {text}") and "effect" in out and "crash" in out
    assert "'s0': 'compensated'" in out


def test_replay_rejects_a_garbled_saga_schedule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "saga seed=1 ; bogus@1"]) == 2
    assert "cannot read saga schedule" in capsys.readouterr().err
