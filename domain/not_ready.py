"""Media that is not out yet: a premiere, an upcoming live stream, a video its site is still
processing. Its download is no failure: the job waits and tries again later, with a backoff
that starts at `WaitPolicy.first` and doubles up to `WaitPolicy.longest` (or, when the source
says when the media comes out, shortly after that time), for at most `WaitPolicy.limit` seconds
of waiting in a run. Pure: the node decides with these (domain/job.py `wait_for_media`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec


class WaitPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How a job waits for media that is not out yet (the `SPOOL_NOT_READY_*` settings)."""

    first: float = 300.0
    """Seconds before the first try again; each later wait doubles it."""
    longest: float = 3600.0
    """The longest one wait of the backoff lasts (a known release time may be later)."""
    limit: float = 172_800.0
    """Seconds a run may wait in all, from its first wait, before the job fails."""


AFTER_RELEASE = 60.0
"""Seconds after a source's release time the download tries again (at most `first`): a
premiere's media appears a moment after the time its page gives."""


def next_try(
    policy: WaitPolicy, *, waits: int, waited: float, ready_in: float | None
) -> float | None:
    """Seconds until the download tries again, after `waits` waits that began `waited` seconds
    ago, the media being out in `ready_in` seconds when the source says so; None when the
    job is to wait no more (the limit is reached, or the release comes after it)."""
    left = policy.limit - waited
    if left <= 0:
        return None
    if ready_in is not None and ready_in > 0:
        delay = ready_in + min(policy.first, AFTER_RELEASE)
        return delay if delay <= left else None
    backoff: float = policy.first * 2.0 ** min(waits, 64)  # past that, the cap anyway
    return min(backoff, policy.longest, left)


def note(reason: str, ready_at: datetime | None, next_at: datetime) -> str:
    """What a waiting job says it waits for (`GET /jobs/{id}` `error`, with `error_type`
    `warning`, while the job stays Pending)."""
    when = f"; the source says it is out at {_clock(ready_at)}" if ready_at else ""
    return f"Waiting, not out yet: {reason}{when}; next try at {_clock(next_at)}"


def given_up(reason: str, policy: WaitPolicy, ready_at: datetime | None, now: datetime) -> str:
    """Why a job that waited for its media fails: out only after the limit, or still not out
    when the limit was reached."""
    limit = _duration(policy.limit)
    if ready_at is not None and ready_at > now:
        return (
            f"Not out before Spool stops waiting ({limit} at most): the source says it is out "
            f"at {_clock(ready_at)} ({reason}); retry the job then"
        )
    return f"Still not out after waiting {limit}: {reason}"


def _clock(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    """`48 h`, `30 min`, `2.5 s`: the largest unit that says it in whole numbers, or seconds."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g} {unit}"
    return f"{seconds:g} s"
