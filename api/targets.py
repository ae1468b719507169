"""Where downloads may go: the SSRF rule applied when a URL is submitted."""

from __future__ import annotations

import socket

from spool.adapters.ssrf import UrlGuard, UrlRefused
from spool.api.errors import JobApiError
from spool.api.services import Services


async def refuse_forbidden_target(services: Services, url: str, *, what: str | None = None) -> None:
    """400 for a URL that resolves to loopback, private, link-local or metadata addresses.

    A name that does not resolve now is accepted: DNS may be down for a moment, and whatever
    connects to it later checks again. `what` names the field in the message ("endpoint").
    """
    guard: UrlGuard = services.guard
    try:
        await guard.check_url_async(url)
    except UrlRefused as exc:
        if isinstance(exc.__cause__, socket.gaierror):
            return
        detail = f"{what} refused: {exc}" if what else str(exc)
        raise JobApiError(status_code=400, detail=detail) from None
