"""`POST /api/auth/token`: an API key traded for a short-lived JWT (for the health websocket)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, post
from litestar.datastructures import State

from spool.adapters.settings import Settings
from spool.adapters.tokens import issue_token, signing_key
from spool.api.auth import lookup, presented_key
from spool.api.errors import MESSAGE_ERRORS


def derived_key(state: State, name: str, derive: Callable[[str], bytes]) -> bytes:
    """A key this app derives from the server secret, once, kept in its state under `name`."""
    key: bytes | None = state.get(name)
    if key is None:
        settings: Settings = state.settings
        key = derive(settings.resolved_secret_key())
        state[name] = key
    return key


def token_key(state: State) -> bytes:
    """This app's JWT signing key, derived once from the server secret."""
    return derived_key(state, "token_key", signing_key)


@post(
    "/api/auth/token",
    status_code=200,
    tags=["health"],
    exception_handlers=MESSAGE_ERRORS,  # type: ignore[arg-type]
)
async def issue_health_token(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """A JWT for `ws://HOST/api/health/ws`, for the API key in `Authorization` or `x-api-key`."""
    key = presented_key(request)
    if key is None:
        return Response({"message": "Missing API key"}, status_code=401)
    principal = await lookup(request.app.state, key)
    if principal is None:
        return Response({"message": "Invalid API key"}, status_code=401)
    settings: Settings = request.app.state.settings
    token, expires_at = issue_token(
        token_key(request.app.state),
        key_id=principal.key_id,
        account_id=principal.account_id,
        admin=principal.admin,
        ttl_seconds=settings.health_token_ttl,
    )
    return Response(
        {
            "token": token,
            "token_type": "Bearer",
            "expires_in": int(settings.health_token_ttl),
            "expires_at": datetime.fromtimestamp(expires_at, UTC)
            .isoformat()
            .replace("+00:00", "Z"),
        }
    )
