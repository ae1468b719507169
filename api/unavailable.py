"""How each surface answers while the database cannot be reached: 503, never a 500.

The request changed nothing (`adapters.database.unreachable` tells such failures apart), so
the client may simply try again.
"""

from __future__ import annotations

RETRY_AFTER = "5"
"""Seconds a client is asked to wait before trying again."""

MESSAGE = "The database is unavailable right now; nothing was changed, try again shortly"
