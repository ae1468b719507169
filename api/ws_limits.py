"""What a websocket peer may send to this API, set on the server that serves it.

A websocket message is read whole before the app sees it, so the bound has to be the server's:
uvicorn's default (16 MiB a message) would let each socket hold 16 MiB, and the health socket's
commands are a few hundred bytes. `spool up`, `spool api` and the tests' loopback server all
pass `UVICORN_WS` to uvicorn.
"""

from __future__ import annotations

from typing import Any

WS_MAX_MESSAGE_BYTES = 64 * 1024
"""The largest message a client may send; a larger one closes its socket with 1009."""

UVICORN_WS: dict[str, Any] = {"ws_max_size": WS_MAX_MESSAGE_BYTES}
"""uvicorn.Config's websocket options for serving this API."""
