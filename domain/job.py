"""The job aggregate: its events, its state, and the pure decide/evolve functions over them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from domain.errors import InvalidTransition
from domain.events import Event, event, registry

JobStatus = Literal["Pending", "Processing", "Completed", "Failed", "Cancelled"]
JobStep = Literal["Queued", "Downloading", "Muxing", "Uploading", "Finished"]


class JobOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the user asked for beyond the URL; the names are the job API's."""

    format: str | None = None
    video_codec: str = "copy"
    audio_codec: str = "copy"
    audio_bitrate: str = "192k"
    video_quality: int = 23
    quality_preset: str | None = None
    max_resolution: str = "best"
    audio_only: bool = False
    download_subtitles: bool = False
    download_thumbnail: bool = False
    clip_start: str | None = None
    clip_end: str | None = None
    filename: str | None = None
    folder: str | None = None
    webhook_url: str | None = None
    enable_progress_webhook: bool = False


@event
class JobCreated(Event, frozen=True, kw_only=True):
    """A user asked for a URL to be fetched; v2 nests the options (v1 had a flat `format`)."""

    schema_version = 2

    job_id: str
    account_id: str
    url: str
    options: JobOptions = JobOptions()
    batch_id: str | None = None


@registry.upcaster("JobCreated", 1)
def _job_created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if data.get("format") is not None:
        options["format"] = data["format"]
    return {
        "job_id": data["job_id"],
        "account_id": data["account_id"],
        "url": data["url"],
        "options": options,
    }


class JobState(msgspec.Struct, kw_only=True):
    """A job folded from its events: what `GET /jobs/{id}` shows."""

    job_id: str
    account_id: str
    url: str
    options: JobOptions
    status: JobStatus
    step: JobStep
    batch_id: str | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    error_type: str | None = None
    version: int = 0


def stream_id(job_id: str) -> str:
    """The event stream that holds one job."""
    return f"job-{job_id}"


def create(
    *, job_id: str, account_id: str, url: str, options: JobOptions, batch_id: str | None = None
) -> list[Event]:
    """Decide the events that create a job."""
    return [
        JobCreated(
            job_id=job_id, account_id=account_id, url=url, options=options, batch_id=batch_id
        )
    ]


def evolve(state: JobState | None, ev: Event, at: datetime, version: int) -> JobState:
    """Apply one recorded event to a job's state."""
    if isinstance(ev, JobCreated):
        if state is not None:
            raise InvalidTransition(f"job {ev.job_id} created twice")
        return JobState(
            job_id=ev.job_id,
            account_id=ev.account_id,
            url=ev.url,
            options=ev.options,
            status="Pending",
            step="Queued",
            batch_id=ev.batch_id,
            created_at=at,
            updated_at=at,
            version=version,
        )
    if state is None:
        raise InvalidTransition(f"{type(ev).__name__} before JobCreated")
    state.updated_at = at
    state.version = version
    return state


def fold(events: list[tuple[Event, datetime, int]]) -> JobState | None:
    """Fold a job's events, in stream order, into its state."""
    state: JobState | None = None
    for ev, at, version in events:
        state = evolve(state, ev, at, version)
    return state


EVENT_TYPES: frozenset[str] = frozenset({"JobCreated"})
"""Every event type a job stream holds."""
