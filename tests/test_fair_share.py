"""The fair shares' decision, as a pure function: accounts with jobs waiting take turns in
proportion to their weights, however many jobs each has waiting."""

from __future__ import annotations

from collections import Counter

import pytest

from spool.domain.fair_share import InvalidPriority, Line, parse_priority, plan, priority_word


def test_accounts_take_turns_whatever_their_backlog() -> None:
    decided = plan(6, [Line("flood", 5000, 1, 0.0), Line("single", 1, 1, 0.0)])
    assert decided.order[:2] == ["flood", "single"]
    assert decided.order[2:] == ["flood"] * 4


def test_weights_share_the_starts_in_proportion() -> None:
    decided = plan(40, [Line("a", 100, 1, 0.0), Line("b", 100, 3, 0.0)])
    assert Counter(decided.order) == {"a": 10, "b": 30}


def test_the_least_served_account_goes_first_and_ties_go_to_who_waited_longest() -> None:
    decided = plan(3, [Line("old", 10, 1, 2.0), Line("new", 10, 1, 1.0)])
    assert decided.order == ["new", "old", "new"]
    assert decided.served == {"new": 3.0, "old": 3.0}


def test_no_account_is_given_more_than_it_has_waiting_nor_more_than_the_room() -> None:
    decided = plan(10, [Line("a", 2, 1, 0.0), Line("b", 1, 1, 0.0), Line("idle", 0, 1, 0.0)])
    assert Counter(decided.order) == {"a": 2, "b": 1}
    assert plan(0, [Line("a", 2, 1, 0.0)]).order == []


@pytest.mark.parametrize(
    ("asked", "number"), [("low", -10), ("normal", 0), ("high", 10), (-100, -100), (100, 100)]
)
def test_a_priority_is_a_word_or_a_number_in_range(asked: str | int, number: int) -> None:
    assert parse_priority(asked) == number


@pytest.mark.parametrize("asked", ["urgent", "", 101, -101, True])
def test_any_other_priority_is_refused(asked: str | int) -> None:
    with pytest.raises(InvalidPriority):
        parse_priority(asked)


def test_a_priority_shows_as_its_word_where_it_has_one() -> None:
    assert [priority_word(n) for n in (-10, 0, 10, 7)] == ["low", "normal", "high", 7]


def test_a_start_more_than_a_turn_before_every_other_account_is_on_credit() -> None:
    decided = plan(4, [Line("back", 2, 1, 5.0), Line("flood", 100, 1, 10.0)])
    assert decided.order == ["back", "back", "flood", "flood"]
    assert decided.early == [True, True, False, False]


def test_accounts_taking_turns_are_never_on_credit() -> None:
    decided = plan(6, [Line("a", 10, 1, 3.0), Line("b", 10, 1, 3.5), Line("c", 10, 2, 3.2)])
    assert not any(decided.early)
    assert not any(plan(3, [Line("alone", 10, 1, 0.0)]).early)


def test_starts_on_credit_may_go_beyond_the_room_up_to_their_own_bound() -> None:
    lines = [Line("back", 5, 1, 5.0), Line("flood", 100, 1, 10.0)]
    assert plan(0, lines, early_room=3).order == ["back"] * 3
    # Its fifth (virtual time 9) is within a turn of the flood's next: no longer on credit.
    assert plan(1, lines, early_room=10).order == ["back"] * 4
    assert plan(6, lines, early_room=10).order == ["back"] * 5 + ["flood"]
    assert plan(0, lines).order == []
    assert plan(0, [Line("a", 5, 1, 0.0), Line("b", 5, 1, 0.0)], early_room=3).order == []
