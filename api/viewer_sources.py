"""The API's own live connections as viewers: open and close sessions on this process's recorder.

A viewer is bookkeeping about a connection, never a reason to refuse or break one: a failure to
record (the database away for a moment) is logged and the connection goes on unrecorded.
Opening and closing only queue events for the recorder's next flush, so closing needs no await
and is safe where the connection's task is being cancelled (the client left).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar.connection import ASGIConnection

from spool.adapters.viewer_sessions import ViewerRecorder, ViewerSession

log = logging.getLogger("spool.api.viewers")


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The peer's IP address as the server saw it ("" when the server gives none)."""
    client = connection.client
    return client.host if client is not None else ""


async def open_viewer(
    recorder: ViewerRecorder,
    connection: ASGIConnection[Any, Any, Any, Any],
    *,
    harness_type: str,
    state_name: str,
    stream_key: str,
    application_id: str,
    bitrate: int = 0,
) -> ViewerSession | None:
    """A viewer for `connection` on this app's recorder; None when it could not be recorded."""
    try:
        return await recorder.open(
            harness_type=harness_type,
            state=state_name,
            stream_key=stream_key,
            application_id=application_id,
            remote_address=client_address(connection),
            user_agent=connection.headers.get("user-agent", ""),
            bitrate=bitrate,
        )
    except Exception:
        log.warning("could not record a %s viewer", harness_type, exc_info=True)
        return None


def close_viewer(session: ViewerSession | None) -> None:
    """Queue the goodbye of `session`, if any; closing twice is harmless."""
    if session is not None:
        session.close()
