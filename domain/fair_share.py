"""Which waiting jobs start next: priority within an account, fair shares between accounts.

A job whose download may start waits in line (adapters/dispatch_queue.py) until the cluster has
room for it. When there is room for `free` more, `plan` decides how many of them each account
gets, by start-time fair queuing: each account has a virtual time, `served`, which grows by
1 / weight with each job it is given; the next job goes to the waiting account whose `served`
is least. So accounts with jobs waiting take turns (in proportion to their weights), however
many jobs each has waiting.

An account whose line was empty joins a bounded credit before the virtual time of those
waiting (the queue sets it as the account's first job joins): up to one cluster's worth of
download slots (`SPOOL_DISPATCH_BURST` of them), or at its own virtual time if that is later.
So a small account that comes back starts its handful of jobs at once rather than one every
other slot behind a flood, while a long quiet spell earns it no more than that one burst, and an
account that keeps coming back spends credit it has not earned back: its own virtual time is
later than the others' less the credit. (Linux's CFS gives a waking task the same bounded
credit.) Within an account, its waiting jobs go highest priority first, then oldest first: that
order is the queue's (its index), not this module's.
"""

from __future__ import annotations

import heapq
from typing import NamedTuple

from spool.domain.errors import DomainError

PRIORITY_WORDS: dict[str, int] = {"low": -10, "normal": 0, "high": 10}
"""The priority words a request may use in place of a number."""

PRIORITY_RANGE = (-100, 100)
"""The priorities a job may have; higher starts first among its account's waiting jobs."""

MAX_WEIGHT = 1000
"""The largest share an admin may give one account (an account's weight is 1 by default)."""


class InvalidPriority(DomainError):
    """A priority that is neither a known word nor a whole number in `PRIORITY_RANGE`."""


def parse_priority(value: str | int) -> int:
    """A request's `priority` as a number: a word of `PRIORITY_WORDS` or an integer in range."""
    if isinstance(value, bool):
        raise InvalidPriority("priority must be low, normal, high or a whole number")
    if isinstance(value, str):
        if value in PRIORITY_WORDS:
            return PRIORITY_WORDS[value]
        raise InvalidPriority(
            f"Invalid priority {value!r} (expected low, normal, high or a whole number "
            f"from {PRIORITY_RANGE[0]} to {PRIORITY_RANGE[1]})"
        )
    low, high = PRIORITY_RANGE
    if not low <= value <= high:
        raise InvalidPriority(f"priority must be from {low} to {high}")
    return value


def priority_word(value: int) -> str | int:
    """A priority as the API shows it: its word where it has one, else the number."""
    for word, number in PRIORITY_WORDS.items():
        if number == value:
            return word
    return value


class Line(NamedTuple):
    """One account's place in line: how many of its jobs wait, its weight, its virtual time."""

    account_id: str
    waiting: int
    weight: int
    served: float


class Plan(NamedTuple):
    """What `plan` decided: the accounts in the order their jobs go (one entry per job), and
    each chosen account's new virtual time; `early` says, for each entry of `order`, whether
    that start is on credit (more than a turn before every other waiting account's next), so
    it is owed a place before what the others were already sent."""

    order: list[str]
    served: dict[str, float]
    early: list[bool]


def plan(free: int, lines: list[Line], *, early_room: int = 0) -> Plan:
    """Give up to `free` starts to the waiting accounts of `lines`, least `served` first; ties
    go to the account listed first (callers list them by who has waited longest). Starts on
    credit may go beyond `free`, up to `early_room` more: they go before what the others were
    sent, so they need no room of their own."""
    heap = [(ln.served, i, ln) for i, ln in enumerate(lines) if ln.waiting > 0]
    heapq.heapify(heap)
    least = heapq.nsmallest(2, ((ln.served, ln.account_id) for ln in lines if ln.waiting > 0))
    order: list[str] = []
    early: list[bool] = []
    served: dict[str, float] = {}
    taken: dict[str, int] = {}
    beyond = 0
    while heap:
        at, rank, ln = heapq.heappop(heap)
        on_credit = at + 1.0 < _least_other(least, ln.account_id)
        if len(order) >= free:
            if not on_credit or beyond >= early_room:
                break
            beyond += 1
        order.append(ln.account_id)
        early.append(on_credit)
        served[ln.account_id] = at + 1.0 / max(1, ln.weight)
        taken[ln.account_id] = taken.get(ln.account_id, 0) + 1
        if taken[ln.account_id] < ln.waiting:
            heapq.heappush(heap, (served[ln.account_id], rank, ln))
    return Plan(order, served, early)


def _least_other(least: list[tuple[float, str]], account_id: str) -> float:
    """The least virtual time, as the pass began, of the waiting accounts but `account_id`."""
    others = [at for at, a in least if a != account_id]
    return others[0] if others else float("-inf")
