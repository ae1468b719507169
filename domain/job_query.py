"""`JobQuery`: which of an account's jobs a list (`GET /jobs`) or a bulk action
(`POST /jobs/actions`) means. One filter, one SQL builder (adapters/read_models/jobs.py,
`where`), so a bulk action acts on exactly the jobs the same filter lists."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from spool.domain.errors import InvalidCommand
from spool.domain.job import ErrorType, JobStatus
from spool.domain.job_labels import MAX_LABELS, check_key, check_value

MAX_TEXT = 200
"""Characters of `q`, `host`, `error` and `batch_id`."""


class JobQuery(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """A filter over jobs; every field given must match (labels: every pair). Times are UTC;
    `*_after` is inclusive, `*_before` exclusive."""

    status: list[JobStatus] = msgspec.field(default_factory=list)
    """Any of these statuses; empty: any status."""
    batch_id: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    host: str | None = None
    """The host of the job's source URL (case-insensitive, exact)."""
    created_after: datetime | None = None
    created_before: datetime | None = None
    finished_after: datetime | None = None
    finished_before: datetime | None = None
    error_type: ErrorType | None = None
    error: str | None = None
    """Text the job's error message contains (case-insensitive)."""
    q: str | None = None
    """Text the title, the file name (the output's name or key) or the URL contains
    (case-insensitive)."""
    failure_group: str | None = None
    """A group of `GET /jobs/failures` (its `group_id`): Failed jobs of that group."""
    subscription_id: str | None = None
    """The jobs a subscription's checks created (domain/subscription.py)."""


def _utc(at: datetime | None, name: str) -> datetime | None:
    if at is None:
        return None
    if at.year < 1970 or at.year > 9999:
        raise InvalidCommand(f"{name} is out of range")
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def checked(query: JobQuery) -> JobQuery:
    """The query with its values checked and times made UTC; InvalidCommand naming the first
    value that cannot be."""
    if len(query.labels) > MAX_LABELS:
        raise InvalidCommand(f"At most {MAX_LABELS} labels in one query")
    for key, value in query.labels.items():
        check_key(key)
        check_value(key, value)
    for name in ("batch_id", "host", "error", "q", "failure_group", "subscription_id"):
        text = getattr(query, name)
        if text is not None and (not text.strip() or len(text) > MAX_TEXT or "\x00" in text):
            raise InvalidCommand(f"{name} must be 1-{MAX_TEXT} characters")
    times = {
        name: _utc(getattr(query, name), name)
        for name in ("created_after", "created_before", "finished_after", "finished_before")
    }
    for prefix in ("created", "finished"):
        after, before = times[f"{prefix}_after"], times[f"{prefix}_before"]
        if after is not None and before is not None and after >= before:
            raise InvalidCommand(f"{prefix}_after must be before {prefix}_before")
    host = query.host.strip().lower() if query.host else None
    status = list(dict.fromkeys(query.status))
    return msgspec.structs.replace(query, host=host, status=status, **times)
