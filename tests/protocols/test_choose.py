"""`choose_protocol`: every row of the decision table, every error, and no silent fallback."""

from __future__ import annotations

import itertools

import pytest
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


@pytest.mark.parametrize("consistency", ATOMIC)
def test_row_4_atomic_consistency_that_must_not_block_without_partitions_gets_3pc(
    consistency: Consistency,
) -> None:
    choice = choose_protocol(
        needs(consistency, non_blocking=True), {"bank-a": THREE_PC, "bank-b": EVERYTHING}
    )
    assert choice == Choice("3pc", choice.reason, 4)
    assert "termination protocol" in choice.reason


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


# -- the rows that refuse --------------------------------------------------------------


@pytest.mark.parametrize("consistency", ATOMIC)
def test_row_1_atomic_and_non_blocking_under_partitions_is_refused_naming_the_constraint(
    consistency: Consistency,
) -> None:
    with pytest.raises(NoProtocolFits) as caught:
        choose_protocol(needs(consistency, non_blocking=True, partitions=True), {"a": EVERYTHING})
    error = caught.value
    assert error.rule == 1 and error.participants == ()
    message = str(error)
    assert "must_not_block_on_coordinator_failure" in message
    assert "partitions_possible" in message and "eventual" in message


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


@pytest.mark.parametrize("consistency", ATOMIC)
def test_row_5_non_blocking_needs_pre_commit_everywhere_and_names_who_lacks_it(
    consistency: Consistency,
) -> None:
    with pytest.raises(NoProtocolFits, match="'legacy' cannot") as caught:
        choose_protocol(
            needs(consistency, non_blocking=True), {"bank": THREE_PC, "legacy": XA}
        )
    assert (caught.value.rule, caught.value.participants) == (5, ("legacy",))
    assert "pre_commit" in str(caught.value) and "3PC" in str(caught.value)


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
        if non_blocking:
            assert choice.protocol == "3pc" and not partitions
            assert all(caps.pre_commit for caps in everyone)
        else:
            assert choice.protocol == "2pc"
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
