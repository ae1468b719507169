"""The cluster API's (`/api/v1`, seed 004) response envelope, error envelope, pagination, auth.

Every answer is `{"status", "data", "message", "timestamp", "request_id"}`; every error is
`{"status": "error", "message", "error_code", "error_details", "timestamp", "request_id"}` with
an `error_code` from the seed's list.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from spool.api.auth import Principal, Unauthenticated, key_holder, scope_refusal
from spool.api.bodies import in_place_of
from spool.api.errors import classify
from spool.api.requests import request_id
from spool.api.services import Services

T = TypeVar("T")

MAX_PAGE_SIZE = 100
MAX_PAGE = 1_000_000_000
DEFAULT_PAGE_SIZE = 20

ERROR_CODES = frozenset(
    {
        "VALIDATION_ERROR",
        "NOT_FOUND",
        "DEVICE_NOT_FOUND",
        "TASK_NOT_FOUND",
        "UNAUTHORIZED",
        "RATE_LIMIT_EXCEEDED",
        "INTERNAL_ERROR",
        # Past the seed's list: errors of the HTTP exchange itself, each a code of its own so
        # a client can tell a wrong method or body format from a wrong field.
        "METHOD_NOT_ALLOWED",
        "PAYLOAD_TOO_LARGE",
        "UNSUPPORTED_MEDIA_TYPE",
    }
)

_CODE_BY_STATUS = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "UNAUTHORIZED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "VALIDATION_ERROR",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMIT_EXCEEDED",
}


class ClusterApiError(HTTPException):
    """An error the cluster API reports in its envelope, with a seed `error_code`."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        assert error_code in ERROR_CODES, error_code
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.error_code = error_code
        self.details = details


def validation_error(field: str, message: str) -> ClusterApiError:
    """A 400 `VALIDATION_ERROR` naming the field at fault."""
    return ClusterApiError(
        400, "VALIDATION_ERROR", message, {"field": field, "reason": "validation_error"}
    )


class Pagination(msgspec.Struct, frozen=True):
    page: int
    page_size: int
    total_items: int
    total_pages: int
    has_next: bool
    has_previous: bool

    @classmethod
    def of(cls, page: int, page_size: int, total_items: int) -> Pagination:
        """The pagination object for `page` of `total_items` in pages of `page_size`."""
        total_pages = math.ceil(total_items / page_size) if total_items else 0
        return cls(page, page_size, total_items, total_pages, page < total_pages, page > 1)


def page_window(page: int, page_size: int) -> tuple[int, int]:
    """(limit, offset) for a page after checking both against the seed's limits."""
    if page < 1:
        raise validation_error("page", "page must be 1 or more")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise validation_error("page_size", f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    if page > MAX_PAGE:
        # The offset must fit PostgreSQL's bigint; no list is anywhere near this long.
        raise validation_error("page", f"page must be between 1 and {MAX_PAGE}")
    return page_size, (page - 1) * page_size


def timestamp() -> str:
    """Now, as the seed writes times: ISO 8601 in UTC with a `Z`."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def iso(at: datetime | None) -> str | None:
    """A stored time as the seed writes it."""
    if at is None:
        return None
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Envelope(msgspec.Struct, Generic[T], omit_defaults=True):
    status: str
    data: T
    timestamp: str
    request_id: str
    message: str | None = None
    pagination: Pagination | None = None


def success(
    request: Request[Any, Any, Any],
    data: T,
    *,
    message: str | None = None,
    status_code: int = 200,
    pagination: Pagination | None = None,
) -> Response[Envelope[T]]:
    """A success answer in the seed's envelope."""
    body = Envelope(
        status="success",
        data=data,
        timestamp=timestamp(),
        request_id=request_id(request),
        message=message,
        pagination=pagination,
    )
    return Response(body, status_code=status_code)


def _validation_details(exc: ValidationException) -> tuple[str, dict[str, Any]]:
    extra = exc.extra
    if isinstance(extra, list) and extra and isinstance(extra[0], dict):
        first = extra[0]
        message = str(first.get("message", exc.detail))
        field = str(first.get("key") or "body")
        return message, {"field": field, "reason": "validation_error"}
    return str(exc.detail), {"field": "body", "reason": "validation_error"}


def cluster_api_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Map any exception raised under `/api/v1` to the seed's error envelope."""
    exc = in_place_of(request, exc)
    headers: dict[str, str] | None = None
    details: dict[str, Any] | None = None
    if isinstance(exc, ClusterApiError):
        status, code, message = exc.status_code, exc.error_code, str(exc.detail)
        details, headers = exc.details, exc.headers
    elif isinstance(exc, ValidationException):
        message, details = _validation_details(exc)
        status, code = 400, "VALIDATION_ERROR"
    elif isinstance(exc, NotFoundException):
        status, code, message = 404, "NOT_FOUND", "Resource not found"
    else:
        # A refused command's status picks its code; the seed's codes have no "unavailable": a
        # lost database's 503 carries INTERNAL_ERROR, and the details say why.
        failure = classify(request, exc)
        status, message, headers = failure.status, failure.message, failure.headers
        code = _CODE_BY_STATUS.get(status, "INTERNAL_ERROR")
        allow = (headers or {}).get("allow")
        if status == 405 and allow:
            details = {"allowed": sorted(allow.split(", ")), "reason": "method_not_allowed"}
        elif failure.reason is not None:
            details = {"reason": failure.reason}
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "error_code": code,
        "error_details": details,
        "timestamp": timestamp(),
        "request_id": request_id(request),
    }
    return Response(body, status_code=status, headers=headers)


CLUSTER_API_ERRORS = {Exception: cluster_api_error}


def _unauthorized(message: str) -> ClusterApiError:
    return ClusterApiError(401, "UNAUTHORIZED", message)


_UNAUTHENTICATED = Unauthenticated(
    _unauthorized,
    missing="Authentication required: send X-API-Key or Authorization: Bearer",
    invalid="Invalid API key",
)


async def cluster_principal(request: Request[Any, Any, Any], services: Services) -> Principal:
    """A valid key whose scope allows the request, from `X-API-Key` or `Authorization: Bearer`;
    401 `UNAUTHORIZED` else, 403 outside the key's scope."""
    principal = await key_holder(request, services.keys, _UNAUTHENTICATED)
    refusal = scope_refusal(principal, request.method, request.url.path)
    if refusal is not None:
        raise ClusterApiError(403, "UNAUTHORIZED", refusal)
    return principal


async def cluster_admin(request: Request[Any, Any, Any], services: Services) -> Principal:
    """An admin key, for the endpoints the seed marks "Requires Authentication"."""
    principal = await cluster_principal(request, services)
    if not principal.admin:
        raise ClusterApiError(403, "UNAUTHORIZED", "This endpoint needs an admin API key")
    return principal
