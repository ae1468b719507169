"""Surface guards: who may reach a surface's routes, decided before any parameter or body is read.

A surface's Router lists its guard (api/surfaces.py). The guard admits the caller in the
surface's own words (the Router's error renderer answers a refusal, as it answers any error of
the surface) and keeps the admitted `Principal` on the connection, where the surface's
`principal` dependency (`ADMITTED`) hands it to the handlers. A route marked `KEYLESS` is let
through: a public page, or the health socket, which authenticates in band with a token. A
surface whose routes are each let in differently (api/surfaces.py, OPERATIONS) gives each its
own guard, which keeps what it admitted the same way (`keep_admitted`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard, Scope

from spool.api.auth import Principal
from spool.api.services import Services, services_of

Admit = Callable[[Request[Any, Any, Any], Services], Awaitable[Principal]]
"""Who a request's key belongs to, or the surface's refusal raised."""

_KEYLESS = "keyless"
_ADMITTED = "principal"

KEYLESS: dict[str, Any] = {_KEYLESS: True}
"""`opt` of a route its surface's guard lets through without a key."""


def guard(admit: Admit) -> Guard:
    """The guard of a surface whose callers `admit` lets in; `KEYLESS` routes pass untouched."""

    async def check(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        if handler.opt.get(_KEYLESS):
            return
        if not isinstance(connection, Request):
            # A socket answers a refusal only by closing: it authenticates itself.
            raise TypeError(f"{handler} is a socket under a key guard: mark it KEYLESS")
        keep_admitted(connection, await admit(connection, services_of(connection.app)))

    return check


def keep_admitted(connection: ASGIConnection[Any, Any, Any, Any], principal: Principal) -> None:
    """Keep the caller a guard admitted, for the route's `principal` dependency (`ADMITTED`)."""
    connection.state[_ADMITTED] = principal


def admitted(scope: Scope) -> Principal:
    """The caller the surface's guard admitted."""
    principal: Principal = scope["state"][_ADMITTED]
    return principal


ADMITTED = Provide(admitted, sync_to_thread=False)
"""The `principal` dependency of a guarded surface: the caller its guard admitted."""
