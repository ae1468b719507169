"""`POST /api/auth/token`: an API key traded for a short-lived JWT (for the health websocket)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar import Request, Response, post
from litestar.exceptions import HTTPException

from spool.adapters.tokens import issue_token
from spool.api.auth import Principal, Unauthenticated, key_holder
from spool.api.services import Services


async def token_caller(request: Request[Any, Any, Any], services: Services) -> Principal:
    """Whose key asks for a token (the health surface's guard); 401 as `{"message"}` otherwise."""
    return await key_holder(request, services.keys, _UNAUTHENTICATED)


def _unauthenticated(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message)


_UNAUTHENTICATED = Unauthenticated(
    _unauthenticated, missing="Missing API key", invalid="Invalid API key"
)


@post(
    "/api/auth/token",
    status_code=200,
    tags=["health"],
)
async def issue_health_token(services: Services, principal: Principal) -> Response[dict[str, Any]]:
    """A JWT for `ws://HOST/api/health/ws`, for the API key in `Authorization` or `x-api-key`."""
    settings = services.settings
    token, expires_at = issue_token(
        services.token_key,
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
