"""`choose_protocol`: every row of the decision table, every error, and no silent fallback."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from dtxn.protocols import choose
from dtxn.protocols.choose import (
    Capabilities,
    Choice,
    Consistency,
    NoProtocolFits,
    Requirements,
    choose_protocol,
)
from dtxn.protocols.errors import ConfigError
from hypothesis import given
from hypothesis import strategies as st

XA = Capabilities(prepare=True)
THREE_PC = Capabilities(prepare=True, pre_commit=True)
COMPENSATES = Capabilities(compensation=True)
EVERYTHING = Capabilities(prepare=True, pre_commit=True, compensation=True)
NOTHING = Capabilities()

ATOMIC = [Consistency.IMMEDIATE, Consistency.STRONG]


def needs(
    consistency: Consistency | str, *, non_blocking: bool = False, partitions: bool = False
) -> Requirements:
    return Requirements(
        consistency=consistency,
        must_not_block_on_coordinator_failure=non_blocking,
        partitions_possible=partitions,
    )


# -- the rows that choose -----------------------------------------------------------


@pytest.mark.parametrize("consistency", ATOMIC)
@pytest.mark.parametrize("partitions", [False, True])
def test_row_3_atomic_consistency_that_may_block_gets_2pc(
    consistency: Consistency, partitions: bool
) -> None:
    choice = choose_protocol(
        needs(consistency, partitions=partitions), {"bank-a": XA, "bank-b": EVERYTHING}
    )
    assert (choice.protocol, choice.rule) == ("2pc", 3)
    assert consistency.value in choice.reason and "blocking" in choice.reason
    assert "than 3PC or Paxos Commit" in choice.reason


@pytest.mark.parametrize("consistency", ATOMIC)
def test_row_4_atomic_consistency_that_must_not_block_without_partitions_gets_3pc(
    consistency: Consistency,
) -> None:
    choice = choose_protocol(
        needs(consistency, non_blocking=True), {"bank-a": THREE_PC, "bank-b": EVERYTHING}
    )
    assert choice == Choice("3pc", choice.reason, 4)
    assert "termination protocol" in choice.reason
    # Why not Paxos Commit, and the limit the caller accepts by saying "no partitions".
    assert "fewer messages than Paxos Commit: 6N against 4N(F+1)" in choice.reason
    assert "no process pauses" in choice.reason and "delayed or lost" in choice.reason
    assert "partitions_possible=True to get Paxos Commit" in choice.reason


@pytest.mark.parametrize("non_blocking", [False, True])
@pytest.mark.parametrize("partitions", [False, True])
def test_row_6_eventual_consistency_with_compensations_everywhere_gets_a_saga(
    non_blocking: bool, partitions: bool
) -> None:
    choice = choose_protocol(
        needs("eventual", non_blocking=non_blocking, partitions=partitions),
        {"hotel": COMPENSATES, "car": EVERYTHING},
    )
    assert (choice.protocol, choice.rule) == ("saga", 6)
    assert "compensate" in choice.reason


def test_consistency_may_be_given_by_its_name() -> None:
    assert choose_protocol(needs("strong"), {"a": XA}).protocol == "2pc"
    assert choose_protocol(needs("immediate", non_blocking=True), {"a": THREE_PC}).protocol == "3pc"
    assert choose_protocol(needs("strong", non_blocking=True), {"a": XA}).protocol == "paxos"


def assert_states_the_paxos_trade(reason: str) -> None:
    # What the caller gives up, and what Paxos Commit costs against 2PC.
    assert "F+1 of its 2F+1 acceptors" in reason
    assert "(N+1)(F+3)-2 messages and N+F+1 forced writes" in reason
    assert "2PC's 3N-1 and N+1" in reason
    assert "any timing, partitions and process pauses" in reason


@pytest.mark.parametrize("consistency", ATOMIC)
@pytest.mark.parametrize("caps", [XA, THREE_PC, EVERYTHING])
def test_row_1_atomic_and_non_blocking_under_partitions_gets_paxos_commit(
    consistency: Consistency, caps: Capabilities
) -> None:
    choice = choose_protocol(
        needs(consistency, non_blocking=True, partitions=True), {"a": caps, "b": EVERYTHING}
    )
    assert (choice.protocol, choice.rule) == ("paxos", 1)
    assert consistency.value in choice.reason and "partition" in choice.reason
    assert "all Paxos Commit needs" in choice.reason
    assert_states_the_paxos_trade(choice.reason)


@pytest.mark.parametrize("consistency", ATOMIC)
def test_row_1_still_refuses_a_participant_that_cannot_prepare_by_row_2(
    consistency: Consistency,
) -> None:
    with pytest.raises(NoProtocolFits, match="'hotel' cannot") as caught:
        choose_protocol(
            needs(consistency, non_blocking=True, partitions=True),
            {"bank": EVERYTHING, "hotel": COMPENSATES},
        )
    assert (caught.value.rule, caught.value.participants) == (2, ("hotel",))
    assert "Paxos Commit" in str(caught.value)


@pytest.mark.parametrize("consistency", ATOMIC)
def test_row_5_non_blocking_without_pre_commit_everywhere_gets_paxos_commit_naming_who(
    consistency: Consistency,
) -> None:
    choice = choose_protocol(
        needs(consistency, non_blocking=True),
        {"bank": THREE_PC, "legacy": XA, "old": XA},
    )
    assert (choice.protocol, choice.rule) == ("paxos", 5)
    assert "'legacy', 'old' cannot pre-commit" in choice.reason
    assert "needs only prepare" in choice.reason
    assert_states_the_paxos_trade(choice.reason)


# -- the rows that refuse --------------------------------------------------------------


@pytest.mark.parametrize("consistency", ATOMIC)
@pytest.mark.parametrize("non_blocking", [False, True])
def test_row_2_a_participant_that_cannot_prepare_is_named_not_silently_sent_to_a_saga(
    consistency: Consistency, non_blocking: bool
) -> None:
    with pytest.raises(NoProtocolFits, match="'hotel', 'mailer' cannot") as caught:
        choose_protocol(
            needs(consistency, non_blocking=non_blocking),
            {"mailer": COMPENSATES, "bank": EVERYTHING, "hotel": NOTHING},
        )
    assert caught.value.rule == 2
    assert caught.value.participants == ("hotel", "mailer")
    assert "consistency='eventual'" in str(caught.value)


def test_row_7_eventual_consistency_without_a_compensation_names_the_participant() -> None:
    with pytest.raises(NoProtocolFits, match="'bank' has none") as caught:
        choose_protocol(needs(Consistency.EVENTUAL), {"bank": XA, "hotel": COMPENSATES})
    assert (caught.value.rule, caught.value.participants) == (7, ("bank",))
    assert "strong consistency" in str(caught.value)


def test_no_protocol_fits_is_a_config_error() -> None:
    assert issubclass(NoProtocolFits, ConfigError)


# -- malformed input -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirements", "participants", "message"),
    [
        (needs("linearizable"), {"a": XA}, "unknown consistency 'linearizable'"),
        ({"consistency": "strong"}, {"a": XA}, "must be a Requirements"),
        (
            Requirements(consistency="strong", partitions_possible="yes"),  # type: ignore[arg-type]
            {"a": XA},
            "partitions_possible must be a bool",
        ),
        (needs("strong"), {}, "non-empty mapping"),
        (needs("strong"), ["a"], "non-empty mapping"),
        (needs("strong"), {"": XA}, "non-empty str"),
        (needs("strong"), {"a": {"prepare": True}}, "participant 'a': capabilities"),
        (needs("strong"), {"a": Capabilities(pre_commit=True)}, "pre_commit without prepare"),
    ],
)
def test_malformed_requirements_or_participants_are_config_errors(
    requirements: object, participants: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        choose_protocol(requirements, participants)  # type: ignore[arg-type]
    assert not isinstance(caught.value, NoProtocolFits)


# -- the whole table ---------------------------------------------------------------------

capabilities = st.builds(
    lambda prepare, pre_commit, compensation: Capabilities(
        prepare=prepare, pre_commit=prepare and pre_commit, compensation=compensation
    ),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)


@given(
    consistency=st.sampled_from(Consistency),
    non_blocking=st.booleans(),
    partitions=st.booleans(),
    participants=st.dictionaries(st.sampled_from("abcdef"), capabilities, min_size=1),
)
def test_every_answer_meets_every_requirement_or_names_why_none_can(
    consistency: Consistency,
    non_blocking: bool,
    partitions: bool,
    participants: dict[str, Capabilities],
) -> None:
    requirements = needs(consistency, non_blocking=non_blocking, partitions=partitions)
    try:
        choice = choose_protocol(requirements, participants)
    except NoProtocolFits as error:
        # Only a missing capability refuses now: every refusal names who lacks it.
        assert error.rule in (2, 7) and error.participants
        assert set(error.participants) <= set(participants)
        for name in error.participants:
            assert repr(name) in str(error)
        return
    everyone = participants.values()
    if choice.protocol == "saga":
        assert consistency is Consistency.EVENTUAL
        assert all(caps.compensation for caps in everyone)
    else:
        assert consistency is not Consistency.EVENTUAL
        assert all(caps.prepare for caps in everyone)
        if not non_blocking:
            assert choice.protocol == "2pc"
        elif partitions or not all(caps.pre_commit for caps in everyone):
            # 3PC would split under partitions, or cannot run: only Paxos Commit is left.
            assert choice.protocol == "paxos"
        else:
            assert choice.protocol == "3pc"
    assert choice == choose_protocol(requirements, participants)  # deterministic


def test_every_combination_reaches_exactly_one_documented_row() -> None:
    rows = set()
    for consistency, non_blocking, partitions, caps in itertools.product(
        Consistency, [False, True], [False, True], [NOTHING, XA, THREE_PC, COMPENSATES, EVERYTHING]
    ):
        requirements = needs(consistency, non_blocking=non_blocking, partitions=partitions)
        try:
            rows.add(choose_protocol(requirements, {"p": caps, "q": EVERYTHING}).rule)
        except NoProtocolFits as error:
            rows.add(error.rule)
    assert rows == {1, 2, 3, 4, 5, 6, 7}


# -- the documented tables are the code ----------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "choosing.md"

# What each participants phrase of the module's table means, as a mapping for the chooser.
PARTICIPANTS = {
    "all prepare": [{"p": XA, "q": EVERYTHING}, {"p": THREE_PC, "q": EVERYTHING}],
    "one cannot prepare": [{"p": COMPENSATES, "q": EVERYTHING}, {"p": NOTHING}],
    "all prepare and pre-commit": [{"p": THREE_PC, "q": EVERYTHING}],
    "one cannot pre-commit": [
        {"p": XA, "q": EVERYTHING},
        {"p": XA, "q": Capabilities(prepare=True, compensation=True)},
    ],
    "all compensate": [{"p": COMPENSATES, "q": EVERYTHING}],
    "one cannot compensate": [{"p": XA, "q": EVERYTHING}, {"p": NOTHING, "q": COMPENSATES}],
}
CONSISTENCY = {"immediate/strong": ATOMIC, "eventual": [Consistency.EVENTUAL]}
FLAG = {"yes": [True], "no": [False], "any": [False, True]}


def module_table() -> list[tuple[int, str, str, str, str, str]]:
    """The rows of the table in the module docstring, split on runs of two or more spaces."""
    assert choose.__doc__ is not None
    rows = []
    for line in choose.__doc__.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0].isdigit():
            row, consistency, non_blocking, partitions, participants, result = cells
            rows.append((int(row), consistency, non_blocking, partitions, participants, result))
    return rows


def docs_table() -> list[tuple[int, str, str, str, str, str]]:
    """docs/choosing.md's decision table, in the module table's words."""
    rows = []
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].isdigit():
            row, consistency, non_blocking, partitions, participants, result = cells
            bold = re.match(r"\*\*(.+?)\*\*", result)
            assert bold, f"row {row}: the result must start with a bold protocol or error"
            rows.append(
                (
                    int(row),
                    consistency.replace(" or ", "/"),
                    non_blocking,
                    partitions,
                    participants.replace("one or more", "one").replace("can ", ""),
                    {"Paxos Commit": "paxos"}.get(bold[1], bold[1].lower()),
                )
            )
    return rows


def test_the_module_table_is_what_choose_protocol_does_for_every_row() -> None:
    table = module_table()
    assert [row[0] for row in table] == [1, 2, 3, 4, 5, 6, 7]
    for row, consistency, non_blocking, partitions, participants, result in table:
        for level, nb, part, parts in itertools.product(
            CONSISTENCY[consistency], FLAG[non_blocking], FLAG[partitions],
            PARTICIPANTS[participants],
        ):
            requirements = needs(level, non_blocking=nb, partitions=part)
            if result == "error":
                with pytest.raises(NoProtocolFits) as caught:
                    choose_protocol(requirements, parts)
                assert caught.value.rule == row, (row, requirements, parts)
            else:
                choice = choose_protocol(requirements, parts)
                assert (choice.rule, choice.protocol) == (row, result), (requirements, parts)


def test_docs_choosing_md_has_the_module_table() -> None:
    assert docs_table() == module_table()


def test_chosen_protocol_lists_every_result_of_the_table() -> None:
    results = {row[-1] for row in module_table()} - {"error"}
    assert results == set(choose.ChosenProtocol.__args__)
