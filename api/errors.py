"""Error shapes, one mapper per surface. The job API answers `{"error": "..."}`; the viewer list
and the health token `{"message": "..."}`."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from spool.adapters.account_policy_store import QuotaExceeded
from spool.adapters.database import unreachable
from spool.api.bodies import in_place_of
from spool.api.unavailable import MESSAGE, RETRY_AFTER
from spool.domain.errors import (
    ConcurrencyError,
    Conflict,
    DomainError,
    Forbidden,
    IdempotencyKeyReused,
    InvalidCommand,
    InvalidTransition,
    NotFound,
    StorageRefused,
)

log = logging.getLogger("spool.api")


def client_fault(exc: Exception) -> str | None:
    """The 400 message for an error that only hostile input causes; None for anything else.

    Each surface's mapper asks this first, so a NUL byte, a number past int64 or JSON nested
    ten thousand deep is a clear 400 in that surface's shape wherever it reaches, never a 500.
    """
    if isinstance(exc, RecursionError):
        return "The request body is nested too deeply"
    if isinstance(exc, asyncpg.CharacterNotInRepertoireError):
        return "Text must not contain NUL characters"
    if isinstance(exc, OverflowError) or (
        # "value out of int32 range" (an int column) or "... int64 ..." (bigint).
        isinstance(exc, asyncpg.DataError) and "out of int" in str(exc)
    ):
        return "A number in the request is out of range"
    return None


class Failure(NamedTuple):
    """What went wrong, in words every surface renders in its own shape."""

    status: int
    message: str
    headers: dict[str, str] | None = None
    reason: str | None = None
    """Why, for a surface whose errors carry it (the cluster API's `error_details`)."""


_REFUSALS: tuple[tuple[type[DomainError], int], ...] = (
    (NotFound, 404),
    (InvalidTransition, 400),
    (InvalidCommand, 400),
    (Forbidden, 403),
    (Conflict, 409),
    (IdempotencyKeyReused, 422),
    (StorageRefused, 502),
)


def refusal(exc: Exception) -> Failure | None:
    """The status of a command the application layer refused, with its message; None if `exc`
    is no such refusal."""
    for kind, status in _REFUSALS:
        if isinstance(exc, kind):
            return Failure(status, str(exc))
    return None


def classify(request: Request[Any, Any, Any], exc: Exception) -> Failure:
    """The status and message of an error any surface may meet; logs what is the server's own.

    An HTTP error keeps its own; hostile input is a 400 (`client_fault`); a database out of
    reach a 503 with `Retry-After` (nothing was changed); anything else a 500, logged whole.
    """
    exc = in_place_of(request, exc)
    if isinstance(exc, HTTPException):  # e.g. 413 for a body past the size limit
        return Failure(exc.status_code, str(exc.detail), exc.headers or None)
    if (refused := refusal(exc)) is not None:
        return refused
    if (fault := client_fault(exc)) is not None:
        return Failure(400, fault)
    if unreachable(exc):
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return Failure(503, MESSAGE, {"retry-after": RETRY_AFTER}, "database_unavailable")
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return Failure(500, "Internal server error")


class JobApiError(HTTPException):
    """An error the job API reports as `{"error": detail}` with `status_code`."""


def _validation_message(exc: ValidationException) -> str:
    extra = exc.extra
    if isinstance(extra, list) and extra:
        first = extra[0]
        if isinstance(first, dict):
            message = str(first.get("message", exc.detail))
            key = first.get("key")
            return f"{message} (field: {key})" if key else message
    return str(exc.detail)


def job_api_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Map any exception raised under the job API to its documented `{"error": ...}` shape."""
    exc = in_place_of(request, exc)
    if isinstance(exc, ValidationException):
        return Response({"error": _validation_message(exc)}, status_code=400)
    if isinstance(exc, QuotaExceeded):
        return quota_answer(exc)
    if isinstance(exc, ConcurrencyError):
        return Response(
            {"error": "The job changed while this request ran; try again"}, status_code=409
        )
    failure = classify(request, exc)
    return Response({"error": failure.message}, status_code=failure.status, headers=failure.headers)


def quota_answer(exc: QuotaExceeded) -> Response[dict[str, Any]]:
    """429 with `Retry-After` past a rate (jobs a day, jobs at once), 403 past a hard limit."""
    body = {"error": str(exc), "quota": exc.quota, "limit": exc.limit, "used": exc.used}
    if exc.retry_after is None:
        return Response(body, status_code=403)
    return Response(body, status_code=429, headers={"retry-after": str(exc.retry_after)})


JOB_API_ERRORS = {Exception: job_api_error}


def message_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, str]]:
    """Map any exception to the `{"message": ...}` shape of the viewer list and health token."""
    failure = classify(request, exc)
    return Response(
        {"message": failure.message}, status_code=failure.status, headers=failure.headers
    )


MESSAGE_ERRORS = {Exception: message_error}
