"""How a node's appends ride out a database outage: its finished work is worth waiting for."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from spool.adapters.database import unreachable

log = logging.getLogger("spool.node")

T = TypeVar("T")

APPEND_PATIENCE = 120.0
"""Seconds a stage's result waits for an unreachable database before its unit gives up."""


async def through_outage(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again while the database cannot be reached, for `APPEND_PATIENCE` s."""
    give_up = time.monotonic() + APPEND_PATIENCE
    delay = 0.25
    while True:
        try:
            return await call()
        except Exception as exc:
            if not unreachable(exc) or time.monotonic() >= give_up:
                raise
            log.warning("%s: the database is unreachable, retrying: %s", what, exc)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)
