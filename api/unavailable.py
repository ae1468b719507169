"""Which errors mean the database cannot be reached: each surface answers them 503, not 500.

A server that is stopped, restarting or cut off fails a request fast (a refused connection, a
connection closed under it, "the database system is starting up"); the request changed nothing,
so the client may simply try again.
"""

from __future__ import annotations

import asyncpg

RETRY_AFTER = "5"
"""Seconds a client is asked to wait before trying again."""

MESSAGE = "The database is unavailable right now; nothing was changed, try again shortly"

_DOWN = (
    OSError,  # refused, reset, or the socket file gone
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up
)


def database_down(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database could not be reached."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _DOWN):
            return True
        if isinstance(seen, asyncpg.InterfaceError) and "connection" in str(seen):
            return True  # "connection is closed", "connection was closed in the middle..."
        seen = seen.__cause__ or seen.__context__
    return False
