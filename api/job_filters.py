"""A `JobQuery` (domain/job_query.py) from what a request carries: `GET /jobs`'s query
parameters, or the `filter` object of `POST /jobs/actions`. Every refusal is a 400 in the job
API's shape (`{"error"}`) naming the parameter."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, get_args

import msgspec

from spool.api.errors import JobApiError
from spool.domain.errors import InvalidCommand
from spool.domain.job import ErrorType, JobStatus
from spool.domain.job_labels import parse_pair
from spool.domain.job_query import JobQuery, checked

STATUSES: tuple[str, ...] = get_args(JobStatus)
ERROR_TYPES: tuple[str, ...] = get_args(ErrorType)


def _bad(detail: str) -> JobApiError:
    return JobApiError(status_code=400, detail=detail)


def time_param(name: str, raw: str | None) -> datetime | None:
    """An ISO 8601 time (UTC when it names no offset) or milliseconds since the epoch, as
    `GET /jobs/{id}` shows times."""
    if raw is None:
        return None
    try:
        if raw.strip().lstrip("-").isdigit():
            return datetime.fromtimestamp(int(raw) / 1000, UTC)
        return datetime.fromisoformat(raw)
    except (ValueError, OverflowError, OSError):
        raise _bad(
            f"{name} must be an ISO 8601 time or milliseconds since the epoch, got {raw[:40]!r}"
        ) from None


def _statuses(raw: Sequence[str]) -> list[Any]:
    """Repeated `status` parameters, each possibly comma-separated."""
    found = [s.strip() for value in raw for s in value.split(",") if s.strip()]
    for status in found:
        if status not in STATUSES:
            raise _bad(f"status must be one of {', '.join(STATUSES)}, got {status[:40]!r}")
    return found


def _checked(query: JobQuery) -> JobQuery:
    try:
        return checked(query)
    except InvalidCommand as exc:
        raise _bad(str(exc)) from None


def query_of_params(
    *,
    status: list[str] | None = None,
    batch_id: str | None = None,
    label: list[str] | None = None,
    host: str | None = None,
    created_after: str | None = None,
    created_before: str | None = None,
    finished_after: str | None = None,
    finished_before: str | None = None,
    error_type: str | None = None,
    error: str | None = None,
    q: str | None = None,
    failure_group: str | None = None,
    subscription_id: str | None = None,
) -> JobQuery:
    """`GET /jobs`'s filter, from its query parameters (the route's `wanted` dependency):
    `status` and `label` (`key=value`) repeatable; all must match."""
    labels: dict[str, str] = {}
    for pair in label or ():
        try:
            key, value = parse_pair(pair)
        except InvalidCommand as exc:
            raise _bad(str(exc)) from None
        if labels.get(key, value) != value:
            raise _bad(f"label {key!r} is asked for with two values: no job can match")
        labels[key] = value
    if error_type is not None and error_type not in ERROR_TYPES:
        raise _bad(f"error_type must be one of {', '.join(ERROR_TYPES)}, got {error_type[:40]!r}")
    return _checked(
        JobQuery(
            status=_statuses(status or ()),
            batch_id=batch_id,
            labels=labels,
            host=host,
            created_after=time_param("created_after", created_after),
            created_before=time_param("created_before", created_before),
            finished_after=time_param("finished_after", finished_after),
            finished_before=time_param("finished_before", finished_before),
            error_type=error_type,  # type: ignore[arg-type]  # checked against ERROR_TYPES
            error=error,
            q=q,
            failure_group=failure_group,
            subscription_id=subscription_id,
        )
    )


def query_of_body(raw: Any) -> JobQuery:
    """A bulk action's `filter` object: `JobQuery`'s fields, `labels` an object of strings,
    times ISO 8601; an unknown field is refused."""
    if not isinstance(raw, dict):
        raise _bad("filter must be an object of JobQuery fields")
    try:
        query = msgspec.convert(raw, JobQuery, strict=False)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `$.")
        field = path.rstrip("`")
        raise _bad(
            f"filter: {message} (field: {field})" if field else f"filter: {message}"
        ) from None
    return _checked(query)
