"""Which waiting jobs start next: priority within an account, fair shares between accounts.

A job whose download may start waits in line (adapters/dispatch_queue.py) until the cluster has
room for it. When there is room for `free` more, `plan` decides how many of them each account
gets: the next start goes to the waiting account with the fewest jobs running for its weight
(max-min fairness over the nodes' slots), so an account that arrives while another fills every
slot gets the slots that free next until the two hold their shares, and accounts that both
keep jobs waiting hold slots in proportion to their weights, however many jobs each has
waiting. Among accounts with as many running, the one given least so far goes first: each
account's virtual time, `served`, grows by 1 / weight with each job it is given (start-time
fair queuing); an account that was idle joins at the least virtual time of those waiting (the
queue sets it as the account's first job joins), so a quiet spell earns it no burst later.
Within an account, its waiting jobs go highest priority first, then oldest first: that order
is the queue's (its index), not this module's.
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
    """One account's place in line: how many of its jobs wait, its weight, its virtual time,
    and how many of its jobs run now."""

    account_id: str
    waiting: int
    weight: int
    served: float
    running: int = 0


class Plan(NamedTuple):
    """What `plan` decided: the accounts in the order their jobs go (one entry per job), and
    each chosen account's new virtual time."""

    order: list[str]
    served: dict[str, float]


def plan(free: int, lines: list[Line]) -> Plan:
    """Give up to `free` starts to the waiting accounts of `lines`: fewest running (those given
    here counted) for the weight first, then least `served`, then the account listed first
    (callers list them by who has waited longest)."""

    def key(ln: Line, taken: int, at: float, rank: int) -> tuple[float, float, int]:
        return ((ln.running + taken) / max(1, ln.weight), at, rank)

    heap = [(key(ln, 0, ln.served, i), ln) for i, ln in enumerate(lines) if ln.waiting > 0]
    heapq.heapify(heap)
    order: list[str] = []
    served: dict[str, float] = {}
    taken: dict[str, int] = {}
    while len(order) < free and heap:
        (_, at, rank), ln = heapq.heappop(heap)
        order.append(ln.account_id)
        served[ln.account_id] = at + 1.0 / max(1, ln.weight)
        taken[ln.account_id] = taken.get(ln.account_id, 0) + 1
        if taken[ln.account_id] < ln.waiting:
            next_key = key(ln, taken[ln.account_id], served[ln.account_id], rank)
            heapq.heappush(heap, (next_key, ln))
    return Plan(order, served)
