"""The line's bookkeeping in PostgreSQL: where an account joins the fair shares.

Real parts only: a fresh PostgreSQL database of the test's own.
"""

from __future__ import annotations

import uuid

import asyncpg

from spool.adapters import dispatch_queue
from spool.domain import fair_share


def _entries(account: str, n: int, seq: int) -> list[dispatch_queue.Entry]:
    return [
        dispatch_queue.Entry(str(uuid.uuid4()), account, None, 1, 0, seq + i, None, None)
        for i in range(n)
    ]


async def _served(conn: asyncpg.Connection) -> dict[str, float]:
    return {ln.account_id: ln.served for ln in await dispatch_queue.lines(conn)}


async def _send(conn: asyncpg.Connection, free: int) -> list[str]:
    decided = fair_share.plan(free, await dispatch_queue.lines(conn))
    return [s.account_id for s in await dispatch_queue.send(conn, decided.order, decided.served)]


async def test_an_account_back_after_a_quiet_spell_goes_first_for_its_credit_then_takes_turns(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await dispatch_queue.join(conn, _entries("flood", 100, 0), credit=4)
        assert len(await _send(conn, 30)) == 30  # the flood alone: 30 of its jobs went
        await dispatch_queue.join(conn, _entries("back", 10, 1000), credit=4)
        served = await _served(conn)
        assert served["back"] == served["flood"] - 4
        assert await _send(conn, 8) == ["back"] * 4 + ["flood", "back"] * 2
    finally:
        await conn.close()


async def test_an_account_that_comes_straight_back_has_only_its_unspent_credit(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await dispatch_queue.join(conn, _entries("flood", 100, 0), credit=4)
        await dispatch_queue.join(conn, _entries("back", 2, 1000), credit=4)
        assert await _send(conn, 2) == ["back", "back"]  # two of its four turns of credit
        await dispatch_queue.join(conn, _entries("back", 4, 2000), credit=4)
        assert await _send(conn, 6) == ["back", "back", "flood", "back", "flood", "back"]
    finally:
        await conn.close()


async def test_accounts_joining_one_after_another_get_the_same_credit_not_more_each(
    fresh_database_url: str,
) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        await dispatch_queue.join(conn, _entries("flood", 100, 0), credit=4)
        await _send(conn, 10)
        for n, account in enumerate(["b", "c", "d"]):
            await dispatch_queue.join(conn, _entries(account, 10, 1000 * (n + 1)), credit=4)
        served = await _served(conn)
        assert served["b"] == served["c"] == served["d"] == served["flood"] - 4
    finally:
        await conn.close()
